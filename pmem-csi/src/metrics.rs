//! Prometheus metrics: operation counts and latencies, capacity gauges, and a tiny HTTP
//! endpoint serving them in the text exposition format.

use crate::device::Capacity;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Operation statistics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, gRPC code) -> count
    ops: Mutex<BTreeMap<(String, String), u64>>,
    /// method -> latency histogram
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    /// Records one finished call.
    pub fn observe(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let code = format!("{code:?}");
        *self
            .ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method.to_string(), code))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut lat = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = lat.entry(method.to_string()).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i] += 1;
            }
        }
    }

    /// Number of calls of `method` that ended with `code`.
    pub fn count(&self, method: &str, code: tonic::Code) -> u64 {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.get(&(method.to_string(), format!("{code:?}")))
            .copied()
            .unwrap_or(0)
    }

    /// Renders all metrics in the Prometheus text format.
    pub fn render(&self, capacity: Option<Capacity>, volumes: usize) -> String {
        let mut s = String::new();
        if let Some(c) = capacity {
            for (name, help, v) in [
                (
                    "pmem_csi_capacity_total_bytes",
                    "PMEM managed by the driver.",
                    c.total,
                ),
                (
                    "pmem_csi_capacity_available_bytes",
                    "Free PMEM.",
                    c.available,
                ),
                (
                    "pmem_csi_capacity_max_volume_bytes",
                    "Largest volume that can be created.",
                    c.max_volume,
                ),
            ] {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP pmem_csi_volumes Volumes known to the driver.\n# TYPE pmem_csi_volumes gauge\npmem_csi_volumes {volumes}"
        );
        let _ = writeln!(
            s,
            "# HELP pmem_csi_operations_total CSI calls by method and gRPC code.\n# TYPE pmem_csi_operations_total counter"
        );
        for ((m, c), n) in self.ops.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                s,
                "pmem_csi_operations_total{{method=\"{m}\",code=\"{c}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP pmem_csi_operation_duration_seconds Latency of CSI calls.\n# TYPE pmem_csi_operation_duration_seconds histogram"
        );
        for (m, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "pmem_csi_operation_duration_seconds_bucket{{method=\"{m}\",le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                s,
                "pmem_csi_operation_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}\n\
                 pmem_csi_operation_duration_seconds_sum{{method=\"{m}\"}} {}\n\
                 pmem_csi_operation_duration_seconds_count{{method=\"{m}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        s
    }
}

/// Serves `GET /metrics` on `listener` forever, rendering with `render`.
pub async fn serve<F>(listener: tokio::net::TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + Clone + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let ok = buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?");
            let (status, body) = if ok {
                // Rendering may run commands (capacity): keep it off the async workers.
                let body = tokio::task::spawn_blocking(render)
                    .await
                    .unwrap_or_default();
                ("200 OK", body)
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_and_histograms() {
        let m = Metrics::default();
        m.observe("CreateVolume", tonic::Code::Ok, Duration::from_millis(20));
        m.observe("CreateVolume", tonic::Code::Ok, Duration::from_millis(2));
        m.observe(
            "CreateVolume",
            tonic::Code::AlreadyExists,
            Duration::from_secs(2),
        );
        assert_eq!(m.count("CreateVolume", tonic::Code::Ok), 2);
        let text = m.render(
            Some(Capacity {
                total: 10,
                available: 6,
                max_volume: 4,
            }),
            3,
        );
        assert!(
            text.contains("pmem_csi_capacity_available_bytes 6\n"),
            "{text}"
        );
        assert!(text.contains("pmem_csi_capacity_max_volume_bytes 4\n"));
        assert!(text.contains("pmem_csi_volumes 3\n"));
        assert!(text.contains("pmem_csi_operations_total{method=\"CreateVolume\",code=\"Ok\"} 2\n"));
        assert!(text.contains(
            "pmem_csi_operations_total{method=\"CreateVolume\",code=\"AlreadyExists\"} 1\n"
        ));
        assert!(text.contains(
            "pmem_csi_operation_duration_seconds_bucket{method=\"CreateVolume\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "pmem_csi_operation_duration_seconds_bucket{method=\"CreateVolume\",le=\"0.05\"} 2\n"
        ));
        assert!(
            text.contains("pmem_csi_operation_duration_seconds_count{method=\"CreateVolume\"} 3\n")
        );
    }

    #[tokio::test]
    async fn http_endpoint() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, || "x_metric 1\n".to_string()));
        for (path, want) in [("/metrics", "200 OK"), ("/other", "404")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.contains(want), "{out}");
            assert_eq!(out.contains("x_metric 1"), path == "/metrics");
        }
    }
}
