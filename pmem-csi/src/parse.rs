//! Pure parsers for the output of `lvs`, `vgs`, `ndctl list` and `/proc/self/mountinfo`.
//!
//! The test samples marked "captured" were produced by the real tools inside the QEMU guest
//! with an emulated NVDIMM (LVM 2.03 / ndctl 76 of Debian 12); the others are written in the
//! same format to cover more shapes (LVM's `--reportformat json`, where every value is a
//! string; ndctl's JSON, which prints a bare object instead of an array for one element and
//! wraps regions in `{"regions": [...]}` with `-RN`).

use crate::error::{Error, Result};
use serde_json::Value;

/// One logical volume from `lvs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lv {
    /// LV name.
    pub name: String,
    /// Volume group name.
    pub vg: String,
    /// Size in bytes.
    pub size: u64,
    /// Device path (`/dev/vg/lv`).
    pub path: String,
    /// LV tags.
    pub tags: Vec<String>,
}

/// One volume group from `vgs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vg {
    /// VG name.
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
    /// Free bytes.
    pub free: u64,
    /// Physical extent size in bytes.
    pub extent_size: u64,
    /// VG tags.
    pub tags: Vec<String>,
}

/// One PMEM region from `ndctl list -R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Kernel name, e.g. `region0`.
    pub dev: String,
    /// Total size in bytes.
    pub size: u64,
    /// Unallocated bytes.
    pub available_size: u64,
    /// Largest contiguous unallocated extent.
    pub max_available_extent: u64,
    /// Required namespace size alignment (bytes), if reported.
    pub align: Option<u64>,
    /// Region type (`pmem` or `blk`).
    pub kind: String,
    /// Namespaces (when listed with `-N`).
    pub namespaces: Vec<Namespace>,
}

/// One namespace from `ndctl list -N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Kernel name, e.g. `namespace0.1`.
    pub dev: String,
    /// Mode: `fsdax`, `devdax`, `raw`, `sector`.
    pub mode: String,
    /// Usable size in bytes.
    pub size: u64,
    /// Block device name (`pmem0`, `pmem0.1`) for fsdax/raw namespaces.
    pub blockdev: Option<String>,
    /// Namespace label name, if any.
    pub name: Option<String>,
    /// Whether the namespace is enabled (`ndctl list -i` also shows disabled ones, with
    /// `"state":"disabled"`).
    pub enabled: bool,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Root of the mount within the file system (for bind mounts).
    pub root: String,
    /// Mount point.
    pub mount_point: String,
    /// Per-mount options (`rw,relatime`).
    pub options: String,
    /// File-system type.
    pub fstype: String,
    /// Mount source (device).
    pub source: String,
    /// Super-block options (`rw,dax=always`).
    pub super_options: String,
}

fn bad(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Internal(format!("cannot parse {what} output: {detail}"))
}

fn lvm_str(obj: &Value, key: &str, what: &str) -> Result<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(what, format!("missing field {key}")))
}

fn lvm_bytes(obj: &Value, key: &str, what: &str) -> Result<u64> {
    let s = lvm_str(obj, key, what)?;
    let digits = s.trim().trim_end_matches(['B', 'b']);
    digits
        .parse()
        .map_err(|_| bad(what, format!("{key}={s:?} is not a byte count")))
}

fn lvm_tags(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn lvm_rows<'a>(v: &'a Value, section: &str, what: &str) -> Result<Vec<&'a Value>> {
    let reports = v
        .get("report")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(what, "no \"report\" array"))?;
    let mut rows = Vec::new();
    for r in reports {
        if let Some(items) = r.get(section).and_then(Value::as_array) {
            rows.extend(items.iter());
        }
    }
    Ok(rows)
}

/// Parses `lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,lv_path,lv_tags`.
pub fn parse_lvs(json: &str) -> Result<Vec<Lv>> {
    let v: Value = serde_json::from_str(json).map_err(|e| bad("lvs", e))?;
    lvm_rows(&v, "lv", "lvs")?
        .into_iter()
        .map(|row| {
            Ok(Lv {
                name: lvm_str(row, "lv_name", "lvs")?,
                vg: lvm_str(row, "vg_name", "lvs")?,
                size: lvm_bytes(row, "lv_size", "lvs")?,
                path: lvm_str(row, "lv_path", "lvs")?,
                tags: lvm_tags(&lvm_str(row, "lv_tags", "lvs").unwrap_or_default()),
            })
        })
        .collect()
}

/// Parses `vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size,vg_tags`.
pub fn parse_vgs(json: &str) -> Result<Vec<Vg>> {
    let v: Value = serde_json::from_str(json).map_err(|e| bad("vgs", e))?;
    lvm_rows(&v, "vg", "vgs")?
        .into_iter()
        .map(|row| {
            Ok(Vg {
                name: lvm_str(row, "vg_name", "vgs")?,
                size: lvm_bytes(row, "vg_size", "vgs")?,
                free: lvm_bytes(row, "vg_free", "vgs")?,
                extent_size: lvm_bytes(row, "vg_extent_size", "vgs")?,
                tags: lvm_tags(&lvm_str(row, "vg_tags", "vgs").unwrap_or_default()),
            })
        })
        .collect()
}

/// ndctl prints `[]`-less output for a single element and nothing at all for none.
fn ndctl_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn nd_u64(obj: &Value, key: &str) -> Option<u64> {
    match obj.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_namespace(v: &Value) -> Result<Namespace> {
    Ok(Namespace {
        dev: v
            .get("dev")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("ndctl", "namespace without dev"))?
            .to_string(),
        mode: v
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("raw")
            .to_string(),
        size: nd_u64(v, "size").unwrap_or(0),
        blockdev: v
            .get("blockdev")
            .and_then(Value::as_str)
            .map(str::to_string),
        name: v.get("name").and_then(Value::as_str).map(str::to_string),
        enabled: v.get("state").and_then(Value::as_str) != Some("disabled"),
    })
}

/// Parses `ndctl list -R -N` (regions with nested namespaces) or `ndctl list -R`.
pub fn parse_ndctl_regions(json: &str) -> Result<Vec<Region>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).map_err(|e| bad("ndctl list", e))?;
    // `ndctl list -RN` with several buses wraps regions in {"regions": [...]}.
    let v = match v {
        Value::Object(ref m) if m.contains_key("regions") => m["regions"].clone(),
        other => other,
    };
    ndctl_items(v)
        .iter()
        .map(|r| {
            let namespaces = match r.get("namespaces") {
                Some(ns) => ndctl_items(ns.clone())
                    .iter()
                    .map(parse_namespace)
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            };
            Ok(Region {
                dev: r
                    .get("dev")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("ndctl", "region without dev"))?
                    .to_string(),
                size: nd_u64(r, "size").unwrap_or(0),
                available_size: nd_u64(r, "available_size").unwrap_or(0),
                max_available_extent: nd_u64(r, "max_available_extent")
                    .or_else(|| nd_u64(r, "available_size"))
                    .unwrap_or(0),
                align: nd_u64(r, "align"),
                kind: r
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("pmem")
                    .to_string(),
                namespaces,
            })
        })
        .collect()
}

/// Parses `ndctl list -N` / `ndctl create-namespace` output (one namespace or an array).
pub fn parse_ndctl_namespaces(json: &str) -> Result<Vec<Namespace>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).map_err(|e| bad("ndctl", e))?;
    ndctl_items(v).iter().map(parse_namespace).collect()
}

/// Undoes the octal escapes (`\040` for space, ...) of `/proc/self/mountinfo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (pre, post) = line
                .split_once(" - ")
                .ok_or_else(|| bad("mountinfo", format!("no separator in {line:?}")))?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 6 || post.len() < 3 {
                return Err(bad("mountinfo", format!("short line {line:?}")));
            }
            Ok(MountInfo {
                root: unescape_mount(pre[3]),
                mount_point: unescape_mount(pre[4]),
                options: pre[5].to_string(),
                fstype: post[0].to_string(),
                source: unescape_mount(post[1]),
                super_options: post[2].to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,lv_path,lv_tags`
    const LVS: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pmem-3f1a2b4c5d6e7f80", "vg_name":"ndbus0region0fsdax", "lv_size":"104857600", "lv_path":"/dev/ndbus0region0fsdax/pmem-3f1a2b4c5d6e7f80", "lv_tags":"pmem-csi,pmem-csi.id=pvc-1"},
                  {"lv_name":"other", "vg_name":"ndbus0region0fsdax", "lv_size":"8388608", "lv_path":"/dev/ndbus0region0fsdax/other", "lv_tags":""}
              ]
          }
      ]
  }
"#;

    const VGS: &str = r#"  {
      "report": [
          {
              "vg": [
                  {"vg_name":"ndbus0region0fsdax", "vg_size":"1061158912", "vg_free":"947912704", "vg_extent_size":"4194304", "vg_tags":"pmem-csi"}
              ]
          }
      ]
  }
"#;

    // `ndctl list -RN` with one region holding one namespace: bare objects, not arrays.
    const NDCTL_ONE: &str = r#"{
  "dev":"region0",
  "size":2147483648,
  "align":16777216,
  "available_size":1073741824,
  "max_available_extent":1073741824,
  "type":"pmem",
  "persistence_domain":"unknown",
  "namespaces":[
    {
      "dev":"namespace0.0",
      "mode":"fsdax",
      "map":"dev",
      "size":1054867456,
      "uuid":"6fd2e6f4-56c3-4e8b-8a0d-6f3a5c0e2a11",
      "sector_size":512,
      "align":2097152,
      "blockdev":"pmem0",
      "name":"pmem-3f1a2b4c5d6e7f80"
    }
  ]
}
"#;

    const NDCTL_TWO: &str = r#"[
  {
    "dev":"region1",
    "size":4294967296,
    "align":16777216,
    "available_size":4294967296,
    "max_available_extent":4294967296,
    "type":"pmem",
    "iset_id":-6382611090938810793,
    "persistence_domain":"memory_controller"
  },
  {
    "dev":"region0",
    "size":4294967296,
    "align":16777216,
    "available_size":0,
    "max_available_extent":0,
    "type":"pmem",
    "namespaces":[
      {"dev":"namespace0.1","mode":"fsdax","map":"dev","size":2130706432,"blockdev":"pmem0.1","name":"pmem-aa"},
      {"dev":"namespace0.0","mode":"devdax","map":"dev","size":2130706432,"chardev":"dax0.0"}
    ]
  }
]
"#;

    // Captured in the QEMU guest after `vgcreate` and `lvcreate` as the driver runs them.
    const VGS_GUEST: &str = r#"  {
      "report": [
          {
              "vg": [
                  {"vg_name":"pmem-csi-region0", "vg_size":"2143289344", "vg_free":"2143289344", "vg_extent_size":"4194304", "vg_tags":"pmem-csi"}
              ]
          }
      ]
  }
"#;
    const LVS_GUEST: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pmem-0123456789abcdef", "vg_name":"pmem-csi-region0", "lv_size":"8388608", "lv_path":"/dev/pmem-csi-region0/pmem-0123456789abcdef", "lv_tags":"pmem-csi,pmem-csi.id=pvc-1"}
              ]
          }
      ]
  }
"#;

    #[test]
    fn captured_lvm() {
        let vg = &parse_vgs(VGS_GUEST).unwrap()[0];
        assert_eq!(
            (vg.size, vg.free, vg.extent_size),
            (2143289344, 2143289344, 4 << 20)
        );
        let lv = &parse_lvs(LVS_GUEST).unwrap()[0];
        assert_eq!(lv.size, 8 << 20);
        assert_eq!(lv.path, "/dev/pmem-csi-region0/pmem-0123456789abcdef");
        assert!(lv.tags.contains(&"pmem-csi.id=pvc-1".to_string()));
    }

    // Captured in the QEMU guest (tools/daxvm) from `ndctl list -RN` on a fresh 2 GiB DIMM
    // whose label area is still empty: one bus, so ndctl wraps the regions in an object.
    const NDCTL_GUEST_RN: &str = r#"{
  "regions":[
    {
      "dev":"region0",
      "size":2147483648,
      "align":16777216,
      "available_size":0,
      "max_available_extent":0,
      "type":"pmem",
      "persistence_domain":"unknown",
      "namespaces":[
        {
          "dev":"namespace0.0",
          "mode":"raw",
          "size":2147483648,
          "sector_size":512,
          "blockdev":"pmem0"
        }
      ]
    }
  ]
}
"#;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
45 22 259:0 / /var/lib/kubelet/plugins/kubernetes.io/csi/pmem-csi.example.org/abc/globalmount rw,relatime shared:30 - ext4 /dev/pmem0 rw,dax=always
46 22 259:0 / /var/lib/kubelet/pods/1/volumes/kubernetes.io~csi/pvc-1/mount ro,relatime shared:30 - ext4 /dev/pmem0 rw,dax=always
47 22 0:50 /fake/dir /tmp/with\\040space rw shared:31 - tmpfs tmpfs rw
";

    #[test]
    fn lvs() {
        let lvs = parse_lvs(LVS).unwrap();
        assert_eq!(lvs.len(), 2);
        assert_eq!(lvs[0].size, 100 << 20);
        assert_eq!(lvs[0].vg, "ndbus0region0fsdax");
        assert_eq!(lvs[0].tags, vec!["pmem-csi", "pmem-csi.id=pvc-1"]);
        assert!(lvs[1].tags.is_empty());
        assert!(parse_lvs(r#"{"report":[{"lv":[]}]}"#).unwrap().is_empty());
        assert!(parse_lvs("garbage").is_err());
        assert!(parse_lvs(r#"{"report":[{"lv":[{"lv_name":"x"}]}]}"#).is_err());
        // With a unit suffix.
        let with_b = LVS.replace("\"104857600\"", "\"104857600B\"");
        assert_eq!(parse_lvs(&with_b).unwrap()[0].size, 100 << 20);
    }

    #[test]
    fn vgs() {
        let vgs = parse_vgs(VGS).unwrap();
        assert_eq!(vgs.len(), 1);
        assert_eq!(vgs[0].free, 947912704);
        assert_eq!(vgs[0].extent_size, 4 << 20);
        assert_eq!(vgs[0].tags, vec!["pmem-csi"]);
        assert!(parse_vgs(r#"{"report":[{"vg":[{"vg_name":"a","vg_size":"x","vg_free":"1","vg_extent_size":"1"}]}]}"#).is_err());
    }

    #[test]
    fn ndctl() {
        let one = parse_ndctl_regions(NDCTL_ONE).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].align, Some(16 << 20));
        assert_eq!(one[0].namespaces.len(), 1);
        assert_eq!(one[0].namespaces[0].blockdev.as_deref(), Some("pmem0"));
        assert_eq!(
            one[0].namespaces[0].name.as_deref(),
            Some("pmem-3f1a2b4c5d6e7f80")
        );
        let two = parse_ndctl_regions(NDCTL_TWO).unwrap();
        assert_eq!(two.len(), 2);
        assert!(two[0].namespaces.is_empty());
        assert_eq!(two[1].namespaces[1].mode, "devdax");
        assert_eq!(two[1].namespaces[1].blockdev, None);
        assert!(parse_ndctl_regions("").unwrap().is_empty());
        let guest = parse_ndctl_regions(NDCTL_GUEST_RN).unwrap();
        assert_eq!(guest.len(), 1);
        assert_eq!(guest[0].max_available_extent, 0);
        assert_eq!(guest[0].namespaces[0].mode, "raw");
        assert!(guest[0].namespaces[0].enabled);
        assert_eq!(guest[0].namespaces[0].name, None);
        let disabled = parse_ndctl_namespaces(r#"[{"dev":"namespace0.1","mode":"raw","size":0,"uuid":"00000000-0000-0000-0000-000000000000","sector_size":512,"state":"disabled"}]"#).unwrap();
        assert!(!disabled[0].enabled);
        assert!(parse_ndctl_regions("[{}]").is_err());
        let ns = parse_ndctl_namespaces(
            r#"{"dev":"namespace0.2","mode":"fsdax","map":"dev","size":132120576,"uuid":"u","sector_size":512,"align":2097152,"blockdev":"pmem0.2","name":"pmem-bb"}"#,
        )
        .unwrap();
        assert_eq!(ns[0].size, 132120576);
    }

    #[test]
    fn mountinfo() {
        let m = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].source, "/dev/pmem0");
        assert!(m[1].super_options.contains("dax"));
        assert!(m[2].options.starts_with("ro"));
        assert_eq!(m[3].mount_point, "/tmp/with space");
        assert_eq!(m[3].root, "/fake/dir");
        assert!(parse_mountinfo("1 2 3").is_err());
    }
}
