//! Command-line behaviour of the driver binary.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pmem-csi"))
}

#[test]
fn network_endpoints_are_refused_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for endpoint in [
        "tcp://0.0.0.0:10000",
        "unix://relative.sock",
        "/no/scheme.sock",
    ] {
        let out = bin()
            .args(["--device-mode=fake", "--node-id=n", "--metrics-addr="])
            .arg(format!("--endpoint={endpoint}"))
            .arg(format!("--state-dir={}", state.display()))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{endpoint}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is not a unix:// socket") || err.contains("is not absolute"),
            "{endpoint}: {err}"
        );
        assert!(
            !state.exists(),
            "state directory created for a bad endpoint"
        );
    }
}

#[test]
fn bad_options_are_usage_errors() {
    for args in [
        &["--device-mode=nvme"][..],
        &["--log-level=loud"],
        &["--no-such-option"],
    ] {
        let out = bin().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "--device-mode=fake",
            "--node-id=n",
            "--metrics-addr=",
            "--fake-capacity=lots",
        ])
        .arg(format!(
            "--endpoint=unix://{}/csi.sock",
            dir.path().display()
        ))
        .arg(format!(
            "--state-dir={}",
            dir.path().join("state").display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
}

#[test]
fn help_lists_the_main_options() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--endpoint",
        "--node-id",
        "--driver-name",
        "--device-mode",
        "--state-dir",
        "--metrics-addr",
        "--log-level",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
}
