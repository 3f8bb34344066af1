//! Following a topic's brokers through name servers over real sockets (loopback): a name server
//! down, a route that changes, a std `Cluster` that follows it.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remora_core::route::{Change, TrackerConfig};
use remora_core::{codes, Command};
use remora_std::namesrv::{FollowerConfig, RouteFollower};
use remora_std::{Cluster, ClusterConfig, Server};

/// A route body naming `broker-a` at `addr` with `perm`, in the fastjson form.
fn route(addr: &str, perm: u32) -> String {
    format!(
        r#"{{"brokerDatas":[{{"brokerAddrs":{{0:"{addr}"}},"brokerName":"broker-a","cluster":"C"}}],"queueDatas":[{{"brokerName":"broker-a","perm":{perm},"readQueueNums":4,"writeQueueNums":4}}]}}"#
    )
}

/// A fake name server answering 105 with whatever `body` holds (`None`: TOPIC_NOT_EXIST).
fn name_server(body: Arc<Mutex<Option<String>>>, asked: Arc<AtomicUsize>) -> Server {
    Server::bind("127.0.0.1:0", move |req: Command| {
        asked.fetch_add(1, Ordering::SeqCst);
        assert_eq!(req.code, codes::GET_ROUTEINFO_BY_TOPIC);
        assert_eq!(req.ext("topic"), Some("T"));
        match body.lock().unwrap().clone() {
            Some(b) => req.response(codes::SUCCESS).with_body(b),
            None => req
                .response(codes::TOPIC_NOT_EXIST)
                .with_remark("No topic route info"),
        }
    })
    .unwrap()
}

/// A broker that answers with its own name.
fn broker(name: &'static str) -> Server {
    Server::bind("127.0.0.1:0", move |req: Command| {
        req.response(codes::SUCCESS).with_body(name)
    })
    .unwrap()
}

/// An address nothing listens on.
fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn quick() -> FollowerConfig {
    FollowerConfig {
        tracker: TrackerConfig {
            refresh: Duration::from_millis(50),
            retry_after: Duration::from_millis(50),
            ask_timeout: Duration::from_secs(2),
        },
        tls: None,
    }
}

#[test]
fn fetch_rotates_past_a_name_server_that_is_down() {
    let b = broker("a");
    let body = Arc::new(Mutex::new(Some(route(&b.local_addr().to_string(), 6))));
    let asked = Arc::new(AtomicUsize::new(0));
    let ns = name_server(body, Arc::clone(&asked));
    let list = format!("{};{}", dead_addr(), ns.local_addr());
    let follower = RouteFollower::new(&list, "T", quick());
    let route = follower.fetch().unwrap();
    assert_eq!(route.writable_masters(), [b.local_addr().to_string()]);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(follower.writable_masters(), [b.local_addr().to_string()]);
}

#[test]
fn fetch_reports_every_failure_and_a_missing_topic() {
    let (d1, d2) = (dead_addr(), dead_addr());
    let follower = RouteFollower::new(&format!("{d1};{d2}"), "T", quick());
    let e = follower.fetch().unwrap_err();
    assert!(e.contains(&d1) && e.contains(&d2), "{e}");
    assert!(!e.contains('\n'));

    let ns = name_server(Arc::new(Mutex::new(None)), Arc::default());
    let follower = RouteFollower::new(&ns.local_addr().to_string(), "T", quick());
    let e = follower.fetch().unwrap_err();
    assert!(e.contains("TOPIC_NOT_EXIST"), "{e}");

    let bad = Arc::new(Mutex::new(Some("{\"brokerDatas\":[{".to_string())));
    let ns = name_server(bad, Arc::default());
    let follower = RouteFollower::new(&ns.local_addr().to_string(), "T", quick());
    let e = follower.fetch().unwrap_err();
    assert!(e.contains("malformed route body"), "{e}");
}

#[test]
fn a_cluster_follows_the_topics_master_as_the_route_changes() {
    let (a, b) = (broker("a"), broker("b"));
    let (addr_a, addr_b) = (a.local_addr().to_string(), b.local_addr().to_string());
    let body = Arc::new(Mutex::new(Some(route(&addr_a, 6))));
    let ns = name_server(Arc::clone(&body), Arc::default());
    let follower = RouteFollower::new(
        &format!("{};{}", dead_addr(), ns.local_addr()),
        "T",
        quick(),
    );
    let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
    let seen = Arc::clone(&changes);
    follower.on_change(Arc::new(move |ch: &[Change]| {
        seen.lock().unwrap().extend_from_slice(ch)
    }));
    follower.fetch().unwrap();
    follower.start();
    let watched: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let w = Arc::clone(&watched);
    let cluster = Cluster::with_resolver(
        follower.resolver(Duration::from_millis(10)),
        ClusterConfig::testing(),
        vec![],
        Some(Arc::new(move |set: &[String]| {
            w.lock().unwrap().push(set.to_vec())
        })),
    )
    .unwrap();
    assert_eq!(cluster.addresses(), std::slice::from_ref(&addr_a));
    let resp = cluster.call(Command::request(10)).unwrap();
    assert_eq!(resp.body(), b"a");

    // Failover: broker-a's master moves to the other address.
    *body.lock().unwrap() = Some(route(&addr_b, 6));
    let start = Instant::now();
    while cluster.addresses() != [addr_b.clone()] {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "route change not followed"
        );
        std::thread::sleep(Duration::from_millis(10));
        cluster.refresh();
    }
    let resp = cluster.call(Command::request(10)).unwrap();
    assert_eq!(resp.body(), b"b");
    assert_eq!(
        watched.lock().unwrap().last().unwrap(),
        std::slice::from_ref(&addr_b)
    );
    assert!(changes.lock().unwrap().iter().any(|c| matches!(c,
        Change::MasterChanged { from: Some(f), to: Some(t), .. } if *f == addr_a && *t == addr_b)));

    // The broker stops taking writes: the listener hears it; the cluster keeps its last endpoints
    // (an empty resolution never empties a cluster).
    *body.lock().unwrap() = Some(route(&addr_b, 4));
    let start = Instant::now();
    while !follower.writable_masters().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "permission change not followed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(changes.lock().unwrap().iter().any(|c| matches!(c,
        Change::Updated { from, to } if from.perm == 6 && to.perm == 4)));
    cluster.close();
    drop(follower); // stops its thread
}

#[test]
fn the_uring_cluster_follows_the_same_resolver() {
    use remora_uring::{ClusterConfig as UringClusterConfig, LocalCluster};
    let (a, b) = (broker("a"), broker("b"));
    let (addr_a, addr_b) = (a.local_addr().to_string(), b.local_addr().to_string());
    let body = Arc::new(Mutex::new(Some(route(&addr_a, 6))));
    let ns = name_server(Arc::clone(&body), Arc::default());
    let follower = RouteFollower::new(&ns.local_addr().to_string(), "T", quick());
    follower.fetch().unwrap();
    follower.start();
    let resolver = follower.resolver(Duration::from_millis(5));
    let watched: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let w = Arc::clone(&watched);
    let config = UringClusterConfig {
        policies: remora_core::resilience::policies::Policies::testing(),
        ..Default::default()
    };
    let (want_a, want_b) = (addr_a.clone(), addr_b.clone());
    tokio_uring::start(async move {
        let cluster = LocalCluster::with_resolver(
            resolver,
            config,
            Vec::new(),
            Some(Arc::new(move |set: &[String]| {
                w.lock().unwrap().push(set.to_vec())
            })),
        )
        .unwrap();
        assert_eq!(cluster.addresses(), std::slice::from_ref(&want_a));
        let r = cluster.call(Command::request(10)).await.unwrap();
        assert_eq!(r.body(), b"a");
        *body.lock().unwrap() = Some(route(&want_b, 6));
        let start = Instant::now();
        loop {
            let r = cluster.call(Command::request(10)).await.unwrap();
            if r.body() == b"b" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "route change not followed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cluster.addresses(), std::slice::from_ref(&want_b));
        cluster.close();
    });
    assert_eq!(watched.lock().unwrap().last().unwrap(), &vec![addr_b]);
    drop(follower);
}
