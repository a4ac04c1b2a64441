//! Result files of the `compare` binary: one JSON document per run (the report's input) and a
//! flat CSV with the same numbers for spreadsheets.

use crate::measure::{median, quantile, Op};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Version of the JSON layout.
pub const SCHEMA: u32 = 1;

/// The machine a run was made on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`model name` of /proc/cpuinfo).
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub logical_cpus: usize,
    /// Persistence-relevant CPU flags present (clflush, clflushopt, clwb, avx2, avx512f).
    pub cpu_flags: Vec<String>,
    /// Whether the CPU reports running under a hypervisor.
    pub virtualized: bool,
    /// Kernel release.
    pub kernel: String,
    /// Distribution (PRETTY_NAME of /etc/os-release).
    pub os: String,
    /// Memory in GiB (MemTotal).
    pub mem_gib: f64,
}

impl Machine {
    /// Describes this machine.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.split(':').next().map(str::trim) == Some(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let flags = field("flags");
        let flag_set: Vec<&str> = flags.split_whitespace().collect();
        let cpu_flags = [
            "clflush",
            "clflushopt",
            "clwb",
            "avx2",
            "avx512f",
            "movdir64b",
        ]
        .iter()
        .filter(|f| flag_set.contains(f))
        .map(|f| f.to_string())
        .collect();
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| {
                v.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
            })
            .map(|kib| kib / (1024.0 * 1024.0))
            .unwrap_or(0.0);
        Machine {
            cpu: field("model name"),
            // Counted from /proc/cpuinfo: the process itself may be pinned to one CPU.
            logical_cpus: cpuinfo
                .lines()
                .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
                .count()
                .max(1),
            cpu_flags,
            virtualized: flag_set.contains(&"hypervisor"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            os,
            mem_gib,
        }
    }
}

/// How the cycle counter behaved.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimerInfo {
    /// Counter frequency.
    pub ghz: f64,
    /// Median ticks of an empty timed window (subtracted from every sample).
    pub overhead_ticks: u64,
}

/// One peer as configured in a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Registry name.
    pub name: String,
    /// Configuration line.
    pub detail: String,
}

/// One peer's numbers for one case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerResult {
    /// Peer name.
    pub peer: String,
    /// Number of trials.
    #[serde(default)]
    pub trials: usize,
    /// Median over trials (ns per operation).
    pub median_ns: f64,
    /// First quartile over trials.
    pub p25_ns: f64,
    /// Third quartile over trials.
    pub p75_ns: f64,
    /// `persist` only: median time of the whole write + persist loop iteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_median_ns: Option<f64>,
    /// `persist` only: median time of the write-only loop iteration (subtracted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_median_ns: Option<f64>,
    /// Per-trial values, in trial order (only with `compare --raw`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials_ns: Vec<f64>,
    /// `persist` only: per-trial loop times (only with `compare --raw`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loop_ns: Vec<f64>,
    /// `persist` only: per-trial write-only times (only with `compare --raw`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_ns: Vec<f64>,
}

impl PeerResult {
    /// Summarises per-trial values (kept in the result; see [`PeerResult::drop_raw`]).
    pub fn from_trials(peer: &str, trials_ns: Vec<f64>) -> PeerResult {
        // Hundredths of a nanosecond are far below the noise; rounding keeps the files small.
        let trials_ns: Vec<f64> = trials_ns.into_iter().map(round2).collect();
        PeerResult {
            peer: peer.to_string(),
            trials: trials_ns.len(),
            median_ns: median(&trials_ns),
            p25_ns: quantile(&trials_ns, 0.25),
            p75_ns: quantile(&trials_ns, 0.75),
            loop_median_ns: None,
            baseline_median_ns: None,
            trials_ns,
            loop_ns: Vec::new(),
            baseline_ns: Vec::new(),
        }
    }

    /// Per-trial `(net, loop, baseline)` triples of a persist case.
    pub fn from_persist_trials(peer: &str, t: &[(f64, f64, f64)]) -> PeerResult {
        let mut r = Self::from_trials(peer, t.iter().map(|x| x.0).collect());
        r.loop_ns = t.iter().map(|x| round2(x.1)).collect();
        r.baseline_ns = t.iter().map(|x| round2(x.2)).collect();
        r.loop_median_ns = Some(median(&r.loop_ns));
        r.baseline_median_ns = Some(median(&r.baseline_ns));
        r
    }

    /// Forgets the per-trial arrays (the summaries stay).
    pub fn drop_raw(&mut self) {
        self.trials_ns = Vec::new();
        self.loop_ns = Vec::new();
        self.baseline_ns = Vec::new();
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Median and quartiles of the per-trial ratios `a[t] / b[t]` of two peers' times.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Median of the paired ratios.
    pub median: f64,
    /// First quartile.
    pub p25: f64,
    /// Third quartile.
    pub p75: f64,
}

/// A stored paired ratio: time of `a` over time of `b`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairedRatio {
    /// Numerator peer.
    pub a: String,
    /// Denominator peer.
    pub b: String,
    /// The statistics.
    #[serde(flatten)]
    pub ratio: Ratio,
}

/// One operation at one size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Case {
    /// Operation.
    pub op: Op,
    /// Bytes per operation.
    pub size: usize,
    /// Operations per trial and peer.
    pub ops_per_trial: usize,
    /// Distinct offsets the operations rotate over.
    pub slots: usize,
    /// Trials per peer.
    #[serde(default)]
    pub trials: usize,
    /// Trials rerun because the thread was preempted during them (all peers together).
    #[serde(default)]
    pub retried_trials: u64,
    /// Every peer, in registry order.
    pub peers: Vec<PeerResult>,
    /// Paired time ratios of every ordered pair of peers (computed before the per-trial
    /// arrays are dropped).
    #[serde(default)]
    pub ratios: Vec<PairedRatio>,
}

impl Case {
    /// A peer's result by name.
    pub fn peer(&self, name: &str) -> Option<&PeerResult> {
        self.peers.iter().find(|p| p.peer == name)
    }

    /// Time ratio `a / b` over paired trials (trial `t` of both ran back to back): the stored
    /// one, else computed from the per-trial arrays.
    pub fn time_ratio(&self, a: &str, b: &str) -> Option<Ratio> {
        if let Some(r) = self.ratios.iter().find(|r| r.a == a && r.b == b) {
            return Some(r.ratio);
        }
        let (a, b) = (self.peer(a)?, self.peer(b)?);
        let r: Vec<f64> = a
            .trials_ns
            .iter()
            .zip(&b.trials_ns)
            .filter(|(_, y)| **y > 0.0)
            .map(|(x, y)| x / y)
            .collect();
        if r.is_empty() {
            return None;
        }
        Some(Ratio {
            median: median(&r),
            p25: quantile(&r, 0.25),
            p75: quantile(&r, 0.75),
        })
    }

    /// Computes and stores the paired ratios of every ordered pair of peers.
    pub fn store_ratios(&mut self) {
        let names: Vec<String> = self.peers.iter().map(|p| p.peer.clone()).collect();
        self.ratios.clear();
        for a in &names {
            for b in &names {
                if a != b {
                    if let Some(ratio) = self.time_ratio(a, b) {
                        self.ratios.push(PairedRatio {
                            a: a.clone(),
                            b: b.clone(),
                            ratio,
                        });
                    }
                }
            }
        }
    }

    /// Bandwidth in GB/s (10^9 bytes per second) at a time per operation.
    pub fn gbps(&self, ns: f64) -> f64 {
        self.size as f64 / ns
    }
}

/// Everything one `compare` run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunFile {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Flush instruction every peer used.
    pub flush: String,
    /// Start of the run, UTC (ISO 8601).
    pub started_utc: String,
    /// The command line, program name without its directory.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Counter calibration.
    pub timer: TimerInfo,
    /// Discarded rounds per case.
    pub warmup: usize,
    /// Measured rounds per case (at least; see `min_case_ms`).
    pub trials: usize,
    /// Each case was measured for at least this long (more rounds when they are short).
    #[serde(default)]
    pub min_case_ms: u64,
    /// Peers in registry order (the first is the one ratios are taken for).
    pub peers: Vec<PeerInfo>,
    /// The measurements.
    pub cases: Vec<Case>,
}

impl RunFile {
    /// File stem for a flush method: `compare-clwb`.
    pub fn stem(flush: &str) -> String {
        format!("compare-{flush}")
    }

    /// Writes `<dir>/compare-<flush>.json` and `.csv`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let stem = Self::stem(&self.flush);
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(format!("{stem}.json")), json + "\n")?;
        let mut csv = std::fs::File::create(dir.join(format!("{stem}.csv")))?;
        writeln!(
            csv,
            "op,size,flush,peer,median_ns,p25_ns,p75_ns,median_gbps,baseline_ns,trials,ops_per_trial"
        )?;
        for c in &self.cases {
            for p in &c.peers {
                writeln!(
                    csv,
                    "{},{},{},{},{:.2},{:.2},{:.2},{:.3},{:.2},{},{}",
                    c.op,
                    c.size,
                    self.flush,
                    p.peer,
                    p.median_ns,
                    p.p25_ns,
                    p.p75_ns,
                    c.gbps(p.median_ns),
                    p.baseline_median_ns.unwrap_or(0.0),
                    p.trials,
                    c.ops_per_trial
                )?;
            }
        }
        Ok(())
    }

    /// Reads one JSON result file.
    pub fn read(path: &Path) -> Result<RunFile, String> {
        let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let r: RunFile =
            serde_json::from_str(&s).map_err(|e| format!("{}: {e}", path.display()))?;
        if r.schema != SCHEMA {
            return Err(format!(
                "{}: schema {} (expected {SCHEMA})",
                path.display(),
                r.schema
            ));
        }
        Ok(r)
    }

    /// Every `compare-*.json` in `dir`, sorted by flush method (clwb, clflushopt, clflush).
    pub fn read_dir(dir: &Path) -> Result<Vec<RunFile>, String> {
        let mut v = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("compare-") && name.ends_with(".json") {
                v.push(Self::read(&e.path())?);
            }
        }
        let rank = |f: &str| match f {
            "clwb" => 0,
            "clflushopt" => 1,
            "clflush" => 2,
            _ => 3,
        };
        v.sort_by_key(|r| rank(&r.flush));
        Ok(v)
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), valid for any date after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_has_the_iso_shape() {
        let s = utc_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }

    #[test]
    fn paired_ratio() {
        let c = Case {
            op: Op::Persist,
            size: 64,
            ops_per_trial: 1,
            slots: 1,
            trials: 3,
            retried_trials: 0,
            ratios: Vec::new(),
            peers: vec![
                PeerResult::from_trials("a", vec![2.0, 4.0, 6.0]),
                PeerResult::from_trials("b", vec![1.0, 4.0, 2.0]),
            ],
        };
        let r = c.time_ratio("a", "b").unwrap();
        assert_eq!(r.median, 2.0);
        assert!(c.time_ratio("a", "c").is_none());
        let mut c = c;
        c.store_ratios();
        c.peers.iter_mut().for_each(PeerResult::drop_raw);
        assert_eq!(c.time_ratio("a", "b"), Some(r));
        assert!(c.time_ratio("b", "a").is_some());
    }
}
