//! Helpers shared by the preload tests: finding the library and the tools, bounded waits,
//! processes killed by PID.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The preload library that `cargo test` built next to this test executable
/// (target/<profile>/deps/, or target/<profile>/ after `cargo build`).
pub fn preload_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for d in [deps, deps.parent().unwrap()] {
        let lib = d.join("libpmem_alloc_preload.so");
        if lib.exists() {
            return lib;
        }
    }
    panic!("libpmem_alloc_preload.so not found near {}", deps.display());
}

/// The path of `name` on PATH. Missing: `None` (the test skips) unless `CI` is set (and not
/// `0` or `false`), which makes a missing tool a failure.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p = d.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false") {
        panic!("{name} is not installed (CI is set: tools/install-deps.sh installs it)");
    }
    eprintln!("SKIP: {name} is not installed");
    None
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by its PID) and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
    /// SIGTERM, then wait up to 10 s (then SIGKILL); returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                std::mem::forget(self);
                return s;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.0.kill();
                let s = self.0.wait().unwrap();
                std::mem::forget(self);
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` accepts connections (at most `secs`).
pub fn wait_port(port: u16, secs: u64, p: &mut Proc) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        assert!(p.alive(), "server exited during start-up");
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} not ready after {secs} s");
}

/// Runs `cmd` to completion, killing it after `secs`.
pub fn run_bounded(cmd: &mut Command, secs: u64) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let t = Instant::now();
        while !d2.load(std::sync::atomic::Ordering::Acquire) {
            if t.elapsed() > Duration::from_secs(secs) {
                // SAFETY: our own child, still unreaped (the waiter sets `done` after reaping).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    let killed = watchdog.join().unwrap();
    assert!(!killed, "{cmd:?} timed out after {secs} s");
    out
}

/// Whether /proc/PID/maps shows a shared mapping of `file`.
pub fn maps_show(pid: u32, file: &Path) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let f = file.to_str().unwrap();
    maps.lines().any(|l| l.ends_with(f) && l.contains(" rw-s "))
}

/// One RESP command over a fresh connection; returns the raw reply.
pub fn resp(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n == 0 || out.ends_with(b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
