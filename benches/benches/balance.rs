//! The cost of choosing an endpoint as the cluster grows: one call's start (the pick) and its
//! success (the bookkeeping) on 10, 1,000 and 100,000 endpoints, for the strategies whose pick
//! is O(1) (round robin, power of two choices) or O(log n) (the consistent-hash ring). Flat lines
//! across sizes are the point; a few endpoints are ejected-or-broken so the view is not trivial.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion};
use remora_core::rand::SplitMix64;
use remora_core::resilience::balance::{Balancer, Endpoint, Strategy};
use remora_core::resilience::breaker::BreakerConfig;
use remora_core::resilience::call::{Call, CallOptions, Endpoints, Step};
use remora_core::resilience::eject::EjectionConfig;
use remora_core::resilience::retry::{Class, RetryBudget, RetryPolicy, Schedule};
use remora_core::Instant;

fn endpoints(n: usize, strategy: Strategy) -> Endpoints {
    let ids: Vec<String> = (0..n)
        .map(|i| format!("10.{}.{}.1:9876", i / 256, i % 256))
        .collect();
    let mut eps = Endpoints::new(
        vec![1; n],
        strategy,
        BreakerConfig::default(),
        EjectionConfig::default(),
        RetryBudget::default(),
    );
    eps.balancer_mut().set_ring(&ids);
    eps
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    let opts = CallOptions {
        timeout: Duration::from_secs(3),
        retry: RetryPolicy {
            max_attempts: 1,
            schedule: Schedule::Fixed(&[Duration::ZERO]),
        },
        hedge: None,
        key: None,
        per_attempt: None,
    };
    for (name, strategy) in [
        ("round_robin", Strategy::RoundRobin),
        ("p2c", Strategy::PowerOfTwoChoices),
        ("ring", Strategy::ConsistentHash { vnodes: 16 }),
    ] {
        for n in [10usize, 1_000, 100_000] {
            let mut eps = endpoints(n, strategy);
            let mut rng = SplitMix64::new(n as u64);
            let mut steps = Vec::with_capacity(4);
            let now = Instant::from_millis(1);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    steps.clear();
                    let key = rng.next_u64();
                    let opts = CallOptions {
                        key: Some(key),
                        ..opts
                    };
                    let mut call = Call::start(&mut eps, &opts, now, key, &mut steps);
                    let Some(&Step::Send { attempt, .. }) = steps.first() else {
                        unreachable!("an endpoint is always available")
                    };
                    call.handle_outcome(
                        &mut eps,
                        &opts,
                        attempt,
                        Class::Success,
                        now,
                        key,
                        &mut steps,
                    );
                    black_box(call.is_finished())
                })
            });
        }
    }
    group.finish();
}

/// The baseline, measured in the same run: what a pick cost when every attempt built the view of
/// every endpoint (a `Vec` of availability, the endpoint views and their clone) and the balancer
/// walked it, as before the incremental view.
fn full_view(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_view");
    for (name, strategy) in [
        ("round_robin", Strategy::RoundRobin),
        ("p2c", Strategy::PowerOfTwoChoices),
    ] {
        for n in [10usize, 1_000, 100_000] {
            let mut balancer = Balancer::new(strategy);
            let (weights, in_flight) = (vec![1u32; n], vec![0u32; n]);
            let mut rng = SplitMix64::new(n as u64);
            let mut views = Vec::with_capacity(n);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let base: Vec<bool> = (0..n).map(|i| weights[i] > 0).collect();
                    views.clear();
                    views.extend((0..n).map(|i| Endpoint {
                        weight: weights[i],
                        in_flight: in_flight[i],
                        available: base[i],
                    }));
                    let candidates = views.clone();
                    black_box(balancer.pick(&candidates, None, rng.next_u64()))
                })
            });
        }
    }
    group.finish();
}

/// `criterion_group!` makes a `pub fn` without docs; a private module keeps it unexported.
mod group {
    criterion::criterion_group!(benches, super::pick, super::full_view);
}
criterion_main!(group::benches);
