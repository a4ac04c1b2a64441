//! Device managers: where the bytes of a volume come from.
//!
//! * [`lvm::LvmManager`]: one logical volume per CSI volume, in volume groups that sit on
//!   fsdax namespaces (one VG per PMEM region).
//! * [`direct::DirectManager`]: one fsdax namespace per CSI volume, created with `ndctl`.
//! * [`fake::FakeManager`]: sparse files and directories in the state directory, for
//!   development and tests on machines without PMEM.

use crate::error::Result;
use std::fmt;
use std::path::PathBuf;

pub mod direct;
pub mod fake;
pub mod lvm;

/// The device mode selected on the command line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceMode {
    /// LVM logical volumes on fsdax namespaces.
    Lvm,
    /// One fsdax namespace per volume.
    Direct,
    /// Files in the state directory (no PMEM needed).
    Fake,
}

impl fmt::Display for DeviceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceMode::Lvm => "lvm",
            DeviceMode::Direct => "direct",
            DeviceMode::Fake => "fake",
        })
    }
}

/// A device backing one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Device name chosen by the driver (see [`device_name`]).
    pub name: String,
    /// The volume ID recorded on the device itself, when the backend can store it.
    pub owner: Option<String>,
    /// Usable size in bytes.
    pub size: u64,
    /// Block device node (or, in fake mode, the backing file used for raw block access).
    pub path: PathBuf,
    /// Fake mode only: directory used instead of a formatted file system.
    pub fs_dir: Option<PathBuf>,
}

/// Capacity of the device pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Total bytes managed by the driver.
    pub total: u64,
    /// Free bytes.
    pub available: u64,
    /// Largest volume that can be created right now.
    pub max_volume: u64,
}

/// A source of volumes.
///
/// Implementations serialise their own allocations (check of free space and creation are
/// atomic), so callers may invoke them concurrently for different volumes.
pub trait DeviceManager: Send + Sync + fmt::Debug {
    /// The mode implemented.
    fn mode(&self) -> DeviceMode;
    /// The size a volume of `size` bytes will really get (rounded up to the allocation unit).
    fn round_size(&self, size: u64) -> u64;
    /// Creates device `name` for volume `owner`. Fails with `ResourceExhausted` if there is
    /// no room.
    fn create(&self, name: &str, owner: &str, size: u64) -> Result<Device>;
    /// Deletes device `name` (optionally zeroing it first); deleting a missing device is OK.
    fn delete(&self, name: &str, erase: bool) -> Result<()>;
    /// All devices owned by the driver.
    fn list(&self) -> Result<Vec<Device>>;
    /// Pool capacity.
    fn capacity(&self) -> Result<Capacity>;
    /// Grows device `name` to at least `size` bytes.
    fn expand(&self, name: &str, size: u64) -> Result<Device>;

    /// Removes leftovers of allocations interrupted by a crash that are not devices yet (and
    /// so are invisible to [`DeviceManager::list`]). Called once at start, before serving.
    /// Returns a description of what was removed.
    fn cleanup_partial(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Looks one device up.
    fn get(&self, name: &str) -> Result<Option<Device>> {
        Ok(self.list()?.into_iter().find(|d| d.name == name))
    }
}

/// Prefix of every device name created by the driver.
pub const DEVICE_PREFIX: &str = "pmem-";

/// The device name of a volume ID: `pmem-` and 16 hex digits of its FNV-1a hash.
///
/// Volume IDs may be up to 128 bytes but ndctl namespace names are limited to 63, so devices
/// get a short, fixed-format name; the state directory (and LVM tags) map it back to the ID.
pub fn device_name(volume_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in volume_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{DEVICE_PREFIX}{h:016x}")
}

/// Whether `name` has the format produced by [`device_name`].
pub fn is_device_name(name: &str) -> bool {
    name.strip_prefix(DEVICE_PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The command that zeroes the first `size` bytes of `dev` (`dd`, available from coreutils and
/// busybox alike; `size` is a multiple of 4 KiB for every backend).
pub fn zero_cmd(dev: &str, size: u64) -> crate::exec::Cmd {
    crate::exec::Cmd::new(
        "dd",
        [
            "if=/dev/zero".to_string(),
            format!("of={dev}"),
            "bs=4096".to_string(),
            format!("count={}", size.div_ceil(4096)),
            "conv=fsync".to_string(),
        ],
    )
}

/// Rounds `size` up to a multiple of `unit` (saturating).
pub fn round_up(size: u64, unit: u64) -> u64 {
    if unit <= 1 {
        return size;
    }
    size.div_ceil(unit).saturating_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        let a = device_name("pvc-1");
        assert!(is_device_name(&a), "{a}");
        assert_eq!(a.len(), 21);
        assert_ne!(a, device_name("pvc-2"));
        assert_eq!(a, device_name("pvc-1"));
        assert!(!is_device_name("pmem-csi-lvm"));
        assert!(!is_device_name("pmem-0123456789abcdeg"));
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(1, 4 << 20), 4 << 20);
        assert_eq!(round_up(4 << 20, 4 << 20), 4 << 20);
        assert_eq!(round_up(0, 4 << 20), 0);
        assert_eq!(round_up(u64::MAX, 4 << 20), u64::MAX);
        assert_eq!(round_up(7, 0), 7);
    }
}
