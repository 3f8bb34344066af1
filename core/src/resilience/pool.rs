//! Which connection of an endpoint's pool a call should use, and when to (re)connect: the pool
//! policy both drivers share. Pure: the driver owns the connections (`T`), reads the clock and
//! supplies entropy for the reconnect jitter.
//!
//! Policy: use the live connection with the fewest calls in flight; open another (up to the pool
//! size) only when every live one is busy; after a failed connection or connect, wait the
//! [`Backoff`] delay (growing with consecutive failures) before trying that slot again; a
//! connection closed cleanly (idle expiry) is reopened on demand without delay.

use alloc::vec::Vec;
use core::time::Duration;

use crate::conn::connection::CloseReason;
use crate::resilience::backoff::Backoff;
use crate::time::Instant;

/// One place in the pool.
#[derive(Clone, Debug)]
enum Slot<T> {
    Empty,
    Connecting { failures: u32 },
    Up(T),
    Down { retry_at: Instant, failures: u32 },
}

/// How a pooled connection stands, as the driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Open.
    Open,
    /// Closed on purpose (idle expiry, local close): reopen on demand.
    Closed,
    /// Failed (peer gone, I/O error, protocol error): reopen after the backoff.
    Failed,
}

impl Health {
    /// How a connection stands once it has closed for `reason` (`None`: not known): closed on
    /// purpose ([`CloseReason::Local`], which an idle expiry is too) it reopens on demand; any
    /// other reason is a failure, reopened after the backoff.
    pub fn after(reason: Option<CloseReason>) -> Health {
        match reason {
            Some(CloseReason::Local) | None => Health::Closed,
            Some(_) => Health::Failed,
        }
    }
}

/// What a caller should do to get a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Use the connection in this slot.
    Use(usize),
    /// Open a connection for this slot (it is now marked connecting), then report with
    /// [`Pool::connected`] or [`Pool::connect_failed`]. If that fails and `fallback` is some
    /// slot, use it instead.
    Connect {
        /// The slot to fill.
        slot: usize,
        /// A live (busy) connection to fall back on.
        fallback: Option<usize>,
    },
    /// Another caller is connecting and nothing else is usable: wait for it.
    Wait,
    /// Every slot is down and none may retry before `retry_in`.
    Unavailable {
        /// Until the earliest retry.
        retry_in: Duration,
    },
}

/// An endpoint's connections.
#[derive(Clone, Debug)]
pub struct Pool<T> {
    slots: Vec<Slot<T>>,
    backoff: Backoff,
}

impl<T> Pool<T> {
    /// `size` empty slots (at least one).
    pub fn new(size: usize, backoff: Backoff) -> Self {
        Pool {
            slots: (0..size.max(1)).map(|_| Slot::Empty).collect(),
            backoff,
        }
    }

    /// The connection in `slot`, if it is up.
    pub fn get(&self, slot: usize) -> Option<&T> {
        match self.slots.get(slot) {
            Some(Slot::Up(conn)) => Some(conn),
            _ => None,
        }
    }

    /// The live connections.
    pub fn connections(&self) -> impl Iterator<Item = &T> + '_ {
        self.slots.iter().filter_map(|s| match s {
            Slot::Up(conn) => Some(conn),
            _ => None,
        })
    }

    /// Takes every connection out (to close them), leaving the pool empty.
    pub fn take_all(&mut self) -> Vec<T> {
        self.slots
            .iter_mut()
            .filter_map(|s| match core::mem::replace(s, Slot::Empty) {
                Slot::Up(conn) => Some(conn),
                _ => None,
            })
            .collect()
    }

    /// Chooses for a call. `health` and `load` (calls in flight) describe a connection; `now`
    /// reads the clock and `entropy` gives 64 random bits (for a failed connection's backoff) —
    /// each is called only if needed, so the common case (a live connection) reads neither.
    pub fn choose(
        &mut self,
        now: impl FnOnce() -> Instant,
        entropy: impl FnOnce() -> u64,
        health: impl Fn(&T) -> Health,
        load: impl Fn(&T) -> usize,
    ) -> Choice {
        let mut now = Some(now);
        let mut clock = None;
        let mut read_clock =
            move || *clock.get_or_insert_with(|| (now.take().expect("read once"))());
        let mut entropy = Some(entropy);
        for slot in &mut self.slots {
            if let Slot::Up(conn) = slot {
                match health(conn) {
                    Health::Open => {}
                    Health::Closed => *slot = Slot::Empty,
                    Health::Failed => {
                        let bits = entropy.take().map_or(0x9E37_79B9, |e| e());
                        *slot = Slot::Down {
                            retry_at: read_clock() + self.backoff.delay(0, bits),
                            failures: 1,
                        }
                    }
                }
            }
        }
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Up(conn) => Some((i, load(conn))),
                _ => None,
            })
            .min_by_key(|&(i, l)| (l, i));
        let vacancy = self.slots.iter().position(|s| match s {
            Slot::Empty => true,
            Slot::Down { retry_at, .. } => *retry_at <= read_clock(),
            _ => false,
        });
        match (best, vacancy) {
            (Some((i, _)), None) | (Some((i, 0)), Some(_)) => Choice::Use(i),
            (best, Some(slot)) => {
                let failures = match self.slots[slot] {
                    Slot::Down { failures, .. } => failures,
                    _ => 0,
                };
                self.slots[slot] = Slot::Connecting { failures };
                Choice::Connect {
                    slot,
                    fallback: best.map(|(i, _)| i),
                }
            }
            (None, None) => {
                if self
                    .slots
                    .iter()
                    .any(|s| matches!(s, Slot::Connecting { .. }))
                {
                    return Choice::Wait;
                }
                let now = read_clock();
                let retry_at = self
                    .slots
                    .iter()
                    .filter_map(|s| match s {
                        Slot::Down { retry_at, .. } => Some(*retry_at),
                        _ => None,
                    })
                    .min()
                    .unwrap_or(now);
                Choice::Unavailable {
                    retry_in: retry_at - now,
                }
            }
        }
    }

    /// The connect for `slot` succeeded.
    pub fn connected(&mut self, slot: usize, conn: T) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot::Up(conn);
        }
    }

    /// The connect for `slot` failed at `now`: it waits out the backoff for one more failure.
    pub fn connect_failed(&mut self, slot: usize, now: Instant, entropy: u64) {
        if let Some(s) = self.slots.get_mut(slot) {
            let failures = match *s {
                Slot::Connecting { failures } | Slot::Down { failures, .. } => failures,
                _ => 0,
            } + 1;
            *s = Slot::Down {
                retry_at: now + self.backoff.delay(failures - 1, entropy),
                failures,
            };
        }
    }

    /// The connect for `slot` was abandoned (the client is closing): the slot is empty again.
    pub fn abandon(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot::Empty;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::backoff::Jitter;

    const MS: Duration = Duration::from_millis(1);

    fn backoff() -> Backoff {
        Backoff {
            initial: 100 * MS,
            multiplier: 2.0,
            max: 1000 * MS,
            jitter: Jitter::None,
        }
    }

    /// Connections are (health, load) pairs.
    type C = (Health, usize);

    fn choose(p: &mut Pool<C>, now: Instant) -> Choice {
        p.choose(|| now, || 0, |c| c.0, |c| c.1)
    }

    #[test]
    fn uses_the_least_loaded_and_grows_only_when_all_are_busy() {
        let mut p: Pool<C> = Pool::new(3, backoff());
        let t = Instant::ZERO;
        assert_eq!(
            choose(&mut p, t),
            Choice::Connect {
                slot: 0,
                fallback: None
            }
        );
        assert_eq!(
            choose(&mut p, t),
            Choice::Connect {
                slot: 1,
                fallback: None
            },
            "slot 0 is connecting"
        );
        p.connected(0, (Health::Open, 0));
        p.abandon(1);
        assert_eq!(
            choose(&mut p, t),
            Choice::Use(0),
            "idle connection: no need for more"
        );
        p.connected(0, (Health::Open, 4));
        assert_eq!(
            choose(&mut p, t),
            Choice::Connect {
                slot: 1,
                fallback: Some(0)
            }
        );
        p.connected(1, (Health::Open, 1));
        assert_eq!(
            choose(&mut p, t),
            Choice::Connect {
                slot: 2,
                fallback: Some(1)
            }
        );
        p.connected(2, (Health::Open, 2));
        assert_eq!(choose(&mut p, t), Choice::Use(1), "full pool: least loaded");
        assert_eq!(p.connections().count(), 3);
    }

    #[test]
    fn failures_back_off_and_clean_closes_do_not() {
        let mut p: Pool<C> = Pool::new(1, backoff());
        let t = Instant::ZERO;
        assert!(matches!(choose(&mut p, t), Choice::Connect { slot: 0, .. }));
        p.connect_failed(0, t, 0);
        assert_eq!(
            choose(&mut p, t + 50 * MS),
            Choice::Unavailable { retry_in: 50 * MS }
        );
        assert!(matches!(
            choose(&mut p, t + 100 * MS),
            Choice::Connect { slot: 0, .. }
        ));
        p.connect_failed(0, t + 100 * MS, 0);
        assert_eq!(
            choose(&mut p, t + 100 * MS),
            Choice::Unavailable { retry_in: 200 * MS },
            "second failure in a row: twice the delay"
        );
        assert!(matches!(
            choose(&mut p, t + 300 * MS),
            Choice::Connect { slot: 0, .. }
        ));
        p.connected(0, (Health::Failed, 0));
        assert_eq!(
            choose(&mut p, t + 300 * MS),
            Choice::Unavailable { retry_in: 100 * MS }
        );
        assert!(matches!(
            choose(&mut p, t + 400 * MS),
            Choice::Connect { slot: 0, .. }
        ));
        p.connected(0, (Health::Closed, 0));
        assert!(
            matches!(
                choose(&mut p, t + 400 * MS),
                Choice::Connect { slot: 0, .. }
            ),
            "a clean close reopens at once"
        );
        assert_eq!(choose(&mut p, t + 400 * MS), Choice::Wait);
        assert_eq!(p.take_all().len(), 0);
    }
}
