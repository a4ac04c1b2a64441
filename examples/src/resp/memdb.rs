//! The DRAM reference implementation of [`Db`]: std collections behind one mutex. Nothing
//! survives a restart. Tests use it as the model the persistent backend is compared with.

use super::db::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// An `f64` ordered by [`f64::total_cmp`] (scores are never NaN; `-0.0` is stored as `0.0`).
#[derive(Debug, Clone, Copy)]
pub struct OrderedF64(pub f64);

impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A sorted set: members ordered by (score, member bytes), and each member's score.
#[derive(Debug, Default, Clone)]
pub struct ZSet {
    by_score: BTreeMap<(OrderedF64, Vec<u8>), ()>,
    scores: HashMap<Vec<u8>, f64>,
}

impl ZSet {
    /// Adds or updates a member; true if it is new.
    pub fn insert(&mut self, score: f64, member: &[u8]) -> bool {
        let score = if score == 0.0 { 0.0 } else { score };
        match self.scores.get_mut(member) {
            Some(old) => {
                if OrderedF64(*old) != OrderedF64(score) {
                    self.by_score.remove(&(OrderedF64(*old), member.to_vec()));
                    self.by_score
                        .insert((OrderedF64(score), member.to_vec()), ());
                    *old = score;
                }
                false
            }
            None => {
                self.scores.insert(member.to_vec(), score);
                self.by_score
                    .insert((OrderedF64(score), member.to_vec()), ());
                true
            }
        }
    }

    /// Removes and returns the member with the lowest (score, member).
    pub fn pop_min(&mut self) -> Option<(Vec<u8>, f64)> {
        let ((s, m), ()) = self.by_score.pop_first()?;
        self.scores.remove(&m);
        Some((m, s.0))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// The score of a member.
    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).copied()
    }

    /// Members in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], f64)> {
        self.by_score.keys().map(|(s, m)| (m.as_slice(), s.0))
    }
}

/// A value of any kind.
#[derive(Debug, Clone)]
enum Value {
    Str(Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Hash(HashMap<Vec<u8>, Vec<u8>>),
    Set(HashSet<Vec<u8>>),
    ZSet(ZSet),
}

impl Value {
    fn kind(&self) -> KeyType {
        match self {
            Value::Str(_) => KeyType::String,
            Value::List(_) => KeyType::List,
            Value::Hash(_) => KeyType::Hash,
            Value::Set(_) => KeyType::Set,
            Value::ZSet(_) => KeyType::ZSet,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::List(l) => l.is_empty(),
            Value::Hash(h) => h.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.is_empty(),
        }
    }

    /// Approximate bytes held (for INFO).
    fn bytes(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            Value::List(l) => l.iter().map(|e| e.len() + 24).sum(),
            Value::Hash(h) => h.iter().map(|(k, v)| k.len() + v.len() + 48).sum(),
            Value::Set(s) => s.iter().map(|m| m.len() + 24).sum(),
            Value::ZSet(z) => z.iter().map(|(m, _)| 2 * m.len() + 80).sum(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expire: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Vec<u8>, Entry>,
    /// (expiry time, key) of every key with an expiry, for the active sweep.
    expires: BTreeSet<(u64, Vec<u8>)>,
}

impl Inner {
    /// Drops the key if it has expired by `now`.
    fn purge(&mut self, key: &[u8], now: u64) {
        let at = match self.map.get(key) {
            Some(Entry {
                expire: Some(at), ..
            }) if *at <= now => *at,
            _ => return,
        };
        self.map.remove(key);
        self.expires.remove(&(at, key.to_vec()));
    }

    fn live(&mut self, key: &[u8], now: u64) -> Option<&mut Entry> {
        self.purge(key, now);
        self.map.get_mut(key)
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let e = self.map.remove(key)?;
        if let Some(at) = e.expire {
            self.expires.remove(&(at, key.to_vec()));
        }
        Some(e)
    }

    fn set_expire(&mut self, key: &[u8], at: Option<u64>) {
        let Some(e) = self.map.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut e.expire, at);
        if old == at {
            return;
        }
        if let Some(o) = old {
            self.expires.remove(&(o, key.to_vec()));
        }
        if let Some(a) = at {
            self.expires.insert((a, key.to_vec()));
        }
    }

    /// Stores a value, replacing any old one and its expiry.
    fn put(&mut self, key: &[u8], value: Value, expire: Option<u64>) {
        self.remove(key);
        self.map.insert(key.to_vec(), Entry { value, expire });
        if let Some(a) = expire {
            self.expires.insert((a, key.to_vec()));
        }
    }

    /// Removes the key if its collection became empty.
    fn drop_if_empty(&mut self, key: &[u8]) {
        if self.map.get(key).is_some_and(|e| e.value.is_empty()) {
            self.remove(key);
        }
    }

    /// The live value of `key` if it has kind `want`; WrongType if another kind.
    fn typed(&mut self, key: &[u8], want: KeyType, now: u64) -> DbResult<Option<&mut Value>> {
        match self.live(key, now) {
            None => Ok(None),
            Some(e) if e.value.kind() == want => Ok(Some(&mut e.value)),
            Some(_) => Err(DbError::WrongType),
        }
    }

    /// The value of kind `want` at `key`, created empty (with `make`) if absent.
    fn typed_or_insert(
        &mut self,
        key: &[u8],
        want: KeyType,
        make: fn() -> Value,
        now: u64,
    ) -> DbResult<&mut Value> {
        self.purge(key, now);
        let e = self.map.entry(key.to_vec()).or_insert_with(|| Entry {
            value: make(),
            expire: None,
        });
        if e.value.kind() != want {
            return Err(DbError::WrongType);
        }
        Ok(&mut e.value)
    }
}

/// The DRAM keyspace.
#[derive(Debug, Default)]
pub struct MemDb {
    inner: Mutex<Inner>,
}

impl MemDb {
    /// An empty keyspace.
    pub fn new() -> MemDb {
        MemDb::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // breaks memory safety; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Strict decimal i64 (Redis rules: optional `-`, no `+`, no leading zeros, no spaces).
pub fn parse_i64_strict(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || neg) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
    }
    Some(v)
}

impl Db for MemDb {
    fn dbsize(&self, now_ms: u64) -> u64 {
        let g = self.lock();
        let expired = g
            .expires
            .range(..(now_ms.saturating_add(1), Vec::new()))
            .count();
        (g.map.len() - expired.min(g.map.len())) as u64
    }

    fn exists(&self, key: &[u8], now_ms: u64) -> bool {
        self.lock().live(key, now_ms).is_some()
    }

    fn del(&self, key: &[u8], now_ms: u64) -> DbResult<bool> {
        let mut g = self.lock();
        g.purge(key, now_ms);
        Ok(g.remove(key).is_some())
    }

    fn flushall(&self) -> DbResult<()> {
        let mut g = self.lock();
        g.map.clear();
        g.expires.clear();
        Ok(())
    }

    fn set_expiry(&self, key: &[u8], at_ms: Option<u64>, now_ms: u64) -> DbResult<bool> {
        let mut g = self.lock();
        if g.live(key, now_ms).is_none() {
            return Ok(false);
        }
        match at_ms {
            Some(at) if at <= now_ms => {
                g.remove(key);
            }
            _ => g.set_expire(key, at_ms),
        }
        Ok(true)
    }

    fn expiry(&self, key: &[u8], now_ms: u64) -> Option<Option<u64>> {
        self.lock().live(key, now_ms).map(|e| e.expire)
    }

    fn get(&self, key: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>> {
        let mut g = self.lock();
        match g.typed(key, KeyType::String, now_ms)? {
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            _ => Ok(None),
        }
    }

    fn set(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
    ) -> DbResult<bool> {
        self.set_get_inner(key, value, cond, expiry, now_ms, false)
            .map(|(stored, _)| stored)
    }

    fn mset(&self, pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<()> {
        let _ = now_ms;
        let mut g = self.lock();
        for (k, v) in pairs {
            g.put(k, Value::Str(v.to_vec()), None);
        }
        Ok(())
    }

    fn incr_by(&self, key: &[u8], delta: i64, now_ms: u64) -> DbResult<i64> {
        let mut g = self.lock();
        let (cur, expire) = match g.live(key, now_ms) {
            None => (0, None),
            Some(Entry {
                value: Value::Str(s),
                expire,
            }) => (parse_i64_strict(s).ok_or(DbError::NotInteger)?, *expire),
            Some(_) => return Err(DbError::WrongType),
        };
        let new = cur.checked_add(delta).ok_or(DbError::Overflow)?;
        let text = new.to_string().into_bytes();
        match g.map.get_mut(key) {
            Some(e) => e.value = Value::Str(text),
            None => g.put(key, Value::Str(text), expire),
        }
        Ok(new)
    }

    fn push(&self, key: &[u8], values: &[&[u8]], front: bool, now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        if values.is_empty() {
            return match g.typed(key, KeyType::List, now_ms)? {
                Some(Value::List(l)) => Ok(l.len() as u64),
                _ => Ok(0),
            };
        }
        let v = g.typed_or_insert(key, KeyType::List, || Value::List(VecDeque::new()), now_ms)?;
        let Value::List(l) = v else {
            return Err(DbError::WrongType);
        };
        for x in values {
            if front {
                l.push_front(x.to_vec());
            } else {
                l.push_back(x.to_vec());
            }
        }
        Ok(l.len() as u64)
    }

    fn pop(&self, key: &[u8], front: bool, count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        let mut g = self.lock();
        let mut out = Vec::new();
        if let Some(Value::List(l)) = g.typed(key, KeyType::List, now_ms)? {
            for _ in 0..count.min(l.len()) {
                let x = if front { l.pop_front() } else { l.pop_back() };
                out.extend(x);
            }
        }
        g.drop_if_empty(key);
        Ok(out)
    }

    fn lrange(&self, key: &[u8], start: i64, stop: i64, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        let mut g = self.lock();
        match g.typed(key, KeyType::List, now_ms)? {
            Some(Value::List(l)) => {
                let r = resolve_range(start, stop, l.len());
                Ok(l.range(r).cloned().collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn llen(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        match g.typed(key, KeyType::List, now_ms)? {
            Some(Value::List(l)) => Ok(l.len() as u64),
            _ => Ok(0),
        }
    }

    fn hset(&self, key: &[u8], pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        if pairs.is_empty() {
            g.typed(key, KeyType::Hash, now_ms)?;
            return Ok(0);
        }
        let v = g.typed_or_insert(key, KeyType::Hash, || Value::Hash(HashMap::new()), now_ms)?;
        let Value::Hash(h) = v else {
            return Err(DbError::WrongType);
        };
        let mut added = 0;
        for (f, val) in pairs {
            if h.insert(f.to_vec(), val.to_vec()).is_none() {
                added += 1;
            }
        }
        Ok(added)
    }

    fn hget(&self, key: &[u8], field: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>> {
        let mut g = self.lock();
        match g.typed(key, KeyType::Hash, now_ms)? {
            Some(Value::Hash(h)) => Ok(h.get(field).cloned()),
            _ => Ok(None),
        }
    }

    fn hdel(&self, key: &[u8], fields: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        let mut n = 0;
        if let Some(Value::Hash(h)) = g.typed(key, KeyType::Hash, now_ms)? {
            for f in fields {
                if h.remove(*f).is_some() {
                    n += 1;
                }
            }
        }
        g.drop_if_empty(key);
        Ok(n)
    }

    fn hgetall(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut g = self.lock();
        match g.typed(key, KeyType::Hash, now_ms)? {
            Some(Value::Hash(h)) => Ok(h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            _ => Ok(Vec::new()),
        }
    }

    fn sadd(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        if members.is_empty() {
            g.typed(key, KeyType::Set, now_ms)?;
            return Ok(0);
        }
        let v = g.typed_or_insert(key, KeyType::Set, || Value::Set(HashSet::new()), now_ms)?;
        let Value::Set(s) = v else {
            return Err(DbError::WrongType);
        };
        Ok(members.iter().filter(|m| s.insert(m.to_vec())).count() as u64)
    }

    fn srem(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        let mut n = 0;
        if let Some(Value::Set(s)) = g.typed(key, KeyType::Set, now_ms)? {
            n = members.iter().filter(|m| s.remove(**m)).count() as u64;
        }
        g.drop_if_empty(key);
        Ok(n)
    }

    fn smembers(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        let mut g = self.lock();
        match g.typed(key, KeyType::Set, now_ms)? {
            Some(Value::Set(s)) => Ok(s.iter().cloned().collect()),
            _ => Ok(Vec::new()),
        }
    }

    fn spop(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        let mut g = self.lock();
        let mut out = Vec::new();
        if let Some(Value::Set(s)) = g.typed(key, KeyType::Set, now_ms)? {
            // HashSet iteration order is randomly seeded: an arbitrary choice.
            out = s.iter().take(count).cloned().collect();
            for m in &out {
                s.remove(m);
            }
        }
        g.drop_if_empty(key);
        Ok(out)
    }

    fn scard(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        match g.typed(key, KeyType::Set, now_ms)? {
            Some(Value::Set(s)) => Ok(s.len() as u64),
            _ => Ok(0),
        }
    }

    fn zadd(&self, key: &[u8], pairs: &[(f64, &[u8])], now_ms: u64) -> DbResult<u64> {
        self.zadd_cond(key, pairs, SetCond::Always, false, now_ms)
    }

    fn zrange(
        &self,
        key: &[u8],
        start: i64,
        stop: i64,
        now_ms: u64,
    ) -> DbResult<Vec<(Vec<u8>, f64)>> {
        let mut g = self.lock();
        match g.typed(key, KeyType::ZSet, now_ms)? {
            Some(Value::ZSet(z)) => {
                let r = resolve_range(start, stop, z.len());
                Ok(z.iter()
                    .skip(r.start)
                    .take(r.len())
                    .map(|(m, s)| (m.to_vec(), s))
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn zpopmin(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<(Vec<u8>, f64)>> {
        let mut g = self.lock();
        let mut out = Vec::new();
        if let Some(Value::ZSet(z)) = g.typed(key, KeyType::ZSet, now_ms)? {
            for _ in 0..count.min(z.len()) {
                out.extend(z.pop_min());
            }
        }
        g.drop_if_empty(key);
        Ok(out)
    }

    fn zcard(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        match g.typed(key, KeyType::ZSet, now_ms)? {
            Some(Value::ZSet(z)) => Ok(z.len() as u64),
            _ => Ok(0),
        }
    }

    fn info(&self) -> Vec<(String, String)> {
        let g = self.lock();
        let bytes: usize = g
            .map
            .iter()
            .map(|(k, e)| k.len() + e.value.bytes() + 64)
            .sum();
        vec![
            ("backend".into(), "memory".into()),
            ("used_memory".into(), bytes.to_string()),
        ]
    }

    fn set_get(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
    ) -> DbResult<(bool, Option<Vec<u8>>)> {
        self.set_get_inner(key, value, cond, expiry, now_ms, true)
    }

    fn key_type(&self, key: &[u8], now_ms: u64) -> Option<KeyType> {
        self.lock().live(key, now_ms).map(|e| e.value.kind())
    }

    fn hlen(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        let mut g = self.lock();
        match g.typed(key, KeyType::Hash, now_ms)? {
            Some(Value::Hash(h)) => Ok(h.len() as u64),
            _ => Ok(0),
        }
    }

    fn sismember(&self, key: &[u8], member: &[u8], now_ms: u64) -> DbResult<bool> {
        let mut g = self.lock();
        match g.typed(key, KeyType::Set, now_ms)? {
            Some(Value::Set(s)) => Ok(s.contains(member)),
            _ => Ok(false),
        }
    }

    fn zscore(&self, key: &[u8], member: &[u8], now_ms: u64) -> DbResult<Option<f64>> {
        let mut g = self.lock();
        match g.typed(key, KeyType::ZSet, now_ms)? {
            Some(Value::ZSet(z)) => Ok(z.score(member)),
            _ => Ok(None),
        }
    }

    fn zadd_cond(
        &self,
        key: &[u8],
        pairs: &[(f64, &[u8])],
        cond: SetCond,
        changed: bool,
        now_ms: u64,
    ) -> DbResult<u64> {
        if pairs.iter().any(|(s, _)| s.is_nan()) {
            return Err(DbError::Storage("score is not a number".into()));
        }
        let mut g = self.lock();
        if cond == SetCond::IfPresent && g.typed(key, KeyType::ZSet, now_ms)?.is_none() {
            return Ok(0);
        }
        let v = g.typed_or_insert(key, KeyType::ZSet, || Value::ZSet(ZSet::default()), now_ms)?;
        let Value::ZSet(z) = v else {
            return Err(DbError::WrongType);
        };
        let mut n = 0;
        for &(score, member) in pairs {
            let old = z.score(member);
            let ok = match cond {
                SetCond::Always => true,
                SetCond::IfAbsent => old.is_none(),
                SetCond::IfPresent => old.is_some(),
            };
            if !ok {
                continue;
            }
            let new = z.insert(score, member);
            if new || (changed && old.is_some_and(|o| OrderedF64(o) != OrderedF64(score))) {
                n += 1;
            }
        }
        g.drop_if_empty(key);
        Ok(n)
    }

    fn expires_count(&self, now_ms: u64) -> u64 {
        let g = self.lock();
        let expired = g
            .expires
            .range(..(now_ms.saturating_add(1), Vec::new()))
            .count();
        (g.expires.len() - expired) as u64
    }

    fn expire_sweep(&self, now_ms: u64, budget: usize) -> u64 {
        let mut g = self.lock();
        let mut n = 0;
        for _ in 0..budget {
            let Some((at, key)) = g.expires.first().cloned() else {
                break;
            };
            if at > now_ms {
                break;
            }
            g.remove(&key);
            n += 1;
        }
        n
    }
}

impl MemDb {
    fn set_get_inner(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
        want_old: bool,
    ) -> DbResult<(bool, Option<Vec<u8>>)> {
        let mut g = self.lock();
        let (exists, old, old_expire) = match g.live(key, now_ms) {
            None => (false, None, None),
            Some(e) => match &e.value {
                Value::Str(s) => (true, want_old.then(|| s.clone()), e.expire),
                _ if want_old => return Err(DbError::WrongType),
                _ => (true, None, e.expire),
            },
        };
        let ok = match cond {
            SetCond::Always => true,
            SetCond::IfAbsent => !exists,
            SetCond::IfPresent => exists,
        };
        if !ok {
            return Ok((false, old));
        }
        let expire = match expiry {
            Expiry::Keep => old_expire,
            Expiry::Clear => None,
            Expiry::At(t) => Some(t),
        };
        g.put(key, Value::Str(value.to_vec()), expire);
        Ok((true, old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_integers() {
        assert_eq!(parse_i64_strict(b"0"), Some(0));
        assert_eq!(parse_i64_strict(b"-1"), Some(-1));
        assert_eq!(parse_i64_strict(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64_strict(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"1.5",
            b"12345678901234567890",
        ] {
            assert_eq!(parse_i64_strict(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn expiry_index_follows_keys() {
        let db = MemDb::new();
        db.set(b"a", b"1", SetCond::Always, Expiry::At(100), 0)
            .unwrap();
        db.set(b"b", b"1", SetCond::Always, Expiry::At(200), 0)
            .unwrap();
        assert_eq!(db.expires_count(0), 2);
        assert_eq!(db.dbsize(150), 1);
        db.set(b"a", b"2", SetCond::Always, Expiry::Keep, 0)
            .unwrap();
        assert_eq!(db.expiry(b"a", 0), Some(Some(100)));
        db.set(b"a", b"2", SetCond::Always, Expiry::Clear, 0)
            .unwrap();
        assert_eq!(db.expires_count(0), 1);
        assert_eq!(db.expire_sweep(150, 10), 0);
        assert_eq!(db.expire_sweep(250, 10), 1);
        assert_eq!(db.dbsize(250), 1);
        assert_eq!(db.expires_count(0), 0);
    }

    #[test]
    fn zset_order_and_negative_zero() {
        let db = MemDb::new();
        db.zadd(
            b"z",
            &[
                (1.0, b"b"),
                (1.0, b"a"),
                (-0.0, b"c"),
                (f64::INFINITY, b"i"),
            ],
            0,
        )
        .unwrap();
        let r = db.zrange(b"z", 0, -1, 0).unwrap();
        let names: Vec<&[u8]> = r.iter().map(|(m, _)| m.as_slice()).collect();
        assert_eq!(names, vec![&b"c"[..], b"a", b"b", b"i"]);
        assert!(r[0].1.is_sign_positive());
        assert_eq!(db.zadd(b"z", &[(0.0, b"c")], 0).unwrap(), 0);
        assert_eq!(db.zcard(b"z", 0).unwrap(), 4);
    }
}
