//! Test support: start the driver binary on a Unix socket and talk to it over gRPC.

#![allow(dead_code, unreachable_pub, missing_docs)]

use pmem_csi::csi;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

pub const DRIVER_NAME: &str = "pmem-csi.test.example";
pub const NODE_ID: &str = "node-1";

/// How the suite runs, from the environment:
/// `PMEM_CSI_TEST_MODE` = fake (default) | lvm | direct,
/// `PMEM_CSI_TEST_MOUNTER` = fake (default in fake mode) | real (always in lvm/direct mode),
/// `PMEM_CSI_BIN` = driver binary (default: the one cargo built),
/// `PMEM_CSI_TEST_DIR` = directory for sockets, state and mount points (default: a temp dir).
#[derive(Debug, Clone)]
pub struct Setup {
    pub mode: String,
    pub real_mounts: bool,
    pub bin: PathBuf,
}

impl Setup {
    pub fn from_env() -> Setup {
        let mode = std::env::var("PMEM_CSI_TEST_MODE").unwrap_or_else(|_| "fake".into());
        let real_mounts =
            mode != "fake" || std::env::var("PMEM_CSI_TEST_MOUNTER").is_ok_and(|m| m == "real");
        let bin = std::env::var_os("PMEM_CSI_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pmem-csi")));
        Setup {
            mode,
            real_mounts,
            bin,
        }
    }
}

/// A running driver process.
#[derive(Debug)]
pub struct DriverProc {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub metrics_addr: Option<String>,
    setup: Setup,
    extra: Vec<String>,
}

impl DriverProc {
    pub fn start(setup: &Setup, dir: &Path, extra: &[&str]) -> DriverProc {
        let mut d = DriverProc {
            child: None,
            socket: dir.join("csi.sock"),
            state: dir.join("state"),
            metrics_addr: None,
            setup: setup.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        // A free loopback port for metrics.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let metrics = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&self.setup.bin);
        cmd.arg(format!("--endpoint=unix://{}", self.socket.display()))
            .arg(format!("--state-dir={}", self.state.display()))
            .arg(format!("--node-id={NODE_ID}"))
            .arg(format!("--driver-name={DRIVER_NAME}"))
            .arg(format!("--device-mode={}", self.setup.mode))
            .arg(format!("--metrics-addr={metrics}"))
            .arg("--default-size=16Mi")
            .arg(format!(
                "--log-level={}",
                std::env::var("PMEM_CSI_TEST_LOG").unwrap_or_else(|_| "warn".into())
            ))
            .args(&self.extra)
            .stdin(Stdio::null());
        if self.setup.mode == "fake" {
            cmd.arg("--fake-capacity=1Gi");
        }
        if self.setup.mode == "lvm" {
            cmd.arg("--lvm-setup");
        }
        if !self.setup.real_mounts {
            cmd.arg("--fake-mounter");
        }
        let _ = std::fs::remove_file(&self.socket);
        let child = cmd.spawn().expect("start driver");
        self.child = Some(child);
        self.metrics_addr = Some(metrics);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("driver exited at start: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "driver did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, like a crash or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for DriverProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// gRPC clients of the three services.
#[derive(Debug, Clone)]
pub struct Clients {
    pub identity: csi::identity_client::IdentityClient<Channel>,
    pub controller: csi::controller_client::ControllerClient<Channel>,
    pub node: csi::node_client::NodeClient<Channel>,
}

pub async fn connect(socket: &Path) -> Clients {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::1]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { tokio::net::UnixStream::connect(p).await }
        }))
        .await
        .expect("connect to driver socket");
    Clients {
        identity: csi::identity_client::IdentityClient::new(channel.clone()),
        controller: csi::controller_client::ControllerClient::new(channel.clone()),
        node: csi::node_client::NodeClient::new(channel),
    }
}

/// Fetches the metrics page over plain HTTP/1.1.
pub async fn scrape(addr: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}
