//! With a sink installed, every probe reaches it exactly once: ended, or cancelled when dropped.

use std::sync::Mutex;
use std::time::Duration;

use remora_core::{codes, CallError, Command};
use std::future::Future;

use remora_metrics::{Ended, Metrics, Observed, Outcome, Probe, Probed, Side};

struct Noop;

impl std::task::Wake for Noop {
    fn wake(self: std::sync::Arc<Self>) {}
}

/// Pending at its first poll; then its result (pending for ever without one).
struct Later(bool, Option<Result<Command, CallError>>);

impl Future for Later {
    type Output = Result<Command, CallError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if !self.0 {
            self.0 = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        match self.1.take() {
            Some(result) => std::task::Poll::Ready(result),
            None => std::task::Poll::Pending,
        }
    }
}

#[derive(Default)]
struct Recorder {
    started: Mutex<Vec<(Side, i32)>>,
    ended: Mutex<Vec<Ended>>,
}

impl Metrics for Recorder {
    fn request_started(&self, side: Side, code: i32) {
        self.started.lock().unwrap().push((side, code));
    }
    fn request_ended(&self, ended: &Ended) {
        self.ended.lock().unwrap().push(*ended);
    }
}

#[test]
fn probes_end_once_and_dropped_ones_are_cancelled() {
    let recorder: &'static Recorder = Box::leak(Box::default());
    remora_metrics::install(recorder).unwrap();
    assert!(remora_metrics::install(recorder).is_err(), "installed once");

    let request = Command::request(11).with_body(&b"abc"[..]);
    let probe = Probe::client(&request, &"127.0.0.1:1");
    probe.end(&Ok(
        Command::response(&request, codes::SYSTEM_BUSY).with_body(&b"hello"[..])
    ));
    drop(Probe::client(&request, &"127.0.0.1:1"));
    Probe::client(&request, &"127.0.0.1:1").end(&Err(CallError::Timeout { written: true }));
    let handler = Observed::wrap(std::sync::Arc::new(|r: Command| {
        std::thread::sleep(Duration::from_millis(2));
        r.response(codes::SUCCESS)
    }));
    let _ = handler.handle(Command::request(12).with_body(&b"xy"[..]));
    // Split calls: a Probed future ends its probe when it completes (not before), or as
    // cancelled when dropped pending; a start that failed ends with its error.
    let request = Command::request(13).with_body(&b"four"[..]);
    let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
    let mut cx = std::task::Context::from_waker(&waker);
    let answer = Command::response(&request, codes::SUCCESS).with_body(&b"ok"[..]);
    let mut probed = Probed::new(
        Later(false, Some(Ok(answer))),
        Probe::client(&request, &"x"),
    );
    assert!(std::pin::Pin::new(&mut probed).poll(&mut cx).is_pending());
    assert_eq!(
        recorder.ended.lock().unwrap().len(),
        4,
        "not ended while pending"
    );
    let polled = std::pin::Pin::new(&mut probed).poll(&mut cx);
    assert!(matches!(polled, std::task::Poll::Ready(Ok(_))));
    drop(probed);
    let mut pending = Probed::new(Later(false, None), Probe::client(&request, &"x"));
    assert!(std::pin::Pin::new(&mut pending).poll(&mut cx).is_pending());
    drop(pending);
    Probe::client(&request, &"x").end_error(&CallError::TooManyInFlight);

    let started = recorder.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [
            (Side::Client, 11),
            (Side::Client, 11),
            (Side::Client, 11),
            (Side::Server, 12),
            (Side::Client, 13),
            (Side::Client, 13),
            (Side::Client, 13),
        ]
    );
    let ended = recorder.ended.lock().unwrap().clone();
    let summary: Vec<_> = ended
        .iter()
        .map(|e| (e.side, e.code, e.outcome, e.body_out, e.body_in))
        .collect();
    assert_eq!(
        summary,
        [
            (Side::Client, 11, Outcome::Busy, 3, 5),
            (Side::Client, 11, Outcome::Cancelled, 3, 0),
            (Side::Client, 11, Outcome::Timeout, 3, 0),
            (Side::Server, 12, Outcome::Success, 0, 2),
            (Side::Client, 13, Outcome::Success, 4, 2),
            (Side::Client, 13, Outcome::Cancelled, 4, 0),
            (Side::Client, 13, Outcome::Unsent, 4, 0),
        ]
    );
    assert!(ended[3].latency >= Duration::from_millis(2));
}
