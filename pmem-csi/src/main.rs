//! `pmem-csi`: the CSI driver binary.

use clap::Parser;
use pmem_csi::device::{
    direct::DirectManager, fake::FakeManager, lvm::LvmManager, DeviceManager, DeviceMode,
};
use pmem_csi::driver::{Config, Driver};
use pmem_csi::exec::{Runner, SystemRunner};
use pmem_csi::mount::{FakeMounter, Mounter, SystemMounter};
use pmem_csi::state::StateStore;
use pmem_csi::{logger, metrics, server, validate};
use std::path::PathBuf;
use std::sync::Arc;

/// A Kubernetes CSI driver for persistent memory.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// CSI endpoint (only unix:// sockets).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Node ID reported to Kubernetes (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// CSI driver name.
    #[arg(long, default_value = pmem_csi::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Where volumes come from.
    #[arg(long, value_enum, default_value_t = DeviceMode::Lvm)]
    device_mode: DeviceMode,
    /// Directory for the driver's state (volume records; fake devices in fake mode).
    #[arg(long, default_value = "/var/lib/pmem-csi")]
    state_dir: PathBuf,
    /// Address for Prometheus metrics (`host:port`; empty disables).
    #[arg(long, default_value = "127.0.0.1:10010")]
    metrics_addr: String,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,
    /// Size of volumes created without a capacity (Kubernetes quantity).
    #[arg(long, default_value = "128Mi")]
    default_size: String,
    /// File system used when none is requested (ext4 or xfs).
    #[arg(long, default_value = "ext4")]
    default_fstype: String,
    /// LVM mode: volume groups to use (repeatable; default: every VG tagged pmem-csi).
    #[arg(long = "lvm-vg")]
    lvm_vgs: Vec<String>,
    /// LVM mode: if no VG exists, create an fsdax namespace and a VG in every PMEM region.
    #[arg(long)]
    lvm_setup: bool,
    /// Fake mode: total capacity of the fake pool (Kubernetes quantity).
    #[arg(long, default_value = "8Gi")]
    fake_capacity: String,
    /// Keep mounts in a table file instead of calling mount(8) (tests without root).
    #[arg(long)]
    fake_mounter: bool,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| format!("unknown log level {s:?}"))
}

fn build(args: &Args) -> pmem_csi::error::Result<Arc<Driver>> {
    let node_id = match &args.node_id {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string(),
    };
    if node_id.is_empty() {
        return Err(pmem_csi::error::Error::InvalidArgument(
            "empty node ID".into(),
        ));
    }
    pmem_csi::driver::check_fstype(&args.default_fstype)?;
    std::fs::create_dir_all(&args.state_dir)?;
    let runner: Arc<dyn Runner> = Arc::new(SystemRunner);
    let devices: Box<dyn DeviceManager> = match args.device_mode {
        DeviceMode::Fake => Box::new(FakeManager::new(
            &args.state_dir.join("fake-devices"),
            validate::parse_quantity(&args.fake_capacity)?,
        )?),
        DeviceMode::Lvm => {
            let m = LvmManager::new(runner.clone(), args.lvm_vgs.clone());
            if args.lvm_setup && m.capacity()?.total == 0 {
                let vgs = LvmManager::setup(&*runner)?;
                log::info!("created volume groups {vgs:?}");
            }
            Box::new(m)
        }
        DeviceMode::Direct => Box::new(DirectManager::new(runner.clone())?),
    };
    let mounter: Box<dyn Mounter> = if args.fake_mounter {
        Box::new(FakeMounter::new(&args.state_dir.join("fake-mounts.json")))
    } else {
        Box::new(SystemMounter::new(runner))
    };
    let config = Config {
        driver_name: args.driver_name.clone(),
        node_id,
        default_size: validate::parse_quantity(&args.default_size)?,
        default_fstype: args.default_fstype.clone(),
    };
    let driver = Driver::new(config, devices, mounter, StateStore::open(&args.state_dir)?);
    let report = driver.reconcile()?;
    let repaired = report.completed_creates
        + report.dropped_creates
        + report.completed_deletes
        + report.adopted
        + report.stale_mounts
        + report.partial_removed
        + report.missing_devices.len();
    if repaired > 0 {
        log::warn!("reconciled state after an unclean stop: {report:?}");
    } else {
        log::info!("reconciled state: {report:?}");
    }
    for p in &report.problems {
        log::error!("state directory: {p}");
    }
    Ok(Arc::new(driver))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    logger::init(args.log_level);
    let run = async {
        // Reject a bad endpoint before touching any device.
        server::socket_path(&args.endpoint)?;
        let driver = build(&args)?;
        if !args.metrics_addr.is_empty() {
            let l = tokio::net::TcpListener::bind(&args.metrics_addr).await?;
            log::info!("metrics on http://{}/metrics", l.local_addr()?);
            let d = driver.clone();
            tokio::spawn(metrics::serve(l, move || d.render_metrics()));
        }
        let listener = server::bind(&args.endpoint)?;
        log::info!(
            "{} {} serving on {} in {} mode",
            args.driver_name,
            env!("CARGO_PKG_VERSION"),
            args.endpoint,
            args.device_mode
        );
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            log::info!("shutting down");
        };
        server::serve(driver, listener, shutdown).await
    };
    if let Err(e) = run.await {
        log::error!("{e}");
        eprintln!("pmem-csi: {e}");
        std::process::exit(1);
    }
}
