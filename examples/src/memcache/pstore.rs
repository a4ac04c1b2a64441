//! The persistent store: items, hash index and LRU in a `pmem_alloc::Pool`.

use super::store::*;
use std::path::PathBuf;
use std::time::Duration;

/// How to open the persistent store.
#[derive(Clone, Debug)]
pub struct PmemStoreConfig {
    /// Pool file (created if missing).
    pub path: PathBuf,
    /// Memory limit for items in bytes (`-m`).
    pub mem_limit: u64,
    /// Item size limit in bytes (`-I`).
    pub item_size_max: usize,
    /// Make every acknowledged write durable before the reply (`--durable`).
    pub durable: bool,
    /// Refuse page-cache mappings.
    pub require_dax: bool,
}

/// What opening found.
#[derive(Clone, Debug, Default)]
pub struct OpenInfo {
    /// A new pool was created.
    pub created: bool,
    /// The previous run shut down cleanly.
    pub clean: bool,
    /// Items restored.
    pub items: u64,
    /// Items dropped (expired, flushed, failed verification, evicted to fit a smaller limit).
    pub dropped: u64,
    /// Time from start of open to ready.
    pub duration: Duration,
    /// Log lines worth printing (reasons for a clean start, adaptations to new settings).
    pub messages: Vec<String>,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the pool open.
    #[error("{0}")]
    Locked(String),
    /// Anything else from the pool layer.
    #[error("{0}")]
    Pool(#[from] pmem_alloc::PoolError),
    /// File-system trouble.
    #[error("{op}: {source}")]
    Io {
        /// What failed.
        op: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Settings that cannot work (e.g. a memory limit below the minimum).
    #[error("{0}")]
    Config(String),
}

/// The persistent store.
#[derive(Debug)]
pub struct PmemStore {
    _private: (),
}

impl PmemStore {
    /// Opens (or creates) the store.
    pub fn open(cfg: &PmemStoreConfig) -> Result<(PmemStore, OpenInfo), StoreError> {
        let _ = cfg;
        todo!("persistent store in progress")
    }
}

impl CacheStore for PmemStore {
    fn get(&self, _key: &[u8], _opts: GetOpts, _out: &mut dyn FnMut(&ItemMeta, &[u8])) -> bool {
        todo!()
    }
    fn store(&self, _req: &StoreReq<'_>) -> StoreOutcome {
        todo!()
    }
    fn delete(&self, _key: &[u8], _cas: Option<u64>) -> DeleteOutcome {
        todo!()
    }
    fn arith(&self, _key: &[u8], _req: &ArithReq) -> ArithOutcome {
        todo!()
    }
    fn touch(&self, _key: &[u8], _expiry: Expiry) -> bool {
        todo!()
    }
    fn flush_all(&self, _delay_secs: u64) {
        todo!()
    }
    fn counters(&self) -> &Counters {
        todo!()
    }
    fn occupancy(&self) -> Occupancy {
        todo!()
    }
    fn stats_group(&self, _group: &str) -> Vec<(String, String)> {
        todo!()
    }
    fn item_size_max(&self) -> usize {
        todo!()
    }
    fn shutdown(&self) {
        todo!()
    }
}
