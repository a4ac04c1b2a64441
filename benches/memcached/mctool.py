#!/usr/bin/env python3
"""Helpers for benches/memcached-compare.sh (memcached text protocol over loopback TCP).

  mctool.py wait PORT READYFILE TIMEOUT_S [KEY]
      Creates READYFILE once it polls, then tries to connect to 127.0.0.1:PORT every 1 ms until
      a connection succeeds and `version` is answered; prints the wall-clock time of that reply
      (CLOCK_REALTIME, seconds with microseconds, comparable with bash's $EPOCHREALTIME), then
      with KEY the time at which `get KEY` on the same connection returned the value ("miss" if
      it did not), then the reply. Exits 1 after TIMEOUT_S without an answer.
  mctool.py load PORT N VALUE_BYTES
      Stores keys key:0 .. key:N-1 (VALUE_BYTES-byte values) with pipelined `set ... noreply`,
      then waits for a `version` reply so that every set has been processed. Prints seconds.
  mctool.py stat PORT NAME
      Prints one field of `stats` (e.g. curr_items).
  mctool.py report RESULTS.tsv META.tsv
      Writes the markdown report (stdout) from the trial results the script collected.
"""
import os
import socket
import statistics
import sys
import time


def connect(port, timeout=10.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until(s, end):
    buf = b""
    while not buf.endswith(end):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed, got %r" % buf[-200:])
        buf += chunk
    return buf


def cmd_wait(port, readyfile, timeout_s, key=None):
    deadline = time.monotonic() + timeout_s
    with open(readyfile, "w"):
        pass
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        except OSError:
            time.sleep(0.001)
            continue
        try:
            s.sendall(b"version\r\n")
            reply = read_until(s, b"\r\n")
            t = time.time()
        except OSError:
            s.close()
            time.sleep(0.001)
            continue
        tget = ""
        if key:
            # then one `get` of a loaded key on the same connection: time to the first hit.
            try:
                s.sendall(b"get %s\r\n" % key.encode())
                hit = read_until(s, b"END\r\n")
                if hit.startswith(b"VALUE "):
                    tget = "%.6f" % time.time()
                else:
                    tget = "miss"
            except OSError:
                tget = "error"
        s.close()
        print("%.6f %s %s" % (t, tget or "-", reply.decode(errors="replace").strip()))
        return 0
    print("no version reply on port %d within %s s" % (port, timeout_s), file=sys.stderr)
    return 1


def cmd_load(port, n, vbytes):
    t0 = time.monotonic()
    value = (b"v" * vbytes) + b"\r\n"
    s = connect(port, timeout=120.0)
    batch = []
    for i in range(n):
        batch.append(b"set key:%d 0 0 %d noreply\r\n" % (i, vbytes))
        batch.append(value)
        if len(batch) >= 2 * 4096:
            s.sendall(b"".join(batch))
            batch = []
    batch.append(b"version\r\n")
    s.sendall(b"".join(batch))
    reply = read_until(s, b"\r\n")
    s.close()
    if not reply.startswith(b"VERSION"):
        print("unexpected reply after the load: %r" % reply[:300], file=sys.stderr)
        return 1
    print("%.2f" % (time.monotonic() - t0))
    return 0


def stats(port):
    s = connect(port)
    s.sendall(b"stats\r\n")
    buf = read_until(s, b"END\r\n")
    s.close()
    out = {}
    for line in buf.decode().split("\r\n"):
        p = line.split(" ")
        if len(p) == 3 and p[0] == "STAT":
            out[p[1]] = p[2]
    return out


def cmd_stat(port, name):
    print(stats(port).get(name, "?"))
    return 0


# ---------------------------------------------------------------- report

def med(xs):
    return statistics.median(xs) if xs else None


def fnum(x, nd=0):
    if x is None:
        return "—"
    if nd == 0:
        return "{:,}".format(int(round(x))).replace(",", " ")
    return ("%." + str(nd) + "f") % x


def cmd_report(results, metafile):
    meta = {}
    with open(metafile) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta[k] = v
    rows = []
    with open(results) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    tput = [r for r in rows if r["kind"] == "tput"]
    rst = [r for r in rows if r["kind"] == "restart"]
    peer = "memcached -e"
    variants = meta["variants"].split(",")
    workloads = meta["workloads"].split(",")
    o = []
    w = o.append
    w("# pmem-memcached against memcached 1.6")
    w("")
    w("Throughput (memcaslap) and restart time of the `pmem-memcached` example server against "
      "Debian's memcached, plain and with its restartable cache (`-e` on /dev/shm), side by side "
      "in one run. Generated by `benches/memcached-compare.sh` (do not edit by hand: rerun it).")
    w("")
    w("| | |")
    w("|---|---|")
    for k, label in [("date", "date (UTC)"), ("cpu", "CPU"), ("nproc", "logical CPUs"),
                     ("kernel", "kernel"), ("os", "OS"), ("loadavg", "load average at start"),
                     ("loadavg_end", "load average at end"), ("versions", "peers"),
                     ("command", "command"), ("quick", "mode")]:
        if k in meta:
            v = meta[k]
            if k == "command":
                v = "`%s`" % v
            w("| %s | %s |" % (label, v))
    w("")
    w("## Summary")
    w("")
    w("| goal | workload | pmem-memcached | result (ratio) | verdict | server CPU per op vs memcached `-e` |")
    w("|---|---|---|---:|:---|---:|")
    summary_at = len(o)
    w("")
    w("Throughput result: median of the per-round ratios of ops/s (higher is better); restart: "
      "median of the per-trial ratios of the time to the first reply (lower is better). A miss "
      "is marked *within noise* when at least one round or trial met the goal. The last column "
      "(lower is better) is a secondary measure, less sensitive to other load on the machine.")
    w("")

    # ---- throughput
    w("## Throughput")
    w("")
    w("Every server: `-t %s -m %s -c 1024` on loopback, item memory file or pool on /dev/shm, "
      "started fresh (new file) for every trial and pinned with `taskset -c %s`; memcaslap "
      "pinned with `taskset -c %s`:" % (meta["threads"], meta["mem"], meta["server_cpus"],
                                         meta["client_cpus"]))
    w("")
    w("```sh")
    w(meta["memcaslap_cmd"])
    w("```")
    w("")
    w("Configurations (`benches/memcached/get-set-9-1.cnf`, `get-set-1-1.cnf`): 64-byte keys, "
      "1024-byte values, 10%%/90%% or 50%%/50%% set/get. %s rounds; in each round every workload runs "
      "every variant once, in an order rotated by one each round. ops/s is memcaslap's final "
      "`TPS` (median over rounds). The ratio is the median of the per-round ratios "
      "variant/memcached `-e` (each against the peer measured in the same round, a few seconds "
      "apart; min–max over rounds in parentheses). Server CPU is the server's user+system CPU "
      "time (from /proc) per operation, median, and its per-round ratio to memcached `-e` "
      "(lower is better; CPU time per operation moves less with the load of other processes "
      "than ops/s does); client CPU load is memcaslap's CPU time over the run's wall time." % meta["rounds"])
    w("")
    w("| workload | variant | server command | ops/s (median) | ops/s per round | ratio vs memcached -e | server CPU µs/op | server CPU/op vs memcached -e | client CPU load |")
    w("|---|---|---|---:|---|---:|---:|---:|---:|")
    verdicts = []
    for wl in workloads:
        for v in variants:
            rs = [r for r in tput if r["workload"] == wl and r["variant"] == v]
            ok = [r for r in rs if r["status"] == "ok"]
            ops = [float(r["ops"]) for r in ok]
            ratios = []
            for r in ok:
                p = [q for q in tput if q["workload"] == wl and q["variant"] == peer
                     and q["round"] == r["round"] and q["status"] == "ok"]
                if p and float(p[0]["ops"]) > 0:
                    ratios.append(float(r["ops"]) / float(p[0]["ops"]))
            cpu = [float(r["srv_cpu_s"]) * 1e6 / float(r["total_ops"]) for r in ok
                   if r["srv_cpu_s"] and float(r["total_ops"]) > 0]
            cpu_ratios = []
            for r in ok:
                p = [q for q in tput if q["workload"] == wl and q["variant"] == peer
                     and q["round"] == r["round"] and q["status"] == "ok"]
                if p and r["srv_cpu_s"] and p[0]["srv_cpu_s"] and float(p[0]["srv_cpu_s"]) > 0:
                    mine = float(r["srv_cpu_s"]) / float(r["total_ops"])
                    theirs = float(p[0]["srv_cpu_s"]) / float(p[0]["total_ops"])
                    cpu_ratios.append(mine / theirs)
            cli = [float(r["cli_cpu_s"]) / float(r["wall_s"]) for r in ok if float(r["wall_s"]) > 0]
            bad = len(rs) - len(ok)
            per = ", ".join(fnum(float(r["ops"])) if r["status"] == "ok" else "**%s**" % r["status"]
                            for r in sorted(rs, key=lambda r: int(r["round"])))
            if v == peer:
                rtxt = "1 (peer)"
            elif ratios:
                rtxt = "%.3f (%.3f–%.3f)" % (med(ratios), min(ratios), max(ratios))
            else:
                rtxt = "—"
            crtxt = "1 (peer)" if v == peer else (
                "%.2f" % med(cpu_ratios) if cpu_ratios else "—")
            w("| %s | %s | `%s` | %s | %s | %s | %s | %s | %s |" % (
                wl, v, meta["cmd:" + v], fnum(med(ops)), per, rtxt,
                fnum(med(cpu), 1), crtxt, fnum(med(cli), 2)))
            if v.startswith("pmem-memcached"):
                mode = "durable" if "durable" in v else "default"
                if bad:
                    verd, res = "FAIL (%d of %d trials failed)" % (bad, len(rs)), rtxt
                elif ratios:
                    m = med(ratios)
                    if m >= 1.0:
                        verd = "PASS"
                    elif max(ratios) >= 1.0:
                        verd = "MISS (within noise: some rounds ≥ 1)"
                    else:
                        verd = "MISS"
                    res = "%.3f" % m
                else:
                    verd, res = "—", "—"
                verdicts.append(("throughput ≥ 1.0x memcached `-e`", wl, mode, res, verd,
                                 crtxt))
    w("")
    w("Raw trials in run order (order = position within the round's workload; CPU in seconds "
      "over the run; *others* = cores used by all other processes of the machine meanwhile, "
      "from /proc/stat):")
    w("")
    w("| workload | round | order | variant | ops/s | total ops | get_misses | server CPU s | memcaslap CPU s | others, cores | status |")
    w("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in tput:
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["workload"], r["round"], r["order"], r["variant"],
            fnum(float(r["ops"])) if r["ops"] else "—", r["total_ops"] or "—",
            r["get_misses"] or "—", r["srv_cpu_s"] or "—", r["cli_cpu_s"] or "—",
            r["other_cpu"] or "—", r["status"]))
    w("")

    # ---- restart
    w("## Restart time")
    w("")
    w("Each server is loaded with %s items (keys `key:0`..`key:%d`, %s-byte values, pipelined "
      "`set ... noreply` by `benches/memcached/mctool.py load`), `-t %s -m %s`, pinned like "
      "above. Then, per trial, the server is stopped and started again with identical options; "
      "the time is from the fork of the server process (bash `$EPOCHREALTIME`) to the first "
      "successful TCP connect whose `version` is answered (a poller tries every 1 ms). "
      "On the same connection the poller then asks `get key:%d` (the last key loaded): the "
      "time to that hit is listed too, to show work a server might defer past its first "
      "reply. `curr_items` is read from `stats` after every restart. Trials of the variants are "
      "interleaved (rotating order), %s trials each, median." % (
          meta["items"], int(meta["items"]) - 1, meta["vbytes"], meta["threads"],
          meta["rst_mem"], int(meta["items"]) - 1, meta["rst_trials"]))
    w("")
    w("- After each stop the script waits for the next wall-clock second before the restart: "
      "memcached discards its `-e` memory when restarted within the second of its stop "
      "(`stop_time` check). Every variant gets the same wait; the measured time starts after it.")
    w("- memcached `-e`: stopped with SIGUSR1 (graceful: writes `FILE.meta`), restarted with the "
      "same options; it restores the items from the memory file.")
    w("- pmem-memcached clean: stopped with SIGTERM (clean shutdown), restarted: `clean` open.")
    w("- pmem-memcached after kill -9: killed with SIGKILL, restarted: recovery (`recovered`). "
      "memcached has no equivalent: after kill -9 (or SIGTERM) memcached `-e` starts empty.")
    w("")
    w("| variant | stop | server command | items loaded (load time) | restart to first reply, ms (median) | per trial, ms | ratio vs memcached -e | to first `get` hit, ms | `ready in` (log), ms | curr_items after restart | start kind |")
    w("|---|---|---|---|---:|---|---:|---:|---:|---|---|")
    rvars = meta["rst_variants"].split(",")
    peer_ms = {}
    for r in rst:
        if r["variant"] == peer and r["status"] == "ok":
            peer_ms[r["round"]] = float(r["ms"])
    for v in rvars:
        rs = [r for r in rst if r["variant"] == v]
        ok = [r for r in rs if r["status"] == "ok"]
        ms = [float(r["ms"]) for r in ok]
        ratios = [float(r["ms"]) / peer_ms[r["round"]] for r in ok if r["round"] in peer_ms]
        ready = [float(r["ready_ms"]) for r in ok if r["ready_ms"] not in ("", "-")]
        gets = [float(r["get_ms"]) for r in ok if r.get("get_ms", "") not in ("", "-")]
        items = sorted(set(r["items"] for r in rs))
        kinds = sorted(set(r["start_kind"] for r in rs if r["start_kind"]))
        per = ", ".join(("%.1f" % float(r["ms"])) if r["status"] == "ok" else "**%s**" % r["status"]
                        for r in rs)
        if v == peer:
            rtxt = "1 (peer)"
        elif v.endswith("kill -9"):
            rtxt = "— (no peer)"
        elif ratios:
            rtxt = "%.3f (%.3f–%.3f)" % (med(ratios), min(ratios), max(ratios))
        else:
            rtxt = "—"
        w("| %s | %s | `%s` | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            v, meta["stop:" + v], meta["cmd:" + v], meta["load:" + v],
            fnum(med(ms), 1), per, rtxt, fnum(med(gets), 1) if gets else "—",
            fnum(med(ready), 0) if ready else "—",
            ", ".join(items), ", ".join(kinds) or "—"))
        if v.startswith("pmem-memcached") and not v.endswith("kill -9"):
            bad = len(rs) - len(ok)
            if bad:
                verd, res = "FAIL (%d of %d trials failed)" % (bad, len(rs)), rtxt
            elif ratios:
                m = med(ratios)
                verd = "PASS" if m <= 1.0 else (
                    "MISS (within noise: some trials ≤ 1)" if min(ratios) <= 1.0 else "MISS")
                res = "%.3f" % m
            else:
                verd, res = "—", "—"
            verdicts.append(("restart time ≤ 1.0x memcached `-e` (SIGUSR1)",
                             "%s items" % meta["items"], "default", res, verd, "—"))
    w("")
    w("Times per trial are listed in trial order; the ratio is the median of per-trial ratios "
      "against memcached `-e` in the same trial round (min–max). `ready in` is what "
      "pmem-memcached logs itself (from its start of `main` to listening).")
    w("")
    notes = meta.get("notes_file")
    if notes and not os.path.exists(notes):  # a kept copy (RAW=DIR): notes.md beside results
        notes = os.path.join(os.path.dirname(results), "notes.md")
    if notes and os.path.exists(notes):
        with open(notes) as f:
            txt = f.read().strip()
        if txt:
            w("## Notes")
            w("")
            w(txt)
            w("")
    summ = []
    for goal, wl, mode, res, verd, cpu in verdicts:
        summ.append("| %s | %s | %s | %s | %s | %s |" % (goal, wl, mode, res, verd, cpu))
    o[summary_at:summary_at] = summ
    sys.stdout.write("\n".join(o) + "\n")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    c = argv[1]
    if c == "wait":
        return cmd_wait(int(argv[2]), argv[3], float(argv[4]), argv[5] if len(argv) > 5 else None)
    if c == "load":
        return cmd_load(int(argv[2]), int(argv[3]), int(argv[4]))
    if c == "stat":
        return cmd_stat(int(argv[2]), argv[3])
    if c == "report":
        return cmd_report(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
