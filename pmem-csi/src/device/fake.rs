//! Fake device manager: a sparse file (raw block access) and a directory (file-system access)
//! per volume, inside a directory, with a fixed total capacity.

use super::{round_up, Capacity, Device, DeviceManager, DeviceMode};
use crate::device::is_device_name;
use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Allocation unit of the fake backend (same as LVM's default extent).
pub const FAKE_UNIT: u64 = 4 << 20;

/// Devices as files under a directory.
#[derive(Debug)]
pub struct FakeManager {
    dir: PathBuf,
    total: u64,
    lock: Mutex<()>,
}

impl FakeManager {
    /// A pool of `total` bytes stored in `dir` (created if needed).
    pub fn new(dir: &Path, total: u64) -> Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(FakeManager {
            dir: dir.to_path_buf(),
            total,
            lock: Mutex::new(()),
        })
    }

    fn img(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    fn fs_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.fs"))
    }

    fn owner_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.owner"))
    }

    fn device(&self, name: &str) -> Result<Option<Device>> {
        let img = self.img(name);
        let meta = match fs::metadata(&img) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let owner = fs::read_to_string(self.owner_file(name))
            .ok()
            .map(|s| s.trim().to_string());
        Ok(Some(Device {
            name: name.to_string(),
            owner,
            size: meta.len(),
            path: img,
            fs_dir: Some(self.fs_dir(name)),
        }))
    }

    fn used(&self) -> Result<u64> {
        Ok(self.list_unlocked()?.iter().map(|d| d.size).sum())
    }

    fn list_unlocked(&self) -> Result<Vec<Device>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|n| n.strip_suffix(".img")) else {
                continue;
            };
            if !is_device_name(name) {
                continue;
            }
            if let Some(d) = self.device(name)? {
                out.push(d);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DeviceManager for FakeManager {
    fn mode(&self) -> DeviceMode {
        DeviceMode::Fake
    }

    fn round_size(&self, size: u64) -> u64 {
        round_up(size, FAKE_UNIT)
    }

    fn create(&self, name: &str, owner: &str, size: u64) -> Result<Device> {
        let _g = self.guard();
        if let Some(d) = self.device(name)? {
            return Ok(d);
        }
        let size = self.round_size(size);
        let free = self.total.saturating_sub(self.used()?);
        if size > free {
            return Err(Error::ResourceExhausted(format!(
                "not enough space: {size} bytes requested, {free} bytes free"
            )));
        }
        fs::create_dir_all(self.fs_dir(name))?;
        fs::write(self.owner_file(name), owner)?;
        // The image file is created last: its existence is what makes the device exist.
        let tmp = self.dir.join(format!("{name}.img.tmp"));
        let f = fs::File::create(&tmp)?;
        f.set_len(size)?;
        f.sync_all()?;
        fs::rename(&tmp, self.img(name))?;
        self.device(name)?
            .ok_or_else(|| Error::internal("fake device vanished"))
    }

    fn delete(&self, name: &str, erase: bool) -> Result<()> {
        let _g = self.guard();
        let img = self.img(name);
        if erase && img.exists() {
            // Erasing a sparse file: drop all blocks.
            fs::OpenOptions::new().write(true).open(&img)?.set_len(0)?;
        }
        for r in [
            fs::remove_file(&img),
            fs::remove_file(self.owner_file(name)),
        ] {
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        match fs::remove_dir_all(self.fs_dir(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn list(&self) -> Result<Vec<Device>> {
        let _g = self.guard();
        self.list_unlocked()
    }

    fn capacity(&self) -> Result<Capacity> {
        let _g = self.guard();
        let free = self.total.saturating_sub(self.used()?);
        let free = free - free % FAKE_UNIT;
        Ok(Capacity {
            total: self.total,
            available: free,
            max_volume: free,
        })
    }

    fn expand(&self, name: &str, size: u64) -> Result<Device> {
        let _g = self.guard();
        let dev = self
            .device(name)?
            .ok_or_else(|| Error::NotFound(format!("device {name} not found")))?;
        let size = self.round_size(size);
        if size <= dev.size {
            return Ok(dev);
        }
        let free = self.total.saturating_sub(self.used()?);
        if size - dev.size > free {
            return Err(Error::ResourceExhausted(format!(
                "cannot grow to {size} bytes: only {free} bytes free"
            )));
        }
        fs::OpenOptions::new()
            .write(true)
            .open(&dev.path)?
            .set_len(size)?;
        self.device(name)?
            .ok_or_else(|| Error::internal("fake device vanished"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::device_name;

    #[test]
    fn lifecycle_and_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let m = FakeManager::new(dir.path(), 64 << 20).unwrap();
        let a = device_name("a");
        let d = m.create(&a, "a", 5 << 20).unwrap();
        assert_eq!(d.size, 8 << 20);
        assert_eq!(d.owner.as_deref(), Some("a"));
        assert_eq!(m.create(&a, "a", 5 << 20).unwrap(), d);
        assert_eq!(m.capacity().unwrap().available, 56 << 20);
        let b = device_name("b");
        assert!(matches!(
            m.create(&b, "b", 57 << 20),
            Err(Error::ResourceExhausted(_))
        ));
        m.create(&b, "b", 56 << 20).unwrap();
        assert_eq!(m.capacity().unwrap().max_volume, 0);
        assert!(matches!(
            m.expand(&a, 12 << 20),
            Err(Error::ResourceExhausted(_))
        ));
        m.delete(&b, true).unwrap();
        assert_eq!(m.expand(&a, 12 << 20).unwrap().size, 12 << 20);
        assert_eq!(m.list().unwrap().len(), 1);
        m.delete(&a, false).unwrap();
        m.delete(&a, false).unwrap();
        assert!(m.list().unwrap().is_empty());
        assert_eq!(m.capacity().unwrap().available, 64 << 20);
    }
}
