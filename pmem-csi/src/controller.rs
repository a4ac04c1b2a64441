//! CSI Controller service (runs on every node: PMEM is node-local).

use crate::device::device_name;
use crate::driver::{check_capability, parse_params, Driver};
use crate::error::{Error, Result};
use crate::state::{Usage, VolumeRecord, VolumeStatus};
use crate::validate;
use bpfman_csi::v1 as csi;
use csi::controller_service_capability::{rpc::Type as Rpc, Type};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Prefix of ListVolumes pagination tokens; the rest is the first volume ID of the next page.
const TOKEN_PREFIX: &str = "next:";

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    driver: Arc<Driver>,
}

impl ControllerService {
    /// Wraps a driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        ControllerService { driver }
    }
}

/// Validates a capacity range and returns (required, limit), 0 meaning "not given".
fn capacity_range(r: Option<&csi::CapacityRange>) -> Result<(u64, u64)> {
    let Some(r) = r else { return Ok((0, 0)) };
    let req = u64::try_from(r.required_bytes)
        .map_err(|_| Error::InvalidArgument("required_bytes must not be negative".into()))?;
    let lim = u64::try_from(r.limit_bytes)
        .map_err(|_| Error::InvalidArgument("limit_bytes must not be negative".into()))?;
    if lim > 0 && req > lim {
        return Err(Error::InvalidArgument(format!(
            "required_bytes {req} exceeds limit_bytes {lim}"
        )));
    }
    Ok((req, lim))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Driver {
    /// The volume as returned by CreateVolume and ListVolumes.
    fn csi_volume(&self, rec: &VolumeRecord) -> csi::Volume {
        let mut ctx: HashMap<String, String> = HashMap::new();
        ctx.insert("deviceMode".into(), self.devices.mode().to_string());
        if !rec.fstype.is_empty() {
            ctx.insert(crate::driver::PARAM_FSTYPE.into(), rec.fstype.clone());
        }
        if rec.usage == Usage::FileIO {
            ctx.insert("usage".into(), "FileIO".into());
        }
        csi::Volume {
            capacity_bytes: to_i64(rec.size),
            volume_id: rec.id.clone(),
            volume_context: ctx,
            content_source: None,
            accessible_topology: vec![self.config.topology()],
        }
    }

    fn topology_matches(&self, t: &csi::Topology) -> bool {
        t.segments
            .iter()
            .all(|(k, v)| *k == self.config.topology_key() && *v == self.config.node_id)
    }

    /// CreateVolume.
    pub fn create_volume(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse> {
        validate::volume_id("volume name", &req.name)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::InvalidArgument(
                "volume capabilities missing in request".into(),
            ));
        }
        let mut cap_fstype = String::new();
        for c in &req.volume_capabilities {
            if !check_capability(c)? {
                if let Some(csi::volume_capability::AccessType::Mount(m)) = &c.access_type {
                    if !m.fs_type.is_empty() {
                        cap_fstype = m.fs_type.clone();
                    }
                }
            }
        }
        if req.volume_content_source.is_some() {
            return Err(Error::InvalidArgument(
                "volume content sources (snapshots, clones) are not supported".into(),
            ));
        }
        let mut params = parse_params(&req.parameters, self.devices.mode(), false)?;
        if params.fstype.is_empty() {
            params.fstype = cap_fstype;
        }
        let (required, limit) = capacity_range(req.capacity_range.as_ref())?;
        if let Some(t) = &req.accessibility_requirements {
            if !t.requisite.is_empty() && !t.requisite.iter().any(|t| self.topology_matches(t)) {
                return Err(Error::ResourceExhausted(format!(
                    "volume can only be created on node {}",
                    self.config.node_id
                )));
            }
        }
        let want = if required > 0 {
            required
        } else if limit > 0 {
            self.config.default_size.min(limit)
        } else {
            self.config.default_size
        };

        let _lock = self.locks.try_lock(&req.name)?;
        if let Some(rec) = self.record(&req.name) {
            match rec.status {
                VolumeStatus::Ready => {
                    let fits = rec.size >= required && (limit == 0 || rec.size <= limit);
                    let same = rec.fstype == params.fstype
                        && rec.usage == params.usage
                        && rec.erase_after == params.erase_after;
                    if rec.ephemeral || !fits || !same {
                        return Err(Error::AlreadyExists(format!(
                            "volume {} already exists with size {} and other parameters",
                            rec.id, rec.size
                        )));
                    }
                    return Ok(csi::CreateVolumeResponse {
                        volume: Some(self.csi_volume(&rec)),
                    });
                }
                // Interrupted earlier: finish the deletion, then create afresh.
                VolumeStatus::Deleting => self.finish_delete(&rec)?,
                // Interrupted creation: fall through, creation is idempotent.
                VolumeStatus::Creating => {}
            }
        }
        let size = self.devices.round_size(want);
        if limit > 0 && size > limit {
            return Err(Error::OutOfRange(format!(
                "the smallest possible volume of at least {want} bytes has {size} bytes, more than limit_bytes {limit}"
            )));
        }
        let mut rec = VolumeRecord {
            id: req.name.clone(),
            device: device_name(&req.name),
            size: 0,
            status: VolumeStatus::Creating,
            fstype: params.fstype,
            usage: params.usage,
            erase_after: params.erase_after,
            ephemeral: false,
            staged: None,
            published: BTreeMap::new(),
        };
        // Intent first: after a crash, the record tells reconciliation what to look for.
        self.put(rec.clone())?;
        match self.devices.create(&rec.device, &rec.id, size) {
            Ok(dev) => {
                rec.size = dev.size;
                rec.status = VolumeStatus::Ready;
                self.put(rec.clone())?;
                Ok(csi::CreateVolumeResponse {
                    volume: Some(self.csi_volume(&rec)),
                })
            }
            Err(e) => {
                self.forget(&rec.id)?;
                Err(e)
            }
        }
    }

    /// Deletes device and record of `rec` (which must be locked by the caller).
    pub(crate) fn finish_delete(&self, rec: &VolumeRecord) -> Result<()> {
        let mut r = rec.clone();
        r.status = VolumeStatus::Deleting;
        self.put(r)?;
        self.devices.delete(&rec.device, rec.erase_after)?;
        self.forget(&rec.id)
    }

    /// DeleteVolume.
    pub fn delete_volume(
        &self,
        req: csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let Some(rec) = self.record(&req.volume_id) else {
            return Ok(csi::DeleteVolumeResponse {});
        };
        if rec.ephemeral {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is an inline ephemeral volume, removed by NodeUnpublishVolume",
                rec.id
            )));
        }
        if rec.staged.is_some() || !rec.published.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is still staged or published",
                rec.id
            )));
        }
        self.finish_delete(&rec)?;
        Ok(csi::DeleteVolumeResponse {})
    }

    /// ValidateVolumeCapabilities.
    pub fn validate_volume_capabilities(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::InvalidArgument(
                "volume capabilities missing in request".into(),
            ));
        }
        let rec = self
            .record(&req.volume_id)
            .filter(|r| r.status == VolumeStatus::Ready && !r.ephemeral)
            .ok_or_else(|| Error::NotFound(format!("volume {} not found", req.volume_id)))?;
        for c in &req.volume_capabilities {
            if let Err(e) = check_capability(c) {
                return Ok(csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: e.to_string(),
                });
            }
            if let Some(csi::volume_capability::AccessType::Mount(m)) = &c.access_type {
                if !m.fs_type.is_empty() && !rec.fstype.is_empty() && m.fs_type != rec.fstype {
                    return Ok(csi::ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message: format!(
                            "volume was created for {}, not {}",
                            rec.fstype, m.fs_type
                        ),
                    });
                }
            }
        }
        if let Err(e) = parse_params(&req.parameters, self.devices.mode(), false) {
            return Ok(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            });
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: HashMap::new(),
            }),
            message: String::new(),
        })
    }

    /// ListVolumes, paginated by volume ID.
    pub fn list_volumes(&self, req: csi::ListVolumesRequest) -> Result<csi::ListVolumesResponse> {
        if req.max_entries < 0 {
            return Err(Error::InvalidArgument(
                "max_entries must not be negative".into(),
            ));
        }
        let start = if req.starting_token.is_empty() {
            None
        } else {
            let id = req
                .starting_token
                .strip_prefix(TOKEN_PREFIX)
                .filter(|id| validate::volume_id("token", id).is_ok())
                .ok_or_else(|| {
                    Error::Aborted(format!("invalid starting_token {:?}", req.starting_token))
                })?;
            Some(id.to_string())
        };
        let mut vols: Vec<VolumeRecord> = self
            .records()
            .into_iter()
            .filter(|r| r.status == VolumeStatus::Ready && !r.ephemeral)
            .filter(|r| start.as_ref().is_none_or(|s| r.id >= *s))
            .collect();
        let max = if req.max_entries == 0 {
            usize::MAX
        } else {
            req.max_entries as usize
        };
        let next_token = if vols.len() > max {
            let t = format!("{TOKEN_PREFIX}{}", vols[max].id);
            vols.truncate(max);
            t
        } else {
            String::new()
        };
        Ok(csi::ListVolumesResponse {
            entries: vols
                .iter()
                .map(|r| csi::list_volumes_response::Entry {
                    volume: Some(self.csi_volume(r)),
                    status: None,
                })
                .collect(),
            next_token,
        })
    }

    /// GetCapacity.
    pub fn get_capacity(&self, req: csi::GetCapacityRequest) -> Result<csi::GetCapacityResponse> {
        let zero = csi::GetCapacityResponse {
            available_capacity: 0,
            maximum_volume_size: Some(0),
            minimum_volume_size: None,
        };
        if let Some(t) = &req.accessible_topology {
            if !self.topology_matches(t) {
                return Ok(zero);
            }
        }
        for c in &req.volume_capabilities {
            if check_capability(c).is_err() {
                return Ok(zero);
            }
        }
        if parse_params(&req.parameters, self.devices.mode(), false).is_err() {
            return Ok(zero);
        }
        let cap = self.devices.capacity()?;
        Ok(csi::GetCapacityResponse {
            available_capacity: to_i64(cap.available),
            maximum_volume_size: Some(to_i64(cap.max_volume)),
            minimum_volume_size: None,
        })
    }

    /// ControllerExpandVolume.
    pub fn controller_expand_volume(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse> {
        validate::volume_id("volume ID", &req.volume_id)?;
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("capacity_range missing in request".into()))?;
        let (required, limit) = capacity_range(Some(range))?;
        if required == 0 {
            return Err(Error::InvalidArgument(
                "required_bytes missing in request".into(),
            ));
        }
        let block = match &req.volume_capability {
            Some(c) => check_capability(c)?,
            None => false,
        };
        let _lock = self.locks.try_lock(&req.volume_id)?;
        let mut rec = self
            .record(&req.volume_id)
            .filter(|r| r.status == VolumeStatus::Ready && !r.ephemeral)
            .ok_or_else(|| Error::NotFound(format!("volume {} not found", req.volume_id)))?;
        if required > rec.size {
            let size = self.devices.round_size(required);
            if limit > 0 && size > limit {
                return Err(Error::OutOfRange(format!(
                    "{required} bytes round up to {size}, more than limit_bytes {limit}"
                )));
            }
            let dev = self.devices.expand(&rec.device, size)?;
            rec.size = dev.size;
            self.put(rec.clone())?;
        }
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: to_i64(rec.size),
            node_expansion_required: !block,
        })
    }
}

#[allow(clippy::result_large_err)] // the error type is fixed by the generated trait
fn unimplemented<T>(what: &str) -> std::result::Result<Response<T>, Status> {
    Err(Error::Unimplemented(format!("{what} is not supported by this driver")).into())
}

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("CreateVolume", move |d| d.create_volume(req))
            .await
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("DeleteVolume", move |d| d.delete_volume(req))
            .await
    }

    async fn controller_publish_volume(
        &self,
        _req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume")
    }

    async fn controller_unpublish_volume(
        &self,
        _req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume")
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("ValidateVolumeCapabilities", move |d| {
                d.validate_volume_capabilities(req)
            })
            .await
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("ListVolumes", move |d| d.list_volumes(req))
            .await
    }

    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("GetCapacity", move |d| d.get_capacity(req))
            .await
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let rpc = |t: Rpc| csi::ControllerServiceCapability {
            r#type: Some(Type::Rpc(csi::controller_service_capability::Rpc {
                r#type: t as i32,
            })),
        };
        self.driver
            .call("ControllerGetCapabilities", move |_| {
                Ok(csi::ControllerGetCapabilitiesResponse {
                    capabilities: vec![
                        rpc(Rpc::CreateDeleteVolume),
                        rpc(Rpc::ListVolumes),
                        rpc(Rpc::GetCapacity),
                        rpc(Rpc::ExpandVolume),
                        rpc(Rpc::SingleNodeMultiWriter),
                    ],
                })
            })
            .await
    }

    async fn create_snapshot(
        &self,
        _req: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        unimplemented("CreateSnapshot")
    }

    async fn delete_snapshot(
        &self,
        _req: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        unimplemented("DeleteSnapshot")
    }

    async fn list_snapshots(
        &self,
        _req: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        unimplemented("ListSnapshots")
    }

    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        self.driver
            .call("ControllerExpandVolume", move |d| {
                d.controller_expand_volume(req)
            })
            .await
    }

    async fn controller_get_volume(
        &self,
        _req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        unimplemented("ControllerGetVolume")
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::fake::FakeManager;
    use crate::driver::Config;
    use crate::mount::FakeMounter;
    use crate::state::StateStore;
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};

    fn driver(dir: &std::path::Path) -> Driver {
        Driver::new(
            Config {
                driver_name: "d".into(),
                node_id: "n".into(),
                default_size: 4 << 20,
                default_fstype: "ext4".into(),
            },
            Box::new(FakeManager::new(&dir.join("dev"), 64 << 20).unwrap()),
            Box::new(FakeMounter::new(&dir.join("mounts.json"))),
            StateStore::open(dir).unwrap(),
        )
    }

    fn req(name: &str, size: i64) -> csi::CreateVolumeRequest {
        csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: size,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume::default())),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn busy_volume_is_aborted_other_volumes_proceed() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path());
        let guard = d.locks.try_lock("v1").unwrap();
        let e = d.create_volume(req("v1", 4 << 20)).unwrap_err();
        assert!(matches!(e, Error::Aborted(_)), "{e:?}");
        let e = d
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: "v1".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, Error::Aborted(_)), "{e:?}");
        d.create_volume(req("v2", 4 << 20)).unwrap();
        drop(guard);
        d.create_volume(req("v1", 4 << 20)).unwrap();
        assert_eq!(d.records().len(), 2);
    }

    #[test]
    fn default_size_and_rounding() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path());
        let v = d.create_volume(req("a", 0)).unwrap().volume.unwrap();
        assert_eq!(v.capacity_bytes, 4 << 20);
        let v = d.create_volume(req("b", 5 << 20)).unwrap().volume.unwrap();
        assert_eq!(v.capacity_bytes, 8 << 20);
        // A smaller request for an existing, bigger volume is compatible.
        let v = d.create_volume(req("b", 1 << 20)).unwrap().volume.unwrap();
        assert_eq!(v.capacity_bytes, 8 << 20);
        let e = d.create_volume(req("c", 60 << 20)).unwrap_err();
        assert!(matches!(e, Error::ResourceExhausted(_)), "{e:?}");
        assert!(d.record("c").is_none(), "failed creation left a record");
    }
}
