//! The multi-endpoint call machine (`remora_core::resilience::call`) against simulated endpoints
//! on virtual time: scripted latencies and failures, seeded: 1,000 scenarios, 30,000 calls.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use remora_core::backoff::{Backoff, Jitter};
use remora_core::resilience::balance::Strategy;
use remora_core::resilience::breaker::BreakerConfig;
use remora_core::resilience::call::{Call, CallOptions, Endpoints, Step};
use remora_core::resilience::eject::EjectionConfig;
use remora_core::resilience::retry::{Class, HedgePolicy, RetryBudget, RetryPolicy, Schedule};
use remora_core::Instant;
use remora_tests::sim::Rng;

const MS: Duration = Duration::from_millis(1);

/// How an endpoint behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    latency: Duration,
    jitter: Duration,
    /// Probability of a retryable failure.
    fail: f64,
    /// Failures never leave the client (refused connection): transparent requeue.
    unsent: bool,
}

/// An attempt's end: (when, call, attempt, endpoint, succeeded).
type AttemptEnd = (Instant, usize, u32, usize, bool);

struct World {
    now: Instant,
    rng: Rng,
    behaviour: Vec<Behaviour>,
    /// (when, call, attempt, endpoint, class)
    events: BinaryHeap<Reverse<AttemptEnd>>,
    cancelled: HashSet<(usize, u32)>,
}

#[derive(Default, Debug)]
struct Tally {
    calls: usize,
    successes: usize,
    attempts: usize,
    finishes: usize,
    hedges_to_other_endpoint: usize,
    hedges_to_same_endpoint: usize,
    per_endpoint: Vec<usize>,
}

/// Runs `calls` calls, one every `gap`, to the end; checks every call's steps as it goes.
fn run(
    eps: &mut Endpoints,
    opts: &CallOptions<'_>,
    world: &mut World,
    calls: usize,
    gap: Duration,
) -> Tally {
    let mut tally = Tally {
        per_endpoint: vec![0; eps.len()],
        ..Tally::default()
    };
    let mut live: HashMap<usize, Call> = HashMap::new();
    let mut finished: HashSet<usize> = HashSet::new();
    let mut next_start = world.now;
    let mut started = 0;
    let mut steps = Vec::new();
    for _ in 0..1_000_000 {
        // The next thing to happen: a call starts, an attempt ends, or a call's timer.
        let next_event = world.events.peek().map(|Reverse(e)| e.0);
        let next_timer = live.values().filter_map(Call::poll_timeout).min();
        let next_call = (started < calls).then_some(next_start);
        let Some(now) = [next_event, next_timer, next_call]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        assert!(now >= world.now, "time went backwards");
        world.now = now;
        if next_call == Some(now) {
            let id = started;
            started += 1;
            next_start = now + gap;
            steps.clear();
            let call = Call::start(eps, opts, now, world.rng.next_u64(), &mut steps);
            live.insert(id, call);
            apply(id, &steps, eps, world, &mut tally, &mut live, &mut finished);
            continue;
        }
        if next_event == Some(now) {
            let Reverse((_, id, attempt, endpoint, ok)) = world.events.pop().unwrap();
            if world.cancelled.contains(&(id, attempt)) {
                continue;
            }
            let Some(call) = live.get_mut(&id) else {
                continue;
            };
            steps.clear();
            if !ok && world.behaviour[endpoint].unsent {
                call.handle_unsent(eps, opts, attempt, now, world.rng.next_u64(), &mut steps);
            } else {
                let class = if ok { Class::Success } else { Class::Retryable };
                call.handle_outcome(
                    eps,
                    opts,
                    attempt,
                    class,
                    now,
                    world.rng.next_u64(),
                    &mut steps,
                );
            }
            if ok {
                tally.successes += 1;
            }
            apply(id, &steps, eps, world, &mut tally, &mut live, &mut finished);
            continue;
        }
        let due: Vec<usize> = live
            .iter()
            .filter(|(_, c)| c.poll_timeout() == Some(now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            steps.clear();
            let call = live.get_mut(&id).unwrap();
            call.handle_timeout(eps, opts, now, world.rng.next_u64(), &mut steps);
            apply(id, &steps, eps, world, &mut tally, &mut live, &mut finished);
        }
    }
    assert!(live.is_empty(), "calls never finished: {}", live.len());
    assert_eq!(finished.len(), calls);
    for i in 0..eps.len() {
        assert_eq!(
            eps.in_flight(i),
            0,
            "endpoint {i} still counts calls in flight"
        );
    }
    tally.calls = calls;
    tally
}

fn apply(
    id: usize,
    steps: &[Step],
    eps: &Endpoints,
    world: &mut World,
    tally: &mut Tally,
    live: &mut HashMap<usize, Call>,
    finished: &mut HashSet<usize>,
) {
    for step in steps {
        assert!(
            !finished.contains(&id),
            "call {id}: {step:?} after it finished"
        );
        match *step {
            Step::Send {
                attempt,
                endpoint,
                deadline,
                ..
            } => {
                tally.attempts += 1;
                tally.per_endpoint[endpoint] += 1;
                let call = &live[&id];
                if attempt > 1 {
                    let first = call.endpoints().next().unwrap();
                    if first == endpoint {
                        tally.hedges_to_same_endpoint += 1;
                    } else {
                        tally.hedges_to_other_endpoint += 1;
                    }
                }
                let b = world.behaviour[endpoint];
                let jitter = world.rng.duration(Duration::ZERO, b.jitter);
                let done = (world.now + b.latency + jitter).min(deadline);
                let ok = done < deadline && !world.rng.chance(b.fail);
                world
                    .events
                    .push(Reverse((done, id, attempt, endpoint, ok)));
                let _ = eps;
            }
            Step::Cancel { attempt } => {
                world.cancelled.insert((id, attempt));
            }
            Step::Finish { .. } => {
                tally.finishes += 1;
                assert!(finished.insert(id), "call {id} finished twice");
            }
        }
    }
    if live.get(&id).is_some_and(Call::is_finished) {
        live.remove(&id);
    }
}

fn world(seed: u64, behaviour: Vec<Behaviour>) -> World {
    World {
        now: Instant::ZERO,
        rng: Rng::new(seed),
        behaviour,
        events: BinaryHeap::new(),
        cancelled: HashSet::new(),
    }
}

fn fast(fail: f64) -> Behaviour {
    Behaviour {
        latency: MS,
        jitter: MS,
        fail,
        unsent: false,
    }
}

fn retry_policy(attempts: u32) -> RetryPolicy<'static> {
    RetryPolicy {
        max_attempts: attempts,
        schedule: Schedule::Exponential(Backoff {
            initial: MS,
            multiplier: 2.0,
            max: 10 * MS,
            jitter: Jitter::Full,
        }),
    }
}

fn endpoints(n: usize, ejection: EjectionConfig) -> Endpoints {
    Endpoints::new(
        vec![1; n],
        Strategy::RoundRobin,
        BreakerConfig {
            consecutive_failures: 0,
            failure_rate: None,
            ..BreakerConfig::default()
        },
        ejection,
        RetryBudget::default(),
    )
}

#[test]
fn every_call_finishes_exactly_once_across_seeds() {
    let mut totals = Tally::default();
    for seed in 0..1_000 {
        let mut rng = Rng::new(seed);
        let behaviour: Vec<Behaviour> = (0..rng.between(1, 6))
            .map(|_| Behaviour {
                latency: Duration::from_micros(rng.between(100, 20_000)),
                jitter: Duration::from_micros(rng.between(0, 20_000)),
                fail: rng.below(60) as f64 / 100.0,
                unsent: rng.chance(0.3),
            })
            .collect();
        let n = behaviour.len();
        let mut eps = Endpoints::new(
            vec![1; n],
            [
                Strategy::RoundRobin,
                Strategy::PowerOfTwoChoices,
                Strategy::LeastLoaded,
            ][seed as usize % 3],
            BreakerConfig::default(),
            EjectionConfig {
                max_ejection_percent: 50,
                ..EjectionConfig::default()
            },
            RetryBudget::default(),
        );
        let opts = CallOptions {
            timeout: Duration::from_millis(rng.between(5, 100)),
            retry: retry_policy(rng.between(1, 4) as u32),
            hedge: rng.chance(0.5).then_some(HedgePolicy {
                delay: 3 * MS,
                max_attempts: 3,
            }),
            key: None,
            per_attempt: None,
        };
        let mut w = world(seed, behaviour);
        let t = run(
            &mut eps,
            &opts,
            &mut w,
            30,
            Duration::from_micros(rng.between(100, 5000)),
        );
        assert_eq!(t.finishes, 30);
        assert!(t.attempts <= 30 * 4 + 30 * 3);
        totals.attempts += t.attempts;
        totals.successes += t.successes;
    }
    assert!(totals.successes > 0 && totals.attempts > 30_000);
}

#[test]
fn retries_stop_when_the_budget_is_empty() {
    let mut eps = endpoints(
        3,
        EjectionConfig {
            consecutive_failures: 0,
            success_rate: None,
            ..EjectionConfig::default()
        },
    );
    let opts = CallOptions {
        timeout: Duration::from_secs(1),
        retry: retry_policy(5),
        hedge: None,
        key: None,
        per_attempt: None,
    };
    let mut w = world(1, vec![fast(1.0); 3]);
    let t = run(&mut eps, &opts, &mut w, 200, 50 * MS);
    // A full bucket (10 tokens, retry while > 5) pays for a handful of retries, then each call
    // makes one attempt: nowhere near 5 attempts per call.
    assert!(
        t.attempts < 200 + 10,
        "{} attempts for 200 calls",
        t.attempts
    );
    assert!(!eps.budget().allows_retry());
}

#[test]
fn hedges_go_to_another_endpoint_and_the_first_success_wins() {
    // Endpoint 0 is slow; the others answer fast. Round robin sends every third call to 0 first.
    let slow = Behaviour {
        latency: 40 * MS,
        jitter: MS,
        fail: 0.0,
        unsent: false,
    };
    let mut eps = endpoints(
        3,
        EjectionConfig {
            consecutive_failures: 0,
            success_rate: None,
            ..EjectionConfig::default()
        },
    );
    let opts = CallOptions {
        timeout: Duration::from_secs(1),
        retry: retry_policy(1),
        hedge: Some(HedgePolicy {
            delay: 5 * MS,
            max_attempts: 2,
        }),
        key: None,
        per_attempt: None,
    };
    let mut w = world(2, vec![slow, fast(0.0), fast(0.0)]);
    let t = run(&mut eps, &opts, &mut w, 90, 20 * MS);
    assert!(t.hedges_to_other_endpoint >= 25, "{t:?}");
    assert_eq!(t.hedges_to_same_endpoint, 0);
    assert_eq!(
        t.successes, 90,
        "every call succeeded, through its hedge when 0 was slow"
    );
}

#[test]
fn a_failing_endpoint_is_ejected_and_comes_back() {
    let ejection = EjectionConfig {
        consecutive_failures: 3,
        success_rate: None,
        base_ejection_time: Duration::from_millis(500),
        max_ejection_percent: 50,
        ..EjectionConfig::default()
    };
    let mut eps = endpoints(3, ejection);
    let opts = CallOptions {
        timeout: Duration::from_secs(1),
        retry: retry_policy(3),
        hedge: None,
        key: None,
        per_attempt: None,
    };
    let mut w = world(3, vec![fast(1.0), fast(0.0), fast(0.0)]);
    // 60 calls in 300 ms: endpoint 0 fails 3 times, is ejected, and gets nothing more.
    let t = run(&mut eps, &opts, &mut w, 60, 5 * MS);
    assert_eq!(t.per_endpoint[0], 3, "{t:?}");
    assert!(eps.is_ejected(0, w.now));
    // After its ejection time it is picked again.
    w.behaviour[0] = fast(0.0);
    w.now = w.now + Duration::from_millis(600);
    let t = run(&mut eps, &opts, &mut w, 30, 5 * MS);
    assert!(!eps.is_ejected(0, w.now));
    assert!(t.per_endpoint[0] >= 9, "{t:?}");
}

#[test]
fn max_ejection_percent_holds_when_everything_fails() {
    let ejection = EjectionConfig {
        consecutive_failures: 2,
        success_rate: None,
        base_ejection_time: Duration::from_secs(60),
        max_ejection_percent: 30,
        panic_threshold: 0,
        ..EjectionConfig::default()
    };
    let mut eps = endpoints(10, ejection);
    let opts = CallOptions {
        timeout: Duration::from_secs(1),
        retry: retry_policy(2),
        hedge: None,
        key: None,
        per_attempt: None,
    };
    let mut w = world(4, vec![fast(1.0); 10]);
    run(&mut eps, &opts, &mut w, 200, MS);
    let ejected = (0..10).filter(|&i| eps.is_ejected(i, w.now)).count();
    assert_eq!(ejected, 3, "30 % of 10");
}

#[test]
fn never_written_failures_requeue_without_using_an_attempt() {
    let refused = Behaviour {
        latency: MS,
        jitter: MS,
        fail: 1.0,
        unsent: true,
    };
    let mut eps = endpoints(
        2,
        EjectionConfig {
            consecutive_failures: 2,
            success_rate: None,
            max_ejection_percent: 50,
            ..EjectionConfig::default()
        },
    );
    // One attempt only, yet every call succeeds: the refused endpoint's failures are requeued
    // (and after two of them it is ejected).
    let opts = CallOptions {
        timeout: Duration::from_secs(1),
        retry: retry_policy(1),
        hedge: None,
        key: None,
        per_attempt: None,
    };
    let mut w = world(5, vec![refused, fast(0.0)]);
    let t = run(&mut eps, &opts, &mut w, 20, 10 * MS);
    assert_eq!(t.successes, 20, "{t:?}");
    assert!(t.per_endpoint[0] > 0, "the refused endpoint was tried");
}

#[test]
fn per_attempt_timeouts_bound_each_attempt() {
    let slow = Behaviour {
        latency: 200 * MS,
        jitter: MS,
        fail: 0.0,
        unsent: false,
    };
    let mut eps = endpoints(
        2,
        EjectionConfig {
            consecutive_failures: 0,
            success_rate: None,
            ..EjectionConfig::default()
        },
    );
    let opts = CallOptions {
        timeout: Duration::from_secs(1),
        retry: retry_policy(2),
        hedge: None,
        key: None,
        per_attempt: Some(50 * MS),
    };
    // Endpoint 0 is too slow for the per-attempt limit; its attempts end at 50 ms as failures and
    // the retry goes to endpoint 1.
    let mut w = world(6, vec![slow, fast(0.0)]);
    // Few enough calls that the retry budget (10 tokens, retry while > 5) never runs dry.
    let t = run(&mut eps, &opts, &mut w, 6, 20 * MS);
    assert_eq!(t.successes, 6, "{t:?}");
}
