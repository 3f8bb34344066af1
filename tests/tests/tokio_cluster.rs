//! The tokio multi-endpoint client over real sockets (std servers on 127.0.0.1): one endpoint
//! killed and one slowed, retries to another endpoint, hedges winning over a slow one, a resolver
//! that moves the cluster, hooks, oneway and fallback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remora_core::resilience::retry::HedgePolicy;
use remora_core::{codes, CallError, Command};
use remora_std::{Server, ServerConfig};
use remora_tokio::{CallOpts, Cluster, ClusterConfig, Hook, Resolver};

fn echo(request: Command) -> Command {
    let body = request.body_bytes();
    request.response(codes::SUCCESS).with_body(body)
}

/// A server whose handler sleeps `delay` first, stopped at once when dropped.
fn server(delay: Duration) -> Server {
    let handler = move |r: Command| {
        std::thread::sleep(delay);
        echo(r)
    };
    let config = ServerConfig {
        drain_timeout: Duration::ZERO,
        ..ServerConfig::default()
    };
    Server::bind_with("127.0.0.1:0", handler, config).unwrap()
}

fn addr(s: &Server) -> String {
    s.local_addr().to_string()
}

/// An address nothing listens on (bound, then closed).
fn refused() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A cluster over `addrs`, no hooks.
fn over(addrs: &[String], config: ClusterConfig) -> Cluster {
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    Cluster::new(&refs, config, &[]).unwrap()
}

fn idempotent() -> CallOpts {
    CallOpts {
        idempotent: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_cluster_survives_a_killed_and_a_slow_server() {
    let (fast, slow) = (server(Duration::ZERO), server(Duration::from_millis(300)));
    let mut doomed = Some(server(Duration::ZERO));
    let addrs = [addr(&fast), addr(doomed.as_ref().unwrap()), addr(&slow)];
    let timeout = Duration::from_secs(1);
    let mut config = ClusterConfig::testing();
    config.policies.timeout = timeout;
    config.policies.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(50),
        max_attempts: 3,
    });
    let cluster = over(&addrs, config);
    for phase in ["before", "after"] {
        if phase == "after" {
            drop(doomed.take()); // killed: connections cut, port closed
        }
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let cluster = cluster.clone();
                // Spawned on a multi-threaded runtime: the call's future is Send.
                tokio::spawn(async move {
                    for i in 0..25 {
                        let body = format!("{phase}-{t}-{i}");
                        let request = Command::request(7).with_body(body.clone().into_bytes());
                        let started = Instant::now();
                        let response = cluster
                            .call_with(request, idempotent())
                            .await
                            .unwrap_or_else(|e| panic!("{body}: {e}"));
                        assert_eq!(response.body(), body.as_bytes());
                        let took = started.elapsed();
                        assert!(
                            took < timeout + Duration::from_millis(200),
                            "{body} took {took:?}"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
    assert!(
        cluster.totals().hedges > 0,
        "the slow server's calls were hedged"
    );
    let report = cluster.report();
    assert!(report[2].counts.attempts > 0, "the slow server was tried");
    assert!(
        report[1].counts.retryable_failures > 0 || report[1].ejected,
        "the killed server failed calls: {report:?}"
    );
    cluster.close();
    drop((fast, slow));
}

#[tokio::test]
async fn a_failed_attempt_is_retried_on_another_endpoint() {
    let alive = server(Duration::ZERO);
    let addrs = [refused(), addr(&alive)];
    let mut config = ClusterConfig::testing();
    config.policies.hedge = None;
    config.policies.max_attempts = 3;
    let cluster = over(&addrs, config);
    for i in 0..8u8 {
        let request = Command::request(7).with_body(vec![i]);
        let response = cluster.call_with(request, idempotent()).await.unwrap();
        assert_eq!(response.body(), &[i][..]);
    }
    let report = cluster.report();
    assert!(
        report[0].counts.attempts > 0,
        "the dead endpoint was tried: {report:?}"
    );
    assert_eq!(report[0].counts.successes, 0);
    assert!(report[0].counts.retryable_failures > 0, "{report:?}");
    assert!(
        report[1].counts.retries > 0,
        "the retry went to the live one: {report:?}"
    );
    assert_eq!(cluster.totals().successes, 8);
    cluster.close();
}

#[tokio::test]
async fn a_hedge_wins_over_a_slow_endpoint() {
    let (slow, fast) = (server(Duration::from_millis(1500)), server(Duration::ZERO));
    let addrs = [addr(&slow), addr(&fast)];
    let mut config = ClusterConfig::testing();
    config.policies.timeout = Duration::from_secs(5);
    config.policies.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(50),
        max_attempts: 2,
    });
    let cluster = over(&addrs, config);
    for i in 0..4u8 {
        let response = cluster.call_with(Command::request(7).with_body(vec![i]), idempotent());
        assert_eq!(response.await.unwrap().body(), &[i][..], "call {i}");
    }
    let report = cluster.report();
    assert!(
        report[0].counts.attempts > 0,
        "the slow endpoint was tried: {report:?}"
    );
    assert_eq!(
        report[0].counts.successes, 0,
        "its attempts lost (and were cancelled)"
    );
    assert!(
        report[1].counts.hedges > 0,
        "the hedges went to the fast one: {report:?}"
    );
    cluster.close();
    drop((slow, fast));
}

/// Stamps requests going out and responses coming back.
struct Stamp;

impl Hook for Stamp {
    fn after_receive(&self, response: &mut Command) {
        response.ext_fields_mut().insert("stamped", "back");
    }
    fn before_send(&self, request: &mut Command) {
        request.ext_fields_mut().insert("stamped", "out");
    }
}

// Multi-threaded: the test blocks on a channel while the connection's task writes the oneway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_oneway_fallback_and_bad_configs() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let handler = move |r: Command| {
        let signed = r.ext("stamped").map(String::from);
        tx.lock().unwrap().send(signed).unwrap();
        echo(r)
    };
    let server = Server::bind("127.0.0.1:0", handler).unwrap();
    let a = addr(&server);
    let hooks: Vec<Arc<dyn Hook>> = vec![Arc::new(Stamp)];
    let cluster = Cluster::new(&[a.as_str()], ClusterConfig::testing(), &hooks).unwrap();
    let response = cluster.call(Command::request(1)).await.unwrap();
    assert_eq!(response.ext("stamped"), Some("back"), "after_receive ran");
    let recv = || rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(recv().as_deref(), Some("out"), "before_send ran");
    cluster.oneway(Command::oneway(34)).await.unwrap();
    assert_eq!(recv().as_deref(), Some("out"), "the oneway arrived, hooked");
    assert_eq!(cluster.totals().successes, 2, "the call and the oneway");
    cluster.close();

    // Nothing answers: the per-call timeout ends it, and the fallback turns the error.
    let dead = refused();
    let cluster = Cluster::new(&[dead.as_str()], ClusterConfig::testing(), &[]).unwrap();
    let fallback = |_: &Command, e: CallError| {
        assert!(!matches!(e, CallError::Encode(_)), "{e}");
        Ok(Command::request(0)
            .response(codes::SUCCESS)
            .with_remark("cached"))
    };
    let opts = CallOpts {
        timeout: Some(Duration::from_millis(300)),
        fallback: Some(Arc::new(fallback)),
        ..idempotent()
    };
    let response = cluster.call_with(Command::request(1), opts).await.unwrap();
    assert_eq!(response.remark(), Some("cached"));
    let plain = CallOpts {
        timeout: Some(Duration::from_millis(300)),
        ..idempotent()
    };
    assert!(cluster.call_with(Command::request(1), plain).await.is_err());
    cluster.close();

    let mut none = ClusterConfig::testing();
    none.policies.max_attempts = 0;
    assert!(Cluster::new(&[a.as_str()], none, &[]).is_err());
}

#[tokio::test]
async fn a_custom_resolver_moves_the_cluster_and_the_watch_hears_it() {
    let (a, b) = (server(Duration::ZERO), server(Duration::ZERO));
    let (a_addr, b_addr) = (addr(&a), addr(&b));
    let current = Arc::new(Mutex::new(vec![a_addr.clone()]));
    let source = Arc::clone(&current);
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let heard = Arc::clone(&seen);
    let resolver = Resolver::Custom {
        resolve: Arc::new(move || source.lock().unwrap().clone()),
        every: Duration::from_millis(1),
    };
    let watch = Arc::new(move |set: &[String]| heard.lock().unwrap().push(set.to_vec()));
    let config = ClusterConfig::testing();
    let cluster = Cluster::with_resolver(resolver, config, &[], Some(watch)).unwrap();
    assert_eq!(cluster.addresses(), std::slice::from_ref(&a_addr));
    cluster.call(Command::request(1)).await.unwrap();

    *current.lock().unwrap() = vec![b_addr.clone()];
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..6 {
        cluster.call(Command::request(1)).await.unwrap();
    }
    assert_eq!(cluster.addresses(), std::slice::from_ref(&b_addr));
    assert_eq!(seen.lock().unwrap().last(), Some(&vec![b_addr.clone()]));
    let report = cluster.report();
    assert_eq!(report.len(), 2, "a is retired, b appended: {report:?}");
    assert!(report[1].counts.attempts >= 6, "{report:?}");
    assert_eq!(report[0].counts.attempts, 1, "{report:?}");
    cluster.close();
}

#[tokio::test]
async fn the_probe_task_closes_an_open_breaker() {
    use remora_core::resilience::breaker::State;
    use remora_core::resilience::policies::Probe;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Busy to every request but the probe's code (34) until `up`.
    let up = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&up);
    let server = Server::bind("127.0.0.1:0", move |r: Command| match r.code {
        34 => echo(r),
        _ if seen.load(Ordering::SeqCst) => echo(r),
        _ => r.response(codes::SYSTEM_BUSY),
    })
    .unwrap();
    let mut config = ClusterConfig::testing();
    (
        config.policies.max_attempts,
        config.policies.ejection.consecutive_failures,
    ) = (1, 0);
    config.policies.breaker.consecutive_failures = 2;
    config.policies.breaker.open_for = Duration::from_secs(60);
    let every = Duration::from_millis(100);
    config.policies.probe = Some(Probe { every, code: 34 });
    let cluster = over(&[addr(&server)], config);
    for _ in 0..2 {
        let answer = cluster.call(Command::request(1)).await.unwrap();
        assert_eq!(answer.code, codes::SYSTEM_BUSY);
    }
    let breaker = || cluster.report()[0].breaker;
    assert!(matches!(breaker(), State::Open { .. }), "{:?}", breaker());
    let refused = cluster.call(Command::request(1)).await;
    assert!(refused.is_err(), "an open breaker refuses at once");
    up.store(true, Ordering::SeqCst);
    // Bounded: 60 polls of 50 ms, far inside the breaker's 60 s.
    for _ in 0..60 {
        if matches!(breaker(), State::Closed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(breaker(), State::Closed), "the probe never ran");
    let answer = cluster.call(Command::request(1)).await.unwrap();
    assert_eq!(answer.code, codes::SUCCESS);
    cluster.close();
}
