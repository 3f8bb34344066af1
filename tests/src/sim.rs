//! A simulated link between two [`Connection`]s on virtual time, in the spirit of quinn-proto's
//! `Pair`: seeded delays, writes accepted in arbitrary pieces, reads delivered in arbitrary
//! pieces, byte order kept (it is TCP), and a link that can be cut.

use std::collections::VecDeque;
use std::time::Duration;

use remora_core::rand::SplitMix64;
use remora_core::{Connection, Instant};

/// The core's SplitMix64 with the draws a simulation wants: small, seedable, replayable.
#[derive(Clone, Debug)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A duration uniform in `lo..=hi`.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        Duration::from_nanos(self.between(lo.as_nanos() as u64, hi.as_nanos() as u64))
    }
}

/// How the link behaves.
#[derive(Clone, Copy, Debug)]
pub struct LinkParams {
    /// Shortest one-way delay.
    pub min_delay: Duration,
    /// Longest one-way delay (order is kept whatever the delays).
    pub max_delay: Duration,
    /// Most bytes the transport accepts per write (a short write leaves the rest queued).
    pub max_write: usize,
    /// Most bytes handed to the receiver per read.
    pub max_read: usize,
    /// Most bytes in flight per direction (the socket buffers): a sender with more to write
    /// keeps it queued, as a transport that would block.
    pub window: usize,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            min_delay: Duration::from_micros(10),
            max_delay: Duration::from_millis(5),
            max_write: 4096,
            max_read: 1024,
            window: 64 * 1024,
        }
    }
}

#[derive(Debug, Default)]
struct Pipe {
    /// Chunks in flight with their arrival times, in order (never decreasing).
    in_flight: VecDeque<(Instant, Vec<u8>)>,
    in_flight_bytes: usize,
    last_arrival: Instant,
}

/// Which end of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The requesting side.
    Client,
    /// The answering side.
    Server,
}

/// Two connections and the link between them.
#[derive(Debug)]
pub struct Pair {
    /// The client's machine.
    pub client: Connection,
    /// The server's machine.
    pub server: Connection,
    /// Virtual time.
    pub now: Instant,
    /// The link's randomness.
    pub rng: Rng,
    params: LinkParams,
    to_server: Pipe,
    to_client: Pipe,
    cut: bool,
}

impl Pair {
    /// Two connections joined by a link with `params`, randomised by `seed`.
    pub fn new(client: Connection, server: Connection, params: LinkParams, seed: u64) -> Self {
        Pair {
            client,
            server,
            now: Instant::ZERO,
            rng: Rng::new(seed),
            params,
            to_server: Pipe::default(),
            to_client: Pipe::default(),
            cut: false,
        }
    }

    /// The connection of `side`.
    pub fn conn(&mut self, side: Side) -> &mut Connection {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Whether the link has been cut.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Cuts the link: bytes in flight are lost and both ends see a disconnect.
    pub fn cut(&mut self) {
        self.cut = true;
        for pipe in [&mut self.to_server, &mut self.to_client] {
            pipe.in_flight.clear();
            pipe.in_flight_bytes = 0;
        }
        self.client.handle_disconnect();
        self.server.handle_disconnect();
    }

    /// Lets each side write (possibly only part of what it has) and delivers whatever has arrived
    /// by `now`, in random read sizes. Call until it returns false to reach a quiet point.
    pub fn pump(&mut self) -> bool {
        let mut moved = false;
        for side in [Side::Client, Side::Server] {
            moved |= self.write(side);
        }
        for side in [Side::Client, Side::Server] {
            moved |= self.deliver(side);
        }
        moved
    }

    fn write(&mut self, side: Side) -> bool {
        if self.cut {
            return false;
        }
        let (conn, pipe) = match side {
            Side::Client => (&mut self.client, &mut self.to_server),
            Side::Server => (&mut self.server, &mut self.to_client),
        };
        let Some(pending) = conn.poll_transmit() else {
            return false;
        };
        let room = self.params.window.saturating_sub(pipe.in_flight_bytes);
        if room == 0 {
            return false;
        }
        let n = (self.rng.between(1, self.params.max_write as u64) as usize)
            .min(pending.len())
            .min(room);
        let chunk = pending[..n].to_vec();
        conn.handle_written(n);
        let delay = self
            .rng
            .duration(self.params.min_delay, self.params.max_delay);
        let arrival = (self.now + delay).max(pipe.last_arrival);
        pipe.last_arrival = arrival;
        pipe.in_flight_bytes += chunk.len();
        pipe.in_flight.push_back((arrival, chunk));
        true
    }

    /// Delivers to `side` what has arrived for it.
    fn deliver(&mut self, side: Side) -> bool {
        let (conn, pipe) = match side {
            Side::Client => (&mut self.client, &mut self.to_client),
            Side::Server => (&mut self.server, &mut self.to_server),
        };
        let mut moved = false;
        while pipe
            .in_flight
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            let (_, chunk) = pipe.in_flight.pop_front().expect("front exists");
            pipe.in_flight_bytes -= chunk.len();
            for piece in chunk.chunks(self.rng.between(1, self.params.max_read as u64) as usize) {
                conn.handle_input(piece, self.now);
            }
            moved = true;
        }
        moved
    }

    /// The earliest moment something happens by itself: a chunk arrives or a deadline passes.
    pub fn next_wakeup(&self) -> Option<Instant> {
        [
            self.to_server.in_flight.front().map(|(at, _)| *at),
            self.to_client.in_flight.front().map(|(at, _)| *at),
            self.client.poll_timeout(),
            self.server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances virtual time to `at` (never backwards) and fires both sides' timers.
    pub fn advance_to(&mut self, at: Instant) {
        self.now = self.now.max(at);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
    }

    /// Whether bytes are queued or in flight anywhere.
    pub fn busy(&self) -> bool {
        !self.to_server.in_flight.is_empty()
            || !self.to_client.in_flight.is_empty()
            || (!self.cut
                && (self.client.poll_transmit().is_some() || self.server.poll_transmit().is_some()))
    }
}
