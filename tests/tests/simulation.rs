//! Thousands of seeded scenarios: a client and a server `Connection` joined by a simulated link
//! (virtual time, random delays, short writes, arbitrary read chunking, sometimes a cut), with a
//! server that answers late, never, or busy. In every one:
//! - every request the client started ends exactly once (response, timeout, failure or cancel);
//! - a response carries its own request's body (no cross-talk);
//! - a timeout fires exactly when virtual time reaches the deadline, never before or after;
//! - a request reported "never written" never reached the server;
//! - at the end no waiter is left and no timer is armed.
//!
//! `REMORA_SIM_SEEDS=N` runs N scenarios instead of the default.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use remora_core::codes::SYSTEM_BUSY;
use remora_core::{
    CloseReason, Command, Config, Connection, Event, IncomingRequest, Instant, RequestId,
    SendError, SerializeType,
};
use remora_tests::sim::{LinkParams, Pair, Rng};

#[derive(Default, Debug)]
struct Totals {
    started: u64,
    responses: u64,
    busy: u64,
    timeouts: u64,
    lost: u64,
    cancelled: u64,
    refused: u64,
    stale: u64,
    unwritten_failures: u64,
    cuts: u64,
}

struct Request {
    deadline: Instant,
    body: Vec<u8>,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn random_type(rng: &mut Rng) -> Option<SerializeType> {
    match rng.below(3) {
        0 => None,
        1 => Some(SerializeType::Json),
        _ => Some(SerializeType::RocketMq),
    }
}

fn scenario(seed: u64, totals: &mut Totals) {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let client = Connection::new(Config {
        max_waiters: rng.between(2, 64) as usize,
        serialize_type: random_type(&mut rng),
        ..Config::default()
    });
    let server = Connection::new(Config {
        max_incoming: rng.between(1, 48) as usize,
        serialize_type: random_type(&mut rng),
        ..Config::default()
    });
    let params = LinkParams {
        min_delay: Duration::from_micros(rng.between(0, 200)),
        max_delay: Duration::from_micros(rng.between(200, 8_000)),
        max_write: rng.between(1, 600) as usize,
        max_read: rng.between(1, 300) as usize,
        window: rng.between(64, 16_384) as usize,
    };
    let mut pair = Pair::new(client, server, params, seed);

    // The plan: when each request is sent, its timeout, and whether the link is cut.
    let n = rng.between(1, 120);
    let mut sends: Vec<(Instant, Duration, bool)> = (0..n)
        .map(|_| {
            let at = Instant::ZERO + Duration::from_micros(rng.below(100_000));
            (
                at,
                Duration::from_micros(rng.between(500, 40_000)),
                rng.chance(0.1),
            )
        })
        .collect();
    sends.sort_by_key(|s| s.0);
    let mut sends = sends.into_iter().enumerate().peekable();
    let cut_at = rng
        .chance(0.15)
        .then(|| Instant::ZERO + Duration::from_micros(rng.below(120_000)));

    let mut outstanding: HashMap<RequestId, Request> = HashMap::new();
    let mut ended: HashSet<RequestId> = HashSet::new();
    let mut failed_unwritten: Vec<Vec<u8>> = vec![];
    let mut server_saw: HashSet<Vec<u8>> = HashSet::new();
    let mut answers: Vec<(Instant, (IncomingRequest, Command))> = vec![];
    let mut cancels: Vec<(Instant, RequestId)> = vec![];
    let mut closed_seen = false;

    for _step in 0..200_000 {
        let now = pair.now;
        // Application actions due now.
        while let Some((index, (at, timeout, oneway))) = sends.next_if(|(_, s)| s.0 <= now) {
            let _ = at;
            let body = format!("req-{seed}-{index}").into_bytes();
            let cmd = Command::request(10 + index as i32).with_body(body.clone());
            if oneway {
                match pair.client.send_oneway(cmd) {
                    Ok(()) | Err(SendError::Closed | SendError::TransmitFull { .. }) => {}
                    Err(e) => panic!("seed {seed}: oneway refused: {e}"),
                }
                continue;
            }
            match pair.client.send_request(cmd, now + timeout, now) {
                Ok(id) => {
                    totals.started += 1;
                    // An id is a (slot, generation): it may come back once its request has ended.
                    ended.remove(&id);
                    let prev = outstanding.insert(
                        id,
                        Request {
                            deadline: now + timeout,
                            body,
                        },
                    );
                    assert!(
                        prev.is_none(),
                        "seed {seed}: id {id:?} reused while pending"
                    );
                    if rng.chance(0.05) {
                        cancels.push((now + rng.duration(Duration::ZERO, timeout), id));
                    }
                }
                Err(SendError::TooManyWaiters { .. } | SendError::Closed) => totals.refused += 1,
                Err(e) => panic!("seed {seed}: unexpected refusal {e}"),
            }
        }
        for (_, (request, response)) in extract_due(&mut answers, now) {
            let _ = pair.server.send_response(request, response);
        }
        for (_, id) in extract_due(&mut cancels, now) {
            let was_pending = pair.client.cancel(id);
            assert_eq!(
                was_pending,
                outstanding.contains_key(&id),
                "seed {seed}: cancel of {id:?}"
            );
            if was_pending {
                outstanding.remove(&id);
                totals.cancelled += 1;
            }
        }
        if cut_at.is_some_and(|t| t <= now) && !pair.is_cut() {
            pair.cut();
            totals.cuts += 1;
        }

        // Move bytes until nothing moves at this instant.
        for _ in 0..10_000 {
            if !pair.pump() {
                break;
            }
        }

        // What the server's application sees.
        while let Some(event) = pair.server.poll_event() {
            match event {
                Event::Request { request, command } => {
                    server_saw.insert(command.body().to_vec());
                    if rng.chance(0.05) {
                        pair.server.dismiss(request); // never answered: the client times out
                    } else {
                        let delay = rng.duration(Duration::ZERO, ms(20));
                        let body = command.body_bytes();
                        answers.push((now + delay, (request, command.response(0).with_body(body))));
                    }
                }
                Event::Oneway { command } => {
                    server_saw.insert(command.body().to_vec());
                }
                Event::Closed { reason } => {
                    assert_eq!(reason, CloseReason::ConnectionLost, "seed {seed}");
                }
                other => panic!("seed {seed}: server got {other:?}"),
            }
        }
        // What the client's application sees.
        while let Some(event) = pair.client.poll_event() {
            match event {
                Event::Response { id, response, .. } => {
                    let req = outstanding
                        .remove(&id)
                        .unwrap_or_else(|| panic!("seed {seed}: response for {id:?}, not pending"));
                    assert!(ended.insert(id));
                    if response.code == SYSTEM_BUSY {
                        totals.busy += 1;
                    } else {
                        assert_eq!(response.body(), &req.body[..], "seed {seed}: cross-talk");
                        totals.responses += 1;
                    }
                }
                Event::Failed { id, error, .. } => {
                    let req = outstanding
                        .remove(&id)
                        .unwrap_or_else(|| panic!("seed {seed}: failure for {id:?}, not pending"));
                    assert!(ended.insert(id));
                    if error.is_timeout() {
                        assert_eq!(
                            pair.now, req.deadline,
                            "seed {seed}: timeout not on its deadline"
                        );
                        totals.timeouts += 1;
                    } else {
                        assert!(pair.is_cut(), "seed {seed}: failure without a cut: {error}");
                        assert!(!closed_seen, "seed {seed}: failure after Closed");
                        totals.lost += 1;
                    }
                    if !error.written {
                        failed_unwritten.push(req.body);
                        totals.unwritten_failures += 1;
                    }
                }
                Event::Closed { reason } => {
                    assert_eq!(reason, CloseReason::ConnectionLost, "seed {seed}");
                    assert!(
                        outstanding.is_empty(),
                        "seed {seed}: Closed before every request failed"
                    );
                    closed_seen = true;
                }
                other => panic!("seed {seed}: client got {other:?}"),
            }
        }
        for req in outstanding.values() {
            assert!(
                req.deadline > pair.now,
                "seed {seed}: a waiter outlived its deadline"
            );
        }

        let next = [
            pair.next_wakeup(),
            sends.peek().map(|(_, s)| s.0),
            answers.iter().map(|a| a.0).min(),
            cancels.iter().map(|c| c.0).min(),
            cut_at.filter(|_| !pair.is_cut()),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(at) => pair.advance_to(at),
            None if pair.busy() => {}
            None => break,
        }
    }

    assert!(
        outstanding.is_empty(),
        "seed {seed}: requests never ended: {}",
        outstanding.len()
    );
    assert_eq!(
        pair.client.pending_requests(),
        0,
        "seed {seed}: waiters left in the slab"
    );
    assert_eq!(
        pair.client.poll_timeout(),
        None,
        "seed {seed}: timer still armed"
    );
    assert!(
        sends.peek().is_none() && answers.is_empty(),
        "seed {seed}: step bound reached"
    );
    for body in failed_unwritten {
        assert!(
            !server_saw.contains(&body),
            "seed {seed}: a request said never written reached the server"
        );
    }
    totals.stale += pair.client.stats().stale_responses;
}

/// Removes and returns the entries due at `now`.
fn extract_due<T>(list: &mut Vec<(Instant, T)>, now: Instant) -> Vec<(Instant, T)> {
    let (due, later): (Vec<_>, Vec<_>) = list.drain(..).partition(|(at, _)| *at <= now);
    *list = later;
    due
}

#[test]
fn every_request_ends_exactly_once_in_thousands_of_seeded_scenarios() {
    let seeds: u64 = std::env::var("REMORA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    let mut totals = Totals::default();
    for seed in 0..seeds {
        scenario(seed, &mut totals);
    }
    eprintln!("{seeds} scenarios: {totals:?}");
    // Every path was exercised, so the invariants above were really checked.
    assert!(totals.responses > 0 && totals.timeouts > 0 && totals.lost > 0);
    assert!(totals.stale > 0 && totals.busy > 0 && totals.cancelled > 0 && totals.refused > 0);
    assert!(totals.unwritten_failures > 100 && totals.cuts > 0);
}
