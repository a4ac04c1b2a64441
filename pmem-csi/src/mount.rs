//! Mounting: a [`Mounter`] trait with a real implementation (mount/umount/mkfs through
//! the [`Runner`]) and a fake one that keeps a mount table in a file (no root needed).

use crate::error::{Error, Result};
use crate::exec::{Cmd, Runner};
use crate::parse::parse_mountinfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// File-system operations the node service needs.
pub trait Mounter: Send + Sync + fmt::Debug {
    /// Whether something is mounted on `target`.
    fn is_mounted(&self, target: &Path) -> Result<bool>;
    /// Creates a file system of type `fstype` on `dev` unless it already has one; fails with
    /// `FailedPrecondition` if it has a different one.
    fn format_if_needed(&self, dev: &Path, fstype: &str) -> Result<()>;
    /// Mounts `dev` (type `fstype`) on `target` with `options`.
    fn mount(&self, dev: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<()>;
    /// Bind-mounts `src` on `target`, read-only if asked.
    fn bind(&self, src: &Path, target: &Path, readonly: bool) -> Result<()>;
    /// Unmounts `target` if it is mounted.
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Grows the file system on `dev`, mounted on `mount_point`, to the device size.
    fn resize_fs(&self, dev: &Path, mount_point: &Path, fstype: &str) -> Result<()>;
}

/// `mkfs` arguments for a DAX-capable file system.
///
/// ext4 needs 4 KiB blocks for DAX (mkfs picks 1 KiB on small devices), and XFS must not use
/// reflink, which older kernels cannot combine with DAX.
pub fn mkfs_cmd(dev: &Path, fstype: &str) -> Result<Cmd> {
    let dev = dev.to_string_lossy().into_owned();
    match fstype {
        "ext4" => Ok(Cmd::new("mkfs.ext4", ["-F", "-q", "-b", "4096", &dev])),
        "xfs" => Ok(Cmd::new("mkfs.xfs", ["-f", "-q", "-m", "reflink=0", &dev])),
        other => Err(Error::InvalidArgument(format!(
            "unsupported file system type {other:?}"
        ))),
    }
}

/// Recognises the file systems the driver creates from the first 4 KiB of a device.
///
/// ext2/3/4 keep the magic 0xEF53 at byte 1080 (offset 56 of the superblock at 1024); XFS
/// starts with `XFSB`. Done in-process rather than with `blkid`, whose options differ between
/// util-linux and busybox.
pub fn detect_fs(header: &[u8]) -> Option<&'static str> {
    if header.len() >= 4 && &header[..4] == b"XFSB" {
        return Some("xfs");
    }
    if header.len() >= 1082 && header[1080] == 0x53 && header[1081] == 0xEF {
        return Some("ext4");
    }
    None
}

/// Reads the header of `dev` and runs [`detect_fs`] on it.
pub fn probe_fs(dev: &Path) -> Result<Option<&'static str>> {
    use std::io::Read;
    let mut f = std::fs::File::open(dev)
        .map_err(|e| Error::Internal(format!("cannot open {}: {e}", dev.display())))?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(detect_fs(&buf[..n]))
}

/// The real thing: `mount(8)`, `umount(8)`, `mkfs.*`, `resize2fs`, `xfs_growfs` (util-linux
/// or busybox versions).
#[derive(Debug)]
pub struct SystemMounter {
    runner: Arc<dyn Runner>,
}

impl SystemMounter {
    /// A mounter running its commands through `runner`.
    pub fn new(runner: Arc<dyn Runner>) -> Self {
        SystemMounter { runner }
    }
}

impl Mounter for SystemMounter {
    fn is_mounted(&self, target: &Path) -> Result<bool> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        let target = target.to_string_lossy();
        Ok(parse_mountinfo(&text)?
            .iter()
            .any(|m| m.mount_point == target))
    }

    fn format_if_needed(&self, dev: &Path, fstype: &str) -> Result<()> {
        match probe_fs(dev)? {
            Some(found) if found == fstype => Ok(()),
            Some(found) => Err(Error::FailedPrecondition(format!(
                "{} already holds a {found} file system, {fstype} requested",
                dev.display()
            ))),
            None => self.runner.run_ok(&mkfs_cmd(dev, fstype)?).map(drop),
        }
    }

    fn mount(&self, dev: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<()> {
        let mut args = vec!["-t".to_string(), fstype.to_string()];
        if !options.is_empty() {
            args.push("-o".into());
            args.push(options.join(","));
        }
        args.push(dev.to_string_lossy().into_owned());
        args.push(target.to_string_lossy().into_owned());
        self.runner.run_ok(&Cmd::new("mount", args)).map(drop)
    }

    fn bind(&self, src: &Path, target: &Path, readonly: bool) -> Result<()> {
        let (s, t) = (
            src.to_string_lossy().into_owned(),
            target.to_string_lossy().into_owned(),
        );
        self.runner
            .run_ok(&Cmd::new("mount", ["-o", "bind", &s, &t]))?;
        if readonly {
            if let Err(e) = self
                .runner
                .run_ok(&Cmd::new("mount", ["-o", "remount,bind,ro", &t]))
            {
                let _ = self.runner.run_ok(&Cmd::new("umount", [&t]));
                return Err(e);
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        if self.is_mounted(target)? {
            self.runner
                .run_ok(&Cmd::new("umount", [target.to_string_lossy().into_owned()]))?;
        }
        Ok(())
    }

    fn resize_fs(&self, dev: &Path, mount_point: &Path, fstype: &str) -> Result<()> {
        let cmd = match fstype {
            "ext4" => Cmd::new("resize2fs", [dev.to_string_lossy().into_owned()]),
            "xfs" => Cmd::new("xfs_growfs", [mount_point.to_string_lossy().into_owned()]),
            other => return Err(Error::InvalidArgument(format!("cannot resize {other:?}"))),
        };
        self.runner.run_ok(&cmd).map(drop)
    }
}

/// One entry of the fake mount table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeMount {
    /// What is mounted.
    pub source: PathBuf,
    /// File-system type (`bind` for bind mounts).
    pub fstype: String,
    /// Mount options.
    pub options: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FakeTable {
    mounts: BTreeMap<PathBuf, FakeMount>,
    formatted: BTreeMap<PathBuf, String>,
}

/// A mount table kept in a JSON file, for tests without root. Like the kernel's table, it
/// survives restarts of the driver.
#[derive(Debug)]
pub struct FakeMounter {
    file: PathBuf,
    lock: Mutex<()>,
}

impl FakeMounter {
    /// A fake mount table stored in `file`.
    pub fn new(file: &Path) -> Self {
        FakeMounter {
            file: file.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut FakeTable) -> Result<T>) -> Result<T> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut table: FakeTable = match std::fs::read(&self.file) {
            Ok(b) => serde_json::from_slice(&b).map_err(Error::internal)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FakeTable::default(),
            Err(e) => return Err(e.into()),
        };
        let r = f(&mut table)?;
        let tmp = self.file.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&table).map_err(Error::internal)?,
        )?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(r)
    }

    /// The mount on `target`, if any.
    pub fn get(&self, target: &Path) -> Result<Option<FakeMount>> {
        self.update(|t| Ok(t.mounts.get(target).cloned()))
    }

    fn add(&self, target: &Path, m: FakeMount) -> Result<()> {
        if !target.exists() {
            return Err(Error::Internal(format!(
                "mount point {} does not exist",
                target.display()
            )));
        }
        self.update(|t| {
            t.mounts.insert(target.to_path_buf(), m);
            Ok(())
        })
    }
}

impl Mounter for FakeMounter {
    fn is_mounted(&self, target: &Path) -> Result<bool> {
        Ok(self.get(target)?.is_some())
    }

    fn format_if_needed(&self, dev: &Path, fstype: &str) -> Result<()> {
        mkfs_cmd(dev, fstype)?;
        self.update(|t| match t.formatted.get(dev) {
            Some(f) if f != fstype => Err(Error::FailedPrecondition(format!(
                "{} already holds a {f:?} file system, {fstype} requested",
                dev.display()
            ))),
            _ => {
                t.formatted.insert(dev.to_path_buf(), fstype.to_string());
                Ok(())
            }
        })
    }

    fn mount(&self, dev: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<()> {
        self.add(
            target,
            FakeMount {
                source: dev.to_path_buf(),
                fstype: fstype.into(),
                options: options.to_vec(),
            },
        )
    }

    fn bind(&self, src: &Path, target: &Path, readonly: bool) -> Result<()> {
        let mut options = vec!["bind".to_string()];
        if readonly {
            options.push("ro".into());
        }
        self.add(
            target,
            FakeMount {
                source: src.to_path_buf(),
                fstype: "bind".into(),
                options,
            },
        )
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        self.update(|t| {
            t.mounts.remove(target);
            Ok(())
        })
    }

    fn resize_fs(&self, dev: &Path, _mount_point: &Path, fstype: &str) -> Result<()> {
        self.update(|t| match t.formatted.get(dev) {
            Some(f) if f == fstype => Ok(()),
            _ => Err(Error::FailedPrecondition(format!(
                "{} holds no {fstype}",
                dev.display()
            ))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Output, ScriptedRunner};

    #[test]
    fn system_mounter_formats_only_blank_devices() {
        let dir = tempfile::tempdir().unwrap();
        let (d0, d1) = (dir.path().join("pmem0"), dir.path().join("pmem1"));
        std::fs::write(&d0, vec![0u8; 8192]).unwrap();
        std::fs::write(&d1, vec![0u8; 100]).unwrap();
        let r = Arc::new(ScriptedRunner::new());
        r.expect(
            &format!("mkfs.ext4 -F -q -b 4096 {}", d0.display()),
            Output::ok(""),
        )
        .expect(
            &format!("mkfs.xfs -f -q -m reflink=0 {}", d1.display()),
            Output::ok(""),
        )
        .expect("mount -t ext4 -o dax /dev/pmem0 /stage", Output::ok(""))
        .expect("mount -o bind /stage /target", Output::ok(""))
        .expect("mount -o remount,bind,ro /target", Output::fail(32, "nope"))
        .expect("umount /target", Output::ok(""));
        let m = SystemMounter::new(r.clone());
        m.format_if_needed(&d0, "ext4").unwrap();
        // What mkfs.ext4 would have written.
        let mut img = vec![0u8; 8192];
        img[1080] = 0x53;
        img[1081] = 0xEF;
        std::fs::write(&d0, &img).unwrap();
        m.format_if_needed(&d0, "ext4").unwrap();
        let e = m.format_if_needed(&d0, "xfs").unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)));
        m.format_if_needed(&d1, "xfs").unwrap();
        assert!(m
            .format_if_needed(&dir.path().join("missing"), "xfs")
            .is_err());
        m.mount(
            Path::new("/dev/pmem0"),
            Path::new("/stage"),
            "ext4",
            &["dax".into()],
        )
        .unwrap();
        assert!(m
            .bind(Path::new("/stage"), Path::new("/target"), true)
            .is_err());
        assert_eq!(r.remaining(), 0);
        assert!(mkfs_cmd(Path::new("/dev/x"), "btrfs").is_err());
    }

    #[test]
    fn detects_file_systems() {
        let mut xfs = b"XFSB".to_vec();
        xfs.resize(4096, 0);
        assert_eq!(detect_fs(&xfs), Some("xfs"));
        assert_eq!(detect_fs(&[0u8; 4096]), None);
        assert_eq!(detect_fs(&[]), None);
        let mut ext = vec![0u8; 2048];
        ext[1080] = 0x53;
        ext[1081] = 0xEF;
        assert_eq!(detect_fs(&ext), Some("ext4"));
        ext[1081] = 0;
        assert_eq!(detect_fs(&ext), None);
    }

    #[test]
    fn fake_mounter_persists_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mounts.json");
        let target = dir.path().join("t");
        std::fs::create_dir(&target).unwrap();
        let m = FakeMounter::new(&file);
        assert!(!m.is_mounted(&target).unwrap());
        assert!(m
            .bind(Path::new("/src"), &dir.path().join("missing"), false)
            .is_err());
        m.bind(Path::new("/src"), &target, true).unwrap();
        let m2 = FakeMounter::new(&file);
        assert!(m2.is_mounted(&target).unwrap());
        assert!(m2
            .get(&target)
            .unwrap()
            .unwrap()
            .options
            .contains(&"ro".to_string()));
        m2.unmount(&target).unwrap();
        assert!(!m.is_mounted(&target).unwrap());
        m.format_if_needed(Path::new("/dev/a"), "ext4").unwrap();
        assert!(m.format_if_needed(Path::new("/dev/a"), "xfs").is_err());
        m.resize_fs(Path::new("/dev/a"), &target, "ext4").unwrap();
    }
}
