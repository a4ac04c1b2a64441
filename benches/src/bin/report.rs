//! Regenerates BENCHMARKS.md and its SVG plots from the results of `compare` runs.
//!
//! ```text
//! cargo run --release -p pmem-benches --bin report
//! ```
//!
//! Run from the repository root; all paths are relative to it by default.

use clap::Parser;
use pmem_benches::report::{plots, render, ReportOptions};
use pmem_benches::results::RunFile;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(about = "Write BENCHMARKS.md and plots from compare results")]
struct Args {
    /// Directory holding the `compare-FLUSH.json` files.
    #[arg(long, default_value = "docs/benchmarks/data")]
    data: PathBuf,
    /// The Markdown file to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Directory for the SVG plots.
    #[arg(long, default_value = "docs/benchmarks")]
    plots: PathBuf,
    /// Hand-written notes to include (skipped if the file does not exist).
    #[arg(long, default_value = "docs/benchmarks/notes.md")]
    notes: PathBuf,
}

fn main() {
    let a = Args::parse();
    let runs = RunFile::read_dir(&a.data).unwrap_or_else(|e| fail(&e));
    if runs.is_empty() {
        fail(&format!(
            "no compare-*.json in {} (run compare first)",
            a.data.display()
        ));
    }
    let ps = plots(&runs);
    std::fs::create_dir_all(&a.plots)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", a.plots.display())));
    for p in &ps {
        let path = a.plots.join(&p.file);
        std::fs::write(&path, &p.svg).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    }
    let opts = ReportOptions {
        plot_link_dir: relative_to(&a.plots, a.out.parent()),
        data_dir: a.data.display().to_string(),
        report_command: format!(
            "report --data {} --out {} --plots {}",
            a.data.display(),
            a.out.display(),
            a.plots.display()
        ),
        notes: std::fs::read_to_string(&a.notes).ok(),
    };
    let md = render(&runs, &ps, &opts);
    std::fs::write(&a.out, md).unwrap_or_else(|e| fail(&format!("{}: {e}", a.out.display())));
    eprintln!(
        "wrote {} and {} plot(s) in {} from {} run(s)",
        a.out.display(),
        ps.len(),
        a.plots.display(),
        runs.len()
    );
}

/// `target` as seen from the directory `from` (both relative to the current directory).
fn relative_to(target: &Path, from: Option<&Path>) -> String {
    match from {
        Some(f) if !f.as_os_str().is_empty() => match target.strip_prefix(f) {
            Ok(rest) => rest.display().to_string(),
            Err(_) => target.display().to_string(),
        },
        _ => target.display().to_string(),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("report: {msg}");
    std::process::exit(2)
}
