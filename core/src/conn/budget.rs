//! The server-wide budget: how many connections a server holds and how many bytes they may
//! buffer between them, and what happens beyond (`SYSTEM_BUSY`, refused connections). Shared by
//! every connection of a server, on any thread: the counters are atomics.

use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::conn::connection::Connection;

/// Limits a server puts on all of its connections together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BudgetConfig {
    /// Most bytes all connections together may hold (partial frames read plus answers not yet
    /// written, [`Connection::buffered_len`]). At or beyond it, new requests are answered
    /// `SYSTEM_BUSY` and new connections are refused.
    pub max_buffered: usize,
    /// Most connections open at once; more are refused.
    pub max_connections: usize,
}

impl Default for BudgetConfig {
    /// 512 MiB and 10,000 connections.
    fn default() -> Self {
        BudgetConfig {
            max_buffered: 512 * 1024 * 1024,
            max_connections: 10_000,
        }
    }
}

/// Why a new connection was refused; its `Display` is the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// [`BudgetConfig::max_connections`] are open.
    TooManyConnections {
        /// The limit.
        max: usize,
    },
    /// The connections already hold [`BudgetConfig::max_buffered`] bytes or more.
    BudgetSpent {
        /// Bytes held.
        buffered: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyConnections { max } => {
                write!(
                    f,
                    "connection refused: {max} connections open (the maximum)"
                )
            }
            Refusal::BudgetSpent { buffered, max } => write!(
                f,
                "connection refused: connections buffer {buffered} bytes, budget {max}"
            ),
        }
    }
}

/// What a server's connections have done and hold, from [`Budget::snapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Connections open now.
    pub connections: usize,
    /// Bytes they buffer now.
    pub buffered: usize,
    /// The most they ever buffered at once (as last reported by each connection).
    pub peak_buffered: usize,
    /// Connections admitted since the start.
    pub accepted: u64,
    /// Connections refused since the start.
    pub refused: u64,
    /// Requests delivered to the handler.
    pub requests: u64,
    /// Responses queued (handler answers, busy answers, `SYSTEM_ERROR` fallbacks).
    pub responses: u64,
    /// Requests answered `SYSTEM_BUSY` without reaching the handler.
    pub busy_rejections: u64,
    /// Responses that could not be encoded and went out as `SYSTEM_ERROR`.
    pub fallback_answers: u64,
    /// Bytes read from the connections (whole frames: length prefix, header and body).
    pub bytes_in: u64,
    /// Bytes written to them.
    pub bytes_out: u64,
}

/// One connection's share of a [`Budget`]: what it last reported. Obtained from
/// [`Budget::admit`], given back with [`Budget::leave`].
#[derive(Debug)]
#[must_use = "give it back with Budget::leave when the connection ends"]
pub struct Account {
    buffered: usize,
    requests: u64,
    responses: u64,
    busy: u64,
    fallback: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// A server's budget, shared by all its connections (`Budget` is `Sync`).
///
/// A driver calls [`admit`](Self::admit) for each accepted connection (closing it, and logging
/// the [`Refusal`], when refused), [`sync`](Self::sync) after anything that changes what a
/// connection holds (bytes read, answers queued, bytes written), and [`leave`](Self::leave) when
/// it ends. `sync` also tells the connection whether to answer new requests `SYSTEM_BUSY`.
/// [`settle`](Self::settle) does both of the last two: called after every change, it syncs and,
/// once the machine has closed, gives the account back after that last sync.
#[derive(Debug, Default)]
pub struct Budget {
    config: BudgetConfig,
    connections: AtomicUsize,
    buffered: AtomicUsize,
    peak: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
    responses: AtomicU64,
    busy: AtomicU64,
    fallback: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Budget {
    /// A budget with nothing spent.
    pub fn new(config: BudgetConfig) -> Self {
        Budget {
            config,
            ..Budget::default()
        }
    }

    /// The limits.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Admits a new connection, or says why not (then close it and log the refusal).
    pub fn admit(&self) -> Result<Account, Refusal> {
        let buffered = self.buffered.load(Ordering::Relaxed);
        let refusal = if buffered >= self.config.max_buffered {
            Some(Refusal::BudgetSpent {
                buffered,
                max: self.config.max_buffered,
            })
        } else {
            let max = self.config.max_connections;
            let admitted =
                self.connections
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    });
            admitted
                .is_err()
                .then_some(Refusal::TooManyConnections { max })
        };
        match refusal {
            Some(refusal) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(refusal)
            }
            None => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(Account {
                    buffered: 0,
                    requests: 0,
                    responses: 0,
                    busy: 0,
                    fallback: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                })
            }
        }
    }

    /// Brings the budget up to date with what `machine` holds and has done since the last call,
    /// and tells it whether to answer new requests `SYSTEM_BUSY` (the budget is spent).
    pub fn sync<T>(&self, account: &mut Account, machine: &mut Connection<T>) {
        let now = machine.buffered_len();
        let total = if now >= account.buffered {
            let grew = now - account.buffered;
            let total = self.buffered.fetch_add(grew, Ordering::AcqRel) + grew;
            self.peak.fetch_max(total, Ordering::Relaxed);
            total
        } else {
            let shrank = account.buffered - now;
            self.buffered.fetch_sub(shrank, Ordering::AcqRel) - shrank
        };
        account.buffered = now;
        let stats = machine.stats();
        let delta = |counter: &AtomicU64, seen: &mut u64, current: u64| {
            if current > *seen {
                counter.fetch_add(current - *seen, Ordering::Relaxed);
                *seen = current;
            }
        };
        delta(
            &self.requests,
            &mut account.requests,
            stats.requests_received,
        );
        delta(
            &self.responses,
            &mut account.responses,
            stats.responses_sent,
        );
        delta(&self.busy, &mut account.busy, stats.busy_rejections);
        delta(
            &self.fallback,
            &mut account.fallback,
            stats.fallback_answers,
        );
        delta(&self.bytes_in, &mut account.bytes_in, stats.bytes_in);
        delta(&self.bytes_out, &mut account.bytes_out, stats.bytes_out);
        machine.set_overloaded(total >= self.config.max_buffered);
    }

    /// [`sync`](Self::sync), and once `machine` is closed, [`leave`](Self::leave) after that
    /// last sync (so its final counters are counted), leaving `None`. Idempotent: a driver may
    /// call it after every change to a connection, its close included, and needs no other call
    /// after [`admit`](Self::admit) except `leave` for a connection that never got a machine.
    pub fn settle<T>(&self, account: &mut Option<Account>, machine: &mut Connection<T>) {
        if let Some(share) = account.as_mut() {
            self.sync(share, machine);
        }
        if machine.is_closed() {
            if let Some(share) = account.take() {
                self.leave(share);
            }
        }
    }

    /// The connection ended: its bytes and its place are given back. Sync it one last time
    /// first if its final counters should be counted.
    pub fn leave(&self, account: Account) {
        self.buffered.fetch_sub(account.buffered, Ordering::AcqRel);
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether new work is refused now.
    pub fn is_spent(&self) -> bool {
        self.buffered.load(Ordering::Relaxed) >= self.config.max_buffered
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections: self.connections.load(Ordering::Relaxed),
            buffered: self.buffered.load(Ordering::Relaxed),
            peak_buffered: self.peak.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            responses: self.responses.load(Ordering::Relaxed),
            busy_rejections: self.busy.load(Ordering::Relaxed),
            fallback_answers: self.fallback.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::codes::SYSTEM_BUSY;
    use crate::{Codec, Command, Config, Decoded, Event, Instant};
    use alloc::vec;
    use bytes::BytesMut;

    fn wire(cmd: &Command) -> BytesMut {
        let mut out = BytesMut::new();
        Codec::default().encode(cmd, &mut out).unwrap();
        out
    }

    #[test]
    fn connections_beyond_the_maximum_are_refused_and_places_come_back() {
        let budget = Budget::new(BudgetConfig {
            max_buffered: 1 << 20,
            max_connections: 2,
        });
        let a = budget.admit().unwrap();
        let b = budget.admit().unwrap();
        assert_eq!(
            budget.admit().unwrap_err(),
            Refusal::TooManyConnections { max: 2 }
        );
        budget.leave(a);
        let c = budget.admit().unwrap();
        let s = budget.snapshot();
        assert_eq!((s.connections, s.accepted, s.refused), (2, 3, 1));
        budget.leave(b);
        budget.leave(c);
        assert_eq!(budget.snapshot().connections, 0);
    }

    #[test]
    fn settle_counts_the_last_answers_then_gives_the_place_back_once() {
        let budget = Budget::new(BudgetConfig::default());
        let mut conn = Connection::new(Config::default());
        let mut account = Some(budget.admit().unwrap());
        conn.handle_input(&wire(&Command::request(1).with_opaque(5)), Instant::ZERO);
        let Some(Event::Request { request, .. }) = conn.poll_event() else {
            panic!("a request")
        };
        conn.send_response(request, Command::request(1).response(0))
            .unwrap();
        budget.settle(&mut account, &mut conn);
        let s = budget.snapshot();
        assert!(s.buffered > 0, "the unwritten answer is held");
        assert_eq!((s.connections, s.requests, s.responses), (1, 1, 1));
        conn.close();
        budget.settle(&mut account, &mut conn);
        assert!(account.is_none());
        budget.settle(&mut account, &mut conn);
        let s = budget.snapshot();
        assert_eq!((s.connections, s.buffered, s.responses), (0, 0, 1));
    }

    #[test]
    fn bytes_in_and_out_are_whole_frames_read_and_written() {
        let budget = Budget::new(BudgetConfig::default());
        let mut conn = Connection::new(Config::default());
        let mut account = Some(budget.admit().unwrap());
        let request = wire(&Command::request(7).with_opaque(9).with_body("abc"));
        // In two reads: a partial frame counts as read.
        conn.handle_input(&request[..5], Instant::ZERO);
        budget.settle(&mut account, &mut conn);
        assert_eq!(budget.snapshot().bytes_in, 5);
        conn.handle_input(&request[5..], Instant::ZERO);
        let Some(Event::Request { request: id, .. }) = conn.poll_event() else {
            panic!("a request")
        };
        let answer = Command::request(7).with_opaque(9).response(0);
        conn.send_response(id, answer.clone()).unwrap();
        let unsent = conn.unsent_len();
        assert_eq!(unsent, wire(&answer).len());
        conn.handle_written(unsent - 1);
        budget.settle(&mut account, &mut conn);
        assert_eq!(budget.snapshot().bytes_out, unsent as u64 - 1);
        conn.handle_written(1);
        conn.close();
        budget.settle(&mut account, &mut conn);
        let s = budget.snapshot();
        assert_eq!(
            (s.bytes_in, s.bytes_out),
            (request.len() as u64, unsent as u64)
        );
    }

    #[test]
    fn a_spent_budget_answers_busy_and_refuses_until_bytes_drain() {
        let budget = Budget::new(BudgetConfig {
            max_buffered: 1000,
            max_connections: 10,
        });
        let mut conn = Connection::new(Config::default());
        let mut account = budget.admit().unwrap();
        // A partial frame of 2000 bytes read: over budget.
        let big = wire(&Command::request(1).with_body(vec![7u8; 1990]));
        conn.handle_input(&big[..1500], Instant::ZERO);
        budget.sync(&mut account, &mut conn);
        assert_eq!(budget.snapshot().buffered, 1500);
        assert!(budget.is_spent());
        assert!(matches!(
            budget.admit(),
            Err(Refusal::BudgetSpent {
                buffered: 1500,
                max: 1000
            })
        ));
        // The rest of it and a small request: both are answered busy by the machine.
        conn.handle_input(&big[1500..], Instant::ZERO);
        conn.handle_input(&wire(&Command::request(2).with_opaque(9)), Instant::ZERO);
        assert_eq!(conn.poll_event(), None, "nothing reaches the handler");
        let mut out = BytesMut::from(conn.poll_transmit().unwrap());
        let mut codes = vec![];
        while let Ok(Decoded::Command(busy)) = Codec::default().decode(&mut out) {
            codes.push((busy.code, busy.opaque));
        }
        assert_eq!(codes, [(SYSTEM_BUSY, 0), (SYSTEM_BUSY, 9)]);
        // Everything written: the budget recovers and requests are delivered again.
        let n = conn.poll_transmit().unwrap().len();
        conn.handle_written(n);
        budget.sync(&mut account, &mut conn);
        assert_eq!(budget.snapshot().buffered, 0);
        assert!(budget.admit().is_ok_and(|a| {
            budget.leave(a);
            true
        }));
        conn.handle_input(&wire(&Command::request(3)), Instant::ZERO);
        assert!(matches!(conn.poll_event(), Some(Event::Request { .. })));
        budget.sync(&mut account, &mut conn);
        let s = budget.snapshot();
        assert_eq!(
            (s.busy_rejections, s.requests, s.responses, s.peak_buffered),
            (2, 1, 2, 1500)
        );
        budget.leave(account);
        assert_eq!(budget.snapshot().connections, 0);
    }
}
