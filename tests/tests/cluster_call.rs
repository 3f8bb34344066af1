//! The whole cluster call (`remora_core::resilience::cluster`, the loop both drivers run)
//! against simulated endpoints on virtual time: 200 seeded scenarios of 40 overlapping calls,
//! with failures, never-sent attempts, slow endpoints, hedging and a fallback.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use remora_core::codes;
use remora_core::resilience::call::MAX_REQUEUES;
use remora_core::resilience::cluster::{Action, CallDefaults, CallOpts, ClusterCall, ClusterState};
use remora_core::resilience::policies::Policies;
use remora_core::resilience::retry::HedgePolicy;
use remora_core::{CallError, Command, Instant};
use remora_tests::sim::Rng;

const MS: Duration = Duration::from_millis(1);

/// An attempt's end: (when, call, attempt, endpoint, succeeded).
type AttemptEnd = (Instant, usize, u32, usize, bool);

#[derive(Clone, Copy)]
struct Endpoint {
    latency: Duration,
    fail: f64,
    unsent: bool,
}

#[test]
fn every_call_ends_once_within_its_limits_and_the_counts_add_up() {
    let (mut hedged, mut fell_back, mut requeued) = (0, 0, 0);
    for seed in 0..200u64 {
        let mut rng = Rng::new(seed);
        let n = rng.between(1, 5) as usize;
        let endpoints: Vec<Endpoint> = (0..n)
            .map(|_| Endpoint {
                latency: rng.duration(MS, 30 * MS),
                fail: [0.0, 0.2, 0.9][rng.below(3) as usize],
                unsent: rng.chance(0.3),
            })
            .collect();
        let hedge = rng.chance(0.5).then_some(HedgePolicy {
            delay: 5 * MS,
            max_attempts: 3,
        });
        let policies = Policies {
            hedge,
            timeout: 200 * MS,
            ..Policies::testing()
        };
        let addresses = (0..n).map(|i| format!("10.0.0.{i}:9876")).collect();
        let mut st = ClusterState::new(addresses, policies, Instant::ZERO, seed).unwrap();
        let defaults = CallDefaults {
            policies,
            ..CallDefaults::default()
        };
        let mut events: BinaryHeap<Reverse<AttemptEnd>> = BinaryHeap::new();
        let mut calls: HashMap<usize, ClusterCall> = HashMap::new();
        let (mut cancelled, mut done) = (HashSet::new(), HashSet::new());
        let (mut sends, mut reported) = (HashMap::<usize, u32>::new(), 0u64);
        let mut now = Instant::ZERO;
        for id in 0..40usize {
            let mut request = Command::request(1);
            let opts = CallOpts {
                idempotent: true,
                fallback: (id % 2 == 0).then(|| {
                    let answer = |r: &Command, _: CallError| Ok(r.response(codes::SYSTEM_BUSY));
                    Arc::new(answer) as Arc<_>
                }),
                ..CallOpts::default()
            };
            let call = ClusterCall::new(&mut request, opts, &defaults, (0, |_| MS)).unwrap();
            calls.insert(id, call);
            let next_start = (id < 39).then_some(now + 2 * MS);
            let mut queue = vec![id];
            // This call's actions, then every outcome and timer due before the next call starts.
            loop {
                for id in queue.drain(..) {
                    let Some(call) = calls.get_mut(&id) else {
                        continue;
                    };
                    while let Some(action) = call.poll(&mut st, now) {
                        assert!(!done.contains(&id), "call {id}: {action:?} after its end");
                        match action {
                            Action::Send(a) => {
                                *sends.entry(id).or_default() += 1;
                                hedged += usize::from(a.parallel && a.number > 1);
                                let e = endpoints[a.endpoint];
                                let ok = !rng.chance(e.fail);
                                let at = if !ok && e.unsent {
                                    now
                                } else {
                                    now + e.latency
                                };
                                let at = at.min(now + a.timeout);
                                events.push(Reverse((at, id, a.number, a.endpoint, ok)));
                            }
                            Action::Cancel { attempt } => {
                                cancelled.insert((id, attempt));
                            }
                            Action::Done => {
                                done.insert(id);
                            }
                        }
                    }
                    if done.contains(&id) {
                        let result = calls.remove(&id).unwrap().result(&Command::request(1));
                        if id % 2 == 0 {
                            let answer = result.expect("the fallback answers every failure");
                            fell_back += usize::from(answer.code == codes::SYSTEM_BUSY);
                        }
                    }
                }
                let next_event = events.peek().map(|Reverse(e)| e.0);
                let next_timer = calls.values().filter_map(ClusterCall::wake_at).min();
                let Some(at) = next_event.into_iter().chain(next_timer).min() else {
                    break;
                };
                if next_start.is_some_and(|start| at > start) {
                    break;
                }
                now = now.max(at);
                if next_event == Some(at) {
                    let Reverse((_, id, attempt, endpoint, ok)) = events.pop().unwrap();
                    let Some(call) = calls.get_mut(&id) else {
                        continue;
                    };
                    if cancelled.contains(&(id, attempt)) {
                        continue;
                    }
                    let outcome = match (ok, endpoints[endpoint].unsent) {
                        (true, _) => Ok(Command::request(1).response(codes::SUCCESS)),
                        (false, true) => Err(CallError::Unavailable { retry_in: MS }),
                        (false, false) => Ok(Command::request(1).response(codes::SYSTEM_BUSY)),
                    };
                    call.on_outcome(&mut st, attempt, outcome, now).unwrap();
                    reported += 1;
                    queue.push(id);
                } else {
                    for (&id, call) in calls.iter_mut() {
                        if call.wake_at() == Some(at) {
                            call.on_timeout(&mut st, now);
                            queue.push(id);
                        }
                    }
                }
            }
            now = next_start.unwrap_or(now);
        }
        assert!(
            calls.is_empty(),
            "seed {seed}: {} calls never ended",
            calls.len()
        );
        assert_eq!(done.len(), 40, "seed {seed}");
        let totals = st.totals();
        let sent: u32 = sends.values().sum();
        assert_eq!(totals.attempts, u64::from(sent), "seed {seed}");
        let outcomes = totals.successes + totals.retryable_failures + totals.fatal_failures;
        assert_eq!(
            outcomes, reported,
            "seed {seed}: every reported outcome is counted"
        );
        let limit = 3 + MAX_REQUEUES;
        assert!(
            sends.values().all(|&s| s <= limit),
            "seed {seed}: {sends:?}"
        );
        requeued += sends.values().filter(|&&s| s > 3).count();
        for i in 0..n {
            assert_eq!(st.endpoints().in_flight(i), 0, "seed {seed}: endpoint {i}");
        }
    }
    assert!(
        hedged > 0 && fell_back > 0 && requeued > 0,
        "{hedged} {fell_back} {requeued}"
    );
}
