//! The state directory: one JSON record per volume, written atomically (temp file, fsync,
//! rename, fsync of the directory) before and after every device change.

use crate::error::{Error, Result};
use crate::validate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a volume is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeStatus {
    /// Record written, device maybe not yet created.
    Creating,
    /// Device exists.
    Ready,
    /// Deletion started, device maybe still there.
    Deleting,
}

/// How the volume is meant to be used (StorageClass parameter `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Usage {
    /// Mounted with `-o dax` (the default).
    #[default]
    AppDirect,
    /// Mounted without DAX, for ordinary file I/O.
    FileIO,
}

/// A staging of the volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staging {
    /// The staging target path.
    pub path: PathBuf,
    /// Raw block staging (nothing mounted).
    pub block: bool,
    /// File-system type when mounted.
    pub fstype: String,
}

/// A publication of the volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// Mounted read-only.
    pub readonly: bool,
    /// Raw block publication (a device bind-mounted on a file).
    pub block: bool,
}

/// Everything the driver remembers about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Volume ID (equals the CSI name for persistent volumes).
    pub id: String,
    /// Device name.
    pub device: String,
    /// Size in bytes (0 while creating).
    pub size: u64,
    /// Life-cycle state.
    pub status: VolumeStatus,
    /// File-system type asked for at creation (empty: decided at staging).
    pub fstype: String,
    /// DAX or file I/O.
    pub usage: Usage,
    /// Zero the device on deletion.
    pub erase_after: bool,
    /// Inline ephemeral volume (created in NodePublish, deleted in NodeUnpublish).
    pub ephemeral: bool,
    /// Current staging, if any.
    pub staged: Option<Staging>,
    /// Current publications by target path.
    pub published: BTreeMap<PathBuf, Publication>,
}

/// The state directory.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating if needed, mode 0700) `dir/volumes`.
    pub fn open(dir: &Path) -> Result<Self> {
        let dir = dir.join("volumes");
        fs::create_dir_all(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(StateStore { dir })
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        validate::volume_id("volume ID", id)?;
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Writes a record atomically.
    pub fn save(&self, rec: &VolumeRecord) -> Result<()> {
        let path = self.path(&rec.id)?;
        let tmp = self.dir.join(format!(".{}.tmp", rec.id));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(rec).map_err(Error::internal)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Removes a record (missing is fine).
    pub fn remove(&self, id: &str) -> Result<()> {
        match fs::remove_file(self.path(id)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => {
                fs::File::open(&self.dir)?.sync_all()?;
                Ok(())
            }
        }
    }

    /// Loads every record. Unreadable records are renamed to `*.corrupt` and reported, not
    /// silently dropped.
    pub fn load_all(&self) -> Result<(Vec<VolumeRecord>, Vec<String>)> {
        let mut recs = Vec::new();
        let mut problems = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // An interrupted save: the previous version (if any) is still in place.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let parsed = fs::read(&path)
                .map_err(Error::from)
                .and_then(|b| serde_json::from_slice::<VolumeRecord>(&b).map_err(Error::internal));
            match parsed {
                Ok(r) if r.id == id => recs.push(r),
                Ok(r) => problems.push(format!("{name}: record for {:?} in wrong file", r.id)),
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        recs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((recs, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> VolumeRecord {
        VolumeRecord {
            id: id.into(),
            device: crate::device::device_name(id),
            size: 4 << 20,
            status: VolumeStatus::Ready,
            fstype: "xfs".into(),
            usage: Usage::FileIO,
            erase_after: true,
            ephemeral: false,
            staged: Some(Staging {
                path: "/s".into(),
                block: false,
                fstype: "xfs".into(),
            }),
            published: [(
                "/t".into(),
                Publication {
                    readonly: true,
                    block: false,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        s.save(&rec("b")).unwrap();
        s.save(&rec("a")).unwrap();
        fs::write(dir.path().join("volumes/c.json"), b"{not json").unwrap();
        fs::write(dir.path().join("volumes/.d.tmp"), b"half").unwrap();
        let (recs, problems) = s.load_all().unwrap();
        assert_eq!(recs, vec![rec("a"), rec("b")]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(dir.path().join("volumes/c.corrupt").exists());
        assert!(!dir.path().join("volumes/.d.tmp").exists());
        s.remove("a").unwrap();
        s.remove("a").unwrap();
        assert_eq!(s.load_all().unwrap().0.len(), 1);
        assert!(s.save(&rec("../evil")).is_err());
    }
}
