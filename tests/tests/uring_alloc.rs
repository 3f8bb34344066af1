//! No per-request heap allocation in steady state on the io_uring path: after a warm-up, many
//! thousands of calls through a uring client and a uring server (in this process) allocate less
//! than once per hundred calls, counted by a global allocator wrapper. What remains is per
//! buffer, not per request: when the 64 KiB read buffer runs low while decoded bodies still
//! share it, a new one is allocated (plus its shared header).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use remora_core::SerializeType;
use remora_uring::{ClientConfig, LocalClient, Server, ServerConfig};

use remora_tests::alloc::{allocations, echo, numbered_request, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide: the tests take turns, so none counts another's allocations.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `calls` calls from `tasks` concurrent tasks and returns the allocations made while they
/// ran (the tasks are spawned before counting starts). Each request body is built in a reused
/// buffer, as a careful application would.
async fn load(client: &LocalClient, tasks: usize, calls: usize, ty: SerializeType) -> u64 {
    let start = Rc::new(tokio::sync::Notify::new());
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let client = client.clone();
        let start = Rc::clone(&start);
        handles.push(tokio_uring::spawn(async move {
            start.notified().await;
            let mut buf = BytesMut::with_capacity(64);
            for i in 0..calls / tasks {
                let request = numbered_request(&mut buf, (t * calls + i) as u64, ty);
                let response = client.call(request, Duration::from_secs(10)).await.unwrap();
                assert_eq!(response.body().len(), 64);
            }
        }));
    }
    tokio::task::yield_now().await; // every task is now waiting on `start`
    let before = allocations();
    start.notify_waiters();
    for h in handles {
        h.await.unwrap();
    }
    allocations() - before
}

#[test]
fn steady_state_calls_do_not_allocate() {
    let _turn = one_at_a_time();
    let server = Server::bind_with(
        "127.0.0.1:0",
        Arc::new(echo),
        ServerConfig {
            threads: 1,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addr = server.local_addr();
    let per_call = tokio_uring::start(async move {
        let client = LocalClient::connect(addr, ClientConfig::default())
            .await
            .unwrap();
        let mut results = vec![];
        for ty in [SerializeType::Json, SerializeType::RocketMq] {
            load(&client, 32, 4_000, ty).await; // warm-up: buffers and slabs reach their size
            let calls = 32_000;
            let allocations = load(&client, 32, calls, ty).await;
            results.push((ty, allocations as f64 / calls as f64));
        }
        client.close();
        results
    });
    for (ty, per_call) in per_call {
        eprintln!("{ty:?}: {per_call:.4} allocations per call (client + server, steady state)");
        assert!(per_call < 0.01, "{ty:?}: {per_call} allocations per call");
    }
}

/// The same through `EventLoop` (the loop under `Server` and the bench's load generator) as the
/// client: `tasks` calls in flight on one connection, each restarted as it completes.
fn loop_load(
    lp: &mut remora_uring::EventLoop,
    conn: remora_uring::ConnId,
    tasks: usize,
    calls: usize,
    ty: SerializeType,
) -> u64 {
    let mut buf = BytesMut::with_capacity(64);
    let mut done = Vec::with_capacity(tasks);
    let mut start = |lp: &mut remora_uring::EventLoop, seq: u64| {
        let request = numbered_request(&mut buf, seq, ty);
        lp.call(conn, request, Duration::from_secs(10), seq)
            .unwrap();
    };
    let before = allocations();
    for t in 0..tasks {
        start(lp, t as u64);
    }
    let (mut started, mut finished) = (tasks, 0);
    while finished < calls {
        lp.turn(Duration::from_secs(1), &mut done).unwrap();
        for c in done.drain(..) {
            let response = c.outcome.unwrap();
            assert_eq!(response.body().len(), 64);
            finished += 1;
            if started < calls {
                start(lp, started as u64);
                started += 1;
            }
        }
    }
    allocations() - before
}

#[test]
fn steady_state_event_loop_calls_do_not_allocate() {
    let _turn = one_at_a_time();
    let server = Server::bind_with(
        "127.0.0.1:0",
        Arc::new(echo),
        ServerConfig {
            threads: 1,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let mut lp = remora_uring::EventLoop::new(
        remora_core::Config::default(),
        remora_uring::LoopConfig::default(),
        Arc::new(remora_core::NotSupported),
    )
    .unwrap();
    let conn = lp
        .connect(server.local_addr(), Duration::from_secs(3))
        .unwrap();
    for ty in [SerializeType::Json, SerializeType::RocketMq] {
        loop_load(&mut lp, conn, 32, 4_000, ty); // warm-up
        let calls = 32_000;
        let per_call = loop_load(&mut lp, conn, 32, calls, ty) as f64 / calls as f64;
        eprintln!("{ty:?}: {per_call:.4} allocations per call (EventLoop client + server)");
        assert!(per_call < 0.01, "{ty:?}: {per_call} allocations per call");
    }
}
