//! How `remora serve` stops: it waits for SIGINT or SIGTERM, stops its server gracefully and
//! prints a summary of what it served, the same with or without `--quiet`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use remora_core::{Command, Handler, Snapshot};
use remora_metrics::Outcome;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// SIGINT and SIGTERM, caught from the moment this exists (so a signal that comes while the
/// server starts is not lost, and never kills the process before the summary).
pub struct StopSignal(Signals);

impl StopSignal {
    /// Catches SIGINT and SIGTERM from now on.
    pub fn register() -> Result<StopSignal, String> {
        Signals::new([SIGINT, SIGTERM])
            .map(StopSignal)
            .map_err(|e| format!("catching SIGINT and SIGTERM: {e}"))
    }

    /// Blocks until one comes; its name.
    pub fn wait(mut self) -> &'static str {
        loop {
            for signal in self.0.wait() {
                match signal {
                    SIGINT => return "SIGINT",
                    SIGTERM => return "SIGTERM",
                    _ => {}
                }
            }
        }
    }
}

/// How a handled request ended, as the summary counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Answered `SUCCESS`.
    Success,
    /// Answered with another code.
    ErrorResponse,
    /// Answered `SYSTEM_BUSY` by the handler (or a script rule).
    Busy,
    /// Never answered (a script rule's `drop`).
    Dropped,
    /// Its connection was closed (a script rule's `close`).
    Closed,
}

const CLASSES: [(Class, &str); 5] = [
    (Class::Success, "success"),
    (Class::ErrorResponse, "error_response"),
    (Class::Busy, "busy"),
    (Class::Dropped, "dropped"),
    (Class::Closed, "closed"),
];

impl Class {
    /// The class of an answer with `code`.
    pub fn of_code(code: i32) -> Class {
        match Outcome::of_code(code) {
            Outcome::Success => Class::Success,
            Outcome::Busy => Class::Busy,
            _ => Class::ErrorResponse,
        }
    }
}

/// What a serving process did since it started: requests by class and body bytes, counted
/// where the requests are handled; connections, busy answers and wire bytes come from the
/// server's own [`Snapshot`] (or, for `--script`, are counted by its own loops).
#[derive(Debug)]
pub struct Tally {
    started: Instant,
    handled: [AtomicU64; CLASSES.len()],
    body_in: AtomicU64,
    body_out: AtomicU64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    /// All zero; the uptime counts from now.
    pub fn new() -> Tally {
        Tally {
            started: Instant::now(),
            handled: Default::default(),
            body_in: AtomicU64::new(0),
            body_out: AtomicU64::new(0),
        }
    }

    /// One request handled: its class, its body's bytes and the answer's (0 when none was sent).
    pub fn handled(&self, class: Class, body_in: usize, body_out: usize) {
        self.handled[class as usize].fetch_add(1, Ordering::Relaxed);
        self.body_in.fetch_add(body_in as u64, Ordering::Relaxed);
        self.body_out.fetch_add(body_out as u64, Ordering::Relaxed);
    }

    /// The summary: `signal` stopped the server, whose connections and busy answers `server`
    /// holds. Every number is on its own `name: value` line (the first line excepted) so scripts
    /// can read it.
    pub fn summary(&self, signal: &str, server: &Snapshot) -> String {
        let counts =
            CLASSES.map(|(c, name)| (name, self.handled[c as usize].load(Ordering::Relaxed)));
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let mut text = format!(
            "stopped by {signal} after {:.3} s\nconnections accepted: {}\nconnections refused: {}\nrequests handled: {total}\n",
            self.started.elapsed().as_secs_f64(),
            server.accepted,
            server.refused,
        );
        for (name, n) in counts {
            text.push_str(&format!("requests {name}: {n}\n"));
        }
        text.push_str(&format!(
            "busy answers: {}\nbytes in: {}\nbytes out: {}\nbody bytes in: {}\nbody bytes out: {}\n",
            server.busy_rejections,
            server.bytes_in,
            server.bytes_out,
            self.body_in.load(Ordering::Relaxed),
            self.body_out.load(Ordering::Relaxed),
        ));
        text
    }

    /// Prints [`summary`](Self::summary) on stdout.
    pub fn print(&self, signal: &str, server: &Snapshot) -> Result<(), String> {
        let mut out = io::stdout().lock();
        out.write_all(self.summary(signal, server).as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing the summary: {e}"))
    }
}

/// A handler that counts what it handles in a [`Tally`].
pub struct Counted {
    inner: Arc<dyn Handler>,
    tally: Arc<Tally>,
}

impl Counted {
    /// Counts `inner`'s requests in `tally`.
    pub fn new(inner: Arc<dyn Handler>, tally: Arc<Tally>) -> Counted {
        Counted { inner, tally }
    }
}

impl Handler for Counted {
    fn handle(&self, request: Command) -> Command {
        let (body_in, oneway) = (request.body().len(), request.is_oneway());
        let response = self.inner.handle(request);
        let body_out = if oneway { 0 } else { response.body().len() };
        self.tally
            .handled(Class::of_code(response.code), body_in, body_out);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_core::codes;

    #[test]
    fn the_summary_counts_by_class_with_the_servers_connections() {
        let tally = Arc::new(Tally::new());
        let echo = Counted::new(
            Arc::new(|r: Command| {
                let body = r.body_bytes();
                let code = if r.code == 1 {
                    codes::SYSTEM_BUSY
                } else {
                    codes::SUCCESS
                };
                r.response(code).with_body(body)
            }),
            Arc::clone(&tally),
        );
        echo.handle(Command::request(105).with_body("abc"));
        echo.handle(Command::request(1).with_body("de"));
        let mut oneway = Command::request(2).with_body("f");
        oneway.set_oneway(true);
        echo.handle(oneway);
        tally.handled(Class::Dropped, 4, 0);
        let server = Snapshot {
            accepted: 3,
            refused: 1,
            busy_rejections: 5,
            bytes_in: 300,
            bytes_out: 200,
            ..Snapshot::default()
        };
        let text = tally.summary("SIGTERM", &server);
        assert!(text.starts_with("stopped by SIGTERM after "), "{text}");
        for line in [
            "connections accepted: 3",
            "connections refused: 1",
            "requests handled: 4",
            "requests success: 2",
            "requests busy: 1",
            "requests dropped: 1",
            "requests error_response: 0",
            "requests closed: 0",
            "busy answers: 5",
            "bytes in: 300",
            "bytes out: 200",
            "body bytes in: 10",
            "body bytes out: 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
