//! The std multi-endpoint client over real sockets: three servers, one killed mid-run and one
//! slowed; calls keep succeeding through the others, within their deadlines.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_core::resilience::retry::HedgePolicy;
use remora_core::{codes, Command};
use remora_std::{CallOpts, Cluster, ClusterConfig, Hook, Server, ServerConfig};

fn echo(request: Command) -> Command {
    let body = request.body_bytes();
    request.response(codes::SUCCESS).with_body(body)
}

#[test]
fn calls_survive_a_killed_and_a_slow_server() {
    let fast = Server::bind("127.0.0.1:0", echo).unwrap();
    let doomed = Server::bind_with(
        "127.0.0.1:0",
        echo,
        ServerConfig {
            drain_timeout: Duration::ZERO,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let slow = Server::bind_with(
        "127.0.0.1:0",
        |r: Command| {
            std::thread::sleep(Duration::from_millis(300));
            echo(r)
        },
        ServerConfig {
            drain_timeout: Duration::ZERO,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addrs: Vec<String> = [&fast, &doomed, &slow]
        .iter()
        .map(|s| s.local_addr().to_string())
        .collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let timeout = Duration::from_secs(1);
    let mut config = ClusterConfig::testing();
    config.policies.timeout = timeout;
    config.policies.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(50),
        max_attempts: 3,
    });
    let cluster = Cluster::new(&addr_refs, config).unwrap();

    let run = |cluster: &Cluster, tag: &str| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cluster = cluster.clone();
                let tag = tag.to_string();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let body = format!("{tag}-{t}-{i}");
                        let started = Instant::now();
                        // Echo is idempotent: a request that may have reached the killed server
                        // may be retried elsewhere.
                        let opts = CallOpts {
                            idempotent: true,
                            ..Default::default()
                        };
                        let response = cluster
                            .call_with(
                                Command::request(7).with_body(body.clone().into_bytes()),
                                opts,
                            )
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
        for t in threads {
            t.join().unwrap();
        }
    };
    run(&cluster, "before");
    drop(doomed); // killed: connections cut, port closed
    run(&cluster, "after");

    let totals = cluster.totals();
    assert!(totals.hedges > 0, "the slow server's calls were hedged");
    let report = cluster.report();
    assert!(report[2].counts.attempts > 0, "the slow server was tried");
    assert!(
        report[1].counts.retryable_failures > 0 || report[1].ejected,
        "the killed server failed calls: {report:?}"
    );
    cluster.close();
    drop((fast, slow));
}

struct Tagger;

impl Hook for Tagger {
    fn before_send(&self, request: &mut Command) {
        request.ext_fields_mut().insert("signedBy", "tagger");
    }
    fn after_receive(&self, response: &mut Command) {
        response.ext_fields_mut().insert("seen", "yes");
    }
}

#[test]
fn hooks_run_around_every_call_and_bad_configs_are_refused() {
    let server = Server::bind("127.0.0.1:0", |r: Command| {
        let mut resp = r.response(codes::SUCCESS);
        resp.set_ext_fields(r.ext_fields().to_ext_fields());
        resp
    })
    .unwrap();
    let addr = server.local_addr().to_string();
    let cluster = Cluster::with_hooks(
        &[addr.as_str()],
        ClusterConfig::testing(),
        vec![Arc::new(Tagger)],
    )
    .unwrap();
    let response = cluster.call(Command::request(1)).unwrap();
    assert_eq!(response.ext("signedBy"), Some("tagger"));
    assert_eq!(response.ext("seen"), Some("yes"));
    cluster.close();

    let mut bad = ClusterConfig::testing();
    bad.policies.hedge = Some(HedgePolicy {
        delay: Duration::from_secs(5),
        max_attempts: 2,
    });
    assert!(
        Cluster::new(&[addr.as_str()], bad).is_err(),
        "hedge delay above the timeout"
    );
    let mut none = ClusterConfig::testing();
    none.policies.max_attempts = 0;
    assert!(Cluster::new(&[addr.as_str()], none).is_err());

    // The whole configuration travels as JSON and comes back equal.
    let json = serde_json::to_string(&ClusterConfig::production()).unwrap();
    let back: ClusterConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.policies, ClusterConfig::production().policies);
    assert_eq!(
        back.client.pool_size,
        ClusterConfig::production().client.pool_size
    );
}

#[test]
fn uring_cluster_survives_a_killed_and_a_slow_server() {
    use remora_uring::{ClusterConfig as UringClusterConfig, LocalCluster};
    let fast = Server::bind("127.0.0.1:0", echo).unwrap();
    let doomed = Server::bind_with(
        "127.0.0.1:0",
        echo,
        ServerConfig {
            drain_timeout: Duration::ZERO,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let slow = Server::bind_with(
        "127.0.0.1:0",
        |r: Command| {
            std::thread::sleep(Duration::from_millis(300));
            echo(r)
        },
        ServerConfig {
            drain_timeout: Duration::ZERO,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addrs: Vec<String> = [&fast, &doomed, &slow]
        .iter()
        .map(|s| s.local_addr().to_string())
        .collect();
    let timeout = Duration::from_secs(1);
    let mut config = UringClusterConfig {
        policies: remora_core::resilience::policies::Policies::testing(),
        ..Default::default()
    };
    config.policies.timeout = timeout;
    config.policies.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(50),
        max_attempts: 3,
    });
    let mut doomed = Some(doomed);
    tokio_uring::start(async move {
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let cluster = LocalCluster::new(&refs, config, Vec::new()).unwrap();
        for round in 0..2 {
            if round == 1 {
                drop(doomed.take());
            }
            let tasks: Vec<_> = (0..4)
                .map(|t| {
                    let cluster = cluster.clone();
                    tokio_uring::spawn(async move {
                        for i in 0..20 {
                            let body = format!("{round}-{t}-{i}");
                            let started = Instant::now();
                            // Echo is idempotent: a request that may have reached the killed
                            // server may be retried elsewhere.
                            let opts = remora_uring::CallOpts {
                                idempotent: true,
                                ..Default::default()
                            };
                            let response = cluster
                                .call_with(
                                    Command::request(7).with_body(body.clone().into_bytes()),
                                    opts,
                                )
                                .await
                                .unwrap_or_else(|e| panic!("{body}: {e}"));
                            assert_eq!(response.body(), body.as_bytes());
                            assert!(started.elapsed() < timeout + Duration::from_millis(200));
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
        let counts = cluster.counts();
        assert!(
            counts.iter().map(|c| c.hedges).sum::<u64>() > 0,
            "{counts:?}"
        );
        assert!(
            counts[1].retryable_failures > 0 || cluster.health(1).1,
            "{counts:?}"
        );
        cluster.close();
    });
    drop((fast, slow));
}

#[test]
fn acl_signing_hook_and_server_verifier_work_end_to_end() {
    use remora_core::acl::{AclCredentials, Signer, Verifier};
    let server = Server::bind(
        "127.0.0.1:0",
        Verifier::new(echo, |ak: &str| (ak == "rocketmq2").then_some("12345678")),
    )
    .unwrap();
    let addr = server.local_addr().to_string();
    let good = Cluster::with_hooks(
        &[addr.as_str()],
        ClusterConfig::testing(),
        vec![Arc::new(Signer::new(AclCredentials::new(
            "rocketmq2",
            "12345678",
        )))],
    )
    .unwrap();
    let ok = good
        .call(
            Command::request(7)
                .with_ext("topic", "T")
                .with_body(&b"x"[..]),
        )
        .unwrap();
    assert_eq!(ok.code, codes::SUCCESS);
    let bad = Cluster::with_hooks(
        &[addr.as_str()],
        ClusterConfig::testing(),
        vec![Arc::new(Signer::new(AclCredentials::new(
            "rocketmq2",
            "wrong",
        )))],
    )
    .unwrap();
    let refused = bad
        .call(Command::request(7).with_ext("topic", "T"))
        .unwrap();
    assert_eq!(refused.code, codes::NO_PERMISSION);
    good.close();
    bad.close();
}

#[test]
fn a_custom_resolver_adds_and_retires_endpoints_and_the_watch_hears_it() {
    use remora_std::Resolver;
    use std::sync::Mutex;
    let a = Server::bind("127.0.0.1:0", echo).unwrap();
    let b = Server::bind("127.0.0.1:0", echo).unwrap();
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    let current = Arc::new(Mutex::new(vec![a_addr.clone()]));
    let source = Arc::clone(&current);
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&seen);
    let cluster = Cluster::with_resolver(
        Resolver::Custom {
            resolve: Arc::new(move || source.lock().unwrap().clone()),
            every: Duration::from_millis(1),
        },
        ClusterConfig::testing(),
        Vec::new(),
        Some(Arc::new(move |set: &[String]| {
            heard.lock().unwrap().push(set.to_vec())
        })),
    )
    .unwrap();
    assert_eq!(cluster.addresses(), std::slice::from_ref(&a_addr));
    cluster.call(Command::request(1)).unwrap();

    *current.lock().unwrap() = vec![b_addr.clone()];
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..6 {
        cluster.call(Command::request(1)).unwrap();
    }
    assert_eq!(cluster.addresses(), std::slice::from_ref(&b_addr));
    assert_eq!(seen.lock().unwrap().last().unwrap(), &vec![b_addr.clone()]);
    let report = cluster.report();
    assert_eq!(
        report.len(),
        2,
        "indices are stable: a is retired, b appended"
    );
    assert!(report[1].counts.attempts >= 6, "{report:?}");
    cluster.close();
}

#[test]
fn uring_cluster_follows_its_resolver() {
    use remora_uring::{ClusterConfig as UringClusterConfig, LocalCluster, Resolver};
    use std::sync::Mutex;
    let a = Server::bind("127.0.0.1:0", echo).unwrap();
    let b = Server::bind("127.0.0.1:0", echo).unwrap();
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    let current = Arc::new(Mutex::new(vec![a_addr.clone()]));
    let source = Arc::clone(&current);
    let heard = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let watch_log = Arc::clone(&heard);
    let config = UringClusterConfig {
        policies: remora_core::resilience::policies::Policies::testing(),
        ..Default::default()
    };
    let expected = b_addr.clone();
    tokio_uring::start(async move {
        let cluster = LocalCluster::with_resolver(
            Resolver::Custom {
                resolve: Arc::new(move || source.lock().unwrap().clone()),
                every: Duration::from_millis(1),
            },
            config,
            Vec::new(),
            Some(Arc::new(move |set: &[String]| {
                watch_log.lock().unwrap().push(set.to_vec())
            })),
        )
        .unwrap();
        cluster.call(Command::request(1)).await.unwrap();
        *current.lock().unwrap() = vec![b_addr.clone()];
        tokio::time::sleep(Duration::from_millis(5)).await;
        for _ in 0..4 {
            cluster.call(Command::request(1)).await.unwrap();
        }
        assert_eq!(cluster.addresses(), std::slice::from_ref(&b_addr));
        assert_eq!(cluster.counts()[1].successes, 4);
        cluster.close();
    });
    assert_eq!(heard.lock().unwrap().last().unwrap(), &vec![expected]);
    drop((a, b));
}

#[test]
fn cluster_oneway_and_per_call_hooks() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::bind("127.0.0.1:0", move |r: Command| {
        tx.lock()
            .unwrap()
            .send(r.ext("signedBy").map(String::from))
            .unwrap();
        echo(r)
    })
    .unwrap();
    let addr = server.local_addr().to_string();
    let cluster = Cluster::new(&[addr.as_str()], ClusterConfig::testing()).unwrap();
    cluster.oneway(Command::oneway(34)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), None);
    let opts = CallOpts {
        hooks: vec![Arc::new(Tagger)],
        ..Default::default()
    };
    let response = cluster.call_with(Command::request(1), opts).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap().as_deref(),
        Some("tagger")
    );
    assert_eq!(
        response.ext("seen"),
        Some("yes"),
        "the per-call hook saw the response"
    );
    assert_eq!(cluster.totals().successes, 2);
    cluster.close();
}

#[test]
fn health_probes_bring_back_an_open_endpoint_before_its_breaker_would() {
    use remora_core::resilience::breaker::State;
    use remora_core::resilience::policies::Probe;
    use std::sync::atomic::AtomicBool;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let server = Server::bind("127.0.0.1:0", move |r: Command| {
        if flag.load(Ordering::SeqCst) || r.code == 34 {
            echo(r)
        } else {
            r.response(codes::SYSTEM_BUSY)
        }
    })
    .unwrap();
    let addr = server.local_addr().to_string();
    let mut config = ClusterConfig::testing();
    config.policies.max_attempts = 1;
    config.policies.breaker.consecutive_failures = 3;
    config.policies.breaker.open_for = Duration::from_secs(60);
    config.policies.ejection.consecutive_failures = 0;
    config.policies.probe = Some(Probe {
        every: Duration::from_millis(300),
        code: 34,
    });
    let cluster = Cluster::new(&[addr.as_str()], config).unwrap();
    for _ in 0..3 {
        let busy = cluster.call(Command::request(1)).unwrap();
        assert_eq!(busy.code, codes::SYSTEM_BUSY);
    }
    assert!(matches!(cluster.report()[0].breaker, State::Open { .. }));
    assert!(
        cluster.call(Command::request(1)).is_err(),
        "open: refused at once"
    );
    healthy.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !matches!(cluster.report()[0].breaker, State::Closed) {
        assert!(
            Instant::now() < deadline,
            "the probe never closed the breaker"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        cluster.call(Command::request(1)).unwrap().code,
        codes::SUCCESS
    );
    cluster.close();
}

#[test]
fn per_call_retryable_codes_and_uring_oneway() {
    use std::sync::atomic::AtomicU32;
    // A server whose own "try later" code is 408, answered to every other request.
    let n = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&n);
    let server = Server::bind("127.0.0.1:0", move |r: Command| {
        if count.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            r.response(408)
        } else {
            echo(r)
        }
    })
    .unwrap();
    let addr = server.local_addr().to_string();
    let cluster = Cluster::new(&[addr.as_str()], ClusterConfig::testing()).unwrap();
    let opts = CallOpts {
        retryable_codes: Some(vec![408]),
        ..Default::default()
    };
    let retried = cluster.call_with(Command::request(1), opts).unwrap();
    assert_eq!(retried.code, codes::SUCCESS, "408 retried for this call");
    assert_eq!(n.load(Ordering::SeqCst), 2, "one 408, one retry");
    let plain = cluster.call(Command::request(1)).unwrap();
    assert_eq!(plain.code, 408, "not retryable by default");

    cluster.close();

    let config = remora_uring::ClusterConfig {
        policies: remora_core::resilience::policies::Policies::testing(),
        ..Default::default()
    };
    tokio_uring::start(async move {
        let cluster =
            remora_uring::LocalCluster::new(&[addr.as_str()], config, Vec::new()).unwrap();
        cluster.oneway(Command::oneway(34)).await.unwrap();
        assert_eq!(cluster.counts()[0].successes, 1);
        // A oneway is queued, not yet written, when oneway() returns; let the writer run before
        // close() (which drops unsent bytes).
        tokio::time::sleep(Duration::from_millis(50)).await;
        cluster.close();
    });
    // The oneway reached the server.
    let deadline = Instant::now() + Duration::from_secs(2);
    while n.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "oneway never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn uring_health_probes_close_an_open_breaker() {
    use remora_core::resilience::breaker::State;
    use remora_core::resilience::policies::{Policies, Probe};
    use std::sync::atomic::AtomicBool;
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let server = Server::bind("127.0.0.1:0", move |r: Command| {
        if flag.load(Ordering::SeqCst) || r.code == 34 {
            echo(r)
        } else {
            r.response(codes::SYSTEM_BUSY)
        }
    })
    .unwrap();
    let addr = server.local_addr().to_string();
    let mut policies = Policies::testing();
    policies.max_attempts = 1;
    policies.breaker.consecutive_failures = 3;
    policies.breaker.open_for = Duration::from_secs(60);
    policies.ejection.consecutive_failures = 0;
    policies.probe = Some(Probe {
        every: Duration::from_millis(300),
        code: 34,
    });
    let config = remora_uring::ClusterConfig {
        policies,
        ..Default::default()
    };
    tokio_uring::start(async move {
        let cluster =
            remora_uring::LocalCluster::new(&[addr.as_str()], config, Vec::new()).unwrap();
        for _ in 0..3 {
            assert_eq!(
                cluster.call(Command::request(1)).await.unwrap().code,
                codes::SYSTEM_BUSY
            );
        }
        assert!(matches!(cluster.health(0).0, State::Open { .. }));
        healthy.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(3);
        while !matches!(cluster.health(0).0, State::Closed) {
            assert!(
                Instant::now() < deadline,
                "the probe never closed the breaker"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            cluster.call(Command::request(1)).await.unwrap().code,
            codes::SUCCESS
        );
        cluster.close();
    });
}
