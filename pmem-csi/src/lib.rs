//! `pmem-csi`: a Kubernetes CSI driver that hands out persistent-memory volumes.
//!
//! One binary serves the CSI Identity, Controller and Node services on a Unix socket.
//! Volumes come from a [`device::DeviceManager`] (LVM logical volumes on fsdax namespaces,
//! one fsdax namespace per volume, or files in fake mode); file systems are created with
//! 4 KiB blocks and mounted `-o dax`. Every volume has a record in the state directory so that
//! a restarted driver reconciles records, devices and mounts ([`driver::Driver::reconcile`]).

pub mod controller;
pub mod device;
pub mod driver;
pub mod error;
pub mod exec;
pub mod identity;
pub mod logger;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod parse;
pub mod server;
pub mod state;
pub mod validate;

pub use bpfman_csi::v1 as csi;

/// The driver name used by default and in the deployment files under `deploy/`.
pub const DEFAULT_DRIVER_NAME: &str = "pmem-csi.pmem-sdk.io";
