//! No per-request heap allocation in steady state on the tokio path: after a warm-up, many
//! thousands of calls through a tokio client and a tokio server (in this process, on one
//! current-thread runtime) allocate less than once per hundred calls, counted by a global
//! allocator wrapper. What remains is per buffer, not per request: when the 64 KiB read buffer
//! runs low while decoded bodies still share it, a new one is allocated.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use remora_core::SerializeType;
use remora_tokio::{Client, ClientConfig, Server, ServerConfig};

use remora_tests::alloc::{allocations, echo, numbered_request, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `calls` calls from `tasks` concurrent tasks and returns the allocations made while they
/// ran (the tasks are spawned before counting starts). Each request body is built in a reused
/// buffer, as a careful application would.
async fn load(client: &Client, tasks: usize, calls: usize, ty: SerializeType) -> u64 {
    let start = Arc::new(tokio::sync::Notify::new());
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let client = client.clone();
        let start = Arc::clone(&start);
        handles.push(tokio::spawn(async move {
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let server = Server::bind("127.0.0.1:0", echo, ServerConfig::default())
            .await
            .unwrap();
        let client = Client::connect(server.local_addr(), ClientConfig::default())
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
        server.stop().await;
        results
    });
    for (ty, per_call) in results {
        eprintln!("{ty:?}: {per_call:.4} allocations per call (client + server, steady state)");
        assert!(per_call < 0.01, "{ty:?}: {per_call} allocations per call");
    }
}
