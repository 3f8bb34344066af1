//! `--metrics` and `--trace` for `remora serve` and `remora bench`.

use remora_metrics::prometheus::{Exporter, Prometheus};

/// Installs a Prometheus sink as the process's metrics and serves it at
/// `http://ADDR/metrics` until the process ends. Returns the sink (to add servers' stats to)
/// and the exporter (keep it alive).
pub fn serve_metrics(addr: &str) -> Result<(&'static Prometheus, Exporter), String> {
    let metrics: &'static Prometheus = Box::leak(Box::new(Prometheus::new()));
    remora_metrics::install(metrics).map_err(|e| e.to_string())?;
    let exporter = Exporter::serve(addr, metrics).map_err(|e| format!("--metrics {addr}: {e}"))?;
    Ok((metrics, exporter))
}

/// Installs a subscriber printing every span at `level` or above, with its fields, as it
/// closes (one line per request, with outcome and latency) on stderr.
pub fn trace(level: tracing::Level) -> Result<(), String> {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())
}
