#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod flush;
pub mod map;
pub mod persist;
#[cfg(feature = "crash-sim")]
pub mod sim;
mod sys;

pub use flush::{CpuFeatures, FlushMethod, CACHE_PAD, FLUSH_ALIGN};
pub use map::{MapError, MapKind, MapOptions, Mapping};
pub use persist::{Hardware, NoPersist, Persist};
