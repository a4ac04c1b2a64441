//! A small hand-written SVG line chart (log-2 x axis of sizes, log or linear y axis): enough
//! for the plots of BENCHMARKS.md without a plotting dependency.

use std::fmt::Write;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` points, x ascending.
    pub points: Vec<(f64, f64)>,
    /// Stroke colour (any SVG colour).
    pub color: &'static str,
    /// Dashed line (for secondary configurations).
    pub dashed: bool,
}

/// A chart: title, axis labels and series. The x axis is logarithmic (base 2) with a tick at
/// every x that occurs in the data, labelled as a byte size.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic (base 10) y axis; otherwise linear from zero.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// Colours for successive peers.
pub const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 60.0;

/// `4096` -> `4 KiB`.
pub fn size_label(bytes: f64) -> String {
    let b = bytes.round() as u64;
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Short number for tick labels.
fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() >= 1.0) {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Linear ticks: about five "nice" steps from 0 to at least `max`.
fn linear_ticks(max: f64) -> Vec<f64> {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let n = (max / step).ceil() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

/// Log ticks at 1, 2, 5 x 10^k covering `lo..hi`.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut v = Vec::new();
    let mut k = lo.log10().floor() as i32;
    while 10f64.powi(k) <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * 10f64.powi(k);
            if t >= lo * 0.9999 && t <= hi * 1.0001 {
                v.push(t);
            }
        }
        k += 1;
    }
    v
}

/// Renders the chart as a standalone SVG document.
pub fn render(c: &Chart) -> String {
    let pts: Vec<(f64, f64)> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| *x > 0.0 && y.is_finite() && (!c.log_y || *y > 0.0))
        .collect();
    let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    let (x0, x1) = match (xs.first(), xs.last()) {
        (Some(a), Some(b)) if b > a => (a.log2(), b.log2()),
        (Some(a), _) => (a.log2() - 1.0, a.log2() + 1.0),
        _ => (0.0, 1.0),
    };
    let ymax = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let ymin = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let (yticks, fy): (Vec<f64>, Box<dyn Fn(f64) -> f64>) = if c.log_y {
        let lo = 10f64.powf(ymin.max(1e-9).log10().floor());
        let hi = 10f64.powf(ymax.max(lo * 10.0).log10().ceil());
        let (l0, l1) = (lo.log10(), hi.log10());
        (
            log_ticks(lo, hi),
            Box::new(move |y: f64| (y.log10() - l0) / (l1 - l0)),
        )
    } else {
        let t = linear_ticks(ymax * 1.05);
        let top = *t.last().unwrap_or(&1.0);
        (t, Box::new(move |y: f64| y / top))
    };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x.log2() - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - fy(y) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        esc(&c.title)
    );
    // Grid and ticks.
    for &t in &yticks {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            num(t)
        );
    }
    for &x in &xs {
        let xx = px(x);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + ph + 18.0,
            size_label(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 16.0,
        esc(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(&c.y_label)
    );
    // Series and legend.
    for (i, se) in c.series.iter().enumerate() {
        let valid = |&(x, y): &(f64, f64)| x > 0.0 && y.is_finite() && (!c.log_y || y > 0.0);
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        // A point that cannot be drawn (e.g. a non-positive time on a log axis) breaks the
        // line instead of being bridged.
        for run in se.points.split(|p| !valid(p)) {
            if run.len() > 1 {
                let path: Vec<String> = run
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                    path.join(" "),
                    se.color
                );
            }
        }
        for &(x, y) in se.points.iter().filter(|p| valid(p)) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                se.color
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 24.0,
            se.color
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            esc(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_well_formed_document() {
        let c = Chart {
            title: "t <1>".into(),
            x_label: "size".into(),
            y_label: "ns".into(),
            log_y: true,
            series: vec![Series {
                label: "a & b".into(),
                points: vec![(8.0, 150.0), (4096.0, 300.0), (65536.0, 2000.0)],
                color: PALETTE[0],
                dashed: false,
            }],
        };
        let s = render(&c);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("t &lt;1&gt;") && s.contains("a &amp; b"));
        assert!(s.contains("64 KiB") && s.contains("<polyline"));
        assert!(!s.contains("NaN"));
    }

    #[test]
    fn ticks() {
        assert_eq!(linear_ticks(9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            log_ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(size_label(4096.0), "4 KiB");
        assert_eq!(size_label(8.0), "8 B");
        assert_eq!(size_label(4194304.0), "4 MiB");
    }
}
