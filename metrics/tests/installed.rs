//! With a sink installed, every probe reaches it exactly once: ended, or cancelled when dropped.

use std::sync::Mutex;
use std::time::Duration;

use remora_core::{codes, CallError, Command};
use remora_metrics::{Ended, Metrics, Observed, Outcome, Probe, Side};

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

    let started = recorder.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [
            (Side::Client, 11),
            (Side::Client, 11),
            (Side::Client, 11),
            (Side::Server, 12)
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
        ]
    );
    assert!(ended[3].latency >= Duration::from_millis(2));
}
