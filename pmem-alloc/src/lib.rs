#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod collections;
pub mod flush;
pub mod global;
pub mod heap;
pub mod layout;
pub mod map;
pub mod persist;
pub mod pool;
pub mod pptr;
pub mod recovery;
#[cfg(feature = "crash-sim")]
pub mod sim;
pub mod size_class;
pub mod staged;
mod sync;
mod sys;
pub mod tx;
pub mod volatile;

pub use flush::{CpuFeatures, FlushMethod, CACHE_PAD, FLUSH_ALIGN};
pub use map::{MapError, MapKind, MapOptions, Mapping};
pub use persist::{Hardware, NoPersist, Persist};
pub use pool::{Pool, PoolError, PoolOptions};
pub use pptr::{AtomicPPtr, PPtr, PSafe};
pub use staged::Staged;
pub use tx::{PBox, Tx, TxError};
