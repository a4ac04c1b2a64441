//! Direct device manager: one fsdax namespace per volume, created with `ndctl`.

use super::{is_device_name, round_up, Capacity, Device, DeviceManager, DeviceMode};
use crate::error::{Error, Result};
use crate::exec::{Cmd, Runner};
use crate::parse::{parse_ndctl_namespaces, parse_ndctl_regions, Namespace, Region};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Alignment used when a region does not report one.
pub const DEFAULT_ALIGN: u64 = 16 << 20;

/// Namespaces as volumes.
#[derive(Debug)]
pub struct DirectManager {
    runner: Arc<dyn Runner>,
    /// Size alignment used for rounding (largest alignment of all regions).
    align: u64,
    lock: Mutex<()>,
}

impl DirectManager {
    /// Creates the manager and reads the regions' alignment.
    pub fn new(runner: Arc<dyn Runner>) -> Result<Self> {
        let regions = Self::regions_with(&*runner)?;
        let align = regions
            .iter()
            .filter_map(|r| r.align)
            .max()
            .unwrap_or(DEFAULT_ALIGN)
            .max(4096);
        Ok(DirectManager {
            runner,
            align,
            lock: Mutex::new(()),
        })
    }

    fn regions_with(runner: &dyn Runner) -> Result<Vec<Region>> {
        // -i: also idle (disabled) namespaces, which hold space too.
        Ok(
            parse_ndctl_regions(&runner.run_ok(&Cmd::new("ndctl", ["list", "-R", "-N", "-i"]))?)?
                .into_iter()
                .filter(|r| r.kind == "pmem")
                .collect(),
        )
    }

    /// Namespaces named by the driver, complete or not.
    fn namespaces(&self) -> Result<Vec<Namespace>> {
        Ok(Self::regions_with(&*self.runner)?
            .into_iter()
            .flat_map(|r| r.namespaces)
            .filter(|ns| ns.name.as_deref().is_some_and(is_device_name))
            .collect())
    }

    /// A namespace that `ndctl create-namespace` finished: enabled fsdax with a block device.
    fn complete(ns: &Namespace) -> bool {
        ns.enabled && ns.mode == "fsdax" && ns.blockdev.is_some()
    }

    fn to_device(ns: Namespace) -> Result<Device> {
        let blockdev = ns
            .blockdev
            .ok_or_else(|| Error::internal(format!("namespace {} has no block device", ns.dev)))?;
        Ok(Device {
            name: ns.name.unwrap_or_default(),
            owner: None,
            size: ns.size,
            path: PathBuf::from(format!("/dev/{blockdev}")),
            fs_dir: None,
        })
    }

    fn find(&self, name: &str) -> Result<Option<Namespace>> {
        Ok(self
            .namespaces()?
            .into_iter()
            .find(|ns| ns.name.as_deref() == Some(name)))
    }

    fn destroy(&self, dev: &str) -> Result<()> {
        self.runner
            .run_ok(&Cmd::new("ndctl", ["disable-namespace", dev]))?;
        self.runner
            .run_ok(&Cmd::new("ndctl", ["destroy-namespace", "--force", dev]))?;
        Ok(())
    }

    fn create_ns(&self, region: &str, name: &str, size: u64) -> Result<Namespace> {
        let out = self.runner.run_ok(&Cmd::new(
            "ndctl",
            [
                "create-namespace".to_string(),
                "--mode=fsdax".to_string(),
                "--map=dev".to_string(),
                format!("--region={region}"),
                format!("--size={size}"),
                format!("--name={name}"),
            ],
        ))?;
        parse_ndctl_namespaces(&out)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("ndctl create-namespace printed nothing"))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DeviceManager for DirectManager {
    fn mode(&self) -> DeviceMode {
        DeviceMode::Direct
    }

    fn round_size(&self, size: u64) -> u64 {
        round_up(size, self.align)
    }

    fn create(&self, name: &str, _owner: &str, size: u64) -> Result<Device> {
        let _g = self.guard();
        if let Some(ns) = self.find(name)? {
            if Self::complete(&ns) {
                return Self::to_device(ns);
            }
            // Left half-made by a crash: start over.
            self.destroy(&ns.dev)?;
        }
        let regions = Self::regions_with(&*self.runner)?;
        let pick = |need: u64| {
            regions
                .iter()
                .filter(|r| {
                    round_up(need, r.align.unwrap_or(DEFAULT_ALIGN)) <= r.max_available_extent
                })
                .max_by_key(|r| r.max_available_extent)
        };
        let mut want = self.round_size(size);
        let region = pick(want).ok_or_else(|| {
            Error::ResourceExhausted(format!("no PMEM region has {want} contiguous bytes free"))
        })?;
        let align = region.align.unwrap_or(DEFAULT_ALIGN);
        want = round_up(want, align);
        let mut ns = self.create_ns(&region.dev, name, want)?;
        // fsdax keeps its page map on the namespace: the usable size is smaller than the
        // allocation. Grow the allocation once by the difference if that made it too small.
        if ns.size < size {
            self.destroy(&ns.dev)?;
            want = round_up(want + (size - ns.size), align);
            if want > region.max_available_extent {
                return Err(Error::ResourceExhausted(format!(
                    "{size} usable bytes need {want} bytes in {}, which has {} free",
                    region.dev, region.max_available_extent
                )));
            }
            ns = self.create_ns(&region.dev, name, want)?;
        }
        let dev = Self::to_device(ns)?;
        // A new namespace may cover space of a deleted one: wipe the old file-system
        // signatures so that staging never mounts another volume's data.
        self.runner.run_ok(&super::zero_cmd(
            &dev.path.to_string_lossy(),
            (1 << 20).min(dev.size),
        ))?;
        Ok(dev)
    }

    fn delete(&self, name: &str, erase: bool) -> Result<()> {
        let _g = self.guard();
        let Some(ns) = self.find(name)? else {
            return Ok(());
        };
        if erase && Self::complete(&ns) {
            if let Some(b) = &ns.blockdev {
                self.runner
                    .run_ok(&super::zero_cmd(&format!("/dev/{b}"), ns.size))?;
            }
        }
        self.destroy(&ns.dev)
    }

    fn list(&self) -> Result<Vec<Device>> {
        let _g = self.guard();
        self.namespaces()?
            .into_iter()
            .filter(Self::complete)
            .map(Self::to_device)
            .collect()
    }

    fn cleanup_partial(&self) -> Result<Vec<String>> {
        let _g = self.guard();
        let mut removed = Vec::new();
        for ns in Self::regions_with(&*self.runner)?
            .into_iter()
            .flat_map(|r| r.namespaces)
        {
            let ours = ns.name.as_deref().is_some_and(is_device_name);
            // An interrupted `ndctl create-namespace` leaves a disabled namespace that has a
            // size but possibly no name yet. Seed namespaces have size 0.
            let leftover =
                (ours && !Self::complete(&ns)) || (ns.name.is_none() && !ns.enabled && ns.size > 0);
            if leftover {
                self.destroy(&ns.dev)?;
                removed.push(format!("{} ({:?}, {} bytes)", ns.dev, ns.name, ns.size));
            }
        }
        Ok(removed)
    }

    fn capacity(&self) -> Result<Capacity> {
        let _g = self.guard();
        let regions = Self::regions_with(&*self.runner)?;
        Ok(Capacity {
            total: regions.iter().map(|r| r.size).sum(),
            available: regions.iter().map(|r| r.available_size).sum(),
            max_volume: regions
                .iter()
                .map(|r| {
                    let a = r.align.unwrap_or(DEFAULT_ALIGN);
                    r.max_available_extent / a * a
                })
                .max()
                .unwrap_or(0),
        })
    }

    fn expand(&self, _name: &str, _size: u64) -> Result<Device> {
        Err(Error::Unimplemented(
            "volume expansion is not supported in direct mode (namespaces cannot grow)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::device_name;
    use crate::exec::{Output, ScriptedRunner};

    fn regions(avail: u64, namespaces: &str) -> String {
        format!(
            r#"[{{"dev":"region0","size":2147483648,"align":16777216,"available_size":{avail},"max_available_extent":{avail},"type":"pmem","persistence_domain":"unknown","namespaces":[{namespaces}]}}]"#
        )
    }

    fn ns(name: &str, size: u64) -> String {
        format!(
            r#"{{"dev":"namespace0.1","mode":"fsdax","map":"dev","size":{size},"uuid":"0b9b5a4e-2f7c-4d22-9f8e-8c1b1e2f3a4d","sector_size":512,"align":2097152,"blockdev":"pmem0.1","name":"{name}"}}"#
        )
    }

    #[test]
    fn create_compensates_for_page_map_and_deletes() {
        let r = Arc::new(ScriptedRunner::new());
        let name = device_name("pvc-7");
        r.expect("ndctl list -R -N -i", Output::ok(&regions(2147483648, "")));
        let m = DirectManager::new(r.clone()).unwrap();
        assert_eq!(m.round_size(1), 16 << 20);
        r.expect("ndctl list -R -N -i", Output::ok(&regions(2147483648, "")))
            .expect("ndctl list -R -N -i", Output::ok(&regions(2147483648, "")))
            .expect(
                &format!("ndctl create-namespace --mode=fsdax --map=dev --region=region0 --size=268435456 --name={name}"),
                // 256 MiB minus the 4 MiB page map.
                Output::ok(&ns(&name, 264241152)),
            )
            .expect("ndctl disable-namespace namespace0.1", Output::ok(""))
            .expect("ndctl destroy-namespace --force namespace0.1", Output::ok(""))
            .expect(
                &format!("ndctl create-namespace --mode=fsdax --map=dev --region=region0 --size=285212672 --name={name}"),
                Output::ok(&ns(&name, 280887296)),
            )
            .expect("dd if=/dev/zero of=/dev/pmem0.1 bs=4096 count=256 conv=fsync", Output::ok(""));
        let d = m.create(&name, "pvc-7", 256 << 20).unwrap();
        assert!(d.size >= 256 << 20);
        assert_eq!(d.path, PathBuf::from("/dev/pmem0.1"));

        r.expect(
            "ndctl list -R -N -i",
            Output::ok(&regions(1862270976, &ns(&name, 280887296))),
        )
        .expect("ndctl disable-namespace namespace0.1", Output::ok(""))
        .expect(
            "ndctl destroy-namespace --force namespace0.1",
            Output::ok(""),
        );
        m.delete(&name, false).unwrap();
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn capacity_and_exhaustion() {
        let r = Arc::new(ScriptedRunner::new());
        r.expect("ndctl list -R -N -i", Output::ok(&regions(100 << 20, "")));
        let m = DirectManager::new(r.clone()).unwrap();
        r.expect("ndctl list -R -N -i", Output::ok(&regions(100 << 20, "")));
        let c = m.capacity().unwrap();
        assert_eq!(
            (c.total, c.available, c.max_volume),
            (2 << 30, 100 << 20, 96 << 20)
        );
        r.expect("ndctl list -R -N -i", Output::ok(&regions(100 << 20, "")))
            .expect("ndctl list -R -N -i", Output::ok(&regions(100 << 20, "")));
        let e = m.create(&device_name("big"), "big", 200 << 20).unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted(_)), "{e:?}");
        assert!(matches!(m.expand("x", 1), Err(Error::Unimplemented(_))));
    }

    #[test]
    fn cleanup_removes_interrupted_creations_only() {
        let r = Arc::new(ScriptedRunner::new());
        let ours = device_name("a");
        let half = device_name("b");
        let nss = [
            ns(&ours, 264241152).replace("namespace0.1", "namespace0.0"),
            format!(r#"{{"dev":"namespace0.2","mode":"raw","size":33554432,"uuid":"u2","sector_size":512,"state":"disabled","name":"{half}"}}"#),
            r#"{"dev":"namespace0.3","mode":"raw","size":16777216,"uuid":"u3","sector_size":512,"state":"disabled"}"#.to_string(),
            r#"{"dev":"namespace0.4","mode":"raw","size":0,"uuid":"00000000-0000-0000-0000-000000000000","sector_size":512,"state":"disabled"}"#.to_string(),
            r#"{"dev":"namespace0.5","mode":"fsdax","map":"dev","size":16777216,"blockdev":"pmem0.5","name":"admin"}"#.to_string(),
        ]
        .join(",");
        r.expect("ndctl list -R -N -i", Output::ok(&regions(1 << 30, &nss)));
        let m = DirectManager::new(r.clone()).unwrap();
        r.expect("ndctl list -R -N -i", Output::ok(&regions(1 << 30, &nss)))
            .expect("ndctl disable-namespace namespace0.2", Output::ok(""))
            .expect(
                "ndctl destroy-namespace --force namespace0.2",
                Output::ok(""),
            )
            .expect("ndctl disable-namespace namespace0.3", Output::ok(""))
            .expect(
                "ndctl destroy-namespace --force namespace0.3",
                Output::ok(""),
            );
        assert_eq!(m.cleanup_partial().unwrap().len(), 2);
        r.expect("ndctl list -R -N -i", Output::ok(&regions(1 << 30, &nss)));
        let devs = m.list().unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].name, ours);
        assert_eq!(r.remaining(), 0);
    }
}
