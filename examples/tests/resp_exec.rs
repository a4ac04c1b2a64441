//! Command semantics and error replies of the RESP server, through the exec layer with a
//! controlled clock, against every backend in `common::resp::backends()`; and a property test
//! driving random command sequences against a small independent model.

mod common;
use common::resp::{backends, ExecClient, V};
use pmem_examples::resp::exec::Flow;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Runs `f` against a fresh keyspace of each backend.
fn each(f: impl Fn(&mut ExecClient)) {
    for b in backends() {
        eprintln!("backend {}", b.name);
        f(&mut b.exec_client());
    }
}

fn err(s: &str) -> V {
    V::Err(s.into())
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";

#[test]
fn connection_commands() {
    each(|c| {
        assert_eq!(c.c("PING"), V::Simple("PONG".into()));
        assert_eq!(c.c("ping hello"), V::b("hello"));
        assert_eq!(
            c.c("ping a b"),
            err("ERR wrong number of arguments for 'ping' command")
        );
        assert_eq!(c.c("EcHo hi"), V::b("hi"));
        assert_eq!(c.c("select 0"), V::ok());
        assert_eq!(c.c("select 1"), err("ERR DB index is out of range"));
        assert_eq!(c.c("select x"), err(NOT_INT));
        assert_eq!(
            c.c("foo a b"),
            err("ERR unknown command 'foo', with args beginning with: 'a' 'b' ")
        );
        assert_eq!(
            c.c("foo"),
            err("ERR unknown command 'foo', with args beginning with: ")
        );
        assert_eq!(
            c.c("get"),
            err("ERR wrong number of arguments for 'get' command")
        );
        assert_eq!(
            c.c("GET a b"),
            err("ERR wrong number of arguments for 'get' command")
        );
        assert_eq!(c.run(&[b"quit"]), (V::ok(), Flow::Close));
        assert_eq!(c.run(&[b"shutdown", b"nosave"]).1, Flow::Shutdown);
        assert_eq!(c.run(&[b"shutdown"]).1, Flow::Shutdown);
        assert_eq!(c.c("shutdown bogus"), err("ERR syntax error"));
        // CLIENT
        let id = c.c("client id");
        assert!(matches!(id, V::Int(n) if n > 0), "{id:?}");
        assert_eq!(c.c("client getname"), V::Nil);
        assert_eq!(c.c("client setname conn1"), V::ok());
        assert_eq!(c.c("client getname"), V::b("conn1"));
        assert_eq!(
            c.w(&[b"client", b"setname", b"a b"]),
            err("ERR Client names cannot contain spaces, newlines or special characters.")
        );
        assert_eq!(
            c.c("client foo"),
            err("ERR unknown subcommand 'foo'. Try CLIENT HELP.")
        );
        // HELLO
        let V::Arr(h) = c.c("hello 2") else {
            panic!("hello")
        };
        assert_eq!(h.len(), 14);
        assert_eq!(h[3], V::b("7.0.0"));
        assert_eq!(h[5], V::Int(2));
        assert_eq!(c.c("hello 3"), err("NOPROTO unsupported protocol version"));
        assert_eq!(
            c.c("hello x"),
            err("ERR Protocol version is not an integer or out of range")
        );
        // COMMAND, CONFIG
        assert_eq!(c.c("command"), V::Arr(vec![]));
        assert_eq!(c.c("command docs"), V::Arr(vec![]));
        assert!(matches!(c.c("command count"), V::Int(n) if n > 50));
        assert_eq!(c.c("config get save"), V::arr(&["save", ""]));
        assert_eq!(c.c("CONFIG GET appendonly"), V::arr(&["appendonly", "no"]));
        assert_eq!(c.c("config get nosuch"), V::Arr(vec![]));
        assert_eq!(
            c.c("config get"),
            err("ERR wrong number of arguments for 'config|get' command")
        );
        assert_eq!(
            c.c("config get app*").sorted(),
            vec!["appendfsync", "appendonly", "everysec", "no"]
        );
        assert!(matches!(c.c("time"), V::Arr(v) if v.len() == 2));
    });
}

#[test]
fn strings_and_set_options() {
    each(|c| {
        assert_eq!(c.c("get k"), V::Nil);
        assert_eq!(c.c("set k v"), V::ok());
        assert_eq!(c.c("get k"), V::b("v"));
        assert_eq!(c.c("set k v2 nx"), V::Nil);
        assert_eq!(c.c("set k v2 xx"), V::ok());
        assert_eq!(c.c("set nokey v xx"), V::Nil);
        assert_eq!(c.c("exists nokey"), V::Int(0));
        assert_eq!(c.c("set k v3 get"), V::b("v2"));
        assert_eq!(c.c("set new v get"), V::Nil);
        assert_eq!(c.c("set k x nx get"), V::b("v3"));
        assert_eq!(c.c("get k"), V::b("v3"));
        assert_eq!(c.c("set k v nx xx"), err("ERR syntax error"));
        assert_eq!(c.c("set k v ex 10 px 100"), err("ERR syntax error"));
        assert_eq!(c.c("set k v keepttl ex 10"), err("ERR syntax error"));
        assert_eq!(c.c("set k v ex"), err("ERR syntax error"));
        assert_eq!(c.c("set k v bogus"), err("ERR syntax error"));
        assert_eq!(c.c("set k v ex x"), err(NOT_INT));
        for bad in ["ex 0", "px -1", "exat 0", "ex 9223372036854775807"] {
            assert_eq!(
                c.c(&format!("set k v {bad}")),
                err("ERR invalid expire time in 'set' command"),
                "{bad}"
            );
        }
        // Binary-safe keys and values.
        let bin: Vec<u8> = (0..=255u8).collect();
        assert_eq!(c.w(&[b"set", b"\x00\r\n", &bin]), V::ok());
        assert_eq!(c.w(&[b"get", b"\x00\r\n"]), V::Bulk(bin));
        assert_eq!(c.w(&[b"set", b"", b""]), V::ok());
        assert_eq!(c.w(&[b"get", b""]), V::b(""));
        // SETNX, GETSET, MSET, MGET
        assert_eq!(c.c("setnx k z"), V::Int(0));
        assert_eq!(c.c("setnx nx1 z"), V::Int(1));
        assert_eq!(c.c("getset nx1 y"), V::b("z"));
        assert_eq!(c.c("getset gs1 y"), V::Nil);
        assert_eq!(c.c("mset a 1 b 2 c 3"), V::ok());
        assert_eq!(
            c.c("mset a 1 b"),
            err("ERR wrong number of arguments for 'mset' command")
        );
        c.c("rpush list x");
        assert_eq!(
            c.c("mget a b nokey list c"),
            V::Arr(vec![V::b("1"), V::b("2"), V::Nil, V::Nil, V::b("3")])
        );
        assert_eq!(c.c("get list"), err(WRONGTYPE));
        assert_eq!(c.c("set list s"), V::ok(), "SET overwrites any type");
        assert_eq!(c.c("type list"), V::Simple("string".into()));
        c.c("rpush l2 x");
        assert_eq!(c.c("set l2 s get"), err(WRONGTYPE));
        assert_eq!(c.c("type l2"), V::Simple("list".into()));
        assert_eq!(c.c("type nokey"), V::Simple("none".into()));
    });
}

#[test]
fn counters() {
    each(|c| {
        assert_eq!(c.c("incr n"), V::Int(1));
        assert_eq!(c.c("incrby n 10"), V::Int(11));
        assert_eq!(c.c("decr n"), V::Int(10));
        assert_eq!(c.c("decrby n 20"), V::Int(-10));
        assert_eq!(c.c("get n"), V::b("-10"));
        assert_eq!(c.c("incrby n x"), err(NOT_INT));
        assert_eq!(c.c("incrby n 1.5"), err(NOT_INT));
        c.c("set s abc");
        assert_eq!(c.c("incr s"), err(NOT_INT));
        for v in [" 1", "01", "+1", "-0", "1 ", "99999999999999999999"] {
            c.w(&[b"set", b"s", v.as_bytes()]);
            assert_eq!(c.c("incr s"), err(NOT_INT), "{v:?}");
        }
        c.c("set m 9223372036854775806");
        assert_eq!(c.c("incr m"), V::Int(i64::MAX));
        assert_eq!(
            c.c("incr m"),
            err("ERR increment or decrement would overflow")
        );
        assert_eq!(c.c("get m"), V::b("9223372036854775807"));
        assert_eq!(
            c.c("decrby m -9223372036854775808"),
            err("ERR decrement would overflow")
        );
        c.c("set m -9223372036854775808");
        assert_eq!(
            c.c("decr m"),
            err("ERR increment or decrement would overflow")
        );
        c.c("lpush l a");
        assert_eq!(c.c("incr l"), err(WRONGTYPE));
        // INCR keeps the TTL.
        c.c("set t 5 px 10000");
        assert_eq!(c.c("incr t"), V::Int(6));
        assert_eq!(c.c("pttl t"), V::Int(10000));
    });
}

#[test]
fn keys_and_expiry() {
    each(|c| {
        c.c("mset a 1 b 2 c 3");
        assert_eq!(c.c("exists a b nokey a"), V::Int(3));
        assert_eq!(c.c("del a nokey b"), V::Int(2));
        assert_eq!(c.c("dbsize"), V::Int(1));
        assert_eq!(c.c("ttl c"), V::Int(-1));
        assert_eq!(c.c("ttl nokey"), V::Int(-2));
        assert_eq!(c.c("pttl nokey"), V::Int(-2));
        assert_eq!(c.c("expire c 10"), V::Int(1));
        assert_eq!(c.c("ttl c"), V::Int(10));
        assert_eq!(c.c("pttl c"), V::Int(10_000));
        c.now += 1_400;
        assert_eq!(c.c("ttl c"), V::Int(9), "rounded like Redis");
        assert_eq!(c.c("pttl c"), V::Int(8_600));
        assert_eq!(c.c("persist c"), V::Int(1));
        assert_eq!(c.c("persist c"), V::Int(0));
        assert_eq!(c.c("persist nokey"), V::Int(0));
        assert_eq!(c.c("ttl c"), V::Int(-1));
        assert_eq!(c.c("expire nokey 10"), V::Int(0));
        assert_eq!(c.c("pexpire c 500"), V::Int(1));
        c.now += 499;
        assert_eq!(c.c("get c"), V::b("3"));
        c.now += 1;
        assert_eq!(c.c("get c"), V::Nil, "expired at exactly its time");
        assert_eq!(c.c("exists c"), V::Int(0));
        assert_eq!(c.c("dbsize"), V::Int(0));
        // Options.
        c.c("set k v");
        assert_eq!(c.c("expire k 100 xx"), V::Int(0));
        assert_eq!(c.c("expire k 100 gt"), V::Int(0));
        assert_eq!(c.c("expire k 100 nx"), V::Int(1));
        assert_eq!(c.c("expire k 50 nx"), V::Int(0));
        assert_eq!(c.c("expire k 50 gt"), V::Int(0));
        assert_eq!(c.c("expire k 200 gt"), V::Int(1));
        assert_eq!(c.c("expire k 300 lt"), V::Int(0));
        assert_eq!(c.c("expire k 20 lt"), V::Int(1));
        assert_eq!(c.c("ttl k"), V::Int(20));
        assert_eq!(
            c.c("expire k 10 nx gt"),
            err("ERR NX and XX, GT or LT options at the same time are not compatible")
        );
        assert_eq!(
            c.c("expire k 10 gt lt"),
            err("ERR GT and LT options at the same time are not compatible")
        );
        assert_eq!(c.c("expire k 10 foo"), err("ERR Unsupported option foo"));
        assert_eq!(c.c("expire k x"), err(NOT_INT));
        assert_eq!(
            c.c("expire k 9223372036854775807"),
            err("ERR invalid expire time in 'expire' command")
        );
        // Absolute times and past times (delete).
        let at = (c.now / 1000 + 30).to_string();
        assert_eq!(c.c(&format!("expireat k {at}")), V::Int(1));
        assert!(matches!(c.c("ttl k"), V::Int(29..=30)));
        let pat = (c.now + 5000).to_string();
        assert_eq!(c.c(&format!("pexpireat k {pat}")), V::Int(1));
        assert_eq!(c.c("pttl k"), V::Int(5000));
        assert_eq!(c.c("expire k -1"), V::Int(1));
        assert_eq!(c.c("exists k"), V::Int(0));
        // SET expiry forms.
        assert_eq!(c.c("set e v ex 10"), V::ok());
        assert_eq!(c.c("pttl e"), V::Int(10_000));
        assert_eq!(c.c("set e v2 keepttl"), V::ok());
        assert_eq!(c.c("pttl e"), V::Int(10_000));
        assert_eq!(c.c("set e v3"), V::ok());
        assert_eq!(c.c("pttl e"), V::Int(-1));
        assert_eq!(c.c("set e v px 1234"), V::ok());
        assert_eq!(c.c("pttl e"), V::Int(1234));
        let exat = (c.now / 1000 + 100).to_string();
        assert_eq!(c.c(&format!("set e v exat {exat}")), V::ok());
        assert!(matches!(c.c("ttl e"), V::Int(99..=100)));
        let pxat = (c.now + 777).to_string();
        assert_eq!(c.c(&format!("set e v pxat {pxat}")), V::ok());
        assert_eq!(c.c("pttl e"), V::Int(777));
        assert_eq!(c.c("setex s 5 v"), V::ok());
        assert_eq!(c.c("pttl s"), V::Int(5000));
        assert_eq!(c.c("psetex s 50 v"), V::ok());
        assert_eq!(c.c("pttl s"), V::Int(50));
        assert_eq!(
            c.c("setex s 0 v"),
            err("ERR invalid expire time in 'setex' command")
        );
        // An expired key is absent for every kind of command, and can be recreated as
        // another kind.
        c.c("rpush l a b");
        c.c("pexpire l 10");
        c.now += 10;
        assert_eq!(c.c("llen l"), V::Int(0));
        assert_eq!(c.c("sadd l m"), V::Int(1));
        assert_eq!(c.c("ttl l"), V::Int(-1));
        assert_eq!(c.c("flushall"), V::ok());
        assert_eq!(c.c("dbsize"), V::Int(0));
        assert_eq!(c.c("flushdb async"), V::ok());
        assert_eq!(c.c("flushall bogus"), err("ERR syntax error"));
    });
}

#[test]
fn lists() {
    each(|c| {
        assert_eq!(c.c("lpush l a b c"), V::Int(3));
        assert_eq!(c.c("rpush l d"), V::Int(4));
        assert_eq!(c.c("lrange l 0 -1"), V::arr(&["c", "b", "a", "d"]));
        assert_eq!(c.c("lrange l 1 2"), V::arr(&["b", "a"]));
        assert_eq!(c.c("lrange l -2 -1"), V::arr(&["a", "d"]));
        assert_eq!(c.c("lrange l 5 10"), V::Arr(vec![]));
        assert_eq!(c.c("lrange l -100 100"), V::arr(&["c", "b", "a", "d"]));
        assert_eq!(c.c("lrange l 2 1"), V::Arr(vec![]));
        assert_eq!(c.c("lrange l x 1"), err(NOT_INT));
        assert_eq!(c.c("lrange nokey 0 -1"), V::Arr(vec![]));
        assert_eq!(c.c("llen l"), V::Int(4));
        assert_eq!(c.c("lpop l"), V::b("c"));
        assert_eq!(c.c("rpop l"), V::b("d"));
        assert_eq!(c.c("lpop l 5"), V::arr(&["b", "a"]));
        assert_eq!(c.c("exists l"), V::Int(0), "empty list removed");
        assert_eq!(c.c("lpop l"), V::Nil);
        assert_eq!(c.c("lpop l 2"), V::NilArr);
        assert_eq!(c.c("rpush l a"), V::Int(1));
        assert_eq!(c.c("rpop l 0"), V::Arr(vec![]));
        assert_eq!(
            c.c("lpop l -1"),
            err("ERR value is out of range, must be positive")
        );
        assert_eq!(
            c.c("lpop l 1 2"),
            err("ERR wrong number of arguments for 'lpop' command")
        );
        c.c("set s v");
        assert_eq!(c.c("lpush s a"), err(WRONGTYPE));
        assert_eq!(c.c("lpop s"), err(WRONGTYPE));
        assert_eq!(c.c("lpop s 2"), err(WRONGTYPE));
        assert_eq!(c.c("lrange s 0 1"), err(WRONGTYPE));
        assert_eq!(c.c("llen s"), err(WRONGTYPE));
        assert_eq!(c.c("get s"), V::b("v"), "unchanged");
    });
}

#[test]
fn hashes() {
    each(|c| {
        assert_eq!(c.c("hset h a 1 b 2"), V::Int(2));
        assert_eq!(c.c("hset h a 3 c 4"), V::Int(1));
        assert_eq!(
            c.c("hset h a"),
            err("ERR wrong number of arguments for 'hset' command")
        );
        assert_eq!(
            c.c("hset h a 1 b"),
            err("ERR wrong number of arguments for 'hset' command")
        );
        assert_eq!(c.c("hmset h d 5"), V::ok());
        assert_eq!(c.c("hget h a"), V::b("3"));
        assert_eq!(c.c("hget h zz"), V::Nil);
        assert_eq!(c.c("hget nokey a"), V::Nil);
        assert_eq!(
            c.c("hmget h a zz b"),
            V::Arr(vec![V::b("3"), V::Nil, V::b("2")])
        );
        assert_eq!(c.c("hlen h"), V::Int(4));
        assert_eq!(c.c("hexists h a"), V::Int(1));
        assert_eq!(c.c("hexists h zz"), V::Int(0));
        assert_eq!(
            c.c("hgetall h").sorted(),
            vec!["2", "3", "4", "5", "a", "b", "c", "d"]
        );
        // fields and values alternate, each value after its field
        let V::Arr(all) = c.c("hgetall h") else {
            panic!("hgetall")
        };
        let m: Vec<(V, V)> = all
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        assert!(m.contains(&(V::b("a"), V::b("3"))));
        assert!(m.contains(&(V::b("d"), V::b("5"))));
        assert_eq!(c.c("hdel h a zz b"), V::Int(2));
        assert_eq!(c.c("hdel h c d"), V::Int(2));
        assert_eq!(c.c("exists h"), V::Int(0), "empty hash removed");
        assert_eq!(c.c("hgetall h"), V::Arr(vec![]));
        assert_eq!(c.c("hlen h"), V::Int(0));
        c.c("set s v");
        for cmd in [
            "hset s a 1",
            "hget s a",
            "hdel s a",
            "hgetall s",
            "hlen s",
            "hmget s a",
        ] {
            assert_eq!(c.c(cmd), err(WRONGTYPE), "{cmd}");
        }
    });
}

#[test]
fn sets() {
    each(|c| {
        assert_eq!(c.c("sadd s a b c a"), V::Int(3));
        assert_eq!(c.c("sadd s c d"), V::Int(1));
        assert_eq!(c.c("scard s"), V::Int(4));
        assert_eq!(c.c("smembers s").sorted(), vec!["a", "b", "c", "d"]);
        assert_eq!(c.c("sismember s a"), V::Int(1));
        assert_eq!(c.c("sismember s z"), V::Int(0));
        assert_eq!(c.c("srem s a z"), V::Int(1));
        let V::Bulk(one) = c.c("spop s") else {
            panic!()
        };
        assert!([&b"b"[..], b"c", b"d"].contains(&one.as_slice()));
        let two = c.c("spop s 5").sorted();
        assert_eq!(two.len(), 2);
        assert_eq!(c.c("exists s"), V::Int(0), "empty set removed");
        assert_eq!(c.c("spop s"), V::Nil);
        assert_eq!(c.c("spop s 3"), V::Arr(vec![]));
        assert_eq!(c.c("smembers s"), V::Arr(vec![]));
        assert_eq!(c.c("scard s"), V::Int(0));
        assert_eq!(
            c.c("spop s -1"),
            err("ERR value is out of range, must be positive")
        );
        c.c("set k v");
        for cmd in [
            "sadd k a",
            "srem k a",
            "smembers k",
            "spop k",
            "scard k",
            "sismember k a",
        ] {
            assert_eq!(c.c(cmd), err(WRONGTYPE), "{cmd}");
        }
    });
}

#[test]
fn sorted_sets() {
    each(|c| {
        assert_eq!(c.c("zadd z 1 a 2 b 1.5 c"), V::Int(3));
        assert_eq!(c.c("zadd z 3 a"), V::Int(0));
        assert_eq!(c.c("zrange z 0 -1"), V::arr(&["c", "b", "a"]));
        assert_eq!(
            c.c("zrange z 0 -1 withscores"),
            V::arr(&["c", "1.5", "b", "2", "a", "3"])
        );
        assert_eq!(c.c("zrange z -1 -1 WITHSCORES"), V::arr(&["a", "3"]));
        assert_eq!(c.c("zrange z 0 -1 bogus"), err("ERR syntax error"));
        assert_eq!(c.c("zrange z x 1"), err(NOT_INT));
        // ties ordered by member bytes; special scores
        assert_eq!(c.c("zadd t 1 b 1 a 1 c -inf m +inf n 0.1 x"), V::Int(6));
        assert_eq!(
            c.c("zrange t 0 -1 withscores"),
            V::arr(&["m", "-inf", "x", "0.1", "a", "1", "b", "1", "c", "1", "n", "inf"])
        );
        assert_eq!(c.c("zadd t 1e300 big 1.1e-7 small"), V::Int(2));
        assert_eq!(c.c("zscore t big"), V::b("1e+300"));
        assert_eq!(c.c("zscore t small"), V::b("1.1e-07"));
        assert_eq!(c.c("zscore t none"), V::Nil);
        assert_eq!(c.c("zadd t nan a"), err("ERR value is not a valid float"));
        assert_eq!(c.c("zadd t x a"), err("ERR value is not a valid float"));
        assert_eq!(
            c.c("zadd t 1"),
            err("ERR wrong number of arguments for 'zadd' command")
        );
        assert_eq!(c.c("zadd t 1 a 2"), err("ERR syntax error"));
        // NX / XX / CH
        assert_eq!(c.c("zadd z nx 10 a 4 d"), V::Int(1));
        assert_eq!(c.c("zscore z a"), V::b("3"));
        assert_eq!(c.c("zadd z xx 10 a 5 e"), V::Int(0));
        assert_eq!(c.c("zscore z a"), V::b("10"));
        assert_eq!(c.c("zscore z e"), V::Nil);
        assert_eq!(c.c("zadd z ch 11 a 10 b 6 f"), V::Int(3));
        assert_eq!(c.c("zadd z ch 11 a"), V::Int(0));
        assert_eq!(
            c.c("zadd z nx xx 1 a"),
            err("ERR XX and NX options at the same time are not compatible")
        );
        assert_eq!(c.c("zadd nokey xx 1 a"), V::Int(0));
        assert_eq!(c.c("exists nokey"), V::Int(0));
        assert_eq!(c.c("zcard z"), V::Int(5));
        // ZPOPMIN
        assert_eq!(c.c("zpopmin z"), V::arr(&["c", "1.5"]));
        assert_eq!(c.c("zpopmin z 2"), V::arr(&["d", "4", "f", "6"]));
        assert_eq!(c.c("zpopmin z 0"), V::Arr(vec![]));
        assert_eq!(
            c.c("zpopmin z -1"),
            err("ERR value is out of range, must be positive")
        );
        assert_eq!(c.c("zpopmin z 10"), V::arr(&["b", "10", "a", "11"]));
        assert_eq!(c.c("exists z"), V::Int(0), "empty sorted set removed");
        assert_eq!(c.c("zpopmin z"), V::Arr(vec![]));
        assert_eq!(c.c("zcard z"), V::Int(0));
        c.c("set k v");
        for cmd in [
            "zadd k 1 a",
            "zrange k 0 1",
            "zpopmin k",
            "zcard k",
            "zscore k a",
        ] {
            assert_eq!(c.c(cmd), err(WRONGTYPE), "{cmd}");
        }
    });
}

#[test]
fn info_sections() {
    each(|c| {
        c.c("set a 1");
        c.c("set b 2 ex 100");
        let V::Bulk(all) = c.c("info") else { panic!() };
        let all = String::from_utf8(all).unwrap();
        for want in [
            "# Server\r\n",
            "redis_version:7.0.0\r\n",
            "redis_mode:standalone",
            "tcp_port:",
            "uptime_in_seconds:",
            "# Clients\r\n",
            "connected_clients:",
            "# Memory\r\n",
            "used_memory:",
            "# Persistence\r\n",
            "loading:0",
            "aof_enabled:0",
            "# Stats\r\n",
            "total_commands_processed:",
            "# Keyspace\r\ndb0:keys=2,expires=",
            "# Backend\r\n",
        ] {
            assert!(all.contains(want), "{want:?} missing in {all}");
        }
        let V::Bulk(ks) = c.c("INFO keyspace") else {
            panic!()
        };
        assert!(String::from_utf8(ks)
            .unwrap()
            .starts_with("# Keyspace\r\ndb0:keys=2"));
        let V::Bulk(two) = c.c("info server memory") else {
            panic!()
        };
        let two = String::from_utf8(two).unwrap();
        assert!(two.contains("# Server") && two.contains("# Memory") && !two.contains("# Stats"));
        assert_eq!(c.c("info nosuchsection"), V::b(""));
        c.c("flushall");
        let V::Bulk(ks) = c.c("info keyspace") else {
            panic!()
        };
        assert_eq!(ks, b"# Keyspace\r\n");
    });
}

#[test]
fn pipelined_process_and_protocol_errors() {
    use pmem_examples::resp::exec::process;
    each(|c| {
        let mut out = Vec::new();
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\n*1\r\n$4\r\nPI";
        let (used, flow) = process(&*c.db, &c.info, &mut c.session, input, &mut out);
        assert_eq!(flow, Flow::Continue);
        assert_eq!(&input[used..], b"*1\r\n$4\r\nPI");
        assert_eq!(out, b"+OK\r\n$1\r\nv\r\n");
        out.clear();
        let rest = b"*1\r\n$4\r\nPING\r\n";
        let (used, flow) = process(&*c.db, &c.info, &mut c.session, rest, &mut out);
        assert_eq!((used, flow), (rest.len(), Flow::Continue));
        assert_eq!(out, b"+PONG\r\n");
        out.clear();
        let (_, flow) = process(
            &*c.db,
            &c.info,
            &mut c.session,
            b"*1\r\n$999999999\r\n",
            &mut out,
        );
        assert_eq!(flow, Flow::Close);
        assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
    });
}

// ---------------------------------------------------------------- model-based property test

/// A tiny independent model: strings, lists and sets (enough to check kinds, emptiness and
/// the replies of the commands involved).
#[derive(Debug, Clone, Default)]
struct Model {
    strs: BTreeMap<String, String>,
    lists: BTreeMap<String, VecDeque<String>>,
    sets: BTreeMap<String, BTreeSet<String>>,
}

impl Model {
    fn kind(&self, k: &str) -> Option<&'static str> {
        if self.strs.contains_key(k) {
            Some("string")
        } else if self.lists.contains_key(k) {
            Some("list")
        } else if self.sets.contains_key(k) {
            Some("set")
        } else {
            None
        }
    }
    fn remove(&mut self, k: &str) -> bool {
        self.strs.remove(k).is_some()
            | self.lists.remove(k).is_some()
            | self.sets.remove(k).is_some()
    }
    /// Applies a command; the expected reply.
    fn apply(&mut self, cmd: &[String]) -> V {
        let k = cmd[1].clone();
        let wrong = |m: &Model, want: &str| m.kind(&k).is_some_and(|t| t != want);
        match cmd[0].as_str() {
            "set" => {
                self.remove(&k);
                self.strs.insert(k, cmd[2].clone());
                V::ok()
            }
            "get" => {
                if wrong(self, "string") {
                    return V::Err(WRONGTYPE.into());
                }
                self.strs.get(&k).map_or(V::Nil, |v| V::b(v))
            }
            "del" => V::Int(i64::from(self.remove(&k))),
            "exists" => V::Int(i64::from(self.kind(&k).is_some())),
            "incr" => {
                if wrong(self, "string") {
                    return V::Err(WRONGTYPE.into());
                }
                let cur = self.strs.get(&k).cloned().unwrap_or_else(|| "0".into());
                match cur.parse::<i64>() {
                    Ok(n) if n.to_string() == cur => match n.checked_add(1) {
                        Some(m) => {
                            self.strs.insert(k, m.to_string());
                            V::Int(m)
                        }
                        None => V::Err("ERR increment or decrement would overflow".into()),
                    },
                    _ => V::Err(NOT_INT.into()),
                }
            }
            "lpush" | "rpush" => {
                if wrong(self, "list") {
                    return V::Err(WRONGTYPE.into());
                }
                let l = self.lists.entry(k).or_default();
                if cmd[0] == "lpush" {
                    l.push_front(cmd[2].clone());
                } else {
                    l.push_back(cmd[2].clone());
                }
                V::Int(l.len() as i64)
            }
            "lpop" | "rpop" => {
                if wrong(self, "list") {
                    return V::Err(WRONGTYPE.into());
                }
                let Some(l) = self.lists.get_mut(&k) else {
                    return V::Nil;
                };
                let v = if cmd[0] == "lpop" {
                    l.pop_front()
                } else {
                    l.pop_back()
                };
                if l.is_empty() {
                    self.lists.remove(&k);
                }
                v.map_or(V::Nil, |v| V::b(&v))
            }
            "lrange" => {
                if wrong(self, "list") {
                    return V::Err(WRONGTYPE.into());
                }
                let l = self.lists.get(&k).cloned().unwrap_or_default();
                let n = l.len() as i64;
                let (s, e): (i64, i64) = (cmd[2].parse().unwrap(), cmd[3].parse().unwrap());
                let s = if s < 0 { (n + s).max(0) } else { s };
                let e = if e < 0 { n + e } else { e.min(n - 1) };
                let items: Vec<String> = if s > e {
                    vec![]
                } else {
                    l.iter()
                        .skip(s as usize)
                        .take((e - s + 1) as usize)
                        .cloned()
                        .collect()
                };
                V::Arr(items.iter().map(|s| V::b(s)).collect())
            }
            "sadd" | "srem" => {
                if wrong(self, "set") {
                    return V::Err(WRONGTYPE.into());
                }
                let s = self.sets.entry(k.clone()).or_default();
                let changed = if cmd[0] == "sadd" {
                    s.insert(cmd[2].clone())
                } else {
                    s.remove(&cmd[2])
                };
                if s.is_empty() {
                    self.sets.remove(&k);
                }
                V::Int(i64::from(changed))
            }
            "scard" => {
                if wrong(self, "set") {
                    return V::Err(WRONGTYPE.into());
                }
                V::Int(self.sets.get(&k).map_or(0, |s| s.len() as i64))
            }
            "type" => V::Simple(self.kind(&k).unwrap_or("none").into()),
            other => unreachable!("{other}"),
        }
    }
    fn dbsize(&self) -> i64 {
        (self.strs.len() + self.lists.len() + self.sets.len()) as i64
    }
}

fn command_strategy() -> impl Strategy<Value = Vec<String>> {
    let key = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from);
    let val = prop_oneof![
        prop::sample::select(vec!["x", "y", "0", "41", "-7", "9223372036854775807", "01"])
            .prop_map(String::from),
        "[a-z0-9]{0,3}",
    ];
    let idx = -4i64..5;
    prop_oneof![
        (key.clone(), val.clone()).prop_map(|(k, v)| vec!["set".into(), k, v]),
        key.clone().prop_map(|k| vec!["get".into(), k]),
        key.clone().prop_map(|k| vec!["del".into(), k]),
        key.clone().prop_map(|k| vec!["exists".into(), k]),
        key.clone().prop_map(|k| vec!["incr".into(), k]),
        key.clone().prop_map(|k| vec!["type".into(), k]),
        (key.clone(), val.clone()).prop_map(|(k, v)| vec!["lpush".into(), k, v]),
        (key.clone(), val.clone()).prop_map(|(k, v)| vec!["rpush".into(), k, v]),
        key.clone().prop_map(|k| vec!["lpop".into(), k]),
        key.clone().prop_map(|k| vec!["rpop".into(), k]),
        (key.clone(), idx.clone(), idx).prop_map(|(k, s, e)| vec![
            "lrange".into(),
            k,
            s.to_string(),
            e.to_string()
        ]),
        (key.clone(), val.clone()).prop_map(|(k, v)| vec!["sadd".into(), k, v]),
        (key.clone(), val).prop_map(|(k, v)| vec!["srem".into(), k, v]),
        key.prop_map(|k| vec!["scard".into(), k]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_the_model(cmds in prop::collection::vec(command_strategy(), 1..60)) {
        for b in backends() {
            let mut c = b.exec_client();
            let mut m = Model::default();
            for cmd in &cmds {
                let words: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
                let got = c.w(&words);
                let want = m.apply(cmd);
                prop_assert_eq!(&got, &want, "command {:?}", cmd);
                prop_assert_eq!(c.c("dbsize"), V::Int(m.dbsize()));
            }
        }
    }
}

// ---------------------------------------------------------------- robustness

fn any_arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "2",
            "x",
            "nx",
            "xx",
            "gt",
            "lt",
            "ch",
            "ex",
            "px",
            "exat",
            "pxat",
            "get",
            "keepttl",
            "withscores",
            "inf",
            "-inf",
            "nan",
            "1.5",
            "9223372036854775807",
            "-9223372036854775808",
            "k",
            "l",
            "h",
            "",
            "docs",
            "count",
            "setname",
            "id",
            "save",
            "async",
            "all",
            "keyspace",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any command of the table with arbitrary arguments gets exactly one well-formed reply
    /// (none for SHUTDOWN), never a panic.
    #[test]
    fn random_commands_get_one_reply(
        cmds in prop::collection::vec(
            (prop::sample::select(pmem_examples::resp::exec::COMMANDS.to_vec()),
             prop::collection::vec(any_arg(), 0..6)),
            1..40)
    ) {
        for b in backends() {
            let mut c = b.exec_client();
            for ((name, _), args) in &cmds {
                let mut words: Vec<&[u8]> = vec![name.as_bytes()];
                words.extend(args.iter().map(Vec::as_slice));
                let mut out = Vec::new();
                let flow = pmem_examples::resp::exec::execute(
                    &*c.db, &c.info, &mut c.session, &words, c.now, &mut out);
                if flow == Flow::Shutdown {
                    prop_assert!(out.is_empty());
                } else {
                    common::resp::decode_one(&out);
                }
                c.now += 7;
            }
        }
    }
}
