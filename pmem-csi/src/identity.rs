//! CSI Identity service.

use crate::driver::Driver;
use bpfman_csi::v1 as csi;
use csi::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    driver: Arc<Driver>,
}

impl IdentityService {
    /// Wraps a driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        IdentityService { driver }
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        self.driver
            .call("GetPluginInfo", |d| {
                Ok(csi::GetPluginInfoResponse {
                    name: d.config.driver_name.clone(),
                    vendor_version: env!("CARGO_PKG_VERSION").to_string(),
                    manifest: [("deviceMode".to_string(), d.devices.mode().to_string())].into(),
                })
            })
            .await
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let svc = |t: service::Type| csi::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t as i32 })),
        };
        self.driver
            .call("GetPluginCapabilities", move |_| {
                Ok(csi::GetPluginCapabilitiesResponse {
                    capabilities: vec![
                        svc(service::Type::ControllerService),
                        svc(service::Type::VolumeAccessibilityConstraints),
                        csi::PluginCapability {
                            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                                r#type: volume_expansion::Type::Online as i32,
                            })),
                        },
                    ],
                })
            })
            .await
    }

    async fn probe(
        &self,
        _req: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        self.driver
            .call("Probe", |d| {
                // Ready when the device backend answers.
                d.devices.capacity()?;
                Ok(csi::ProbeResponse { ready: Some(true) })
            })
            .await
    }
}
