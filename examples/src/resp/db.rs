//! The storage interface of the RESP server: a keyspace of strings, lists, hashes, sets and
//! sorted sets with per-key expiry.
//!
//! Every method takes the caller's wall-clock time (`now_ms`, Unix milliseconds) so that
//! expiry is deterministic under test. A key whose expiry time is at or before `now_ms` behaves
//! as absent (lazy expiry); [`Db::expire_sweep`] may reclaim such keys early. Collections never
//! stay empty: removing the last element of a list, hash, set or sorted set removes the key.
//!
//! Methods that act on one kind of value answer [`DbError::WrongType`] for a key holding
//! another kind, and leave it unchanged. The methods with a default implementation are built
//! from the required ones and are not atomic as a whole; a backend should override them when
//! it can do better (the DRAM model, [`super::memdb::MemDb`], overrides all of them).

/// Result of a [`Db`] operation.
pub type DbResult<T> = Result<T, DbError>;

/// Why a [`Db`] operation failed. The `Display` text is the Redis error reply (without `-`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DbError {
    /// The key holds another kind of value.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    /// A string value used as a number is not a 64-bit signed decimal integer.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// The result of an increment does not fit 64 bits.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    /// The backend is full.
    #[error("OOM command not allowed when used memory > 'maxmemory'")]
    OutOfMemory,
    /// Any other failure of the backend.
    #[error("ERR {0}")]
    Storage(String),
}

/// Condition of a `SET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCond {
    /// Always store.
    Always,
    /// Only if the key does not exist (`NX`).
    IfAbsent,
    /// Only if the key exists (`XX`).
    IfPresent,
}

/// What a `SET` does with the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Keep the current expiry (`KEEPTTL`); none for a new key.
    Keep,
    /// No expiry (a plain `SET`).
    Clear,
    /// Expire at this Unix time in milliseconds.
    At(u64),
}

/// The kind of value a key holds (`TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// A string (also integers).
    String,
    /// A list.
    List,
    /// A hash.
    Hash,
    /// A set.
    Set,
    /// A sorted set.
    ZSet,
}

impl KeyType {
    /// The name `TYPE` replies.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::List => "list",
            KeyType::Hash => "hash",
            KeyType::Set => "set",
            KeyType::ZSet => "zset",
        }
    }
}

/// A keyspace backend. Implementations are shared by all connections (all worker threads), so
/// every method takes `&self` and must be safe to call concurrently; each required method is
/// atomic with respect to the others.
pub trait Db: Send + Sync + 'static {
    /// Number of live (unexpired) keys.
    fn dbsize(&self, now_ms: u64) -> u64;
    /// Whether the key exists.
    fn exists(&self, key: &[u8], now_ms: u64) -> bool;
    /// Removes a key of any kind; whether it existed.
    fn del(&self, key: &[u8], now_ms: u64) -> DbResult<bool>;
    /// Removes every key.
    fn flushall(&self) -> DbResult<()>;
    /// Sets the expiry of an existing key; `None` removes it (PERSIST). Returns whether the key exists.
    fn set_expiry(&self, key: &[u8], at_ms: Option<u64>, now_ms: u64) -> DbResult<bool>;
    /// None: no such key; Some(None): no expiry; Some(Some(ms)): expires at ms.
    fn expiry(&self, key: &[u8], now_ms: u64) -> Option<Option<u64>>;
    /// The string value of a key.
    fn get(&self, key: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>>;
    /// Returns whether the value was stored (NX/XX may refuse).
    fn set(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
    ) -> DbResult<bool>;
    /// Atomic: all pairs or none (after a crash too).
    fn mset(&self, pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<()>;
    /// Adds `delta` to the integer in a string key (0 if absent, keeping its expiry); the new
    /// value.
    fn incr_by(&self, key: &[u8], delta: i64, now_ms: u64) -> DbResult<i64>;
    /// Pushes values one by one at the head (`front`) or tail; the new length.
    fn push(&self, key: &[u8], values: &[&[u8]], front: bool, now_ms: u64) -> DbResult<u64>;
    /// Pops up to `count` values from the head (`front`) or tail.
    fn pop(&self, key: &[u8], front: bool, count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>>;
    /// Elements `start..=stop` of a list (Redis index rules: negative from the end, clamped).
    fn lrange(&self, key: &[u8], start: i64, stop: i64, now_ms: u64) -> DbResult<Vec<Vec<u8>>>;
    /// Length of a list (0 if absent).
    fn llen(&self, key: &[u8], now_ms: u64) -> DbResult<u64>;
    /// Sets hash fields; the number of new fields.
    fn hset(&self, key: &[u8], pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<u64>;
    /// One hash field.
    fn hget(&self, key: &[u8], field: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>>;
    /// Removes hash fields; the number removed.
    fn hdel(&self, key: &[u8], fields: &[&[u8]], now_ms: u64) -> DbResult<u64>;
    /// Every field and value of a hash, in no particular order.
    fn hgetall(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Adds set members; the number of new members.
    fn sadd(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64>;
    /// Removes set members; the number removed.
    fn srem(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64>;
    /// Every member of a set, in no particular order.
    fn smembers(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<Vec<u8>>>;
    /// Removes and returns up to `count` members, chosen by the backend.
    fn spop(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>>;
    /// Number of members of a set (0 if absent).
    fn scard(&self, key: &[u8], now_ms: u64) -> DbResult<u64>;
    /// Adds or updates; returns the number of new members.
    fn zadd(&self, key: &[u8], pairs: &[(f64, &[u8])], now_ms: u64) -> DbResult<u64>;
    /// By rank, Redis index rules (negative from the end), ordered by (score, member bytes).
    fn zrange(
        &self,
        key: &[u8],
        start: i64,
        stop: i64,
        now_ms: u64,
    ) -> DbResult<Vec<(Vec<u8>, f64)>>;
    /// Removes and returns up to `count` members with the lowest scores, in order.
    fn zpopmin(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<(Vec<u8>, f64)>>;
    /// Number of members of a sorted set (0 if absent).
    fn zcard(&self, key: &[u8], now_ms: u64) -> DbResult<u64>;
    /// INFO fields specific to the backend (e.g. pool path, used bytes); "key:value" lines.
    fn info(&self) -> Vec<(String, String)>;

    // ---- provided methods (override for atomicity or speed)

    /// `SET ... GET`: stores like [`Db::set`] and returns `(stored, old string value)`. The old
    /// value must be a string (else [`DbError::WrongType`] and nothing is stored).
    fn set_get(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
    ) -> DbResult<(bool, Option<Vec<u8>>)> {
        let old = self.get(key, now_ms)?;
        let stored = self.set(key, value, cond, expiry, now_ms)?;
        Ok((stored, old))
    }

    /// The kind of value a key holds.
    fn key_type(&self, key: &[u8], now_ms: u64) -> Option<KeyType> {
        if !self.exists(key, now_ms) {
            return None;
        }
        let probes: [(KeyType, DbResult<()>); 5] = [
            (KeyType::String, self.get(key, now_ms).map(drop)),
            (KeyType::List, self.llen(key, now_ms).map(drop)),
            (KeyType::Hash, self.hget(key, b"", now_ms).map(drop)),
            (KeyType::Set, self.scard(key, now_ms).map(drop)),
            (KeyType::ZSet, self.zcard(key, now_ms).map(drop)),
        ];
        probes.into_iter().find(|(_, r)| r.is_ok()).map(|(t, _)| t)
    }

    /// `LRANGE` written into `out` as its RESP reply (an array of bulk strings); on error
    /// nothing is written. Backends override it to encode from their own storage without a
    /// buffer per element.
    fn lrange_reply(
        &self,
        key: &[u8],
        start: i64,
        stop: i64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DbResult<()> {
        let items = self.lrange(key, start, stop, now_ms)?;
        super::proto::reply::bulks(out, &items);
        Ok(())
    }

    /// Number of fields of a hash (0 if absent).
    fn hlen(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        Ok(self.hgetall(key, now_ms)?.len() as u64)
    }

    /// Whether `member` is in the set.
    fn sismember(&self, key: &[u8], member: &[u8], now_ms: u64) -> DbResult<bool> {
        Ok(self.smembers(key, now_ms)?.iter().any(|m| m == member))
    }

    /// The score of a sorted-set member.
    fn zscore(&self, key: &[u8], member: &[u8], now_ms: u64) -> DbResult<Option<f64>> {
        Ok(self
            .zrange(key, 0, -1, now_ms)?
            .into_iter()
            .find(|(m, _)| m == member)
            .map(|(_, s)| s))
    }

    /// `ZADD` with `NX`/`XX` (`cond`) and `CH` (`changed`: count updated scores too). Returns
    /// the number of members added (plus updated with `changed`).
    fn zadd_cond(
        &self,
        key: &[u8],
        pairs: &[(f64, &[u8])],
        cond: SetCond,
        changed: bool,
        now_ms: u64,
    ) -> DbResult<u64> {
        if cond == SetCond::Always && !changed {
            return self.zadd(key, pairs, now_ms);
        }
        // Pairs apply in order, as in Redis: a member given twice sees its first update.
        let mut scores: std::collections::HashMap<&[u8], Option<f64>> = Default::default();
        let mut keep: Vec<(f64, &[u8])> = Vec::with_capacity(pairs.len());
        let mut count = 0u64;
        for &(score, member) in pairs {
            let old = match scores.get(member) {
                Some(&s) => s,
                None => self.zscore(key, member, now_ms)?,
            };
            let ok = match cond {
                SetCond::Always => true,
                SetCond::IfAbsent => old.is_none(),
                SetCond::IfPresent => old.is_some(),
            };
            if !ok {
                continue;
            }
            let score = if score == 0.0 { 0.0 } else { score };
            match old {
                None => count += 1,
                Some(o) if changed && o.total_cmp(&score).is_ne() => count += 1,
                Some(_) => {}
            }
            scores.insert(member, Some(score));
            keep.push((score, member));
        }
        if !keep.is_empty() {
            self.zadd(key, &keep, now_ms)?;
        }
        Ok(count)
    }

    /// Number of keys with an expiry (for `INFO keyspace`).
    fn expires_count(&self, _now_ms: u64) -> u64 {
        0
    }

    /// Active expiry: reclaims at most `budget` keys that have expired by `now_ms`; how many
    /// it reclaimed. The default does nothing (lazy expiry only).
    fn expire_sweep(&self, _now_ms: u64, _budget: usize) -> u64 {
        0
    }

    /// Called once when the server stops, after the last command.
    fn shutdown(&self) {}
}

/// Resolves Redis-style `start`/`stop` indexes (negative from the end) against a length `len`:
/// the half-open range of positions, empty when nothing is selected.
pub fn resolve_range(start: i64, stop: i64, len: usize) -> std::ops::Range<usize> {
    let n = len as i64;
    let mut s = if start < 0 {
        n.saturating_add(start)
    } else {
        start
    };
    let mut e = if stop < 0 {
        n.saturating_add(stop)
    } else {
        stop
    };
    if s < 0 {
        s = 0;
    }
    if e >= n {
        e = n - 1;
    }
    if s > e || s >= n {
        return 0..0;
    }
    s as usize..(e as usize + 1)
}

/// Milliseconds since the Unix epoch (the `now_ms` the server passes).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve_range(0, -1, 5), 0..5);
        assert_eq!(resolve_range(0, 0, 0), 0..0);
        assert_eq!(resolve_range(-100, 100, 3), 0..3);
        assert_eq!(resolve_range(2, 1, 5), 0..0);
        assert_eq!(resolve_range(5, 10, 5), 0..0);
        assert_eq!(resolve_range(-2, -1, 5), 3..5);
        assert_eq!(resolve_range(i64::MIN, i64::MAX, 4), 0..4);
        assert_eq!(resolve_range(i64::MAX, i64::MIN, 4), 0..0);
        assert_eq!(resolve_range(1, -5, 4), 0..0);
    }
}
