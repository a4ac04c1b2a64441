//! CSI Node service: staging (mkfs + mount -o dax), publishing (bind mounts, raw block),
//! inline ephemeral volumes, stats and file-system expansion.

use crate::device::{device_name, Device};
use crate::driver::{check_capability, is_reader_only, parse_params, Driver, CTX_EPHEMERAL};
use crate::error::{Error, Result};
use crate::state::{Publication, Staging, Usage, VolumeRecord, VolumeStatus};
use crate::validate;
use bpfman_csi::v1 as csi;
use csi::node_service_capability::{rpc::Type as Rpc, Rpc as RpcCap, Type};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Size of an inline ephemeral volume without a `size` attribute.
pub const DEFAULT_EPHEMERAL_SIZE: u64 = 100 << 20;

/// The Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    driver: Arc<Driver>,
}

impl NodeService {
    /// Wraps a driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        NodeService { driver }
    }
}

fn mount_parts(cap: &csi::VolumeCapability) -> (String, Vec<String>) {
    match &cap.access_type {
        Some(csi::volume_capability::AccessType::Mount(m)) => {
            (m.fs_type.clone(), m.mount_flags.clone())
        }
        _ => (String::new(), Vec::new()),
    }
}

fn remove_target(path: &Path) {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(e) = r {
        log::warn!("cannot remove {}: {e}", path.display());
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Driver {
    fn device_of(&self, rec: &VolumeRecord) -> Result<Device> {
        self.devices.get(&rec.device)?.ok_or_else(|| {
            Error::Internal(format!(
                "device {} of volume {} is missing",
                rec.device, rec.id
            ))
        })
    }

    fn ready_volume(&self, id: &str) -> Result<VolumeRecord> {
        self.record(id)
            .filter(|r| r.status == VolumeStatus::Ready)
            .ok_or_else(|| Error::NotFound(format!("volume {id} not found")))
    }

    fn fstype_for(&self, rec: &VolumeRecord, requested: &str) -> Result<String> {
        if !requested.is_empty() && !rec.fstype.is_empty() && requested != rec.fstype {
            return Err(Error::InvalidArgument(format!(
                "volume {} was created for {}, capability asks for {requested}",
                rec.id, rec.fstype
            )));
        }
        Ok([
            requested,
            rec.fstype.as_str(),
            self.config.default_fstype.as_str(),
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("ext4")
        .to_string())
    }

    /// Formats (if needed) and mounts `dev` on `target`: with `-o dax` unless the volume is
    /// for file I/O. In fake mode the device's directory is bind-mounted instead.
    fn mount_device(
        &self,
        rec: &VolumeRecord,
        dev: &Device,
        target: &Path,
        fstype: &str,
        flags: &[String],
        readonly: bool,
    ) -> Result<()> {
        std::fs::create_dir_all(target)?;
        if let Some(dir) = &dev.fs_dir {
            std::fs::create_dir_all(dir)?;
            return self.mounter.bind(dir, target, readonly);
        }
        self.mounter.format_if_needed(&dev.path, fstype)?;
        let mut opts: Vec<String> = flags.to_vec();
        if rec.usage == Usage::AppDirect
            && !opts.iter().any(|o| o == "dax" || o.starts_with("dax="))
        {
            opts.push("dax".into());
        }
        if readonly {
            opts.push("ro".into());
        }
        self.mounter.mount(&dev.path, target, fstype, &opts)
    }

    /// NodeStageVolume.
    pub fn node_stage_volume(
        &self,
        req: csi::NodeStageVolumeRequest,
    ) -> Result<csi::NodeStageVolumeResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        validate::target_path("staging target path", &req.staging_target_path)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("volume capability missing in request".into()))?;
        let block = check_capability(cap)?;
        let path = PathBuf::from(&req.staging_target_path);
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let mut rec = self.ready_volume(&req.volume_id)?;
        if rec.ephemeral {
            return Err(Error::InvalidArgument(format!(
                "volume {} is ephemeral",
                rec.id
            )));
        }
        let (fs, flags) = mount_parts(cap);
        let fstype = if block {
            String::new()
        } else {
            self.fstype_for(&rec, &fs)?
        };
        if let Some(s) = &rec.staged {
            if s.path != path {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} is already staged at {}",
                    rec.id,
                    s.path.display()
                )));
            }
            if s.block != block || (!block && s.fstype != fstype) {
                return Err(Error::AlreadyExists(format!(
                    "volume {} is staged at {} with another capability",
                    rec.id,
                    s.path.display()
                )));
            }
            if block || self.mounter.is_mounted(&path)? {
                return Ok(csi::NodeStageVolumeResponse {});
            }
        }
        let dev = self.device_of(&rec)?;
        if !block && !self.mounter.is_mounted(&path)? {
            self.mount_device(&rec, &dev, &path, &fstype, &flags, false)?;
        }
        rec.staged = Some(Staging {
            path,
            block,
            fstype,
        });
        self.put(rec)?;
        Ok(csi::NodeStageVolumeResponse {})
    }

    /// NodeUnstageVolume.
    pub fn node_unstage_volume(
        &self,
        req: csi::NodeUnstageVolumeRequest,
    ) -> Result<csi::NodeUnstageVolumeResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        validate::target_path("staging target path", &req.staging_target_path)?;
        let path = PathBuf::from(&req.staging_target_path);
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let mut rec = self.ready_volume(&req.volume_id)?;
        match &rec.staged {
            Some(s) if s.path == path => {}
            // Not staged here: nothing to do (idempotent).
            _ => return Ok(csi::NodeUnstageVolumeResponse {}),
        }
        if !rec.published.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is still published at {} target(s)",
                rec.id,
                rec.published.len()
            )));
        }
        self.mounter.unmount(&path)?;
        rec.staged = None;
        self.put(rec)?;
        Ok(csi::NodeUnstageVolumeResponse {})
    }

    /// NodePublishVolume.
    pub fn node_publish_volume(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> Result<csi::NodePublishVolumeResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        validate::target_path("target path", &req.target_path)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("volume capability missing in request".into()))?;
        let block = check_capability(cap)?;
        let readonly = req.readonly || is_reader_only(cap);
        let target = PathBuf::from(&req.target_path);
        let ephemeral = match req.volume_context.get(CTX_EPHEMERAL).map(String::as_str) {
            Some("true") => true,
            Some("false") | None => false,
            Some(v) => {
                return Err(Error::InvalidArgument(format!(
                    "{CTX_EPHEMERAL}={v:?} is not a boolean"
                )))
            }
        };
        if ephemeral {
            return self.publish_ephemeral(&req, cap, block, readonly, target);
        }
        validate::target_path("staging target path", &req.staging_target_path)?;
        let staging = PathBuf::from(&req.staging_target_path);
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let mut rec = self.ready_volume(&req.volume_id)?;
        let wanted = Publication { readonly, block };
        if let Some(p) = rec.published.get(&target) {
            if *p == wanted && self.mounter.is_mounted(&target)? {
                return Ok(csi::NodePublishVolumeResponse {});
            }
            if *p != wanted {
                return Err(Error::AlreadyExists(format!(
                    "volume {} is already published at {} with other options",
                    rec.id, req.target_path
                )));
            }
        }
        match &rec.staged {
            Some(s) if s.path == staging && s.block == block => {}
            Some(s) if s.path == staging => {
                return Err(Error::InvalidArgument(format!(
                    "volume {} was staged for {} access",
                    rec.id,
                    if s.block { "block" } else { "mount" }
                )))
            }
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} is not staged at {}",
                    rec.id, req.staging_target_path
                )))
            }
        }
        if !self.mounter.is_mounted(&target)? {
            if block {
                let dev = self.device_of(&rec)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if !target.exists() {
                    std::fs::File::create(&target)?;
                }
                self.mounter.bind(&dev.path, &target, readonly)?;
            } else {
                std::fs::create_dir_all(&target)?;
                self.mounter.bind(&staging, &target, readonly)?;
            }
        }
        rec.published.insert(target, wanted);
        self.put(rec)?;
        Ok(csi::NodePublishVolumeResponse {})
    }

    fn publish_ephemeral(
        &self,
        req: &csi::NodePublishVolumeRequest,
        cap: &csi::VolumeCapability,
        block: bool,
        readonly: bool,
        target: PathBuf,
    ) -> Result<csi::NodePublishVolumeResponse> {
        if block {
            return Err(Error::InvalidArgument(
                "inline ephemeral volumes must be mounted".into(),
            ));
        }
        let params = parse_params(&req.volume_context, self.devices.mode(), true)?;
        let (fs, flags) = mount_parts(cap);
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let mut rec = match self.record(&req.volume_id) {
            Some(r) if r.ephemeral && r.status == VolumeStatus::Ready => r,
            Some(r) if r.ephemeral && r.status == VolumeStatus::Deleting => {
                self.finish_delete(&r)?;
                self.new_ephemeral(req, &params, &fs)?
            }
            Some(r) if r.ephemeral => r,
            Some(_) => {
                return Err(Error::AlreadyExists(format!(
                    "volume {} exists and is not ephemeral",
                    req.volume_id
                )))
            }
            None => self.new_ephemeral(req, &params, &fs)?,
        };
        if let Some(t) = rec.published.keys().next() {
            if *t != target {
                return Err(Error::FailedPrecondition(format!(
                    "ephemeral volume {} is already published at {}",
                    rec.id,
                    t.display()
                )));
            }
            if self.mounter.is_mounted(&target)? {
                return Ok(csi::NodePublishVolumeResponse {});
            }
        }
        if rec.status == VolumeStatus::Creating {
            let size = self
                .devices
                .round_size(params.size.unwrap_or(DEFAULT_EPHEMERAL_SIZE));
            let dev = match self.devices.create(&rec.device, &rec.id, size) {
                Ok(d) => d,
                Err(e) => {
                    self.forget(&rec.id)?;
                    return Err(e);
                }
            };
            rec.size = dev.size;
            rec.status = VolumeStatus::Ready;
            self.put(rec.clone())?;
        }
        let dev = self.device_of(&rec)?;
        let fstype = rec.fstype.clone();
        if !self.mounter.is_mounted(&target)? {
            self.mount_device(&rec, &dev, &target, &fstype, &flags, readonly)?;
        }
        rec.published.insert(
            target,
            Publication {
                readonly,
                block: false,
            },
        );
        self.put(rec)?;
        Ok(csi::NodePublishVolumeResponse {})
    }

    fn new_ephemeral(
        &self,
        req: &csi::NodePublishVolumeRequest,
        params: &crate::driver::VolumeParams,
        fs: &str,
    ) -> Result<VolumeRecord> {
        let fstype = [
            fs,
            params.fstype.as_str(),
            self.config.default_fstype.as_str(),
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("ext4")
        .to_string();
        let rec = VolumeRecord {
            id: req.volume_id.clone(),
            device: device_name(&req.volume_id),
            size: 0,
            status: VolumeStatus::Creating,
            fstype,
            usage: params.usage,
            erase_after: params.erase_after,
            ephemeral: true,
            staged: None,
            published: BTreeMap::new(),
        };
        self.put(rec.clone())?;
        Ok(rec)
    }

    /// NodeUnpublishVolume.
    pub fn node_unpublish_volume(
        &self,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> Result<csi::NodeUnpublishVolumeResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        validate::target_path("target path", &req.target_path)?;
        let target = PathBuf::from(&req.target_path);
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let Some(mut rec) = self.record(&req.volume_id) else {
            // A retry after an ephemeral volume was deleted by an earlier call: the target is
            // gone, so report success (kubelet would otherwise retry forever).
            if !target.exists() && !self.mounter.is_mounted(&target)? {
                return Ok(csi::NodeUnpublishVolumeResponse {});
            }
            return Err(Error::NotFound(format!(
                "volume {} not found",
                req.volume_id
            )));
        };
        if rec.published.contains_key(&target) || self.mounter.is_mounted(&target)? {
            self.mounter.unmount(&target)?;
            remove_target(&target);
        }
        rec.published.remove(&target);
        if rec.ephemeral && rec.published.is_empty() {
            self.finish_delete(&rec)?;
        } else {
            self.put(rec)?;
        }
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    /// NodeGetVolumeStats.
    pub fn node_get_volume_stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse> {
        use csi::volume_usage::Unit;
        validate::volume_id("volume ID", &req.volume_id)?;
        validate::target_path("volume path", &req.volume_path)?;
        let rec = self.ready_volume(&req.volume_id)?;
        let path = PathBuf::from(&req.volume_path);
        if !path.exists() {
            return Err(Error::NotFound(format!(
                "volume path {} does not exist",
                req.volume_path
            )));
        }
        let known = rec.published.contains_key(&path)
            || rec.staged.as_ref().is_some_and(|s| s.path == path);
        if !known {
            return Err(Error::NotFound(format!(
                "volume {} is not staged or published at {}",
                rec.id, req.volume_path
            )));
        }
        let block = rec.published.get(&path).is_some_and(|p| p.block)
            || rec
                .staged
                .as_ref()
                .is_some_and(|s| s.path == path && s.block);
        let usage = if block {
            vec![csi::VolumeUsage {
                available: 0,
                total: to_i64(rec.size),
                used: 0,
                unit: Unit::Bytes as i32,
            }]
        } else {
            let st = rustix::fs::statvfs(&path)
                .map_err(|e| Error::Internal(format!("statvfs {}: {e}", path.display())))?;
            let frsize = st.f_frsize;
            vec![
                csi::VolumeUsage {
                    available: to_i64(st.f_bavail * frsize),
                    total: to_i64(st.f_blocks * frsize),
                    used: to_i64(st.f_blocks.saturating_sub(st.f_bfree) * frsize),
                    unit: Unit::Bytes as i32,
                },
                csi::VolumeUsage {
                    available: to_i64(st.f_ffree),
                    total: to_i64(st.f_files),
                    used: to_i64(st.f_files.saturating_sub(st.f_ffree)),
                    unit: Unit::Inodes as i32,
                },
            ]
        };
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: None,
        })
    }

    /// NodeExpandVolume: grows the file system to the (already grown) device.
    pub fn node_expand_volume(
        &self,
        req: csi::NodeExpandVolumeRequest,
    ) -> Result<csi::NodeExpandVolumeResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        validate::target_path("volume path", &req.volume_path)?;
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let rec = self.ready_volume(&req.volume_id)?;
        let (required, _) = match &req.capacity_range {
            Some(r) => (
                u64::try_from(r.required_bytes).map_err(|_| {
                    Error::InvalidArgument("required_bytes must not be negative".into())
                })?,
                0,
            ),
            None => (0, 0),
        };
        if required > rec.size {
            return Err(Error::OutOfRange(format!(
                "volume {} has {} bytes; expand it with ControllerExpandVolume first",
                rec.id, rec.size
            )));
        }
        let path = PathBuf::from(&req.volume_path);
        if !path.exists() {
            return Err(Error::NotFound(format!(
                "volume path {} does not exist",
                req.volume_path
            )));
        }
        let block = match &req.volume_capability {
            Some(c) => check_capability(c)?,
            None => rec.published.get(&path).is_some_and(|p| p.block),
        };
        if !block {
            let dev = self.device_of(&rec)?;
            if dev.fs_dir.is_none() {
                let fstype = rec
                    .staged
                    .as_ref()
                    .map(|s| s.fstype.clone())
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| rec.fstype.clone());
                let mount_point = rec.staged.as_ref().map_or(path.clone(), |s| s.path.clone());
                self.mounter.resize_fs(&dev.path, &mount_point, &fstype)?;
            }
        }
        Ok(csi::NodeExpandVolumeResponse {
            capacity_bytes: to_i64(rec.size),
        })
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("NodeStageVolume", move |d| d.node_stage_volume(req))
            .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("NodeUnstageVolume", move |d| d.node_unstage_volume(req))
            .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("NodePublishVolume", move |d| d.node_publish_volume(req))
            .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("NodeUnpublishVolume", move |d| d.node_unpublish_volume(req))
            .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("NodeGetVolumeStats", move |d| d.node_get_volume_stats(req))
            .await
    }

    async fn node_expand_volume(
        &self,
        req: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("NodeExpandVolume", move |d| d.node_expand_volume(req))
            .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let rpc = |t: Rpc| csi::NodeServiceCapability {
            r#type: Some(Type::Rpc(RpcCap { r#type: t as i32 })),
        };
        self.driver
            .call("NodeGetCapabilities", move |_| {
                Ok(csi::NodeGetCapabilitiesResponse {
                    capabilities: vec![
                        rpc(Rpc::StageUnstageVolume),
                        rpc(Rpc::GetVolumeStats),
                        rpc(Rpc::ExpandVolume),
                        rpc(Rpc::SingleNodeMultiWriter),
                    ],
                })
            })
            .await
    }

    async fn node_get_info(
        &self,
        _req: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        self.driver
            .call("NodeGetInfo", |d| {
                Ok(csi::NodeGetInfoResponse {
                    node_id: d.config.node_id.clone(),
                    max_volumes_per_node: 0,
                    accessible_topology: Some(d.config.topology()),
                })
            })
            .await
    }
}
