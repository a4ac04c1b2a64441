//! Model tests of the persistent collections against their std equivalents: random operation
//! sequences, each in its own transaction (some aborted: the collection must be unchanged),
//! with clean and crashed reopens in the middle (the state must survive: every committed
//! transaction's writes, including unlogged ones, were flushed). The checker runs at the end,
//! and after every collection is freed only the root and the lanes remain allocated.

use pmem_alloc::collections::{
    decode_score, encode_score, PBytes, PDeque, PFree, PHashMap, POrdMap, PString, PVec,
};
use pmem_alloc::pool::Pool;
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::sim::SimMedia;
use pmem_alloc::tx::{Tx, TxError};
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::Bound;
use std::sync::Arc;

const POOL: usize = 8 << 20;

type P = Arc<SimMedia>;
type SimPool = Pool<P>;
type T<'a, 'b> = &'a Tx<'b, P>;

#[repr(C)]
#[derive(Default)]
struct Root {
    vec: PVec<u64>,
    bvec: PVec<PBytes>,
    bytes: PBytes,
    deque: PDeque<u64>,
    map: PHashMap<PBytes, PBytes>,
    imap: PHashMap<u64, u64>,
    omap: POrdMap<PBytes, u64>,
    text: PString,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}

impl PFree for Root {
    fn free_in<Q: pmem_alloc::Persist + 'static>(self, tx: &Tx<'_, Q>) -> Result<(), TxError> {
        self.vec.free_in(tx)?;
        self.bvec.free_in(tx)?;
        self.bytes.free_in(tx)?;
        self.deque.free_in(tx)?;
        self.map.free_in(tx)?;
        self.imap.free_in(tx)?;
        self.omap.free_in(tx)?;
        self.text.free_in(tx)
    }
}

fn live_blocks(pool: &mut SimPool) -> usize {
    let c = pool.check().expect("check");
    c.run_blocks_live + c.large
}

/// A pool under test with its reopen logic.
struct H {
    pool: Option<SimPool>,
}

impl H {
    fn new() -> H {
        let pool = Pool::create_sim(Arc::new(SimMedia::new(POOL))).unwrap();
        pool.root::<Root>().unwrap();
        pool.transaction(|_| Ok::<_, TxError>(())).unwrap();
        H { pool: Some(pool) }
    }

    fn pool(&self) -> &SimPool {
        self.pool.as_ref().unwrap()
    }

    fn reopen(&mut self, clean: bool) {
        let pool = self.pool.take().unwrap();
        let m = pool.persister().clone();
        if clean {
            pool.close().unwrap();
        } else {
            pool.abandon();
        }
        let img = m.durable_image();
        self.pool = Some(Pool::open_sim(Arc::new(SimMedia::from_image_strict(&img))).unwrap());
    }

    /// Runs `ops` in one transaction on the pool (aborting if asked) and on the model;
    /// compares the outputs and then the whole state.
    fn step<O: Debug, M: PartialEq + Debug + Clone>(
        &mut self,
        model: &mut M,
        ops: &[O],
        abort: bool,
        apply: impl Fn(T<'_, '_>, &mut Root, &O) -> Result<String, TxError>,
        apply_model: impl Fn(&mut M, &O) -> String,
        read: impl Fn(T<'_, '_>, &Root) -> Result<M, TxError>,
    ) -> Result<(), TestCaseError> {
        let pool = self.pool();
        let root = pool.root::<Root>().unwrap();
        let res = pool.transaction(|tx| {
            let r = tx.get_mut(root)?;
            let mut out = Vec::new();
            for op in ops {
                out.push(apply(tx, r, op)?);
            }
            if abort {
                Err(TxError::Aborted)
            } else {
                Ok(out)
            }
        });
        if abort {
            prop_assert_eq!(res, Err(TxError::Aborted));
        } else {
            let out = res.map_err(|e| TestCaseError::fail(format!("{ops:?}: {e}")))?;
            let want: Vec<String> = ops.iter().map(|op| apply_model(model, op)).collect();
            prop_assert_eq!(out, want, "output of {:?}", ops);
        }
        let got = pool
            .transaction(|tx| read(tx, tx.get(root)?))
            .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
        prop_assert_eq!(&got, model, "state after {:?} (abort {})", ops, abort);
        Ok(())
    }

    /// Frees everything and checks that only the root and the lanes remain: no block leaked
    /// before a (crashed) reopen, and the recovery scan finds nothing but the root reachable
    /// (no stale pointer left in unused slots keeps a freed block alive).
    fn finish(mut self) -> Result<(), TestCaseError> {
        let root = self.pool().root::<Root>().unwrap();
        self.pool()
            .transaction(|tx| {
                let r = tx.get_mut(root)?;
                std::mem::take(r).free_in(tx)
            })
            .unwrap();
        let before = live_blocks(self.pool.as_mut().unwrap());
        self.reopen(false);
        let rep = self.pool().open_report();
        prop_assert_eq!(
            rep.reachable,
            1,
            "blocks reachable after freeing everything"
        );
        prop_assert_eq!(before, 1 + rep.lane_blocks, "blocks leaked");
        let after = live_blocks(self.pool.as_mut().unwrap());
        prop_assert_eq!(after, 1 + rep.lane_blocks, "blocks after a recovery");
        Ok(())
    }
}

/// Drives a sequence: (ops of one transaction, abort, reopen: 0 none, 1 clean, 2 crash).
fn drive<O: Debug, M: PartialEq + Debug + Clone + Default>(
    ops: &[(Vec<O>, bool, u8)],
    apply: impl Fn(T<'_, '_>, &mut Root, &O) -> Result<String, TxError>,
    apply_model: impl Fn(&mut M, &O) -> String,
    read: impl Fn(T<'_, '_>, &Root) -> Result<M, TxError>,
) -> Result<(), TestCaseError> {
    let mut h = H::new();
    let mut model = M::default();
    for (op, abort, reopen) in ops {
        h.step(&mut model, op, *abort, &apply, &apply_model, &read)?;
        if *reopen > 0 {
            h.reopen(*reopen == 1);
            let root = h.pool().root::<Root>().unwrap();
            let got = h
                .pool()
                .transaction(|tx| read(tx, tx.get(root)?))
                .map_err(|e| TestCaseError::fail(format!("read after reopen: {e}")))?;
            prop_assert_eq!(&got, &model, "state after reopen");
        }
    }
    h.finish()
}

fn flags() -> impl Strategy<Value = (bool, u8)> {
    (
        prop::bool::weighted(0.15),
        prop_oneof![20 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
    )
}

/// One operation per transaction mostly, sometimes several (a pop then a push in the same
/// transaction, then an abort, must restore the popped slot).
fn batch<O: Debug + Clone>(op: impl Strategy<Value = O> + Clone) -> impl Strategy<Value = Vec<O>> {
    prop_oneof![
        4 => op.clone().prop_map(|o| vec![o]),
        1 => prop::collection::vec(op, 2..5),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// 24 cases per property (each a sequence of up to 200 transactions); `PROPTEST_CASES`
/// overrides.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------- PVec

#[derive(Debug, Clone)]
enum VecOp {
    Push(u64),
    Pop,
    Set(usize, u64),
    Insert(usize, u64),
    Remove(usize),
    Truncate(usize),
    Clear,
    Get(usize),
    PushBytes(Vec<u8>),
    PopBytes,
    TruncateBytes(usize),
}

fn vec_op() -> impl Strategy<Value = VecOp> + Clone {
    prop_oneof![
        8 => any::<u64>().prop_map(VecOp::Push),
        2 => Just(VecOp::Pop),
        2 => (0..40usize, any::<u64>()).prop_map(|(i, v)| VecOp::Set(i, v)),
        2 => (0..40usize, any::<u64>()).prop_map(|(i, v)| VecOp::Insert(i, v)),
        2 => (0..40usize).prop_map(VecOp::Remove),
        1 => (0..40usize).prop_map(VecOp::Truncate),
        1 => Just(VecOp::Clear),
        2 => (0..40usize).prop_map(VecOp::Get),
        3 => bytes(40).prop_map(VecOp::PushBytes),
        1 => Just(VecOp::PopBytes),
        1 => (0..10usize).prop_map(VecOp::TruncateBytes),
    ]
}

type VecModel = (Vec<u64>, Vec<Vec<u8>>);

fn vec_apply(tx: T<'_, '_>, r: &mut Root, op: &VecOp) -> Result<String, TxError> {
    let v = &mut r.vec;
    Ok(match *op {
        VecOp::Push(x) => format!("{:?}", v.push(tx, x)?),
        VecOp::Pop => format!("{:?}", v.pop(tx)?),
        VecOp::Set(i, x) => format!("{:?}", v.set(tx, i, x).ok()),
        VecOp::Insert(i, x) => format!("{:?}", v.insert(tx, i, x).is_ok()),
        VecOp::Remove(i) => format!("{:?}", v.remove(tx, i).ok()),
        VecOp::Truncate(n) => format!("{:?}", v.truncate(tx, n)?),
        VecOp::Clear => format!("{:?}", v.clear(tx)?),
        VecOp::Get(i) => format!("{:?}", v.get(tx, i)?),
        VecOp::PushBytes(ref b) => {
            let s = PBytes::new(tx, b)?;
            format!("{:?}", r.bvec.push(tx, s)?)
        }
        VecOp::PopBytes => match r.bvec.pop(tx)? {
            None => "None".into(),
            Some(s) => {
                let out = format!("{:?}", s.as_bytes(tx)?);
                s.free_in(tx)?;
                out
            }
        },
        VecOp::TruncateBytes(n) => format!("{:?}", r.bvec.truncate(tx, n)?),
    })
}

fn vec_model(m: &mut VecModel, op: &VecOp) -> String {
    let v = &mut m.0;
    match *op {
        VecOp::Push(x) => format!("{:?}", v.push(x)),
        VecOp::Pop => format!("{:?}", v.pop()),
        VecOp::Set(i, x) => format!("{:?}", v.get_mut(i).map(|s| std::mem::replace(s, x))),
        VecOp::Insert(i, x) => format!("{:?}", i <= v.len() && (v.insert(i, x), true).1),
        VecOp::Remove(i) => format!("{:?}", (i < v.len()).then(|| v.remove(i))),
        VecOp::Truncate(n) => format!("{:?}", v.truncate(n)),
        VecOp::Clear => format!("{:?}", v.clear()),
        VecOp::Get(i) => format!("{:?}", v.get(i)),
        VecOp::PushBytes(ref b) => format!("{:?}", m.1.push(b.clone())),
        VecOp::PopBytes => match m.1.pop() {
            None => "None".into(),
            Some(s) => format!("{s:?}"),
        },
        VecOp::TruncateBytes(n) => format!("{:?}", m.1.truncate(n)),
    }
}

fn vec_read(tx: T<'_, '_>, r: &Root) -> Result<VecModel, TxError> {
    let a = r.vec.iter(tx)?.copied().collect();
    let b = r
        .bvec
        .iter(tx)?
        .map(|s| s.as_bytes(tx).map(<[u8]>::to_vec))
        .collect::<Result<_, _>>()?;
    Ok((a, b))
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn pvec_matches_vec(ops in prop::collection::vec((batch(vec_op()), flags()), 1..120)) {
        let ops: Vec<_> = ops.into_iter().map(|(o, (a, r))| (o, a, r)).collect();
        drive(&ops, vec_apply, vec_model, vec_read)?;
    }
}

// ------------------------------------------------------------------------------------ PBytes

#[derive(Debug, Clone)]
enum BytesOp {
    Append(Vec<u8>),
    SetRange(usize, Vec<u8>),
    Truncate(usize),
    Replace(Vec<u8>),
    PushStr(String),
}

fn bytes_op() -> impl Strategy<Value = BytesOp> + Clone {
    prop_oneof![
        4 => bytes(60).prop_map(BytesOp::Append),
        3 => (0..120usize, bytes(30)).prop_map(|(a, b)| BytesOp::SetRange(a, b)),
        1 => (0..100usize).prop_map(BytesOp::Truncate),
        1 => bytes(50).prop_map(BytesOp::Replace),
        2 => "[a-zé]{0,8}".prop_map(BytesOp::PushStr),
    ]
}

type BytesModel = (Vec<u8>, String);

fn bytes_apply(tx: T<'_, '_>, r: &mut Root, op: &BytesOp) -> Result<String, TxError> {
    let s = &mut r.bytes;
    Ok(match op {
        BytesOp::Append(b) => format!("{}", s.append(tx, b)?),
        BytesOp::SetRange(a, b) => format!("{}", s.set_range(tx, *a, b)?),
        BytesOp::Truncate(n) => format!("{:?}", s.truncate(tx, *n)?),
        BytesOp::Replace(b) => {
            let new = PBytes::new(tx, b)?;
            std::mem::replace(s, new).free_in(tx)?;
            String::new()
        }
        BytesOp::PushStr(t) => format!("{}", r.text.push_str(tx, t)?),
    })
}

fn bytes_model(m: &mut BytesModel, op: &BytesOp) -> String {
    let s = &mut m.0;
    match op {
        BytesOp::Append(b) => {
            s.extend_from_slice(b);
            format!("{}", s.len())
        }
        BytesOp::SetRange(a, b) => {
            if !b.is_empty() {
                if s.len() < a + b.len() {
                    s.resize(a + b.len(), 0);
                }
                s[*a..a + b.len()].copy_from_slice(b);
            }
            format!("{}", s.len())
        }
        BytesOp::Truncate(n) => format!("{:?}", s.truncate(*n)),
        BytesOp::Replace(b) => {
            *s = b.clone();
            String::new()
        }
        BytesOp::PushStr(t) => {
            m.1.push_str(t);
            format!("{}", m.1.len())
        }
    }
}

fn bytes_read(tx: T<'_, '_>, r: &Root) -> Result<BytesModel, TxError> {
    Ok((
        r.bytes.as_bytes(tx)?.to_vec(),
        r.text.as_str(tx)?.to_owned(),
    ))
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn pbytes_matches_vec_u8(ops in prop::collection::vec((batch(bytes_op()), flags()), 1..100)) {
        let ops: Vec<_> = ops.into_iter().map(|(o, (a, r))| (o, a, r)).collect();
        drive(&ops, bytes_apply, bytes_model, bytes_read)?;
    }
}

// ------------------------------------------------------------------------------------ PDeque

#[derive(Debug, Clone)]
enum DequeOp {
    PushBack(u64),
    PushFront(u64),
    PopBack,
    PopFront,
    Get(usize),
    Set(usize, u64),
    Range(usize, usize),
    Clear,
}

fn deque_op() -> impl Strategy<Value = DequeOp> + Clone {
    prop_oneof![
        5 => any::<u64>().prop_map(DequeOp::PushBack),
        5 => any::<u64>().prop_map(DequeOp::PushFront),
        3 => Just(DequeOp::PopBack),
        3 => Just(DequeOp::PopFront),
        2 => (0..40usize).prop_map(DequeOp::Get),
        2 => (0..40usize, any::<u64>()).prop_map(|(i, v)| DequeOp::Set(i, v)),
        2 => (0..40usize, 0..40usize).prop_map(|(a, b)| DequeOp::Range(a, b)),
        1 => Just(DequeOp::Clear),
    ]
}

fn deque_apply(tx: T<'_, '_>, r: &mut Root, op: &DequeOp) -> Result<String, TxError> {
    let d = &mut r.deque;
    Ok(match *op {
        DequeOp::PushBack(x) => format!("{:?}", d.push_back(tx, x)?),
        DequeOp::PushFront(x) => format!("{:?}", d.push_front(tx, x)?),
        DequeOp::PopBack => format!("{:?}", d.pop_back(tx)?),
        DequeOp::PopFront => format!("{:?}", d.pop_front(tx)?),
        DequeOp::Get(i) => format!("{:?}", d.get(tx, i)?),
        DequeOp::Set(i, x) => format!("{:?}", d.get_mut(tx, i)?.map(|s| std::mem::replace(s, x))),
        DequeOp::Range(a, b) => format!("{:?}", d.range(tx, a..b.max(a))?.collect::<Vec<_>>()),
        DequeOp::Clear => format!("{:?}", d.clear(tx)?),
    })
}

fn deque_model(d: &mut VecDeque<u64>, op: &DequeOp) -> String {
    match *op {
        DequeOp::PushBack(x) => format!("{:?}", d.push_back(x)),
        DequeOp::PushFront(x) => format!("{:?}", d.push_front(x)),
        DequeOp::PopBack => format!("{:?}", d.pop_back()),
        DequeOp::PopFront => format!("{:?}", d.pop_front()),
        DequeOp::Get(i) => format!("{:?}", d.get(i)),
        DequeOp::Set(i, x) => format!("{:?}", d.get_mut(i).map(|s| std::mem::replace(s, x))),
        DequeOp::Range(a, b) => {
            let end = b.max(a).min(d.len());
            let start = a.min(end);
            format!("{:?}", d.range(start..end).collect::<Vec<_>>())
        }
        DequeOp::Clear => format!("{:?}", d.clear()),
    }
}

fn deque_read(tx: T<'_, '_>, r: &Root) -> Result<VecDeque<u64>, TxError> {
    Ok(r.deque.iter(tx)?.copied().collect())
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn pdeque_matches_vecdeque(ops in prop::collection::vec((batch(deque_op()), flags()), 1..150)) {
        let ops: Vec<_> = ops.into_iter().map(|(o, (a, r))| (o, a, r)).collect();
        drive(&ops, deque_apply, deque_model, deque_read)?;
    }
}

// ---------------------------------------------------------------------------------- PHashMap

#[derive(Debug, Clone)]
enum MapOp {
    Insert(u16, Vec<u8>),
    Remove(u16),
    Get(u16),
    Append(u16, Vec<u8>),
    IntInsert(u64, u64),
    IntRemove(u64),
    /// Inserts `n` integer keys from `start` in one transaction (drives resizes).
    IntBulk(u64, u64),
    Clear,
}

fn key(k: u16) -> Vec<u8> {
    format!("key:{k}").into_bytes()
}

fn map_op() -> impl Strategy<Value = MapOp> + Clone {
    prop_oneof![
        6 => (0..200u16, bytes(24)).prop_map(|(k, v)| MapOp::Insert(k, v)),
        3 => (0..200u16).prop_map(MapOp::Remove),
        2 => (0..200u16).prop_map(MapOp::Get),
        2 => (0..200u16, bytes(10)).prop_map(|(k, v)| MapOp::Append(k, v)),
        3 => (0..300u64, any::<u64>()).prop_map(|(k, v)| MapOp::IntInsert(k, v)),
        2 => (0..300u64).prop_map(MapOp::IntRemove),
        1 => (0..300u64, 1..40u64).prop_map(|(s, n)| MapOp::IntBulk(s, n)),
        1 => prop::bool::weighted(0.2).prop_map(|_| MapOp::Clear),
    ]
}

type MapModel = (BTreeMap<Vec<u8>, Vec<u8>>, BTreeMap<u64, u64>);

fn map_apply(tx: T<'_, '_>, r: &mut Root, op: &MapOp) -> Result<String, TxError> {
    let m = &mut r.map;
    Ok(match op {
        MapOp::Insert(k, v) => {
            let val = PBytes::new(tx, v)?;
            match m.insert(tx, &key(*k), val)? {
                None => "None".into(),
                Some(old) => {
                    let s = format!("{:?}", old.as_bytes(tx)?);
                    old.free_in(tx)?;
                    s
                }
            }
        }
        MapOp::Remove(k) => match m.remove(tx, &key(*k))? {
            None => "None".into(),
            Some(old) => {
                let s = format!("{:?}", old.as_bytes(tx)?);
                old.free_in(tx)?;
                s
            }
        },
        MapOp::Get(k) => match m.get(tx, &key(*k))? {
            None => "None".into(),
            Some(v) => format!("{:?}", v.as_bytes(tx)?),
        },
        MapOp::Append(k, b) => match m.get_mut(tx, &key(*k))? {
            None => "None".into(),
            Some(v) => format!("{}", v.append(tx, b)?),
        },
        MapOp::IntInsert(k, v) => format!("{:?}", r.imap.insert(tx, k, *v)?),
        MapOp::IntRemove(k) => format!("{:?}", r.imap.remove(tx, k)?),
        MapOp::IntBulk(s, n) => {
            for k in *s..s + n {
                r.imap.insert(tx, &k, k * 3)?;
            }
            String::new()
        }
        MapOp::Clear => {
            m.clear(tx)?;
            r.imap.clear(tx)?;
            String::new()
        }
    })
}

fn map_model(m: &mut MapModel, op: &MapOp) -> String {
    match op {
        MapOp::Insert(k, v) => match m.0.insert(key(*k), v.clone()) {
            None => "None".into(),
            Some(o) => format!("{o:?}"),
        },
        MapOp::Remove(k) => match m.0.remove(&key(*k)) {
            None => "None".into(),
            Some(o) => format!("{o:?}"),
        },
        MapOp::Get(k) => match m.0.get(&key(*k)) {
            None => "None".into(),
            Some(o) => format!("{o:?}"),
        },
        MapOp::Append(k, b) => match m.0.get_mut(&key(*k)) {
            None => "None".into(),
            Some(v) => {
                v.extend_from_slice(b);
                format!("{}", v.len())
            }
        },
        MapOp::IntInsert(k, v) => format!("{:?}", m.1.insert(*k, *v)),
        MapOp::IntRemove(k) => format!("{:?}", m.1.remove(k)),
        MapOp::IntBulk(s, n) => {
            for k in *s..s + n {
                m.1.insert(k, k * 3);
            }
            String::new()
        }
        MapOp::Clear => {
            m.0.clear();
            m.1.clear();
            String::new()
        }
    }
}

fn map_read(tx: T<'_, '_>, r: &Root) -> Result<MapModel, TxError> {
    let mut a = BTreeMap::new();
    for e in r.map.iter(tx)? {
        let (k, v) = e?;
        a.insert(k.as_bytes(tx)?.to_vec(), v.as_bytes(tx)?.to_vec());
    }
    let mut b = BTreeMap::new();
    for e in r.imap.iter(tx)? {
        let (k, v) = e?;
        b.insert(*k, *v);
    }
    // every key is found by lookup too, and the lengths agree
    if a.len() != r.map.len() || b.len() != r.imap.len() {
        return Err(TxError::Corrupt);
    }
    for k in b.keys() {
        if r.imap.get(tx, k)?.is_none() {
            return Err(TxError::Corrupt);
        }
    }
    Ok((a, b))
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn phashmap_matches_hashmap(ops in prop::collection::vec((batch(map_op()), flags()), 1..200)) {
        let ops: Vec<_> = ops.into_iter().map(|(o, (a, r))| (o, a, r)).collect();
        drive(&ops, map_apply, map_model, map_read)?;
    }
}

// ---------------------------------------------------------------------------------- POrdMap

#[derive(Debug, Clone)]
enum OrdOp {
    Insert(Vec<u8>, u64),
    Remove(Vec<u8>),
    Get(Vec<u8>),
    Rank(Vec<u8>),
    ByRank(usize),
    RangeByRank(usize, usize),
    Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
    PopFirst,
    PopLast,
    Clear,
}

fn okey() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(b'a'..b'e', 0..4)
}

fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
    prop_oneof![
        Just(Bound::Unbounded),
        okey().prop_map(Bound::Included),
        okey().prop_map(Bound::Excluded),
    ]
}

fn ord_op() -> impl Strategy<Value = OrdOp> + Clone {
    prop_oneof![
        8 => (okey(), any::<u64>()).prop_map(|(k, v)| OrdOp::Insert(k, v)),
        3 => okey().prop_map(OrdOp::Remove),
        2 => okey().prop_map(OrdOp::Get),
        2 => okey().prop_map(OrdOp::Rank),
        2 => (0..90usize).prop_map(OrdOp::ByRank),
        2 => (0..90usize, 0..90usize).prop_map(|(a, b)| OrdOp::RangeByRank(a, b)),
        2 => (bound(), bound()).prop_map(|(a, b)| OrdOp::Range(a, b)),
        1 => Just(OrdOp::PopFirst),
        1 => Just(OrdOp::PopLast),
        1 => prop::bool::weighted(0.3).prop_map(|_| OrdOp::Clear),
    ]
}

fn entries<'a>(
    tx: T<'a, '_>,
    it: impl Iterator<Item = Result<(&'a PBytes, &'a u64), TxError>>,
) -> Result<Vec<(Vec<u8>, u64)>, TxError> {
    it.map(|e| e.and_then(|(k, v)| Ok((k.as_bytes(tx)?.to_vec(), *v))))
        .collect()
}

fn as_ref_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
    }
}

fn ord_apply(tx: T<'_, '_>, r: &mut Root, op: &OrdOp) -> Result<String, TxError> {
    let m = &mut r.omap;
    Ok(match op {
        OrdOp::Insert(k, v) => format!("{:?}", m.insert(tx, k, *v)?),
        OrdOp::Remove(k) => format!("{:?}", m.remove(tx, k)?),
        OrdOp::Get(k) => format!("{:?}", m.get(tx, k)?),
        OrdOp::Rank(k) => format!("{:?}", m.rank(tx, k)?),
        OrdOp::ByRank(i) => match m.get_by_rank(tx, *i)? {
            None => "None".into(),
            Some((k, v)) => format!("{:?}", (k.as_bytes(tx)?, v)),
        },
        OrdOp::RangeByRank(a, b) => format!("{:?}", entries(tx, m.range_by_rank(tx, *a..*b)?)?),
        OrdOp::Range(lo, hi) => {
            let (lo, hi) = (as_ref_bound(lo), as_ref_bound(hi));
            format!("{:?}", entries(tx, m.range(tx, lo, hi)?)?)
        }
        OrdOp::PopFirst | OrdOp::PopLast => {
            let e = if matches!(op, OrdOp::PopFirst) {
                m.pop_first(tx)?
            } else {
                m.pop_last(tx)?
            };
            match e {
                None => "None".into(),
                Some((k, v)) => {
                    let s = format!("{:?}", (k.as_bytes(tx)?, v));
                    k.free_in(tx)?;
                    s
                }
            }
        }
        OrdOp::Clear => format!("{:?}", m.clear(tx)?),
    })
}

fn ord_model(m: &mut BTreeMap<Vec<u8>, u64>, op: &OrdOp) -> String {
    match op {
        OrdOp::Insert(k, v) => format!("{:?}", m.insert(k.clone(), *v)),
        OrdOp::Remove(k) => format!("{:?}", m.remove(k)),
        OrdOp::Get(k) => format!("{:?}", m.get(k)),
        OrdOp::Rank(k) => format!(
            "{:?}",
            m.contains_key(k).then(|| m.range(..k.clone()).count())
        ),
        OrdOp::ByRank(i) => match m.iter().nth(*i) {
            None => "None".into(),
            Some((k, v)) => format!("{:?}", (k.as_slice(), v)),
        },
        OrdOp::RangeByRank(a, b) => {
            let v: Vec<(Vec<u8>, u64)> = m
                .iter()
                .skip(*a)
                .take(b.saturating_sub(*a))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            format!("{v:?}")
        }
        OrdOp::Range(lo, hi) => {
            let v: Vec<(Vec<u8>, u64)> = m
                .iter()
                .filter(|(k, _)| {
                    (match lo {
                        Bound::Unbounded => true,
                        Bound::Included(b) => *k >= b,
                        Bound::Excluded(b) => *k > b,
                    }) && (match hi {
                        Bound::Unbounded => true,
                        Bound::Included(b) => *k <= b,
                        Bound::Excluded(b) => *k < b,
                    })
                })
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            format!("{v:?}")
        }
        OrdOp::PopFirst => match m.pop_first() {
            None => "None".into(),
            Some((k, v)) => format!("{:?}", (k.as_slice(), &v)),
        },
        OrdOp::PopLast => match m.pop_last() {
            None => "None".into(),
            Some((k, v)) => format!("{:?}", (k.as_slice(), &v)),
        },
        OrdOp::Clear => format!("{:?}", m.clear()),
    }
}

fn ord_read(tx: T<'_, '_>, r: &Root) -> Result<BTreeMap<Vec<u8>, u64>, TxError> {
    let v = entries(tx, r.omap.iter(tx)?)?;
    if v.len() != r.omap.len() || v.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(TxError::Corrupt);
    }
    Ok(v.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn pordmap_matches_btreemap(ops in prop::collection::vec((batch(ord_op()), flags()), 1..200)) {
        let ops: Vec<_> = ops.into_iter().map(|(o, (a, r))| (o, a, r)).collect();
        drive(&ops, ord_apply, ord_model, ord_read)?;
    }
}

// ------------------------------------------------------------------------------ fixed tests

/// Many entries: several complete resizes, lookups during them, then removal of all.
#[test]
fn hashmap_grows_incrementally_and_shrinks_to_nothing() {
    let mut h = H::new();
    let root = h.pool().root::<Root>().unwrap();
    let n = 5000u64;
    let mut resizing_seen = 0;
    for chunk in 0..50 {
        h.pool()
            .transaction(|tx| {
                let r = tx.get_mut(root)?;
                for k in chunk * 100..(chunk + 1) * 100 {
                    r.imap.insert(tx, &k, k + 1)?;
                    if r.imap.is_resizing() {
                        resizing_seen += 1;
                    }
                    // everything inserted so far is found, whichever table holds it
                    let probe = k / 2;
                    assert_eq!(r.imap.get(tx, &probe)?, Some(&(probe + 1)));
                }
                Ok::<_, TxError>(())
            })
            .unwrap();
    }
    assert!(resizing_seen > 0);
    h.reopen(false);
    let root = h.pool().root::<Root>().unwrap();
    h.pool()
        .transaction(|tx| {
            let r = tx.get_mut(root)?;
            assert_eq!(r.imap.len() as u64, n);
            assert!(r.imap.buckets() >= 4096);
            for k in 0..n {
                assert_eq!(r.imap.remove(tx, &k)?, Some(k + 1));
            }
            assert!(r.imap.is_empty());
            Ok::<_, TxError>(())
        })
        .unwrap();
    h.finish().unwrap();
}

/// A sorted set: score-ordered keys, rank ranges, member -> score in a hash map.
#[test]
fn sorted_set_by_score_and_member() {
    let h = H::new();
    let root = h.pool().root::<Root>().unwrap();
    let members: Vec<(f64, &[u8])> = vec![
        (3.0, b"c"),
        (-1.0, b"z"),
        (3.0, b"a"),
        (f64::INFINITY, b"inf"),
        (0.0, b"zero"),
        (-0.5, b"m"),
    ];
    let zkey = |s: f64, m: &[u8]| [&encode_score(s)[..], m].concat();
    h.pool()
        .transaction(|tx| {
            let r = tx.get_mut(root)?;
            for &(s, m) in &members {
                r.omap.insert(tx, &zkey(s, m), 0)?;
                r.map.insert(tx, m, PBytes::new(tx, &s.to_le_bytes())?)?;
            }
            let order: Vec<(f64, Vec<u8>)> = r
                .omap
                .range_by_rank(tx, 0..10)?
                .map(|e| {
                    e.and_then(|(k, _)| {
                        let b = k.as_bytes(tx)?;
                        Ok((decode_score(b[..8].try_into().unwrap()), b[8..].to_vec()))
                    })
                })
                .collect::<Result<_, _>>()?;
            let names: Vec<&[u8]> = order.iter().map(|(_, m)| m.as_slice()).collect();
            assert_eq!(names, vec![&b"z"[..], b"m", b"zero", b"a", b"c", b"inf"]);
            let s = r.map.get(tx, b"m")?.unwrap().as_bytes(tx)?;
            assert_eq!(f64::from_le_bytes(s.try_into().unwrap()), -0.5);
            assert_eq!(r.omap.rank(tx, &zkey(3.0, b"c"))?, Some(4));
            Ok::<_, TxError>(())
        })
        .unwrap();
    h.finish().unwrap();
}

/// Nested collections: a hash map of vectors is freed entirely by `free_in`.
#[test]
fn nested_collections_free_everything() {
    #[repr(C)]
    struct Nested {
        lists: PHashMap<PBytes, PVec<PBytes>>,
    }
    // SAFETY: repr(C), PSafe fields.
    unsafe impl PSafe for Nested {}
    let mut h = H::new();
    let nested: PPtr<Nested> = h
        .pool()
        .transaction(|tx| {
            tx.alloc(Nested {
                lists: PHashMap::new(),
            })
        })
        .unwrap();
    // keep it reachable through the root's PVec<u64>? No: store the pointer in a root slot.
    let root = h.pool().root::<Root>().unwrap();
    h.pool()
        .transaction(|tx| {
            let r = tx.get_mut(root)?;
            r.vec.push(tx, nested.raw())?;
            let n = tx.get_mut(nested)?;
            for i in 0..20u32 {
                n.lists.insert(tx, &i.to_le_bytes(), PVec::new())?;
                let l = n.lists.get_mut(tx, &i.to_le_bytes())?.unwrap();
                for j in 0..i {
                    l.push(tx, PBytes::new(tx, format!("{i}/{j}").as_bytes())?)?;
                }
            }
            Ok::<_, TxError>(())
        })
        .unwrap();
    h.reopen(false);
    let root = h.pool().root::<Root>().unwrap();
    h.pool()
        .transaction(|tx| {
            let n = tx.get_mut(nested)?;
            let l = n.lists.get(tx, &7u32.to_le_bytes())?.unwrap();
            assert_eq!(l.get(tx, 3)?.unwrap().as_bytes(tx)?, b"7/3");
            std::mem::take(&mut n.lists).free_in(tx)?;
            // SAFETY: the block allocated above, linked only from the root vector.
            unsafe { tx.free(nested)? };
            tx.get_mut(root)?.vec.clear(tx)
        })
        .unwrap();
    h.finish().unwrap();
}

/// Corrupt headers give `TxError::Corrupt`, not out-of-bounds accesses.
#[test]
fn corrupt_headers_are_refused() {
    let h = H::new();
    let root = h.pool().root::<Root>().unwrap();
    h.pool()
        .transaction(|tx| {
            let r = tx.get_mut(root)?;
            r.vec.push(tx, 1)?;
            r.deque.push_back(tx, 1)?;
            r.imap.insert(tx, &1, 1)?;
            r.omap.insert(tx, b"k", 1)?;
            r.bytes.append(tx, b"abc")?;
            Ok::<_, TxError>(())
        })
        .unwrap();
    // lengths beyond the capacity are refused
    let _ = h.pool().transaction(|tx| {
        let r = tx.get_mut(root)?;
        // SAFETY: words of the root (repr(C): PVec is buf, len, cap), saved by get_mut.
        unsafe { (r as *mut Root).cast::<u64>().add(1).write(1000) };
        assert_eq!(r.vec.as_slice(tx).err(), Some(TxError::Corrupt));
        assert_eq!(r.vec.get(tx, 0).err(), Some(TxError::Corrupt));
        assert_eq!(r.vec.push(tx, 1).err(), Some(TxError::Corrupt));
        Err::<(), _>(TxError::Aborted)
    });
    let size = h.pool().size() as u64;
    // overwrite each header's words with hostile values and try every reader
    let words = std::mem::size_of::<Root>() / 8;
    for w in 0..words {
        for bad in [
            u64::MAX,
            size,
            1 << 40,
            0x504D_0000_0000_0000 | (size - 8),
            3,
        ] {
            // write the word, read everything, then abort (rolls the word back). Only reads:
            // a forged header that passes the range checks may make a write land in another
            // block (documented), which is not what this test is about.
            let _ = h.pool().transaction(|tx| {
                let r = tx.get_mut(root)?;
                // SAFETY: a word of the root (repr(C), all u64/PPtr fields), saved by get_mut.
                unsafe { (r as *mut Root).cast::<u64>().add(w).write(bad) };
                let _ = r.vec.as_slice(tx).map(|s| s.len());
                let _ = r.deque.iter(tx).map(|i| i.count());
                let _ = r.imap.get(tx, &1);
                let _ = r.imap.iter(tx).map(|i| i.count());
                let _ = r.omap.get(tx, b"k");
                let _ = r.omap.iter(tx).map(|i| i.count());
                let _ = r.omap.range_by_rank(tx, 0..5).map(|i| i.count());
                let _ = r.bytes.as_bytes(tx).map(|b| b.len());
                let _ = r.text.as_str(tx).map(|b| b.len());
                Err::<(), _>(TxError::Aborted)
            });
        }
    }
    h.finish().unwrap();
}

/// Fence counts of the common operations (the costs the documentation states): a push of a
/// pointer-free element within capacity saves only the header (the slot is flushed at commit
/// without an undo entry); a push of a byte string also saves its slot; a new key in a hash
/// map (no resize running) saves the header and one bucket word; an ordered-map insert saves
/// the header and the search path in one call; a read-only transaction has no fence.
#[test]
fn fence_counts() {
    let h = H::new();
    let pool = h.pool();
    let media = pool.persister().clone();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.vec.reserve(tx, 8)?;
        r.bvec.reserve(tx, 8)?;
        r.imap.insert(tx, &0, 0)?;
        r.omap.insert(tx, b"m", 0)?;
        r.omap.insert(tx, b"c", 0)?;
        Ok::<_, TxError>(())
    })
    .unwrap();
    let fences = |f: &dyn Fn(T<'_, '_>, &mut Root) -> Result<(), TxError>| {
        let before = media.fences();
        pool.transaction(|tx| f(tx, tx.get_mut(root)?)).unwrap();
        media.fences() - before
    };
    // header snapshot + commit (flush, gen)
    assert_eq!(fences(&|tx, r| r.vec.push(tx, 1)), 3);
    assert_eq!(fences(&|tx, r| r.vec.pop(tx).map(drop)), 3);
    // + the slot of a pointer-holding element
    assert_eq!(
        fences(&|tx, r| {
            let s = PBytes::new(tx, b"x")?;
            r.bvec.push(tx, s)
        }),
        4
    );
    // + one bucket word
    assert_eq!(fences(&|tx, r| r.imap.insert(tx, &1, 1).map(drop)), 4);
    // + the path, in one snapshot_many
    assert_eq!(fences(&|tx, r| r.omap.insert(tx, b"q", 1).map(drop)), 4);
    // reads only
    let before = media.fences();
    pool.transaction(|tx| {
        let r = tx.get(root)?;
        assert_eq!(r.imap.get(tx, &1)?, Some(&1));
        assert_eq!(r.vec.len(), 0);
        Ok::<_, TxError>(())
    })
    .unwrap();
    assert_eq!(media.fences(), before);
    h.finish().unwrap();
}

/// A collection borrowed mutably in one thread's transaction cannot be borrowed in another
/// thread's: the header is the unit of isolation.
#[test]
fn concurrent_transactions_are_isolated_per_header() {
    let h = H::new();
    let pool = h.pool();
    let root = pool.root::<Root>().unwrap();
    pool.transaction(|tx| {
        let r = tx.get_mut(root)?;
        r.vec.push(tx, 1)?;
        std::thread::scope(|s| {
            let other = s
                .spawn(|| {
                    pool.transaction(|tx| tx.get(root).map(|r| r.vec.len()))
                        .err()
                })
                .join()
                .unwrap();
            assert_eq!(other, Some(TxError::Borrowed));
        });
        Ok::<_, TxError>(())
    })
    .unwrap();
    h.finish().unwrap();
}
