//! What one request costs the Prometheus sink (a start and an end, as a driver reports them),
//! against the previous path reproduced in the same run: a `Family` lookup (`RwLock` read + label
//! hashing) per request and `prometheus-client`'s mutex histogram. `one thread`: a single
//! recorder; `two threads`: a client and a server side recording at once, as in `remora bench`
//! (client and embedded server in one process).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use remora_metrics::prometheus::Prometheus;
use remora_metrics::{Ended, Metrics, Outcome, Side};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    side: &'static str,
    code: i32,
    outcome: &'static str,
}

/// The previous `request_started` + `request_ended`: per-side handles resolved once, the
/// (side, code, outcome) counter looked up in its family per request, a mutex histogram.
struct Previous {
    requests: Family<RequestLabels, Counter>,
    sides: [(Gauge, Histogram, Counter, Counter); 2],
}

impl Previous {
    fn new() -> Previous {
        let side = || {
            (
                Gauge::default(),
                Histogram::new(exponential_buckets(0.000_01, 2.0, 22)),
                Counter::default(),
                Counter::default(),
            )
        };
        Previous {
            requests: Family::default(),
            sides: [side(), side()],
        }
    }

    fn request(&self, e: &Ended) {
        let (in_flight, latency, out, into) = &self.sides[e.side as usize];
        in_flight.inc();
        in_flight.dec();
        self.requests
            .get_or_create(&RequestLabels {
                side: e.side.as_str(),
                code: e.code,
                outcome: e.outcome.as_str(),
            })
            .inc();
        latency.observe(e.latency.as_secs_f64());
        out.inc_by(e.body_out as u64);
        into.inc_by(e.body_in as u64);
    }
}

fn ended(side: Side) -> Ended {
    Ended {
        side,
        code: 10,
        outcome: Outcome::Success,
        latency: Duration::from_micros(180),
        body_out: 64,
        body_in: 64,
    }
}

fn current(metrics: &Prometheus, e: &Ended) {
    metrics.request_started(e.side, e.code);
    metrics.request_ended(e);
}

/// `iters` requests on each of two threads at once (client and server side); the wall time.
fn two_threads(iters: u64, record: &(impl Fn(&Ended) + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for side in [Side::Client, Side::Server] {
            s.spawn(move || {
                let e = ended(side);
                for _ in 0..iters {
                    record(black_box(&e));
                }
            });
        }
    });
    start.elapsed()
}

fn sink(c: &mut Criterion) {
    let now = Prometheus::new();
    let before = Previous::new();
    let mut g = c.benchmark_group("sink/one thread");
    let e = ended(Side::Client);
    g.bench_function("previous (family lookup, mutex histogram)", |b| {
        b.iter(|| before.request(black_box(&e)))
    });
    g.bench_function("cached series, atomic histogram", |b| {
        b.iter(|| current(&now, black_box(&e)))
    });
    g.finish();
    let mut g = c.benchmark_group("sink/two threads");
    g.bench_function("previous (family lookup, mutex histogram)", |b| {
        b.iter_custom(|iters| two_threads(iters, &|e: &Ended| before.request(e)))
    });
    g.bench_function("cached series, atomic histogram", |b| {
        b.iter_custom(|iters| two_threads(iters, &|e: &Ended| current(&now, e)))
    });
    g.finish();
}

mod group {
    criterion::criterion_group!(benches, super::sink);
}
criterion_main!(group::benches);
