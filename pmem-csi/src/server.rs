//! Serving the three CSI services on a Unix socket.

use crate::controller::ControllerService;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::identity::IdentityService;
use crate::node::NodeService;
use bpfman_csi::v1 as csi;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Extracts the socket path from `unix:///path` (or `unix:/path`). Only Unix sockets are
/// accepted: the driver never listens on the network for CSI.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| {
            Error::InvalidArgument(format!("endpoint {endpoint:?} is not a unix:// socket"))
        })?;
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "socket path {path:?} is not absolute"
        )));
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(endpoint: &str) -> Result<tokio::net::UnixListener> {
    let path = socket_path(endpoint)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    // Create the socket file with no group/other permissions from the start (no window
    // in which another user could connect), then make that explicit.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = tokio::net::UnixListener::bind(&path);
    rustix::process::umask(old);
    let listener = listener?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves Identity, Controller and Node on `listener` until `shutdown` completes.
pub async fn serve(
    driver: Arc<Driver>,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(csi::identity_server::IdentityServer::new(
            IdentityService::new(driver.clone()),
        ))
        .add_service(csi::controller_server::ControllerServer::new(
            ControllerService::new(driver.clone()),
        ))
        .add_service(csi::node_server::NodeServer::new(NodeService::new(driver)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/x.sock").unwrap(),
            PathBuf::from("/x.sock")
        );
        assert!(socket_path("tcp://0.0.0.0:10000").is_err());
        assert!(socket_path("unix://rel.sock").is_err());
    }

    #[tokio::test]
    async fn socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s/csi.sock");
        let _l = bind(&format!("unix://{}", p.display())).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A stale socket is replaced.
        drop(_l);
        let _l2 = bind(&format!("unix://{}", p.display())).unwrap();
    }
}
