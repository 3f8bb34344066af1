//! Route data from real name servers: the captured responses of the Rust name server
//! (`tests/fixtures/captures`, copied unchanged from the project's shared reference material;
//! its README says how they were taken) and the fastjson form older Java name servers write.

use std::path::PathBuf;

use bytes::Bytes;
use remora_core::codes;
use remora_core::route::{
    Change, ClusterInfo, Outcome, RouteError, RouteTracker, TopicRoute, TrackerConfig,
};
use remora_core::{Command, Instant};
use remora_tests::unhex;

fn captures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/captures")
}

/// A captured response, rebuilt as the command it was (code, remark, body).
fn captured(name: &str) -> Command {
    let path = captures_dir().join("rocketmq-rust-1.0").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut cmd = Command::request(0).response(v["code"].as_i64().unwrap() as i32);
    if let Some(remark) = v["remark"].as_str() {
        cmd = cmd.with_remark(remark);
    }
    cmd.with_body(Bytes::from(unhex(v["body_hex"].as_str().unwrap())))
}

/// What fastjson writes for the same map: numeric keys unquoted.
fn fastjson_form(body: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(body).unwrap();
    let out = text.replace("{\"0\":", "{0:").replace(",\"1\":", ",1:");
    assert_ne!(out, text, "the capture has a broker id key to unquote");
    out.into_bytes()
}

#[test]
fn the_captured_route_names_the_master_and_its_permissions() {
    let resp = captured("route-response.json");
    assert_eq!(resp.code, codes::SUCCESS);
    let route = TopicRoute::parse(resp.body()).unwrap();
    assert_eq!(route.brokers.len(), 1);
    let b = &route.brokers[0];
    assert_eq!(b.name, "broker-a");
    assert_eq!(b.cluster, "DefaultCluster");
    assert_eq!(b.addrs, [(0, "127.0.0.1:19912".to_string())]);
    assert_eq!(b.master.as_deref(), Some("127.0.0.1:19912"));
    assert_eq!((b.perm, b.read_queues, b.write_queues), (6, 4, 4));
    assert_eq!(route.writable_masters(), ["127.0.0.1:19912"]);
    assert_eq!(
        route.choose_writable(Some("broker-a")).unwrap().name,
        "broker-a"
    );
}

#[test]
fn the_fastjson_form_of_the_captures_reads_the_same() {
    let route = captured("route-response.json");
    let fast = fastjson_form(route.body());
    assert!(std::str::from_utf8(&fast)
        .unwrap()
        .contains("{0:\"127.0.0.1:19912\"}"));
    assert!(
        serde_json::from_slice::<serde_json::Value>(&fast).is_err(),
        "it is not JSON"
    );
    assert_eq!(
        TopicRoute::parse(&fast).unwrap(),
        TopicRoute::parse(route.body()).unwrap()
    );
    let info = captured("cluster-info-response.json");
    assert_eq!(
        ClusterInfo::parse(&fastjson_form(info.body())).unwrap(),
        ClusterInfo::parse(info.body()).unwrap()
    );
}

#[test]
fn the_captured_cluster_info_lists_the_broker() {
    let info = ClusterInfo::parse(captured("cluster-info-response.json").body()).unwrap();
    assert_eq!(info.brokers.len(), 1);
    assert_eq!(info.brokers[0].name, "broker-a");
    assert_eq!(info.brokers[0].master.as_deref(), Some("127.0.0.1:19912"));
    assert_eq!(
        info.clusters,
        [("DefaultCluster".to_string(), vec!["broker-a".to_string()])]
    );
}

#[test]
fn the_tracker_follows_the_captured_answers() {
    let mut t = RouteTracker::new(
        vec!["127.0.0.1:9876".into()],
        "CaptureTopic",
        TrackerConfig::default(),
    );
    let ask = t.poll_ask(Instant::ZERO).unwrap();
    let out = t.on_response(Instant::ZERO, ask.id, &captured("route-response.json"));
    assert!(
        matches!(out, Outcome::Route(ref ch) if matches!(&ch[..], [Change::Added(b)] if b.name == "broker-a"))
    );
    let later = Instant::ZERO + TrackerConfig::default().refresh;
    let ask = t.poll_ask(later).unwrap();
    let out = t.on_response(
        later,
        ask.id,
        &captured("route-unknown-topic-response.json"),
    );
    assert!(matches!(out, Outcome::NoTopic(ref ch) if matches!(&ch[..], [Change::Removed(_)])));
}

#[test]
fn corrupted_captures_are_typed_errors() {
    let body = captured("route-response.json").body_bytes();
    for n in 0..body.len() {
        assert!(TopicRoute::parse(&body[..n]).is_err(), "prefix {n}");
    }
    let mut flipped = body.to_vec();
    for i in 0..flipped.len() {
        let keep = flipped[i];
        flipped[i] = b'}';
        let _ = TopicRoute::parse(&flipped); // any answer, no panic
        flipped[i] = keep;
    }
    // Not a route at all: the heartbeat's empty body.
    assert_eq!(
        TopicRoute::parse(captured("heartbeat-response.json").body()),
        Err(RouteError::Empty)
    );
}

#[test]
fn fixtures_match_the_shared_captures_when_present() {
    let shared = captures_dir().join("../../../../shared/captures");
    if !shared.exists() {
        eprintln!("../shared/captures not present; the fixture copy is used alone");
        return;
    }
    let mut names = vec!["README.md".to_string()];
    for e in std::fs::read_dir(shared.join("rocketmq-rust-1.0")).unwrap() {
        names.push(format!(
            "rocketmq-rust-1.0/{}",
            e.unwrap().file_name().to_string_lossy()
        ));
    }
    for name in names {
        let ours = std::fs::read(captures_dir().join(&name))
            .unwrap_or_else(|e| panic!("tests/fixtures/captures/{name}: {e}"));
        let theirs = std::fs::read(shared.join(&name)).unwrap();
        assert!(
            ours == theirs,
            "tests/fixtures/captures/{name} differs from ../shared: re-copy it"
        );
    }
}
