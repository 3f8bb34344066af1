//! Observability for the Remora drivers, in one place all of them share.
//!
//! The core counts (`Connection::stats()`, [`Budget`](remora_core::Budget) snapshots, the
//! clusters' counters) and stays free of any metrics or tracing crate; the drivers publish
//! through this crate:
//!
//! - **Spans.** [`Probe`] opens a `tracing` span per request (`remora.request`: side, request
//!   code, opaque, endpoint, serialize type, body size, then outcome class and latency) and
//!   [`Observed`] wraps a server's [`Handler`] so every handled request gets one. When no
//!   subscriber is interested the span is `Span::none()`: one cached interest check, no field
//!   is evaluated and the clock is not read.
//! - **Metrics.** The [`Metrics`] trait (every method a no-op by default) receives request
//!   starts and ends, connections, reconnects, busy answers, endpoint health and budget
//!   exhaustion. It is installed once per process with [`install`]; until then
//!   [`global`] is `None` and the drivers skip every call (one atomic load per request).
//! - **Prometheus.** With the `prometheus` feature, [`prometheus::Prometheus`] implements
//!   [`Metrics`] on `prometheus-client` and [`prometheus::Exporter`] serves its text at
//!   `GET /metrics` from a std thread.
//!
//! ```
//! use remora_core::{codes, Command};
//! use remora_metrics::{Outcome, Probe};
//!
//! let request = Command::request(codes::GET_ROUTEINFO_BY_TOPIC);
//! let probe = Probe::client(&request, &"127.0.0.1:9876");
//! // ... send it, get `result` ...
//! let result: Result<Command, remora_core::CallError> = Ok(Command::response(&request, 0));
//! probe.end(&result);
//! ```

use std::fmt::Display;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use remora_core::resilience::breaker::State as BreakerState;
use remora_core::resilience::call::AttemptKind;
use remora_core::resilience::cluster::ClusterCall;
use remora_core::{codes, CallError, Command, Handler, Outgoing, Snapshot};

#[cfg(feature = "prometheus")]
pub mod prometheus;

/// Which end of a request a measurement comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// A request this process sent.
    Client,
    /// A request this process handled.
    Server,
}

impl Side {
    /// The label value: `client` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// How a request ended, as a low-cardinality class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A response with code `SUCCESS`.
    Success,
    /// A response with `SYSTEM_BUSY`.
    Busy,
    /// A response with any other code.
    ErrorResponse,
    /// No response in time.
    Timeout,
    /// Failed before the request left this process (safe to send again).
    Unsent,
    /// Failed after it may have reached the peer (connection lost, protocol error, ...).
    Failed,
    /// The caller gave up on it (dropped the call's future) before it ended.
    Cancelled,
}

impl Outcome {
    /// The class of a response code.
    pub fn of_code(code: i32) -> Outcome {
        match code {
            codes::SUCCESS => Outcome::Success,
            codes::SYSTEM_BUSY => Outcome::Busy,
            _ => Outcome::ErrorResponse,
        }
    }

    /// The class of a call's result.
    pub fn of(result: &Result<Command, CallError>) -> Outcome {
        match result {
            Ok(response) => Outcome::of_code(response.code),
            Err(e) => Outcome::of_error(e),
        }
    }

    /// The class of a call's error.
    pub fn of_error(error: &CallError) -> Outcome {
        match error {
            CallError::Timeout { .. } => Outcome::Timeout,
            e if e.never_left() => Outcome::Unsent,
            _ => Outcome::Failed,
        }
    }

    /// The label value (`success`, `busy`, `error_response`, `timeout`, `unsent`, `failed`,
    /// `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Busy => "busy",
            Outcome::ErrorResponse => "error_response",
            Outcome::Timeout => "timeout",
            Outcome::Unsent => "unsent",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One finished request, as [`Metrics::request_ended`] receives it.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    /// Which end measured it.
    pub side: Side,
    /// The request code.
    pub code: i32,
    /// How it ended.
    pub outcome: Outcome,
    /// From start to end.
    pub latency: Duration,
    /// Body bytes sent (the request's on a client, the response's on a server).
    pub body_out: usize,
    /// Body bytes received.
    pub body_in: usize,
}

/// Where the drivers publish what they count. Every method is a no-op by default, so an
/// implementation overrides only what it exports. Implementations must be cheap and must not
/// block: they run on the drivers' request paths.
pub trait Metrics: Send + Sync + 'static {
    /// A request started (in flight until [`request_ended`](Metrics::request_ended)).
    fn request_started(&self, _side: Side, _code: i32) {}
    /// A request ended.
    fn request_ended(&self, _ended: &Ended) {}
    /// A connection opened.
    fn connection_opened(&self, _side: Side) {}
    /// A connection attempt failed.
    fn connect_failed(&self, _side: Side) {}
    /// A client reopened a connection after one it had was lost or expired.
    fn reconnected(&self) {}
    /// A cluster endpoint's health changed: its breaker state (`closed`, `open`, `half_open`)
    /// and whether it is ejected.
    fn endpoint_health(&self, _endpoint: &str, _breaker: &str, _ejected: bool) {}
    /// A cluster call wanted a retry or hedge the retry budget refused.
    fn budget_exhausted(&self) {}
    /// A server's [`Budget`](remora_core::Budget) counts, published when metrics are read.
    fn server_snapshot(&self, _snapshot: &Snapshot) {}
}

/// Metrics that go nowhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

impl Metrics for NoMetrics {}

static GLOBAL: OnceLock<&'static dyn Metrics> = OnceLock::new();

/// [`install`] was called before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyInstalled;

impl Display for AlreadyInstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a metrics sink is already installed")
    }
}

impl std::error::Error for AlreadyInstalled {}

/// Installs the process's metrics sink (once; it lives until the process ends).
pub fn install(metrics: &'static dyn Metrics) -> Result<(), AlreadyInstalled> {
    GLOBAL.set(metrics).map_err(|_| AlreadyInstalled)
}

/// The installed sink, if any.
#[inline]
pub fn global() -> Option<&'static dyn Metrics> {
    GLOBAL.get().copied()
}

/// One request being measured: its span, its start, what it sent. Create it when the request
/// starts and end it once when it ends; one dropped before it ended (a cancelled call) ends as
/// [`Outcome::Cancelled`].
#[must_use = "end the probe when the request ends"]
pub struct Probe {
    span: tracing::Span,
    started: Option<Instant>,
    metrics: Option<&'static dyn Metrics>,
    side: Side,
    code: i32,
    body_out: usize,
}

impl Probe {
    /// A request this process sends to `endpoint` (a [`Command`] or an encoded one).
    #[inline]
    pub fn client(request: &impl Outgoing, endpoint: &dyn Display) -> Probe {
        let span = tracing::info_span!(
            "remora.request",
            side = "client",
            code = request.code(),
            opaque = tracing::field::Empty,
            endpoint = %endpoint,
            serialize = ?request.serialize_type(),
            body = request.body_len(),
            outcome = tracing::field::Empty,
            latency_us = tracing::field::Empty,
        );
        Probe::start(span, Side::Client, request.code(), request.body_len())
    }

    /// A request this process handles.
    #[inline]
    pub fn server(request: &Command) -> Probe {
        let span = tracing::info_span!(
            "remora.request",
            side = "server",
            code = request.code,
            opaque = request.opaque,
            serialize = ?request.serialize_type,
            body = request.body().len(),
            oneway = request.is_oneway(),
            outcome = tracing::field::Empty,
            latency_us = tracing::field::Empty,
        );
        Probe::start(span, Side::Server, request.code, request.body().len())
    }

    #[inline]
    fn start(span: tracing::Span, side: Side, code: i32, body_out: usize) -> Probe {
        let metrics = global();
        let started = (metrics.is_some() || !span.is_disabled()).then(Instant::now);
        if let Some(m) = metrics {
            m.request_started(side, code);
        }
        Probe {
            span,
            started,
            metrics,
            side,
            code,
            body_out,
        }
    }

    /// The request's span, to enter around the call (or to instrument its future with).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Ends a call with its result.
    #[inline]
    pub fn end(mut self, result: &Result<Command, CallError>) {
        if self.started.is_none() {
            return;
        }
        match result {
            Ok(response) => {
                self.span.record("opaque", response.opaque);
                self.finish(Outcome::of_code(response.code), response.body().len());
            }
            Err(e) => self.finish(Outcome::of_error(e), 0),
        }
    }

    /// Ends a call that failed with `error`.
    #[inline]
    pub fn end_error(mut self, error: &CallError) {
        if self.started.is_some() {
            self.finish(Outcome::of_error(error), 0);
        }
    }

    /// Ends a oneway request (or any without a response) with `outcome`.
    #[inline]
    pub fn end_with(mut self, outcome: Outcome) {
        if self.started.is_some() {
            self.finish(outcome, 0);
        }
    }

    /// Ends a oneway request with whether it was sent.
    #[inline]
    pub fn end_oneway(mut self, result: &Result<(), CallError>) {
        if self.started.is_some() {
            let outcome = match result {
                Ok(()) => Outcome::Success,
                Err(e) => Outcome::of_error(e),
            };
            self.finish(outcome, 0);
        }
    }

    /// Ends a handled request with the handler's response.
    #[inline]
    pub fn end_handled(mut self, response: &Command) {
        if self.started.is_some() {
            self.finish(Outcome::of_code(response.code), response.body().len());
        }
    }

    fn finish(&mut self, outcome: Outcome, body_in: usize) {
        let Some(started) = self.started.take() else {
            return;
        };
        let latency = started.elapsed();
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome.as_str());
            self.span.record("latency_us", latency.as_micros() as u64);
        }
        if let Some(m) = self.metrics {
            // On a server the request is what came in and the response what went out.
            let (body_out, body_in) = match self.side {
                Side::Client => (self.body_out, body_in),
                Side::Server => (body_in, self.body_out),
            };
            m.request_ended(&Ended {
                side: self.side,
                code: self.code,
                outcome,
                latency,
                body_out,
                body_in,
            });
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.started.is_some() {
            self.finish(Outcome::Cancelled, 0);
        }
    }
}

/// A call's future with its [`Probe`]: polled inside the request's span, it ends the probe
/// with the call's result when that comes, and as [`Outcome::Cancelled`] if dropped before.
/// The drivers' `start_call` returns one, so split calls (start many, await later) are measured
/// like whole ones.
#[must_use = "futures do nothing unless polled; dropping it cancels the call"]
pub struct Probed<F> {
    future: F,
    probe: Option<Probe>,
}

impl<F> Probed<F> {
    /// Measures `future` with `probe` (started when the request was).
    pub fn new(future: F, probe: Probe) -> Probed<F> {
        Probed {
            future,
            probe: Some(probe),
        }
    }

    /// The call's future itself.
    pub fn get_ref(&self) -> &F {
        &self.future
    }
}

impl<F> std::future::Future for Probed<F>
where
    F: std::future::Future<Output = Result<Command, CallError>> + Unpin,
{
    type Output = Result<Command, CallError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let polled = match &this.probe {
            Some(probe) => probe
                .span()
                .in_scope(|| std::pin::Pin::new(&mut this.future).poll(cx)),
            None => std::pin::Pin::new(&mut this.future).poll(cx),
        };
        if let std::task::Poll::Ready(result) = &polled {
            if let Some(probe) = this.probe.take() {
                probe.end(result);
            }
        }
        polled
    }
}

/// A [`Handler`] that measures every request it handles: a server span (entered while the
/// handler runs, so its events nest under it) and the installed [`Metrics`]. The drivers'
/// servers wrap their handler in one.
pub struct Observed {
    inner: Arc<dyn Handler>,
}

impl Observed {
    /// Wraps `handler`.
    pub fn wrap(handler: Arc<dyn Handler>) -> Arc<dyn Handler> {
        Arc::new(Observed { inner: handler })
    }
}

impl Handler for Observed {
    fn handle(&self, request: Command) -> Command {
        let probe = Probe::server(&request);
        let response = probe.span().in_scope(|| self.inner.handle(request));
        probe.end_handled(&response);
        response
    }
}

/// Publishes that a connection opened (or, with `Err`, that an attempt failed).
#[inline]
pub fn connection<T, E>(side: Side, attempt: &Result<T, E>) {
    if let Some(m) = global() {
        match attempt {
            Ok(_) => m.connection_opened(side),
            Err(_) => m.connect_failed(side),
        }
    }
}

/// Publishes that a client reopened a connection after losing one.
#[inline]
pub fn reconnected() {
    if let Some(m) = global() {
        m.reconnected();
    }
}

/// A span for one attempt of a cluster call (a child of the call's span): its number, why it
/// was sent (`reason`: `first`, `retry` after an earlier attempt ended, `hedge` while one is
/// still out) and where; the client's `remora.request` span nests under it.
pub fn attempt_span(attempt: u32, kind: AttemptKind, endpoint: &str) -> tracing::Span {
    let reason = match kind {
        AttemptKind::First => "first",
        AttemptKind::Retry => "retry",
        AttemptKind::Hedge => "hedge",
    };
    tracing::info_span!(
        "remora.attempt",
        attempt,
        reason,
        endpoint,
        outcome = tracing::field::Empty,
    )
}

/// A span for one cluster call (`remora.cluster.call`: request code, then the final attempt's
/// number and outcome class, recorded by [`call_finished`]); its attempts' spans nest under it.
pub fn cluster_call_span(code: i32) -> tracing::Span {
    tracing::info_span!(
        "remora.cluster.call",
        code,
        final_attempt = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// Runs one attempt of a cluster call inside its `span` (the client's request span nests
/// under it) and records the attempt's outcome class there.
#[inline]
pub fn attempt(
    span: &tracing::Span,
    send: impl FnOnce() -> Result<Command, CallError>,
) -> Result<Command, CallError> {
    let outcome = span.in_scope(send);
    record_outcome(span, &outcome);
    outcome
}

/// [`attempt`] for an async driver: `send` runs instrumented with the attempt's `span`.
pub async fn attempt_async(
    span: tracing::Span,
    send: impl std::future::Future<Output = Result<Command, CallError>>,
) -> Result<Command, CallError> {
    use tracing::Instrument;
    let outcome = send.instrument(span.clone()).await;
    record_outcome(&span, &outcome);
    outcome
}

/// A cluster call's loop got [`Action::Done`](remora_core::resilience::cluster::Action):
/// records on its `span` the answering attempt and its outcome class (`unanswered` if none
/// answered), publishes a retry budget refusal, and returns the call's result.
pub fn call_finished(
    span: &tracing::Span,
    call: ClusterCall,
    request: &Command,
) -> Result<Command, CallError> {
    if call.budget_refused() {
        budget_exhausted();
    }
    if !span.is_disabled() {
        let answered = call.answered();
        let class = answered.map_or("unanswered", |(_, r)| Outcome::of(r).as_str());
        span.record("outcome", class);
        span.record("final_attempt", answered.map_or(0, |(a, _)| a));
    }
    call.result(request)
}

/// Records a call's outcome class on `span` (an attempt's or a cluster call's).
#[inline]
pub fn record_outcome(span: &tracing::Span, result: &Result<Command, CallError>) {
    if !span.is_disabled() {
        span.record("outcome", Outcome::of(result).as_str());
    }
}

/// Publishes a cluster endpoint's health change to the installed [`Metrics`] and logs it.
pub fn endpoint_health(endpoint: &str, breaker: &BreakerState, ejected: bool) {
    if let Some(m) = global() {
        m.endpoint_health(endpoint, breaker_name(breaker), ejected);
    }
    tracing::info!(endpoint, ?breaker, ejected, "endpoint health changed");
}

/// The label value of a breaker state: `closed`, `open` or `half_open`.
pub fn breaker_name(state: &BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen { .. } => "half_open",
    }
}

/// Publishes that a cluster call's retry or hedge was refused by the retry budget.
pub fn budget_exhausted() {
    if let Some(m) = global() {
        m.budget_exhausted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_classify_codes_and_errors() {
        assert_eq!(Outcome::of_code(codes::SUCCESS), Outcome::Success);
        assert_eq!(Outcome::of_code(codes::SYSTEM_BUSY), Outcome::Busy);
        assert_eq!(
            Outcome::of_code(codes::SYSTEM_ERROR),
            Outcome::ErrorResponse
        );
        let timeout = CallError::Timeout { written: true };
        assert_eq!(Outcome::of_error(&timeout), Outcome::Timeout);
        assert_eq!(
            Outcome::of_error(&CallError::TooManyInFlight),
            Outcome::Unsent
        );
    }

    #[test]
    fn a_probe_without_subscriber_or_metrics_reads_no_clock() {
        let request = Command::request(10);
        let probe = Probe::client(&request, &"x");
        assert!(probe.span().is_disabled());
        assert!(probe.started.is_none());
        probe.end_with(Outcome::Success);
    }
}
