//! Clusters and the name-server route follower over TLS: every driver's cluster over three TLS
//! servers; one server whose certificate an untrusted CA signed fails its handshakes, which the
//! cluster counts as retryable failures at that endpoint (never written: calls that are not
//! idempotent are still retried elsewhere) while every call succeeds through the others; the
//! SNI name override; a `RouteFollower` asking TLS name servers and a cluster following its
//! route. Certificates are made by the test (rcgen); servers bind 127.0.0.1:0; every wait and
//! loop is bounded.

use std::time::Duration;

use remora_core::resilience::cluster::{ClusterConfig, Counts};
use remora_core::resilience::resolve::Resolver;
use remora_core::route::TrackerConfig;
use remora_core::{codes, Command};
use remora_std::namesrv::{FollowerConfig, RouteFollower};
use remora_tests::certs::Ca;
use remora_tls::{ClientTls, ServerMode, ServerTls};

const SERVER_NAME: &str = "broker.test";
/// Most calls a test makes while waiting for the balancer to try the rogue endpoint.
const MAX_CALLS: usize = 200;

/// The CA's server and client settings for these tests.
trait CaTls {
    fn server_tls(&self, names: &[&str]) -> ServerTls;
    fn client_tls(&self) -> ClientTls;
}

impl CaTls for Ca {
    /// A server's TLS with a certificate for `names`, signed by this CA.
    fn server_tls(&self, names: &[&str]) -> ServerTls {
        let leaf = self.issue(names);
        ServerTls::builder()
            .certificate(vec![leaf.cert.clone()], leaf.key())
            .mode(ServerMode::Enforcing)
            .build()
            .unwrap()
    }

    /// A client trusting this CA only.
    fn client_tls(&self) -> ClientTls {
        ClientTls::builder()
            .trust_cas(vec![self.der()])
            .unwrap()
            .build()
            .unwrap()
    }
}

/// A std TLS server answering SUCCESS with the request's body.
fn serve(tls: ServerTls) -> remora_std::Server {
    let config = remora_std::ServerConfig {
        drain_timeout: Duration::ZERO,
        ..Default::default()
    };
    let echo = |r: Command| r.response(codes::SUCCESS).with_body(r.body_bytes());
    remora_std::Server::bind_tls("127.0.0.1:0", echo, config, tls).unwrap()
}

/// Two servers with certificates from `ca` (for broker.test and 127.0.0.1), and between them
/// one whose certificate (for the same names) the rogue CA signed.
struct Three {
    servers: Vec<remora_std::Server>,
}

impl Three {
    const ROGUE: usize = 1;

    fn new(ca: &Ca) -> Three {
        let rogue = Ca::new("rogue CA");
        let names = [SERVER_NAME, "127.0.0.1"];
        Three {
            servers: vec![
                serve(ca.server_tls(&names)),
                serve(rogue.server_tls(&names)),
                serve(ca.server_tls(&names)),
            ],
        }
    }

    fn addresses(&self) -> Vec<String> {
        let addr = |s: &remora_std::Server| s.local_addr().to_string();
        self.servers.iter().map(addr).collect()
    }
}

fn config<C: Default>() -> ClusterConfig<C> {
    let mut config = ClusterConfig::testing();
    config.policies.timeout = Duration::from_secs(5);
    config
}

/// What every driver's run must show: all calls answered, the good endpoints answered them,
/// and the rogue endpoint (if tried) failed only retryably and never succeeded.
fn check(counts: &[Counts], calls: usize) {
    let rogue = counts[Three::ROGUE];
    assert!(
        rogue.attempts > 0,
        "the rogue endpoint was tried: {counts:?}"
    );
    assert_eq!(rogue.successes, 0, "{counts:?}");
    assert_eq!(rogue.fatal_failures, 0, "{counts:?}");
    assert!(rogue.retryable_failures > 0, "{counts:?}");
    let good: u64 = counts.iter().map(|c| c.successes).sum();
    assert_eq!(good, calls as u64, "{counts:?}");
}

fn body(i: usize) -> Vec<u8> {
    format!("call {i}").into_bytes()
}

#[test]
fn std_cluster_over_tls_goes_around_an_untrusted_server() {
    let ca = Ca::new("remora test CA");
    let three = Three::new(&ca);
    let addrs = three.addresses();
    let resolver = Resolver::fixed(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
    let tls = Some(ca.client_tls());
    let cluster = remora_std::Cluster::with_tls(resolver, config(), vec![], None, tls).unwrap();
    let mut calls = 0;
    while calls < MAX_CALLS {
        let response = cluster.call(Command::request(7).with_body(body(calls)));
        let response = response.unwrap_or_else(|e| panic!("call {calls}: {e}"));
        assert_eq!(response.body(), &body(calls)[..]);
        calls += 1;
        let report = cluster.report();
        if calls >= 10 && report[Three::ROGUE].counts.attempts > 0 {
            break;
        }
    }
    let counts: Vec<Counts> = cluster.report().iter().map(|r| r.counts).collect();
    check(&counts, calls);
    cluster.close();
}

#[test]
fn tokio_cluster_over_tls_goes_around_an_untrusted_server() {
    let ca = Ca::new("remora test CA");
    let three = Three::new(&ca);
    let addrs = three.addresses();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resolver = Resolver::fixed(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
        let tls = Some(ca.client_tls());
        let cluster = remora_tokio::Cluster::with_tls(resolver, config(), &[], None, tls).unwrap();
        let mut calls = 0;
        while calls < MAX_CALLS {
            let response = cluster
                .call(Command::request(7).with_body(body(calls)))
                .await;
            let response = response.unwrap_or_else(|e| panic!("call {calls}: {e}"));
            assert_eq!(response.body(), &body(calls)[..]);
            calls += 1;
            let report = cluster.report();
            if calls >= 10 && report[Three::ROGUE].counts.attempts > 0 {
                break;
            }
        }
        let counts: Vec<Counts> = cluster.report().iter().map(|r| r.counts).collect();
        check(&counts, calls);
        cluster.close();
    });
}

#[test]
fn uring_cluster_over_tls_goes_around_an_untrusted_server() {
    let ca = Ca::new("remora test CA");
    let three = Three::new(&ca);
    let addrs = three.addresses();
    let tls = ca.client_tls();
    tokio_uring::start(async move {
        let resolver = Resolver::fixed(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
        let cluster =
            remora_uring::LocalCluster::with_tls(resolver, config(), Vec::new(), None, Some(tls))
                .unwrap();
        let mut calls = 0;
        while calls < MAX_CALLS {
            let response = cluster
                .call(Command::request(7).with_body(body(calls)))
                .await;
            let response = response.unwrap_or_else(|e| panic!("call {calls}: {e}"));
            assert_eq!(response.body(), &body(calls)[..]);
            calls += 1;
            if calls >= 10 && cluster.counts()[Three::ROGUE].attempts > 0 {
                break;
            }
        }
        check(&cluster.counts(), calls);
        cluster.close();
    });
    drop(three);
}

#[test]
fn a_cluster_sends_the_server_name_it_is_told_to() {
    let ca = Ca::new("remora test CA");
    // Certificates for broker.test only: 127.0.0.1 does not match them.
    let servers = [
        serve(ca.server_tls(&[SERVER_NAME])),
        serve(ca.server_tls(&[SERVER_NAME])),
    ];
    let addrs: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let named = ClientTls::builder()
        .trust_cas(vec![ca.der()])
        .unwrap()
        .server_name(SERVER_NAME)
        .build()
        .unwrap();
    let cluster =
        remora_std::Cluster::with_tls(Resolver::fixed(&refs), config(), vec![], None, Some(named))
            .unwrap();
    for i in 0..4 {
        let response = cluster
            .call(Command::request(7).with_body(body(i)))
            .unwrap();
        assert_eq!(response.body(), &body(i)[..]);
    }
    assert_eq!(cluster.totals().successes, 4);
    cluster.close();

    // Without the override, each endpoint's host (127.0.0.1) is checked, and matches neither.
    let mut strict = config();
    strict.policies.timeout = Duration::from_secs(2);
    let tls = Some(ca.client_tls());
    let cluster =
        remora_std::Cluster::with_tls(Resolver::fixed(&refs), strict, vec![], None, tls).unwrap();
    let e = cluster.call(Command::request(7)).unwrap_err();
    assert!(
        matches!(e, remora_core::CallError::Connect(_))
            || matches!(e, remora_core::CallError::Unavailable { .. }),
        "{e}"
    );
    let totals = cluster.totals();
    assert_eq!(
        (totals.successes, totals.fatal_failures),
        (0, 0),
        "{totals:?}"
    );
    assert!(totals.retryable_failures > 0, "{totals:?}");
    cluster.close();
}

/// A route body naming `broker-a` at `addr`, writable, in the fastjson form.
fn route(addr: &str) -> String {
    format!(
        r#"{{"brokerDatas":[{{"brokerAddrs":{{0:"{addr}"}},"brokerName":"broker-a","cluster":"C"}}],"queueDatas":[{{"brokerName":"broker-a","perm":6,"readQueueNums":4,"writeQueueNums":4}}]}}"#
    )
}

/// A TLS name server answering topic T's route with `body`.
fn name_server(tls: ServerTls, body: String) -> remora_std::Server {
    let config = remora_std::ServerConfig {
        drain_timeout: Duration::ZERO,
        ..Default::default()
    };
    let answer = move |req: Command| match req.ext("topic") {
        Some("T") if req.code == codes::GET_ROUTEINFO_BY_TOPIC => {
            req.response(codes::SUCCESS).with_body(body.clone())
        }
        _ => req.response(codes::TOPIC_NOT_EXIST),
    };
    remora_std::Server::bind_tls("127.0.0.1:0", answer, config, tls).unwrap()
}

fn follower_config(tls: Option<ClientTls>) -> FollowerConfig {
    FollowerConfig {
        tracker: TrackerConfig {
            refresh: Duration::from_millis(50),
            retry_after: Duration::from_millis(50),
            ask_timeout: Duration::from_secs(3),
        },
        tls,
    }
}

#[test]
fn route_follower_asks_tls_name_servers_and_a_tls_cluster_follows_it() {
    let ca = Ca::new("remora test CA");
    let rogue = Ca::new("rogue CA");
    let names = [SERVER_NAME, "127.0.0.1"];
    let broker = serve(ca.server_tls(&names));
    let broker_addr = broker.local_addr().to_string();
    // First in the list: a name server with an untrusted certificate, then a good one.
    let bad_ns = name_server(rogue.server_tls(&names), route("127.0.0.1:1"));
    let good_ns = name_server(ca.server_tls(&names), route(&broker_addr));
    let list = format!("{};{}", bad_ns.local_addr(), good_ns.local_addr());

    // Plaintext against TLS name servers: no answer.
    let plain = RouteFollower::new(&list, "T", follower_config(None));
    let e = plain.fetch().unwrap_err();
    assert!(e.starts_with("no name server answered"), "{e}");

    let follower = RouteFollower::new(&list, "T", follower_config(Some(ca.client_tls())));
    let route = follower.fetch().unwrap();
    assert_eq!(route.writable_masters(), std::slice::from_ref(&broker_addr));

    let resolver = follower.resolver(Duration::from_millis(10));
    let tls = Some(ca.client_tls());
    let cluster = remora_std::Cluster::with_tls(resolver, config(), vec![], None, tls).unwrap();
    assert_eq!(cluster.addresses(), [broker_addr]);
    let response = cluster.call(Command::request(7).with_body("hi")).unwrap();
    assert_eq!(response.body(), b"hi");
    cluster.close();
    drop((bad_ns, good_ns, broker));
}

#[test]
fn a_failed_handshake_is_named_in_the_followers_error() {
    let ca = Ca::new("remora test CA");
    let rogue = Ca::new("rogue CA");
    let ns = name_server(rogue.server_tls(&["127.0.0.1"]), route("127.0.0.1:1"));
    let addr = ns.local_addr().to_string();
    let follower = RouteFollower::new(&addr, "T", follower_config(Some(ca.client_tls())));
    let e = follower.fetch().unwrap_err();
    assert!(e.contains(&addr), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}
