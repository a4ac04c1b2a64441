//! The driver core shared by the three CSI services: configuration, volume records,
//! per-volume locks, parameter parsing and start-up reconciliation.

use crate::device::{device_name, is_device_name, DeviceManager, DeviceMode};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::mount::Mounter;
use crate::state::{StateStore, Usage, VolumeRecord, VolumeStatus};
use crate::validate;
use bpfman_csi::v1 as csi;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Static configuration of a driver instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// CSI driver name, e.g. `pmem-csi.pmem-sdk.io`.
    pub driver_name: String,
    /// This node's ID.
    pub node_id: String,
    /// Size of a volume created without a capacity range.
    pub default_size: u64,
    /// File system used when neither the StorageClass nor the capability names one.
    pub default_fstype: String,
}

impl Config {
    /// The topology key of this driver: `<driver name>/node`.
    pub fn topology_key(&self) -> String {
        format!("{}/node", self.driver_name)
    }

    /// The topology segment of this node.
    pub fn topology(&self) -> csi::Topology {
        csi::Topology {
            segments: [(self.topology_key(), self.node_id.clone())].into(),
        }
    }
}

/// Volume parameters (StorageClass parameters or ephemeral volume attributes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeParams {
    /// `csi.storage.k8s.io/fstype` (empty: not given).
    pub fstype: String,
    /// `usage`.
    pub usage: Usage,
    /// `eraseafter`.
    pub erase_after: bool,
    /// `size` (ephemeral volumes only).
    pub size: Option<u64>,
}

/// StorageClass parameter naming the file system.
pub const PARAM_FSTYPE: &str = "csi.storage.k8s.io/fstype";
/// Volume context key marking an inline ephemeral volume.
pub const CTX_EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(Error::InvalidArgument(format!(
            "parameter {key}: {v:?} is not a boolean"
        ))),
    }
}

/// Checks a file-system type name.
pub fn check_fstype(fstype: &str) -> Result<()> {
    match fstype {
        "" | "ext4" | "xfs" => Ok(()),
        other => Err(Error::InvalidArgument(format!(
            "unsupported file system type {other:?} (ext4 or xfs)"
        ))),
    }
}

/// Parses volume parameters. Keys under `csi.storage.k8s.io/` that the driver does not use
/// (PVC name, pod info, ...) are ignored; any other unknown key is an error, so typos in a
/// StorageClass do not pass silently.
pub fn parse_params(
    params: &HashMap<String, String>,
    mode: DeviceMode,
    ephemeral: bool,
) -> Result<VolumeParams> {
    let mut p = VolumeParams::default();
    for (k, v) in params {
        match k.as_str() {
            PARAM_FSTYPE | "fsType" => {
                check_fstype(v)?;
                p.fstype = v.clone();
            }
            "eraseafter" => p.erase_after = parse_bool(k, v)?,
            "usage" => {
                p.usage = match v.as_str() {
                    "AppDirect" => Usage::AppDirect,
                    "FileIO" => Usage::FileIO,
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "parameter usage: {v:?} is neither AppDirect nor FileIO"
                        )))
                    }
                }
            }
            "volumeType" => {
                if v != "PMEM" {
                    return Err(Error::InvalidArgument(format!(
                        "parameter volumeType: only PMEM is supported, not {v:?}"
                    )));
                }
            }
            "pmemType" => {
                let want = match v.as_str() {
                    "lvm" => DeviceMode::Lvm,
                    "direct" => DeviceMode::Direct,
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "parameter pmemType: {v:?} is neither lvm nor direct"
                        )))
                    }
                };
                if mode != DeviceMode::Fake && mode != want {
                    return Err(Error::InvalidArgument(format!(
                        "parameter pmemType={v} but this driver runs in {mode} mode"
                    )));
                }
            }
            "size" if ephemeral => p.size = Some(validate::parse_quantity(v)?),
            CTX_EPHEMERAL => {}
            k if k.starts_with("csi.storage.k8s.io/") => {}
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    Ok(p)
}

/// Checks one volume capability; returns whether it asks for raw block access.
pub fn check_capability(cap: &csi::VolumeCapability) -> Result<bool> {
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::AccessType;
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("volume capability without access mode".into()))?;
    match Mode::try_from(mode.mode) {
        Ok(
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter,
        ) => {}
        Ok(m) => {
            return Err(Error::InvalidArgument(format!(
                "access mode {} is not supported by node-local PMEM",
                m.as_str_name()
            )))
        }
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "unknown access mode {}",
                mode.mode
            )))
        }
    }
    match &cap.access_type {
        Some(AccessType::Block(_)) => Ok(true),
        Some(AccessType::Mount(m)) => {
            check_fstype(&m.fs_type)?;
            for f in &m.mount_flags {
                if f.is_empty() || f.contains(',') || f.chars().any(char::is_control) {
                    return Err(Error::InvalidArgument(format!("invalid mount flag {f:?}")));
                }
            }
            Ok(false)
        }
        None => Err(Error::InvalidArgument(
            "volume capability without access type".into(),
        )),
    }
}

/// Whether the capability's access mode is a reader-only one.
pub fn is_reader_only(cap: &csi::VolumeCapability) -> bool {
    use csi::volume_capability::access_mode::Mode;
    cap.access_mode
        .as_ref()
        .is_some_and(|m| m.mode == Mode::SingleNodeReaderOnly as i32)
}

/// Set of volume IDs with an operation in flight.
#[derive(Debug, Default)]
pub struct VolumeLocks {
    busy: Mutex<HashSet<String>>,
}

/// Holds a volume lock; released on drop.
#[derive(Debug)]
pub struct VolumeGuard<'a> {
    locks: &'a VolumeLocks,
    id: String,
}

impl VolumeLocks {
    /// Takes the lock of `id`, or fails with `Aborted` if another call holds it.
    pub fn try_lock(&self, id: &str) -> Result<VolumeGuard<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(id.to_string()) {
            return Err(Error::Aborted(format!(
                "an operation on volume {id} is already in progress"
            )));
        }
        Ok(VolumeGuard {
            locks: self,
            id: id.to_string(),
        })
    }
}

impl Drop for VolumeGuard<'_> {
    fn drop(&mut self) {
        self.locks
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// What start-up reconciliation found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Volumes known after reconciliation.
    pub volumes: usize,
    /// Interrupted creations completed.
    pub completed_creates: usize,
    /// Interrupted creations rolled back (no device had been made).
    pub dropped_creates: usize,
    /// Interrupted deletions completed.
    pub completed_deletes: usize,
    /// Devices without a record, adopted as volumes.
    pub adopted: usize,
    /// Records whose device is missing.
    pub missing_devices: Vec<String>,
    /// Stagings/publications dropped because nothing is mounted there any more.
    pub stale_mounts: usize,
    /// Unreadable records.
    pub problems: Vec<String>,
    /// Half-made allocations (e.g. namespaces) removed.
    pub partial_removed: usize,
}

/// The driver.
#[derive(Debug)]
pub struct Driver {
    /// Configuration.
    pub config: Config,
    /// Device backend.
    pub devices: Box<dyn DeviceManager>,
    /// Mount backend.
    pub mounter: Box<dyn Mounter>,
    /// Operation metrics.
    pub metrics: Metrics,
    /// Per-volume locks.
    pub locks: VolumeLocks,
    store: StateStore,
    volumes: Mutex<BTreeMap<String, VolumeRecord>>,
}

impl Driver {
    /// Creates a driver; call [`Driver::reconcile`] before serving.
    pub fn new(
        config: Config,
        devices: Box<dyn DeviceManager>,
        mounter: Box<dyn Mounter>,
        store: StateStore,
    ) -> Self {
        Driver {
            config,
            devices,
            mounter,
            metrics: Metrics::default(),
            locks: VolumeLocks::default(),
            store,
            volumes: Mutex::new(BTreeMap::new()),
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<String, VolumeRecord>> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the record of `id`.
    pub fn record(&self, id: &str) -> Option<VolumeRecord> {
        self.table().get(id).cloned()
    }

    /// Copies of all records.
    pub fn records(&self) -> Vec<VolumeRecord> {
        self.table().values().cloned().collect()
    }

    /// Persists and caches a record.
    pub fn put(&self, rec: VolumeRecord) -> Result<()> {
        self.store.save(&rec)?;
        self.table().insert(rec.id.clone(), rec);
        Ok(())
    }

    /// Forgets a record.
    pub fn forget(&self, id: &str) -> Result<()> {
        self.store.remove(id)?;
        self.table().remove(id);
        Ok(())
    }

    /// Brings records and devices into agreement after a (re)start.
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let (recs, problems) = self.store.load_all()?;
        report.problems = problems;
        for p in self.devices.cleanup_partial()? {
            log::warn!("removed the remains of an interrupted allocation: {p}");
            report.partial_removed += 1;
        }
        let mut devices: BTreeMap<String, _> = self
            .devices
            .list()?
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        for mut rec in recs {
            let dev = devices.remove(&rec.device);
            match rec.status {
                VolumeStatus::Deleting => {
                    self.devices.delete(&rec.device, rec.erase_after)?;
                    self.store.remove(&rec.id)?;
                    report.completed_deletes += 1;
                    continue;
                }
                VolumeStatus::Creating => match dev {
                    Some(d) => {
                        rec.size = d.size;
                        rec.status = VolumeStatus::Ready;
                        report.completed_creates += 1;
                    }
                    None => {
                        self.store.remove(&rec.id)?;
                        report.dropped_creates += 1;
                        continue;
                    }
                },
                VolumeStatus::Ready => match dev {
                    Some(d) => rec.size = d.size,
                    None => {
                        log::error!("volume {}: device {} is missing", rec.id, rec.device);
                        report.missing_devices.push(rec.id.clone());
                    }
                },
            }
            if let Some(s) = &rec.staged {
                if !s.block && !self.mounter.is_mounted(&s.path)? {
                    rec.staged = None;
                    report.stale_mounts += 1;
                }
            }
            let before = rec.published.len();
            let mut kept = BTreeMap::new();
            for (t, p) in std::mem::take(&mut rec.published) {
                if self.mounter.is_mounted(&t)? {
                    kept.insert(t, p);
                }
            }
            rec.published = kept;
            report.stale_mounts += before - rec.published.len();
            self.put(rec)?;
        }
        // Devices nobody remembers (state directory lost): adopt them so they can be listed
        // and deleted instead of leaking.
        for (name, d) in devices {
            let id = d
                .owner
                .clone()
                .filter(|o| validate::volume_id("owner", o).is_ok() && device_name(o) == name)
                .unwrap_or_else(|| name.clone());
            if !is_device_name(&name) || self.record(&id).is_some() {
                continue;
            }
            log::warn!("adopting device {name} without a record as volume {id}");
            self.put(VolumeRecord {
                id,
                device: name,
                size: d.size,
                status: VolumeStatus::Ready,
                fstype: String::new(),
                usage: Usage::AppDirect,
                erase_after: false,
                ephemeral: false,
                staged: None,
                published: BTreeMap::new(),
            })?;
            report.adopted += 1;
        }
        report.volumes = self.table().len();
        Ok(report)
    }

    /// Renders the Prometheus metrics.
    pub fn render_metrics(&self) -> String {
        let cap = match self.devices.capacity() {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("metrics: capacity unavailable: {e}");
                None
            }
        };
        self.metrics.render(cap, self.table().len())
    }

    /// Runs a blocking CSI handler off the async workers, records metrics and converts the
    /// error (the one place where [`Error`] becomes a [`tonic::Status`]).
    pub async fn call<T, F>(
        self: &Arc<Self>,
        method: &'static str,
        f: F,
    ) -> std::result::Result<tonic::Response<T>, tonic::Status>
    where
        T: Send + 'static,
        F: FnOnce(&Driver) -> Result<T> + Send + 'static,
    {
        let start = Instant::now();
        let d = Arc::clone(self);
        let res = tokio::task::spawn_blocking(move || f(&d))
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("handler panicked: {e}"))));
        let code = res.as_ref().map_or_else(Error::code, |_| tonic::Code::Ok);
        self.metrics.observe(method, code, start.elapsed());
        match res {
            Ok(v) => {
                log::debug!("{method}: OK");
                Ok(tonic::Response::new(v))
            }
            Err(e) => {
                if code == tonic::Code::Internal {
                    log::error!("{method}: {e}");
                } else {
                    log::info!("{method}: {code:?}: {e}");
                }
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi::volume_capability::{
        access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
    };

    fn cap(mode: Mode, block: bool) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: "xfs".into(),
                    ..Default::default()
                })
            }),
        }
    }

    #[test]
    fn params() {
        let m = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = parse_params(
            &m(&[
                (PARAM_FSTYPE, "xfs"),
                ("eraseafter", "true"),
                ("usage", "FileIO"),
                ("volumeType", "PMEM"),
                ("pmemType", "lvm"),
                ("csi.storage.k8s.io/pvc/name", "x"),
            ]),
            DeviceMode::Lvm,
            false,
        )
        .unwrap();
        assert_eq!(p.fstype, "xfs");
        assert!(p.erase_after);
        assert_eq!(p.usage, Usage::FileIO);
        for bad in [
            &[("pmemType", "direct")][..],
            &[(PARAM_FSTYPE, "btrfs")],
            &[("usage", "fast")],
            &[("volumeType", "LVM")],
            &[("eraseafter", "maybe")],
            &[("sizee", "1")],
            &[("size", "1Gi")],
        ] {
            assert!(
                parse_params(&m(bad), DeviceMode::Lvm, false).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_params(&m(&[("size", "500Mi")]), DeviceMode::Fake, true)
                .unwrap()
                .size,
            Some(500 << 20)
        );
        assert!(parse_params(&m(&[("size", "lots")]), DeviceMode::Fake, true).is_err());
    }

    #[test]
    fn capabilities() {
        assert!(!check_capability(&cap(Mode::SingleNodeWriter, false)).unwrap());
        assert!(check_capability(&cap(Mode::SingleNodeReaderOnly, true)).unwrap());
        assert!(check_capability(&cap(Mode::MultiNodeMultiWriter, false)).is_err());
        assert!(check_capability(&csi::VolumeCapability::default()).is_err());
        assert!(is_reader_only(&cap(Mode::SingleNodeReaderOnly, false)));
    }

    #[test]
    fn locks_are_exclusive_per_volume() {
        let l = VolumeLocks::default();
        let a = l.try_lock("a").unwrap();
        assert!(matches!(l.try_lock("a"), Err(Error::Aborted(_))));
        let _b = l.try_lock("b").unwrap();
        drop(a);
        l.try_lock("a").unwrap();
    }

    #[test]
    fn reconcile_finishes_interrupted_operations_and_adopts_orphans() {
        use crate::device::fake::FakeManager;
        use crate::mount::FakeMounter;
        use crate::state::{Publication, Staging};
        let dir = tempfile::tempdir().unwrap();
        let devdir = dir.path().join("dev");
        let new_driver = || {
            Driver::new(
                Config {
                    driver_name: "d".into(),
                    node_id: "n".into(),
                    default_size: 4 << 20,
                    default_fstype: "ext4".into(),
                },
                Box::new(FakeManager::new(&devdir, 64 << 20).unwrap()),
                Box::new(FakeMounter::new(&dir.path().join("mounts.json"))),
                StateStore::open(dir.path()).unwrap(),
            )
        };
        let rec = |id: &str, status| VolumeRecord {
            id: id.into(),
            device: device_name(id),
            size: 0,
            status,
            fstype: String::new(),
            usage: Usage::AppDirect,
            erase_after: false,
            ephemeral: false,
            staged: None,
            published: BTreeMap::new(),
        };
        let d = new_driver();
        // Crashed after creating the device but before marking the record ready.
        d.put(rec("created", VolumeStatus::Creating)).unwrap();
        d.devices
            .create(&device_name("created"), "created", 4 << 20)
            .unwrap();
        // Crashed before creating the device.
        d.put(rec("never", VolumeStatus::Creating)).unwrap();
        // Crashed in the middle of a deletion.
        d.put(rec("deleting", VolumeStatus::Deleting)).unwrap();
        d.devices
            .create(&device_name("deleting"), "deleting", 8 << 20)
            .unwrap();
        // A device whose record was lost.
        d.devices
            .create(&device_name("orphan"), "orphan", 4 << 20)
            .unwrap();
        // A ready volume: one publication still mounted, one staging gone.
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        d.devices
            .create(&device_name("ready"), "ready", 4 << 20)
            .unwrap();
        let mut r = rec("ready", VolumeStatus::Ready);
        r.size = 4 << 20;
        r.staged = Some(Staging {
            path: dir.path().join("gone"),
            block: false,
            fstype: "ext4".into(),
        });
        r.published.insert(
            target.clone(),
            Publication {
                readonly: false,
                block: false,
            },
        );
        r.published.insert(
            dir.path().join("gone2"),
            Publication {
                readonly: false,
                block: false,
            },
        );
        d.put(r).unwrap();
        d.mounter
            .bind(&dir.path().join("x"), &target, false)
            .unwrap();
        // A ready volume whose device disappeared.
        d.put(rec("lost", VolumeStatus::Ready)).unwrap();
        drop(d);

        let d = new_driver();
        let report = d.reconcile().unwrap();
        assert_eq!(report.completed_creates, 1, "{report:?}");
        assert_eq!(report.dropped_creates, 1);
        assert_eq!(report.completed_deletes, 1);
        assert_eq!(report.adopted, 1);
        assert_eq!(report.missing_devices, vec!["lost".to_string()]);
        assert_eq!(report.stale_mounts, 2);
        let ids: Vec<String> = d.records().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["created", "lost", "orphan", "ready"]);
        assert_eq!(d.record("created").unwrap().status, VolumeStatus::Ready);
        assert_eq!(d.record("created").unwrap().size, 4 << 20);
        let ready = d.record("ready").unwrap();
        assert!(ready.staged.is_none());
        assert_eq!(ready.published.keys().collect::<Vec<_>>(), [&target]);
        assert!(d.devices.get(&device_name("deleting")).unwrap().is_none());
        // Nothing leaked: the devices are exactly the volumes with devices.
        assert_eq!(d.devices.list().unwrap().len(), 3);
        // A second start finds a consistent state.
        drop(d);
        let d = new_driver();
        let again = d.reconcile().unwrap();
        assert_eq!(
            (again.completed_creates, again.adopted, again.stale_mounts),
            (0, 0, 0)
        );
        assert_eq!(again.volumes, 4);
    }
}
