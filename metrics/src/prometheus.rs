//! [`Metrics`] on `prometheus-client`, and a tiny HTTP responder serving it at `/metrics`.
//!
//! Names (OpenMetrics text; counters get `_total`):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `remora_requests_total` | counter | `side`, `code`, `outcome` |
//! | `remora_request_duration_seconds` | histogram | `side` |
//! | `remora_requests_in_flight` | gauge | `side` |
//! | `remora_body_bytes_total` | counter | `side`, `direction` (`in`/`out`) |
//! | `remora_connections_opened_total` | counter | `side` |
//! | `remora_connect_failures_total` | counter | `side` |
//! | `remora_reconnects_total` | counter | |
//! | `remora_endpoint_breaker_open` / `_ejected` | gauge (0/1) | `endpoint` |
//! | `remora_retry_budget_exhausted_total` | counter | |
//! | `remora_server_connections`, `remora_server_buffered_bytes` | gauge | |
//! | `remora_server_{accepted,refused,requests,responses,busy_answers,fallback_answers}_total` | counter | |
//! | `remora_server_bytes_{in,out}_total` (wire bytes: whole frames, length prefix included) | counter | |
//!
//! The `remora_server_*` family is read from the servers' [`Snapshot`]s (the core's own
//! counts) when `/metrics` is scraped: nothing on the request path.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use remora_core::Snapshot;

use crate::{Ended, Metrics, Outcome, Side};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    side: &'static str,
    code: i32,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    side: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

type Sources = Arc<Mutex<Vec<Box<dyn Fn() -> Snapshot + Send>>>>;

/// The servers' snapshots, summed and encoded at scrape time.
struct ServerCollector {
    sources: Sources,
}

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCollector")
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut sum = Snapshot::default();
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.is_empty() {
            return Ok(());
        }
        for source in sources.iter() {
            let s = source();
            sum.connections += s.connections;
            sum.buffered += s.buffered;
            sum.accepted += s.accepted;
            sum.refused += s.refused;
            sum.requests += s.requests;
            sum.responses += s.responses;
            sum.busy_rejections += s.busy_rejections;
            sum.fallback_answers += s.fallback_answers;
            sum.bytes_in += s.bytes_in;
            sum.bytes_out += s.bytes_out;
        }
        drop(sources);
        for (name, help, value) in [
            (
                "remora_server_connections",
                "Connections the servers hold open",
                sum.connections,
            ),
            (
                "remora_server_buffered_bytes",
                "Bytes the servers' connections buffer",
                sum.buffered,
            ),
        ] {
            let metric = ConstGauge::new(value as i64);
            metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        for (name, help, value) in [
            (
                "remora_server_accepted",
                "Connections admitted",
                sum.accepted,
            ),
            (
                "remora_server_refused",
                "Connections refused by the budget",
                sum.refused,
            ),
            (
                "remora_server_requests",
                "Requests delivered to the handler",
                sum.requests,
            ),
            ("remora_server_responses", "Responses queued", sum.responses),
            (
                "remora_server_busy_answers",
                "Requests answered SYSTEM_BUSY without reaching the handler",
                sum.busy_rejections,
            ),
            (
                "remora_server_fallback_answers",
                "Responses that could not be encoded and went out as SYSTEM_ERROR",
                sum.fallback_answers,
            ),
            (
                "remora_server_bytes_in",
                "Bytes read from the connections (whole frames)",
                sum.bytes_in,
            ),
            (
                "remora_server_bytes_out",
                "Bytes written to the connections",
                sum.bytes_out,
            ),
        ] {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

/// [`Metrics`] kept in a `prometheus-client` registry.
///
/// The request path costs a few uncontended atomic adds: the per-side series are resolved
/// once, at construction; the `remora_requests_total` series (labelled by request code, so not
/// known in advance) are resolved once per thread and label set and kept in a small
/// thread-local cache; the latency histogram is [`Latency`], whose buckets are atomics.
pub struct Prometheus {
    /// Tells this instance's entries in the threads' caches from another's.
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    opened: Family<SideLabel, Counter>,
    connect_failures: Family<SideLabel, Counter>,
    reconnects: Counter,
    breaker_open: Family<EndpointLabel, Gauge>,
    ejected: Family<EndpointLabel, Gauge>,
    budget_exhausted: Counter,
    servers: Sources,
    /// Per side (client, server): handles into the families above, looked up once here rather
    /// than on every request.
    per_side: [SideHandles; 2],
}

/// One side's series, shared with the families (the same atomics).
struct SideHandles {
    in_flight: Gauge,
    latency: Latency,
    bytes_out: Counter,
    bytes_in: Counter,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// Latency buckets: upper bounds of 10 µs · 2^i for i in `0..LATENCY_BUCKETS` (10 µs to
/// ~21 s), then +Inf.
const LATENCY_BUCKETS: usize = 22;

/// The first latency bucket's upper bound, in nanoseconds.
const FIRST_BOUND_NS: u128 = 10_000;

/// A latency histogram whose [`observe`](Latency::observe) is two relaxed atomic adds
/// (`prometheus-client`'s own `Histogram` takes a mutex per observation). Its buckets are fixed:
/// 10 µs · 2^i, i in `0..22`, and +Inf; the count is the buckets' sum, so they always agree.
#[derive(Clone, Debug, Default)]
struct Latency(Arc<LatencyInner>);

#[derive(Debug, Default)]
struct LatencyInner {
    /// Observations per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    /// The sum of all observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Latency {
    /// Counts one request that took `latency`.
    #[inline]
    fn observe(&self, latency: Duration) {
        let ns = latency.as_nanos();
        self.0.buckets[latency_bucket(ns)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The bucket of an observation of `ns` nanoseconds: the first whose bound is at least `ns`.
#[inline]
fn latency_bucket(ns: u128) -> usize {
    if ns <= FIRST_BOUND_NS {
        return 0;
    }
    // ns <= FIRST << i  <=>  (ns - 1) / FIRST < 2^i: i is the bit length of the quotient.
    let quotient = (ns - 1) / FIRST_BOUND_NS;
    ((u128::BITS - quotient.leading_zeros()) as usize).min(LATENCY_BUCKETS)
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); LATENCY_BUCKETS + 1];
        for (i, (bound, count)) in buckets.iter_mut().enumerate() {
            *bound = if i < LATENCY_BUCKETS {
                FIRST_BOUND_NS as f64 * 1e-9 * f64::from(1u32 << i)
            } else {
                f64::INFINITY
            };
            *count = self.0.buckets[i].load(Ordering::Relaxed);
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// How many `remora_requests_total` series each thread keeps resolved.
const CACHED_SERIES: usize = 32;

/// One resolved `remora_requests_total` series in a thread's cache.
struct CachedSeries {
    owner: u64,
    side: Side,
    code: i32,
    outcome: Outcome,
    counter: Counter,
}

thread_local! {
    /// This thread's resolved `remora_requests_total` series, most recently added last.
    static REQUEST_SERIES: RefCell<Vec<CachedSeries>> = const { RefCell::new(Vec::new()) };
}

/// Tells [`Prometheus`] instances apart in the threads' caches.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus::new()
    }
}

impl Prometheus {
    /// Empty metrics, registered.
    pub fn new() -> Prometheus {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<SideLabel, Latency>::default();
        let in_flight = Family::<SideLabel, Gauge>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let opened = Family::<SideLabel, Counter>::default();
        let connect_failures = Family::<SideLabel, Counter>::default();
        let reconnects = Counter::default();
        let breaker_open = Family::<EndpointLabel, Gauge>::default();
        let ejected = Family::<EndpointLabel, Gauge>::default();
        let budget_exhausted = Counter::default();
        let servers: Sources = Arc::default();
        registry.register(
            "remora_requests",
            "Requests by side, code and outcome class",
            requests.clone(),
        );
        registry.register(
            "remora_request_duration_seconds",
            "Request latency, start to end",
            latency.clone(),
        );
        registry.register(
            "remora_requests_in_flight",
            "Requests started and not ended",
            in_flight.clone(),
        );
        registry.register(
            "remora_body_bytes",
            "Request and response body bytes",
            bytes.clone(),
        );
        registry.register(
            "remora_connections_opened",
            "Connections opened",
            opened.clone(),
        );
        registry.register(
            "remora_connect_failures",
            "Connection attempts that failed",
            connect_failures.clone(),
        );
        registry.register(
            "remora_reconnects",
            "Connections reopened after one was lost or expired",
            reconnects.clone(),
        );
        registry.register(
            "remora_endpoint_breaker_open",
            "1 while a cluster endpoint's breaker is open or half open",
            breaker_open.clone(),
        );
        registry.register(
            "remora_endpoint_ejected",
            "1 while a cluster endpoint is ejected",
            ejected.clone(),
        );
        registry.register(
            "remora_retry_budget_exhausted",
            "Retries or hedges the retry budget refused",
            budget_exhausted.clone(),
        );
        registry.register_collector(Box::new(ServerCollector {
            sources: Arc::clone(&servers),
        }));
        let per_side = [Side::Client, Side::Server].map(|side| {
            let side = side.as_str();
            // One statement each: a family's read guard must be gone before the next
            // `get_or_create` on it may take its write lock.
            let in_flight = in_flight.get_or_create(&SideLabel { side }).clone();
            let latency = latency.get_or_create(&SideLabel { side }).clone();
            let out = BytesLabels {
                side,
                direction: "out",
            };
            let bytes_out = bytes.get_or_create(&out).clone();
            let into = BytesLabels {
                side,
                direction: "in",
            };
            let bytes_in = bytes.get_or_create(&into).clone();
            SideHandles {
                in_flight,
                latency,
                bytes_out,
                bytes_in,
            }
        });
        Prometheus {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            per_side,
            registry,
            requests,
            opened,
            connect_failures,
            reconnects,
            breaker_open,
            ejected,
            budget_exhausted,
            servers,
        }
    }

    /// Publishes a server's counts (its `stats()`), read at every scrape.
    pub fn add_server(&self, stats: impl Fn() -> Snapshot + Send + 'static) {
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(stats));
    }

    /// Adds one to `remora_requests_total{side, code, outcome}`, through this thread's cache.
    #[inline]
    fn count_request(&self, side: Side, code: i32, outcome: Outcome) {
        let cached = REQUEST_SERIES.try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return false;
            };
            let hit = cache.iter().find(|c| {
                c.owner == self.id && c.code == code && c.outcome == outcome && c.side == side
            });
            if let Some(series) = hit {
                series.counter.inc();
                return true;
            }
            let counter = self.series(side, code, outcome);
            counter.inc();
            if cache.len() >= CACHED_SERIES {
                cache.remove(0);
            }
            cache.push(CachedSeries {
                owner: self.id,
                side,
                code,
                outcome,
                counter,
            });
            true
        });
        if cached != Ok(true) {
            // The thread is ending (its cache is gone): straight to the family.
            self.series(side, code, outcome).inc();
        }
    }

    /// The `remora_requests_total` series of these labels, from the family.
    fn series(&self, side: Side, code: i32, outcome: Outcome) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                side: side.as_str(),
                code,
                outcome: outcome.as_str(),
            })
            .clone()
    }

    /// The OpenMetrics text of everything now.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Metrics for Prometheus {
    fn request_started(&self, side: Side, _code: i32) {
        self.per_side[side_index(side)].in_flight.inc();
    }

    fn request_ended(&self, e: &Ended) {
        let handles = &self.per_side[side_index(e.side)];
        handles.in_flight.dec();
        self.count_request(e.side, e.code, e.outcome);
        handles.latency.observe(e.latency);
        handles.bytes_out.inc_by(e.body_out as u64);
        handles.bytes_in.inc_by(e.body_in as u64);
    }

    fn connection_opened(&self, side: Side) {
        self.opened
            .get_or_create(&SideLabel {
                side: side.as_str(),
            })
            .inc();
    }

    fn connect_failed(&self, side: Side) {
        self.connect_failures
            .get_or_create(&SideLabel {
                side: side.as_str(),
            })
            .inc();
    }

    fn reconnected(&self) {
        self.reconnects.inc();
    }

    fn endpoint_health(&self, endpoint: &str, breaker: &str, ejected: bool) {
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        self.breaker_open
            .get_or_create(&label)
            .set(i64::from(breaker != "closed"));
        self.ejected.get_or_create(&label).set(i64::from(ejected));
    }

    fn budget_exhausted(&self) {
        self.budget_exhausted.inc();
    }
}

/// A std thread answering `GET /metrics` with the OpenMetrics text (anything else: 404).
/// Stops (and joins) on [`stop`](Exporter::stop) or drop.
pub struct Exporter {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Listens on `addr` and serves `metrics`.
    pub fn serve(addr: impl ToSocketAddrs, metrics: &'static Prometheus) -> io::Result<Exporter> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("remora-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        let _ = respond(stream, metrics);
                    }
                }
            })?;
        Ok(Exporter {
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering and joins the thread (idempotent).
    pub fn stop(&mut self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The longest request head read (a scraper's is a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;

fn respond(mut stream: TcpStream, metrics: &Prometheus) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return stream.write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    if method != Some(b"GET".as_slice()) || path != Some(b"/metrics".as_slice()) {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let body = metrics.encode();
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn exporter_serves_what_was_recorded_and_404s_the_rest() {
        let metrics: &'static Prometheus = Box::leak(Box::new(Prometheus::new()));
        for _ in 0..3 {
            metrics.request_started(Side::Client, 105);
            metrics.request_ended(&Ended {
                side: Side::Client,
                code: 105,
                outcome: Outcome::Success,
                latency: Duration::from_micros(300),
                body_out: 10,
                body_in: 7,
            });
        }
        metrics.endpoint_health("127.0.0.1:1", "open", true);
        metrics.add_server(|| Snapshot {
            requests: 42,
            busy_rejections: 2,
            connections: 1,
            bytes_in: 96,
            ..Snapshot::default()
        });
        let mut exporter = Exporter::serve("127.0.0.1:0", metrics).unwrap();
        let text = get(exporter.local_addr(), "/metrics");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        for line in [
            "remora_requests_total{side=\"client\",code=\"105\",outcome=\"success\"} 3",
            "remora_requests_in_flight{side=\"client\"} 0",
            "remora_body_bytes_total{side=\"client\",direction=\"out\"} 30",
            "remora_body_bytes_total{side=\"client\",direction=\"in\"} 21",
            "remora_request_duration_seconds_count{side=\"client\"} 3",
            "remora_endpoint_breaker_open{endpoint=\"127.0.0.1:1\"} 1",
            "remora_server_requests_total 42",
            "remora_server_busy_answers_total 2",
            "remora_server_connections 1",
            "remora_server_bytes_in_total 96",
            "remora_server_bytes_out_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(get(exporter.local_addr(), "/other").starts_with("HTTP/1.1 404"));
        exporter.stop();
    }

    #[test]
    fn latency_buckets_are_the_first_bound_at_least_the_observation() {
        let us = |n: u64| Duration::from_micros(n).as_nanos();
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(us(10)), 0);
        assert_eq!(latency_bucket(us(10) + 1), 1);
        assert_eq!(latency_bucket(us(20)), 1);
        assert_eq!(latency_bucket(us(20) + 1), 2);
        assert_eq!(latency_bucket(us(300)), 5); // 160 < 300 <= 320
        assert_eq!(latency_bucket(us(10) << 21), 21);
        assert_eq!(latency_bucket((us(10) << 21) + 1), LATENCY_BUCKETS);
        assert_eq!(latency_bucket(u128::MAX), LATENCY_BUCKETS);
    }

    #[test]
    fn latency_encodes_cumulative_buckets_count_and_sum() {
        let metrics = Prometheus::new();
        let ended = |micros| Ended {
            side: Side::Server,
            code: 10,
            outcome: Outcome::Success,
            latency: Duration::from_micros(micros),
            body_out: 0,
            body_in: 0,
        };
        for micros in [5, 15, 15, 300, 60_000_000] {
            metrics.request_started(Side::Server, 10);
            metrics.request_ended(&ended(micros));
        }
        let text = metrics.encode();
        let series = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .to_string()
        };
        let h = "remora_request_duration_seconds";
        assert_eq!(series(&format!("{h}_count{{side=\"server\"}}")), "5");
        let sum: f64 = series(&format!("{h}_sum{{side=\"server\"}}"))
            .parse()
            .unwrap();
        assert!((sum - 60.000_335).abs() < 1e-9, "{sum}");
        for (le, want) in [
            ("0.00001", "1"),
            ("0.00002", "3"),
            ("0.00016", "3"),
            ("0.00032", "4"),
            ("20.97152", "4"),
            ("+Inf", "5"),
        ] {
            assert_eq!(
                series(&format!("{h}_bucket{{le=\"{le}\",side=\"server\"}}")),
                want,
                "le={le} in\n{text}"
            );
        }
        assert_eq!(
            series(r#"remora_requests_total{side="server",code="10",outcome="success"}"#),
            "5"
        );
    }

    #[test]
    fn request_series_are_cached_per_instance() {
        let (a, b) = (Prometheus::new(), Prometheus::new());
        for (metrics, n) in [(&a, 2), (&b, 3), (&a, 1)] {
            for _ in 0..n {
                metrics.count_request(Side::Client, 34, Outcome::Timeout);
            }
        }
        // More label sets than a thread keeps: the evicted ones still count.
        for code in 0..(CACHED_SERIES as i32 * 2) {
            a.count_request(Side::Client, code, Outcome::Success);
            a.count_request(Side::Client, code, Outcome::Success);
        }
        let line = r#"remora_requests_total{side="client",code="34",outcome="timeout"}"#;
        let value = |m: &Prometheus, series: &str| {
            m.encode()
                .lines()
                .find_map(|l| Some(l.strip_prefix(series)?.strip_prefix(' ')?.to_string()))
        };
        assert_eq!(value(&a, line).as_deref(), Some("3"));
        assert_eq!(value(&b, line).as_deref(), Some("3"));
        for code in [0, CACHED_SERIES as i32 * 2 - 1] {
            let series = format!(
                r#"remora_requests_total{{side="client",code="{code}",outcome="success"}}"#
            );
            assert_eq!(value(&a, &series).as_deref(), Some("2"), "code {code}");
        }
    }
}
