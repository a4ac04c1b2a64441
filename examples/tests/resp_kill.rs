//! Crash loop for the persistent `pmem-redis`: several connections write strings, list
//! elements and three-key `MSET`s, `kill -9` hits the server at a random instant, it restarts
//! on the same pool, and then:
//! - every string verifies (each value carries its key, a version and a checksum: no torn or
//!   mixed values) and every `SET` acknowledged before the kill is present (or superseded by a
//!   newer version, in flight at the kill);
//! - every list holds its acknowledged elements in order, plus at most one push per kill (the
//!   one in flight);
//! - the three keys of every `MSET` have the same version (all or nothing).

mod common;
use common::resp::*;
use common::{check_value, make_value, spawn_writers, stop_writers};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ITERATIONS: usize = 25;
const WRITERS: u64 = 3;
const KEYS_PER_WRITER: u64 = 200;

#[derive(Default)]
struct Acked {
    strings: HashMap<String, u64>,
    /// per writer: the versions of its acknowledged pushes, in order
    lists: HashMap<u64, Vec<u64>>,
    /// per writer: the last acknowledged MSET version
    msets: HashMap<u64, u64>,
}

fn bulk(v: V) -> Option<Vec<u8>> {
    match v {
        V::Bulk(b) => Some(b),
        V::Nil => None,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn verify(c: &mut RespClient, acked: &Acked, it: usize) -> u64 {
    let mut verified = 0;
    for w in 0..WRITERS {
        for k in 0..KEYS_PER_WRITER {
            let key = format!("w{w}k{k}");
            let got = bulk(c.w(&[b"GET", key.as_bytes()]));
            if let Some(v) = &got {
                check_value(&key, v).unwrap_or_else(|e| panic!("iteration {it}: {e}"));
                verified += 1;
            }
            if let Some(&a) = acked.strings.get(&key) {
                let f = got.map(|v| check_value(&key, &v).unwrap());
                assert!(
                    f.is_some_and(|f| f >= a),
                    "iteration {it}: {key} acknowledged at version {a}, found {f:?}"
                );
            }
        }
        // the list: acknowledged elements in order, plus at most one in flight
        let list = format!("w{w}list");
        let V::Arr(items) = c.w(&[b"LRANGE", list.as_bytes(), b"0", b"-1"]) else {
            panic!("LRANGE reply")
        };
        let vers: Vec<u64> = items
            .into_iter()
            .map(|v| {
                let b = bulk(v).expect("element");
                check_value(&list, &b).unwrap_or_else(|e| panic!("iteration {it}: {e}"))
            })
            .collect();
        verified += vers.len() as u64;
        let want = acked.lists.get(&w).cloned().unwrap_or_default();
        assert!(
            vers.windows(2).all(|p| p[0] < p[1]),
            "iteration {it}: {list} out of order: {vers:?}"
        );
        let have: std::collections::HashSet<u64> = vers.iter().copied().collect();
        if let Some(lost) = want.iter().find(|v| !have.contains(v)) {
            panic!("iteration {it}: {list}: acknowledged element {lost} lost");
        }
        // each kill leaves at most one push in flight per writer
        assert!(
            vers.len() - want.len() <= it,
            "iteration {it}: {list} has {} elements, {} acknowledged",
            vers.len(),
            want.len()
        );
        // the MSET group: one version for all three keys
        let keys: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|s| format!("w{w}m{s}"))
            .collect();
        let vals: Vec<Option<u64>> = keys
            .iter()
            .map(|k| bulk(c.w(&[b"GET", k.as_bytes()])).map(|v| check_value(k, &v).unwrap()))
            .collect();
        assert!(
            vals.iter().all(|v| *v == vals[0]),
            "iteration {it}: MSET group of writer {w} torn: {vals:?}"
        );
        if let Some(&a) = acked.msets.get(&w) {
            assert!(
                vals[0].is_some_and(|v| v >= a),
                "iteration {it}: MSET {a} lost"
            );
        }
    }
    verified
}

#[test]
fn kill9_loop_keeps_every_acknowledged_write() {
    // tmpfs where there is one: an msync per command on a disk file would leave little load
    let d = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let pool = d.path().join("kill.pool").display().to_string();
    let args = ["--pool", pool.as_str(), "--size", "64m", "--threads", "2"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut version_base = 0u64;
    let mut verified_total = 0u64;
    for it in 0..ITERATIONS {
        let mut s = RedisServer::launch(&args);
        if it > 0 {
            let log = s.log.lock().unwrap().join("\n");
            assert!(
                log.contains("recovered after a crash"),
                "iteration {it}: {log}"
            );
        }
        let mut c = s.client();
        verified_total += verify(&mut c, &acked.lock().unwrap(), it);
        let stop = Arc::new(AtomicBool::new(false));
        let hs = spawn_writers(WRITERS, &mut rng, &stop, {
            let (acked, base) = (acked.clone(), version_base);
            let port = s.port;
            move |w, r, stop| {
                let mut c = RespClient::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    n += 1;
                    let ver = base + n;
                    match r.gen_range(0..10) {
                        0..=5 => {
                            let key = format!("w{w}k{}", r.gen_range(0..KEYS_PER_WRITER));
                            let len = if r.gen_bool(0.03) {
                                r.gen_range(10_000..100_000)
                            } else {
                                r.gen_range(0..300)
                            };
                            let v = make_value(&key, ver, len);
                            match c.try_w(&[b"SET", key.as_bytes(), &v]) {
                                Some(V::Simple(ok)) if ok == "OK" => {
                                    acked.lock().unwrap().strings.insert(key, ver);
                                }
                                Some(other) => panic!("SET: unexpected reply {other:?}"),
                                None => break,
                            }
                        }
                        6..=8 => {
                            let list = format!("w{w}list");
                            let v = make_value(&list, ver, r.gen_range(0..100));
                            match c.try_w(&[b"RPUSH", list.as_bytes(), &v]) {
                                Some(V::Int(_)) => {
                                    acked.lock().unwrap().lists.entry(w).or_default().push(ver)
                                }
                                Some(other) => panic!("RPUSH: unexpected reply {other:?}"),
                                None => break,
                            }
                        }
                        _ => {
                            let ks: Vec<String> = ["a", "b", "c"]
                                .iter()
                                .map(|s| format!("w{w}m{s}"))
                                .collect();
                            let vs: Vec<Vec<u8>> =
                                ks.iter().map(|k| make_value(k, ver, 50)).collect();
                            let mut words: Vec<&[u8]> = vec![b"MSET"];
                            for (k, v) in ks.iter().zip(&vs) {
                                words.push(k.as_bytes());
                                words.push(v);
                            }
                            match c.try_w(&words) {
                                Some(V::Simple(ok)) if ok == "OK" => {
                                    acked.lock().unwrap().msets.insert(w, ver);
                                }
                                Some(other) => panic!("MSET: unexpected reply {other:?}"),
                                None => break,
                            }
                        }
                    }
                }
                n
            }
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..300)));
        s.signal(libc::SIGKILL);
        s.wait_exit();
        version_base += stop_writers(&stop, hs) + 1;
    }
    let s = RedisServer::launch(&args);
    let mut c = s.client();
    verified_total += verify(&mut c, &acked.lock().unwrap(), ITERATIONS);
    let a = acked.lock().unwrap();
    eprintln!(
        "pmem-redis kill loop: {ITERATIONS} kills, {} strings, {} list elements and {} MSET groups acknowledged, {verified_total} values verified after restarts",
        a.strings.len(),
        a.lists.values().map(Vec::len).sum::<usize>(),
        a.msets.len()
    );
}
