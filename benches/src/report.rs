//! BENCHMARKS.md: tables, verdicts against the targets, and the SVG plots, all regenerated
//! from the JSON files of `compare` runs (one per flush instruction).

use crate::measure::{median, Op};
use crate::results::{Case, Ratio, RunFile};
use crate::svg::{self, Chart, Series, PALETTE};
use std::fmt::Write;

/// What a target compares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// Our time per operation at most this multiple of the peer's.
    MaxTimeRatio(f64),
    /// Our bandwidth at least this multiple of the peer's.
    MinBandwidthRatio(f64),
}

/// A performance target from the issue tracker.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Operation.
    pub op: Op,
    /// Peer it is measured against.
    pub peer: &'static str,
    /// Smallest size it applies to.
    pub min_size: usize,
    /// Largest size it applies to.
    pub max_size: usize,
    /// The bound.
    pub goal: Goal,
}

/// The targets: `persist` at most 1.05x libpmem's time (8 B .. 64 KiB) and `memcpy_persist`
/// at least 1.0x its bandwidth (4 KiB .. 4 MiB), on the same flush instruction.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            op: Op::Persist,
            peer: "libpmem",
            min_size: 8,
            max_size: 64 << 10,
            goal: Goal::MaxTimeRatio(1.05),
        },
        Target {
            op: Op::MemcpyPersist,
            peer: "libpmem",
            min_size: 4 << 10,
            max_size: 4 << 20,
            goal: Goal::MinBandwidthRatio(1.0),
        },
    ]
}

/// The outcome of one target at one size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// The median meets the bound.
    Pass,
    /// The median misses the bound, but the bound lies inside the interquartile range of the
    /// paired ratios (a tie on this machine).
    MissWithinNoise,
    /// The median misses the bound and the whole interquartile range is on the wrong side.
    Miss,
    /// No ratio can be formed (the peer's net time is not positive).
    Undefined,
}

impl Verdict {
    /// Table text.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::MissWithinNoise => "MISS (within noise)",
            Verdict::Miss => "**MISS**",
            Verdict::Undefined => "**MISS** (no ratio)",
        }
    }
}

/// The ratio that `goal` bounds (time ours/peer, or bandwidth ours/peer, i.e. time
/// peer/ours), paired trial by trial.
pub fn goal_ratio(case: &Case, ours: &str, peer: &str, goal: Goal) -> Option<Ratio> {
    let peer_net = case.peer(peer)?.median_ns;
    let our_net = case.peer(ours)?.median_ns;
    if peer_net <= 0.0 || our_net <= 0.0 {
        return None;
    }
    match goal {
        Goal::MaxTimeRatio(_) => case.time_ratio(ours, peer),
        Goal::MinBandwidthRatio(_) => case.time_ratio(peer, ours),
    }
}

/// Judges a ratio against a goal.
pub fn judge(r: Option<Ratio>, goal: Goal) -> Verdict {
    let Some(r) = r else {
        return Verdict::Undefined;
    };
    let (ok, iqr_ok) = match goal {
        Goal::MaxTimeRatio(b) => (r.median <= b, r.p25 <= b),
        Goal::MinBandwidthRatio(b) => (r.median >= b, r.p75 >= b),
    };
    match (ok, iqr_ok) {
        (true, _) => Verdict::Pass,
        (false, true) => Verdict::MissWithinNoise,
        (false, false) => Verdict::Miss,
    }
}

fn goal_text(g: Goal) -> String {
    match g {
        Goal::MaxTimeRatio(b) => format!("≤ {b:.2}"),
        Goal::MinBandwidthRatio(b) => format!("≥ {b:.2}"),
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns.abs() >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if ns.abs() >= 100.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{ns:.1} ns")
    }
}

fn fmt_ratio(r: Option<Ratio>) -> String {
    match r {
        Some(r) => format!("{:.3} ({:.3}–{:.3})", r.median, r.p25, r.p75),
        None => "—".into(),
    }
}

/// A plot file: its name (relative to the plot directory), alt text and SVG content.
#[derive(Clone, Debug)]
pub struct Plot {
    /// File name, e.g. `persist-latency.svg`.
    pub file: String,
    /// Alt text / caption.
    pub title: String,
    /// The document.
    pub svg: String,
}

/// The plots: persist time and copy/fill bandwidth by size, one line per peer and flush
/// instruction (the first run's instruction solid, the others dashed).
pub fn plots(runs: &[RunFile]) -> Vec<Plot> {
    let mut out = Vec::new();
    let specs = [
        (
            Op::Persist,
            "persist-latency.svg",
            "persist: time per call (write-only loop subtracted)",
            "ns per persist (log scale)",
            true,
        ),
        (
            Op::MemcpyPersist,
            "memcpy-bandwidth.svg",
            "memcpy_persist bandwidth",
            "GB/s (log scale)",
            true,
        ),
        (
            Op::MemsetPersist,
            "memset-bandwidth.svg",
            "memset_persist bandwidth",
            "GB/s (log scale)",
            true,
        ),
    ];
    for (op, file, title, ylabel, log_y) in specs {
        let mut series = Vec::new();
        for (ri, run) in runs.iter().enumerate() {
            for (pi, p) in run.peers.iter().enumerate() {
                let points: Vec<(f64, f64)> = run
                    .cases
                    .iter()
                    .filter(|c| c.op == op)
                    .filter_map(|c| {
                        let r = c.peer(&p.name)?;
                        let y = if op.is_bandwidth() {
                            c.gbps(r.median_ns)
                        } else {
                            r.median_ns
                        };
                        Some((c.size as f64, y))
                    })
                    .collect();
                if points.is_empty() {
                    continue;
                }
                series.push(Series {
                    label: format!("{} ({})", p.name, run.flush),
                    points,
                    color: PALETTE[(pi + 2 * ri) % PALETTE.len()],
                    dashed: ri > 0,
                });
            }
        }
        if series.is_empty() {
            continue;
        }
        let chart = Chart {
            title: title.to_string(),
            x_label: "bytes per call".into(),
            y_label: ylabel.into(),
            log_y,
            series,
        };
        out.push(Plot {
            file: file.into(),
            title: title.into(),
            svg: svg::render(&chart),
        });
    }
    out
}

/// Inputs of [`render`] besides the runs.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    /// How the plots are linked from the Markdown file (directory prefix, relative).
    pub plot_link_dir: String,
    /// How the result files are referred to (directory, relative).
    pub data_dir: String,
    /// The report command line, as shown in the document.
    pub report_command: String,
    /// Hand-written notes included verbatim (findings, caveats).
    pub notes: Option<String>,
}

/// Renders BENCHMARKS.md.
pub fn render(runs: &[RunFile], plots: &[Plot], o: &ReportOptions) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Side-by-side comparison of pmem-alloc's persistence primitives with \
         [libpmem](https://pmem.io/pmdk/libpmem/) (PMDK), the reference implementation of the \
         same operations. This file is generated: rerun `benches/run-compare.sh` (or the \
         commands below) instead of editing it. Raw results: `{}/`.\n",
        o.data_dir
    );
    let _ = writeln!(
        w,
        "The allocators (the persistent pool against PMDK's libpmemobj and jemalloc; the volatile \
         heap against memkind, jemalloc, mimalloc and glibc; recovery time; space) are compared \
         in [docs/benchmarks/allocators.md](docs/benchmarks/allocators.md), generated by \
         `benches/alloc-compare.sh`.\n"
    );
    if runs.is_empty() {
        let _ = writeln!(w, "No results yet.");
        return s;
    }
    let ours = runs[0]
        .peers
        .first()
        .map(|p| p.name.clone())
        .unwrap_or_default();

    // Summary.
    let _ = writeln!(w, "## Summary\n");
    let mut rows = Vec::new();
    for run in runs {
        for t in targets() {
            let mut n = [0usize; 3];
            let mut sizes = Vec::new();
            for c in applicable(run, &t) {
                sizes.push(c.size);
                match judge(goal_ratio(c, &ours, t.peer, t.goal), t.goal) {
                    Verdict::Pass => n[0] += 1,
                    Verdict::MissWithinNoise => n[1] += 1,
                    Verdict::Miss | Verdict::Undefined => n[2] += 1,
                }
            }
            if sizes.is_empty() {
                continue;
            }
            rows.push(format!(
                "| {} | `{}` vs {}: {} {} | {}–{} | {} | {} | {} |",
                run.flush,
                t.op,
                t.peer,
                ratio_name(t.goal),
                goal_text(t.goal),
                svg::size_label(*sizes.iter().min().unwrap_or(&0) as f64),
                svg::size_label(*sizes.iter().max().unwrap_or(&0) as f64),
                n[0],
                n[1],
                n[2]
            ));
        }
    }
    if !rows.is_empty() {
        let _ = writeln!(
            w,
            "| flush | target | sizes | pass | miss (within noise) | miss |\n\
             |---|---|---|---|---|---|\n{}\n",
            rows.join("\n")
        );
    }
    if runs.iter().all(|r| r.peers.len() < 2) {
        let _ = writeln!(
            w,
            "Only {ours} was measured (built without the `libpmem` feature): no ratios.\n"
        );
    }

    // Machine.
    let m = &runs[0].machine;
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| CPU | {} |", m.cpu);
    let _ = writeln!(
        w,
        "| logical CPUs | {}{} |",
        m.logical_cpus,
        if m.virtualized {
            " (virtual machine)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        w,
        "| persistence-related CPU flags | {} |",
        m.cpu_flags.join(", ")
    );
    let _ = writeln!(w, "| memory | {:.0} GiB |", m.mem_gib);
    let _ = writeln!(w, "| kernel | {} |", m.kernel);
    let _ = writeln!(w, "| OS | {} |", m.os);
    let _ = writeln!(
        w,
        "| time-stamp counter | {:.3} GHz, empty timing window {} ticks |",
        runs[0].timer.ghz, runs[0].timer.overhead_ticks
    );
    for run in runs {
        let _ = writeln!(w, "| run `{}` | {} |", run.flush, run.started_utc);
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "Peers as configured:\n");
    for run in runs {
        for p in &run.peers {
            let _ = writeln!(w, "- `{}` / {}: {}", run.flush, p.name, p.detail);
        }
    }
    let _ = writeln!(w);

    // Method.
    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "- All peers map the same scratch file on a tmpfs (`/dev/shm`), so they work on the \
         very same physical pages: pmem-alloc through `Mapping::open` with the CPU flush \
         forced (`PMEM_ALLOC_FORCE_PMEM=1`, `PMEM_ALLOC_FLUSH=<instruction>`), libpmem through \
         `pmem_map_file` with `PMEM_IS_PMEM_FORCE=1` and its instruction forced with \
         `PMEM_NO_CLWB` / `PMEM_NO_CLFLUSHOPT` (libpmem(7)). libpmem reads those in its \
         library constructor, so `compare` re-executes itself once with the environment every \
         peer asks for. There is no persistent memory on this machine: write-backs go to DRAM, \
         so absolute numbers say nothing about a real DIMM; the ratios compare the software \
         paths."
    );
    let _ = writeln!(
        w,
        "- One process, pinned to one CPU. Both peers replay the *same* deterministic sequence \
         of offsets (a fixed pseudo-random rotation over up to 1 MiB and at most 4096 ranges for \
         `persist`, over up to 64 MiB and at most 1024 destinations for copies and fills); copies read the same page-aligned DRAM source. \
         Peer *i* of *P* runs the rotation *i/P* of the way ahead, and a batch covers at most \
         1/(2*P*) of it, so no peer touches lines that another peer wrote in the previous \
         batch (their cache state would be charged to it)."
    );
    let _ = writeln!(
        w,
        "- A trial is one batch of back-to-back calls timed as a whole with the fenced \
         time-stamp counter (one window per batch: a flush retires before its write-back is \
         done and the fence does not always wait for it, so part of the cost lands on the next \
         stores; timing calls one by one under-reports it badly). For `persist`, every call is \
         preceded by a write of the range so that the flush has dirty lines to write back; the \
         same loop without the persist (\"write-only baseline\") is timed right before in the \
         same trial and subtracted."
    );
    let _ = writeln!(
        w,
        "- Trials alternate between peers (A B, B A, A B, ...), {} warm-up rounds are \
         discarded, then at least {} rounds and at least {} ms of rounds are kept per case \
         ({} to {} rounds here, so that a burst of interference cannot cover a whole case). \
         Values are medians over trials; ratios are medians of the \
         per-trial ratios of the two peers run back to back (interquartile range in \
         parentheses). A miss whose interquartile range still reaches the target is marked \
         *within noise*.",
        runs[0].warmup,
        runs[0].trials,
        runs[0].min_case_ms,
        runs.iter()
            .flat_map(|r| r.cases.iter().map(|c| c.trials))
            .min()
            .unwrap_or(0),
        runs.iter()
            .flat_map(|r| r.cases.iter().map(|c| c.trials))
            .max()
            .unwrap_or(0),
    );
    let retried: Vec<String> = runs
        .iter()
        .map(|r| {
            let n: u64 = r.cases.iter().map(|c| c.retried_trials).sum();
            let total: usize = r
                .cases
                .iter()
                .map(|c| c.peers.len() * (c.trials.max(r.trials) + r.warmup))
                .sum();
            format!("{n} of {total} for `{}`", r.flush)
        })
        .collect();
    let _ = writeln!(
        w,
        "- A trial during which the process was preempted (an involuntary context switch, \
         from `getrusage`) is rerun, up to 5 times: {} in these runs. Interference through \
         the shared memory system cannot be excluded that way.\n",
        retried.join(", ")
    );

    // Commands.
    let _ = writeln!(w, "## Commands\n");
    let _ = writeln!(w, "```sh\nbenches/run-compare.sh\n```\n");
    let _ = writeln!(w, "which runs, from the repository root:\n");
    let _ = writeln!(
        w,
        "```sh\ncargo build --release -p pmem-benches --features libpmem --bins"
    );
    for run in runs {
        let _ = writeln!(w, "{}", run.command);
    }
    let _ = writeln!(w, "{}\n```\n", o.report_command);
    let _ = writeln!(
        w,
        "(`compare` and `report` are the binaries in the release target directory.) \
         Criterion micro-benchmarks of the same operations: `cargo bench -p pmem-benches \
         [--features libpmem]`.\n"
    );

    // Tables.
    for (ri, run) in runs.iter().enumerate() {
        let heading = if ri == 0 { "##" } else { "###" };
        if ri == 1 {
            let _ = writeln!(w, "## Other flush instructions\n");
        }
        for op in [Op::Persist, Op::MemcpyPersist, Op::MemsetPersist] {
            let cases: Vec<&Case> = run.cases.iter().filter(|c| c.op == op).collect();
            if cases.is_empty() {
                continue;
            }
            let _ = writeln!(w, "{heading} `{op}`, flush `{}`\n", run.flush);
            table(w, run, op, &cases, &ours);
        }
    }

    // Plots.
    if !plots.is_empty() {
        let _ = writeln!(w, "## Plots\n");
        for p in plots {
            let _ = writeln!(
                w,
                "![{}]({}/{})\n",
                p.title,
                o.plot_link_dir.trim_end_matches('/'),
                p.file
            );
        }
    }

    if let Some(n) = &o.notes {
        let _ = writeln!(w, "## Notes\n");
        let _ = writeln!(w, "{}\n", n.trim());
    }
    s
}

fn ratio_name(g: Goal) -> &'static str {
    match g {
        Goal::MaxTimeRatio(_) => "time ratio",
        Goal::MinBandwidthRatio(_) => "bandwidth ratio",
    }
}

fn applicable<'a>(run: &'a RunFile, t: &Target) -> impl Iterator<Item = &'a Case> + 'a {
    let t = *t;
    run.cases.iter().filter(move |c| {
        c.op == t.op && c.size >= t.min_size && c.size <= t.max_size && c.peer(t.peer).is_some()
    })
}

fn table(w: &mut String, run: &RunFile, op: Op, cases: &[&Case], ours: &str) {
    let others: Vec<&str> = run
        .peers
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| *n != ours)
        .collect();
    let mut head = String::from("| size |");
    let mut rule = String::from("|---:|");
    for p in &run.peers {
        if op.is_bandwidth() {
            let _ = write!(head, " {} time | {} GB/s |", p.name, p.name);
            rule += "---:|---:|";
        } else {
            let _ = write!(head, " {} |", p.name);
            rule += "---:|";
        }
    }
    if op == Op::Persist {
        head += " write-only baseline |";
        rule += "---:|";
    }
    for o in &others {
        let goal = targets()
            .into_iter()
            .find(|t| t.op == op && t.peer == *o)
            .map(|t| t.goal)
            .unwrap_or(if op.is_bandwidth() {
                Goal::MinBandwidthRatio(1.0)
            } else {
                Goal::MaxTimeRatio(1.0)
            });
        let _ = write!(
            head,
            " {} {ours}/{o} | target | verdict |",
            ratio_name(goal)
        );
        rule += "---:|:---:|:---|";
    }
    let _ = writeln!(w, "{head}\n{rule}");
    for c in cases {
        let mut row = format!("| {} |", svg::size_label(c.size as f64));
        for p in &run.peers {
            match c.peer(&p.name) {
                Some(r) if op.is_bandwidth() => {
                    let _ = write!(
                        row,
                        " {} | {:.2} |",
                        fmt_ns(r.median_ns),
                        c.gbps(r.median_ns)
                    );
                }
                Some(r) => {
                    let _ = write!(row, " {} |", fmt_ns(r.median_ns));
                }
                None if op.is_bandwidth() => row += " — | — |",
                None => row += " — |",
            }
        }
        if op == Op::Persist {
            let b: Vec<f64> = c
                .peers
                .iter()
                .filter_map(|p| p.baseline_median_ns)
                .collect();
            let _ = write!(row, " {} |", fmt_ns(median(&b)));
        }
        for o in &others {
            let target = targets().into_iter().find(|t| {
                t.op == op && t.peer == *o && c.size >= t.min_size && c.size <= t.max_size
            });
            let goal = target.map(|t| t.goal).unwrap_or(if op.is_bandwidth() {
                Goal::MinBandwidthRatio(1.0)
            } else {
                Goal::MaxTimeRatio(1.0)
            });
            let r = goal_ratio(c, ours, o, goal);
            match target {
                Some(t) => {
                    let _ = write!(
                        row,
                        " {} | {} | {} |",
                        fmt_ratio(r),
                        goal_text(t.goal),
                        judge(r, t.goal).label()
                    );
                }
                None => {
                    let _ = write!(row, " {} | — | — |", fmt_ratio(r));
                }
            }
        }
        let _ = writeln!(w, "{row}");
    }
    let _ = writeln!(w);
    let unit = if op.is_bandwidth() {
        "Time is per call; GB/s is 10^9 bytes per second. The bandwidth ratio is ours/peer \
         (higher is better for us)."
    } else {
        "Time is the net time one call adds to a write-then-persist loop (loop time minus the \
         write-only baseline). The time ratio is ours/peer (lower is better for us)."
    };
    let n = cases.first().map(|c| c.ops_per_trial).unwrap_or(0);
    let _ = writeln!(
        w,
        "{unit} Batches of {n}{} calls per trial.\n",
        if cases.iter().any(|c| c.ops_per_trial != n) {
            " (or fewer for large sizes)"
        } else {
            ""
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::PeerResult;

    #[test]
    fn verdicts() {
        let r = |m, a, b| {
            Some(Ratio {
                median: m,
                p25: a,
                p75: b,
            })
        };
        let g = Goal::MaxTimeRatio(1.05);
        assert_eq!(judge(r(1.0, 0.9, 1.1), g), Verdict::Pass);
        assert_eq!(judge(r(1.06, 1.04, 1.1), g), Verdict::MissWithinNoise);
        assert_eq!(judge(r(1.2, 1.1, 1.3), g), Verdict::Miss);
        assert_eq!(judge(None, g), Verdict::Undefined);
        let g = Goal::MinBandwidthRatio(1.0);
        assert_eq!(judge(r(0.99, 0.97, 1.01), g), Verdict::MissWithinNoise);
        assert_eq!(judge(r(1.01, 0.97, 1.03), g), Verdict::Pass);
    }

    #[test]
    fn bandwidth_ratio_is_peer_time_over_ours() {
        let c = Case {
            op: Op::MemcpyPersist,
            size: 4096,
            ops_per_trial: 1,
            slots: 1,
            trials: 2,
            retried_trials: 0,
            ratios: Vec::new(),
            peers: vec![
                PeerResult::from_trials("pmem-alloc", vec![100.0, 100.0]),
                PeerResult::from_trials("libpmem", vec![110.0, 110.0]),
            ],
        };
        let r = goal_ratio(&c, "pmem-alloc", "libpmem", Goal::MinBandwidthRatio(1.0)).unwrap();
        assert!((r.median - 1.1).abs() < 1e-9);
    }
}
