//! Fault scenarios every async client must pass the same way (the tokio `Client` and the
//! tokio-uring `LocalClient`): each test file connects its own client and runs these on its own
//! runtime. Calls run concurrently in one task (no spawn), so the scenarios need no `Send`.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use remora_core::{codes, CallError, Command};

const SECOND: Duration = Duration::from_secs(1);

/// What the scenarios ask of a client.
pub trait AsyncClient: Clone {
    /// A call started and not yet awaited.
    type Pending: Future<Output = Result<Command, CallError>>;
    /// Sends `request` and waits up to `timeout`.
    fn call(
        &self,
        request: Command,
        timeout: Duration,
    ) -> impl Future<Output = Result<Command, CallError>>;
    /// Queues `request`; the returned future is its outcome (dropping it cancels the call).
    fn start_call(
        &self,
        request: Command,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Pending, CallError>>;
    /// Open connections.
    fn connections(&self) -> usize;
    /// Closes every connection.
    fn close(&self);
}

impl AsyncClient for remora_tokio::Client {
    type Pending = remora_metrics::Probed<remora_tokio::CallFuture>;
    fn call(&self, r: Command, t: Duration) -> impl Future<Output = Result<Command, CallError>> {
        remora_tokio::Client::call(self, r, t)
    }
    fn start_call(
        &self,
        r: Command,
        t: Duration,
    ) -> impl Future<Output = Result<Self::Pending, CallError>> {
        remora_tokio::Client::start_call(self, r, t)
    }
    fn connections(&self) -> usize {
        remora_tokio::Client::connections(self)
    }
    fn close(&self) {
        remora_tokio::Client::close(self)
    }
}

impl AsyncClient for remora_uring::LocalClient {
    type Pending = remora_metrics::Probed<remora_uring::CallFuture>;
    fn call(&self, r: Command, t: Duration) -> impl Future<Output = Result<Command, CallError>> {
        remora_uring::LocalClient::call(self, r, t)
    }
    fn start_call(
        &self,
        r: Command,
        t: Duration,
    ) -> impl Future<Output = Result<Self::Pending, CallError>> {
        remora_uring::LocalClient::start_call(self, r, t)
    }
    fn connections(&self) -> usize {
        remora_uring::LocalClient::connections(self)
    }
    fn close(&self) {
        remora_uring::LocalClient::close(self)
    }
}

/// Polls every future in this task until all are done; their outputs in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to the end"))
        .collect()
}

/// `client` is connected to `server`, a std server that answers after 600 ms: a 50 ms call
/// times out saying it was written; then four calls are in flight when the server is killed,
/// and all fail promptly as connection lost, written.
pub async fn timeouts_and_killed_server<C: AsyncClient>(client: C, server: remora_std::Server) {
    let started = Instant::now();
    let err = client
        .call(Command::request(1), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { written: true }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500));

    let calls = (0..4).map(|_| async {
        let outcome = client.call(Command::request(1), 20 * SECOND).await;
        (outcome, Instant::now())
    });
    let kill = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let killed = Instant::now();
        std::thread::spawn(move || drop(server));
        killed
    };
    let (ended, killed) = tokio::join!(join_all(calls.collect()), kill);
    for (outcome, ended) in ended {
        let err = outcome.unwrap_err();
        let lost = matches!(err, CallError::ConnectionLost { written: true });
        assert!(lost, "{err}");
        assert!(ended.saturating_duration_since(killed) < 2 * SECOND);
    }
    client.close();
}

/// `client` (reconnect backoff 20–100 ms) is connected to `server`, an echo server on `addr`:
/// once it is gone, calls fail (those that were refused say they never reached it); `rebind`
/// brings it back and the client reconnects by itself within five seconds.
pub async fn reconnects_after_the_server_comes_back<C: AsyncClient>(
    client: C,
    server: remora_std::Server,
    rebind: impl FnOnce() -> remora_std::Server,
) {
    client.call(Command::request(1), SECOND).await.unwrap();
    drop(server);
    let mut refused = 0;
    for _ in 0..10 {
        let err = client.call(Command::request(1), SECOND).await.unwrap_err();
        if !matches!(err, CallError::ConnectionLost { .. }) {
            assert!(!err.may_have_reached_peer(), "{err}");
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused > 0, "the dead server was noticed");
    let _server = rebind();
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        match client.call(Command::request(1), SECOND).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.close();
}

/// `client` (`max_waiters` 2) is connected to a slow echo server: a third call is refused at
/// once, and dropping a started call frees its waiter for another.
pub async fn max_waiters_and_dropped_calls_cancel<C: AsyncClient>(client: C) {
    let a = client.start_call(Command::request(1), 5 * SECOND).await;
    let b = client.start_call(Command::request(1), 5 * SECOND).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    let err = client
        .call(Command::request(1), 5 * SECOND)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::TooManyInFlight), "{err}");
    drop(b); // cancelling frees its waiter at once
    let c = client.start_call(Command::request(1), 5 * SECOND).await;
    let c = c.unwrap();
    a.await.unwrap();
    c.await.unwrap();
    client.close();
}

/// `client` (idle timeout 100 ms) is connected to an echo server: after a call its connection
/// closes once idle, and the next call reopens it at once (a clean close has no backoff).
pub async fn idle_connections_close_and_reopen_on_demand<C: AsyncClient>(client: C) {
    client.call(Command::request(1), SECOND).await.unwrap();
    assert_eq!(client.connections(), 1);
    let deadline = Instant::now() + 3 * SECOND;
    while client.connections() > 0 {
        assert!(Instant::now() < deadline, "idle connection never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = Command::request(1).with_body(&b"again"[..]);
    let r = client.call(again, SECOND).await.unwrap();
    assert_eq!((r.code, r.body()), (codes::SUCCESS, &b"again"[..]));
    assert_eq!(client.connections(), 1);
    client.close();
}

/// `client` is connected to an echo server: a call whose response arrived but was never read
/// is dropped, and the calls after it (which reuse its slot) each get their own answer, never
/// the dropped one's.
pub async fn unread_outcomes_do_not_leak_into_later_calls<C: AsyncClient>(client: C) {
    for round in 0..4u8 {
        let first = Command::request(1).with_body(vec![b'a', round]);
        let unread = client.start_call(first, SECOND).await.unwrap();
        // Its response arrives meanwhile; nobody polls for it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(unread);
        let next = Command::request(1).with_body(vec![b'b', round]);
        let r = client.call(next, SECOND).await.unwrap();
        assert_eq!(r.body(), [b'b', round]);
    }
    client.close();
}
