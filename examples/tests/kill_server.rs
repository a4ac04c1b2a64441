//! Crash loop: write load against `pmem-memcached`, `kill -9` at a random instant, restart,
//! verify. Every value carries its key, a version and a checksum; after each restart every
//! value must verify (no torn or mixed values) and every write acknowledged with STORED before
//! the kill must be present (or superseded by a newer version of the same key, in flight at
//! the kill). Even iterations run `--durable`, odd ones the default mode: against a process
//! kill both lose nothing acknowledged (the link is in the mapping before the reply; only
//! power loss distinguishes the modes, see docs/memcached.md).

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ITERATIONS: usize = 50;
const WRITERS: u64 = 3;
const KEYS_PER_WRITER: u64 = 300;

#[test]
fn kill9_loop_keeps_every_acknowledged_write() {
    let d = tempfile::tempdir().unwrap();
    let pool = d.path().join("kill.pool");
    let port = free_port();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    // last acknowledged version per key, across iterations
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut version_base = 0u64;
    let mut restored_total = 0u64;
    for it in 0..ITERATIONS {
        let durable = it % 2 == 0;
        let mut args = vec!["-m", "32", "-t", "2"];
        if durable {
            args.push("--durable");
        }
        let mut s = Server::start(&pool, port, &args);
        let ready = s.ready_line();
        if it > 0 {
            assert!(ready.contains("(recovered)"), "iteration {it}: {ready}");
        }
        // verify everything from the previous iterations
        let mut c = s.client();
        let snapshot = acked.lock().unwrap().clone();
        let mut present = 0;
        for w in 0..WRITERS {
            let keys: Vec<String> = (0..KEYS_PER_WRITER).map(|k| format!("w{w}k{k}")).collect();
            for chunk in keys.chunks(50) {
                let refs: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
                let got = c.gets(&refs);
                let mut found = HashMap::new();
                for v in &got {
                    let ver = check_value(&v.key, &v.data)
                        .unwrap_or_else(|e| panic!("iteration {it}: {e}"));
                    found.insert(v.key.clone(), ver);
                }
                for k in chunk {
                    if let Some(&a) = snapshot.get(k) {
                        let f = found.get(k).copied();
                        assert!(
                            f.is_some_and(|f| f >= a),
                            "iteration {it}: {k} acknowledged at version {a}, found {f:?}"
                        );
                    }
                }
                present += got.len() as u64;
            }
        }
        restored_total += present;
        // write load from several connections, killed at a random instant
        let stop = Arc::new(AtomicBool::new(false));
        let hs = spawn_writers(WRITERS, &mut rng, &stop, {
            let (acked, base) = (acked.clone(), version_base);
            move |w, r, stop| {
                let mut c = Client::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 200_000 {
                    n += 1;
                    let key = format!("w{w}k{}", r.gen_range(0..KEYS_PER_WRITER));
                    let len = if r.gen_bool(0.05) {
                        r.gen_range(10_000..200_000)
                    } else {
                        r.gen_range(0..400)
                    };
                    let ver = base + n;
                    match c.try_store("set", &key, 0, 0, &make_value(&key, ver, len)) {
                        Ok(l) if l == "STORED" => {
                            acked.lock().unwrap().insert(key, ver);
                        }
                        Ok(l) => panic!("unexpected reply {l:?}"),
                        Err(_) => break, // killed
                    }
                }
                n
            }
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        s.kill9();
        version_base += stop_writers(&stop, hs) + 1;
    }
    // final verification after the last kill
    let s = Server::start(&pool, port, &[]);
    let mut c = s.client();
    let snapshot = acked.lock().unwrap().clone();
    for (k, &a) in &snapshot {
        let v = c
            .get1(k)
            .unwrap_or_else(|| panic!("{k} acknowledged at {a} but missing"));
        assert!(check_value(k, &v.data).unwrap() >= a);
    }
    eprintln!(
        "kill loop: {ITERATIONS} kills, {} keys acknowledged, {restored_total} values verified after restarts",
        snapshot.len()
    );
}
