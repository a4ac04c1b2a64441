//! LVM device manager: a logical volume per CSI volume, in volume groups tagged `pmem-csi`
//! that sit on fsdax namespaces (one VG per PMEM region, 4 MiB extents).

use super::{is_device_name, round_up, Capacity, Device, DeviceManager, DeviceMode};
use crate::error::{Error, Result};
use crate::exec::{Cmd, Runner};
use crate::parse::{parse_lvs, parse_ndctl_regions, parse_vgs, Lv, Vg};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Tag on every VG and LV managed by the driver.
pub const TAG: &str = "pmem-csi";
/// Prefix of the LV tag that records the volume ID.
pub const ID_TAG_PREFIX: &str = "pmem-csi.id=";
/// Extent size of the VGs the driver creates.
pub const EXTENT: u64 = 4 << 20;
/// Name of the namespace the driver creates in each region for LVM.
pub const LVM_NAMESPACE_NAME: &str = "pmem-csi-lvm";
/// Smallest region space worth turning into a VG.
const MIN_REGION_SPACE: u64 = 64 << 20;

/// LVM-backed volumes.
#[derive(Debug)]
pub struct LvmManager {
    runner: Arc<dyn Runner>,
    /// Explicit VG names; empty means "every VG tagged `pmem-csi`".
    vgs: Vec<String>,
    lock: Mutex<()>,
}

impl LvmManager {
    /// A manager for the given VGs (or, if empty, all VGs tagged `pmem-csi`).
    pub fn new(runner: Arc<dyn Runner>, vgs: Vec<String>) -> Self {
        LvmManager {
            runner,
            vgs,
            lock: Mutex::new(()),
        }
    }

    /// Prepares PMEM for LVM: for every pmem region with free space, creates one fsdax
    /// namespace over that space and a VG tagged `pmem-csi` on it. Returns the VGs created.
    pub fn setup(runner: &dyn Runner) -> Result<Vec<String>> {
        let regions = parse_ndctl_regions(&runner.run_ok(&Cmd::new("ndctl", ["list", "-R"]))?)?;
        let mut created = Vec::new();
        for r in regions.iter().filter(|r| r.kind == "pmem") {
            if r.max_available_extent < MIN_REGION_SPACE {
                continue;
            }
            let out = runner.run_ok(&Cmd::new(
                "ndctl",
                [
                    "create-namespace",
                    "--mode=fsdax",
                    "--map=dev",
                    &format!("--region={}", r.dev),
                    &format!("--name={LVM_NAMESPACE_NAME}"),
                ],
            ))?;
            let ns = crate::parse::parse_ndctl_namespaces(&out)?;
            let blockdev = ns
                .first()
                .and_then(|n| n.blockdev.clone())
                .ok_or_else(|| Error::internal("ndctl create-namespace printed no blockdev"))?;
            let vg = format!("pmem-csi-{}", r.dev);
            runner.run_ok(&Cmd::new(
                "vgcreate",
                [
                    "--yes",
                    "--addtag",
                    TAG,
                    "--physicalextentsize",
                    "4M",
                    &vg,
                    &format!("/dev/{blockdev}"),
                ],
            ))?;
            created.push(vg);
        }
        Ok(created)
    }

    /// A JSON report command (`vgs`, `lvs`) with byte units, the given columns, restricted to
    /// the configured volume groups (or to those carrying the driver's tag).
    fn report(&self, tool: &str, columns: &str) -> Cmd {
        let mut args: Vec<String> = [
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            columns,
        ]
        .map(String::from)
        .to_vec();
        if self.vgs.is_empty() {
            args.push(format!("@{TAG}"));
        } else {
            args.extend(self.vgs.iter().cloned());
        }
        Cmd::new(tool, args)
    }

    fn vgs(&self) -> Result<Vec<Vg>> {
        let cmd = self.report("vgs", "vg_name,vg_size,vg_free,vg_extent_size,vg_tags");
        parse_vgs(&self.runner.run_ok(&cmd)?)
    }

    fn lvs(&self) -> Result<Vec<Lv>> {
        let cmd = self.report("lvs", "lv_name,vg_name,lv_size,lv_path,lv_tags");
        Ok(parse_lvs(&self.runner.run_ok(&cmd)?)?
            .into_iter()
            .filter(|lv| is_device_name(&lv.name) && lv.tags.iter().any(|t| t == TAG))
            .collect())
    }

    fn to_device(lv: Lv) -> Device {
        let owner = lv
            .tags
            .iter()
            .find_map(|t| t.strip_prefix(ID_TAG_PREFIX))
            .map(str::to_string);
        Device {
            name: lv.name,
            owner,
            size: lv.size,
            path: PathBuf::from(lv.path),
            fs_dir: None,
        }
    }

    fn find(&self, name: &str) -> Result<Option<Lv>> {
        Ok(self.lvs()?.into_iter().find(|lv| lv.name == name))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DeviceManager for LvmManager {
    fn mode(&self) -> DeviceMode {
        DeviceMode::Lvm
    }

    fn round_size(&self, size: u64) -> u64 {
        round_up(size, EXTENT)
    }

    fn create(&self, name: &str, owner: &str, size: u64) -> Result<Device> {
        let _g = self.guard();
        if let Some(lv) = self.find(name)? {
            return Ok(Self::to_device(lv));
        }
        let size = self.round_size(size);
        // The VG with the most free space that fits.
        let vg = self
            .vgs()?
            .into_iter()
            .filter(|vg| vg.free >= size)
            .max_by_key(|vg| vg.free)
            .ok_or_else(|| {
                Error::ResourceExhausted(format!("no volume group has {size} bytes free"))
            })?;
        self.runner.run_ok(&Cmd::new(
            "lvcreate",
            [
                "--yes",
                "--wipesignatures",
                "y",
                "--zero",
                "y",
                "--size",
                &format!("{size}b"),
                "--name",
                name,
                "--addtag",
                TAG,
                "--addtag",
                &format!("{ID_TAG_PREFIX}{owner}"),
                &vg.name,
            ],
        ))?;
        self.find(name)?
            .map(Self::to_device)
            .ok_or_else(|| Error::internal(format!("lvcreate succeeded but {name} is not listed")))
    }

    fn delete(&self, name: &str, erase: bool) -> Result<()> {
        let _g = self.guard();
        let Some(lv) = self.find(name)? else {
            return Ok(());
        };
        if erase {
            self.runner.run_ok(&super::zero_cmd(&lv.path, lv.size))?;
        }
        self.runner.run_ok(&Cmd::new(
            "lvremove",
            ["--yes".to_string(), format!("{}/{}", lv.vg, lv.name)],
        ))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Device>> {
        let _g = self.guard();
        Ok(self.lvs()?.into_iter().map(Self::to_device).collect())
    }

    fn capacity(&self) -> Result<Capacity> {
        let _g = self.guard();
        let vgs = self.vgs()?;
        Ok(Capacity {
            total: vgs.iter().map(|v| v.size).sum(),
            available: vgs.iter().map(|v| v.free).sum(),
            max_volume: vgs.iter().map(|v| v.free).max().unwrap_or(0),
        })
    }

    fn expand(&self, name: &str, size: u64) -> Result<Device> {
        let _g = self.guard();
        let lv = self
            .find(name)?
            .ok_or_else(|| Error::NotFound(format!("LV {name} not found")))?;
        let size = self.round_size(size);
        if size <= lv.size {
            return Ok(Self::to_device(lv));
        }
        let free = self
            .vgs()?
            .into_iter()
            .find(|v| v.name == lv.vg)
            .map_or(0, |v| v.free);
        if size - lv.size > free {
            return Err(Error::ResourceExhausted(format!(
                "cannot grow {name} to {size} bytes: VG {} has {free} bytes free",
                lv.vg
            )));
        }
        self.runner.run_ok(&Cmd::new(
            "lvextend",
            [
                "--size".to_string(),
                format!("{size}b"),
                format!("{}/{}", lv.vg, lv.name),
            ],
        ))?;
        self.find(name)?
            .map(Self::to_device)
            .ok_or_else(|| Error::internal(format!("{name} vanished after lvextend")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::device_name;
    use crate::exec::{Output, ScriptedRunner};

    const VGS_ARGS: &str = "vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size,vg_tags @pmem-csi";
    const LVS_ARGS: &str = "lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,lv_path,lv_tags @pmem-csi";

    fn vgs_json(free: u64) -> String {
        format!(
            r#"  {{
      "report": [
          {{
              "vg": [
                  {{"vg_name":"pmem-csi-region0", "vg_size":"1069547520", "vg_free":"{free}", "vg_extent_size":"4194304", "vg_tags":"pmem-csi"}}
              ]
          }}
      ]
  }}"#
        )
    }

    fn lvs_json(lvs: &[(&str, u64, &str)]) -> String {
        let rows: Vec<String> = lvs
            .iter()
            .map(|(n, s, id)| {
                format!(
                    r#"{{"lv_name":"{n}", "vg_name":"pmem-csi-region0", "lv_size":"{s}", "lv_path":"/dev/pmem-csi-region0/{n}", "lv_tags":"pmem-csi,pmem-csi.id={id}"}}"#
                )
            })
            .collect();
        format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(",\n"))
    }

    #[test]
    fn create_expand_delete_runs_the_right_commands() {
        let r = Arc::new(ScriptedRunner::new());
        let name = device_name("pvc-1");
        r.expect(LVS_ARGS, Output::ok(&lvs_json(&[])))
            .expect(VGS_ARGS, Output::ok(&vgs_json(1069547520)))
            .expect(
                &format!("lvcreate --yes --wipesignatures y --zero y --size 104857600b --name {name} --addtag pmem-csi --addtag pmem-csi.id=pvc-1 pmem-csi-region0"),
                Output::ok(""),
            )
            .expect(LVS_ARGS, Output::ok(&lvs_json(&[(&name, 104857600, "pvc-1")])));
        let m = LvmManager::new(r.clone(), vec![]);
        let d = m.create(&name, "pvc-1", 100 << 20).unwrap();
        assert_eq!(d.size, 100 << 20);
        assert_eq!(d.owner.as_deref(), Some("pvc-1"));
        assert_eq!(
            d.path,
            PathBuf::from(format!("/dev/pmem-csi-region0/{name}"))
        );

        r.expect(
            LVS_ARGS,
            Output::ok(&lvs_json(&[(&name, 104857600, "pvc-1")])),
        )
        .expect(VGS_ARGS, Output::ok(&vgs_json(964689920)))
        .expect(
            &format!("lvextend --size 209715200b pmem-csi-region0/{name}"),
            Output::ok(""),
        )
        .expect(
            LVS_ARGS,
            Output::ok(&lvs_json(&[(&name, 209715200, "pvc-1")])),
        );
        assert_eq!(m.expand(&name, 200 << 20).unwrap().size, 200 << 20);

        r.expect(
            LVS_ARGS,
            Output::ok(&lvs_json(&[(&name, 209715200, "pvc-1")])),
        )
        .expect(
            &format!(
                "dd if=/dev/zero of=/dev/pmem-csi-region0/{name} bs=4096 count=51200 conv=fsync"
            ),
            Output::ok(""),
        )
        .expect(
            &format!("lvremove --yes pmem-csi-region0/{name}"),
            Output::ok(""),
        );
        m.delete(&name, true).unwrap();
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn no_room_is_resource_exhausted() {
        let r = Arc::new(ScriptedRunner::new());
        r.expect(LVS_ARGS, Output::ok(&lvs_json(&[])))
            .expect(VGS_ARGS, Output::ok(&vgs_json(4194304)));
        let m = LvmManager::new(r.clone(), vec![]);
        let e = m.create(&device_name("x"), "x", 8 << 20).unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted(_)), "{e:?}");
        r.expect(VGS_ARGS, Output::ok(&vgs_json(4194304)));
        let c = m.capacity().unwrap();
        assert_eq!(
            (c.total, c.available, c.max_volume),
            (1069547520, 4194304, 4194304)
        );
    }

    #[test]
    fn foreign_lvs_are_ignored_and_failures_reported() {
        let r = Arc::new(ScriptedRunner::new());
        r.expect(
            LVS_ARGS,
            Output::ok(r#"{"report":[{"lv":[{"lv_name":"root", "vg_name":"pmem-csi-region0", "lv_size":"4194304", "lv_path":"/dev/x/root", "lv_tags":"pmem-csi"}]}]}"#),
        )
        .expect(LVS_ARGS, Output::fail(5, "  Volume group \"x\" not found"));
        let m = LvmManager::new(r.clone(), vec![]);
        assert!(m.list().unwrap().is_empty());
        let e = m.list().unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn setup_creates_namespace_and_vg_per_region() {
        let r = ScriptedRunner::new();
        r.expect(
            "ndctl list -R",
            Output::ok(r#"[{"dev":"region1","size":1073741824,"available_size":0,"max_available_extent":0,"type":"pmem"},{"dev":"region0","size":1073741824,"available_size":1073741824,"max_available_extent":1073741824,"type":"pmem"}]"#),
        )
        .expect(
            "ndctl create-namespace --mode=fsdax --map=dev --region=region0 --name=pmem-csi-lvm",
            Output::ok(r#"{"dev":"namespace0.0","mode":"fsdax","map":"dev","size":1054867456,"uuid":"u","sector_size":512,"align":2097152,"blockdev":"pmem0","name":"pmem-csi-lvm"}"#),
        )
        .expect(
            "vgcreate --yes --addtag pmem-csi --physicalextentsize 4M pmem-csi-region0 /dev/pmem0",
            Output::ok(""),
        );
        assert_eq!(LvmManager::setup(&r).unwrap(), vec!["pmem-csi-region0"]);
        assert_eq!(r.remaining(), 0);
    }
}
