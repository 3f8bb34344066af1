//! The spans a cluster call leaves, captured by a test subscriber: a retried, a hedged and a
//! failed call, each with its attempts (number, reason, endpoint, outcome) and the client's
//! request span under each attempt (code, opaque, endpoint, serialize type, body size, outcome,
//! latency).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remora_core::resilience::retry::HedgePolicy;
use remora_core::{codes, Command};
use remora_std::{Cluster, ClusterConfig, Server};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Clone, Debug)]
struct Span {
    name: &'static str,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

impl Span {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

#[derive(Default)]
struct Captured {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, Span>>,
}

thread_local! {
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Keeps every INFO span with its fields and parent (explicit, or the span entered on the
/// creating thread).
struct Capture(Arc<Captured>);

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed) + 1;
        let parent = match attrs.parent() {
            Some(p) => Some(p.into_u64()),
            None if attrs.is_contextual() => ENTERED.with(|e| e.borrow().last().copied()),
            None => None,
        };
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let span = Span {
            name: attrs.metadata().name(),
            parent,
            fields,
        };
        self.0.spans.lock().unwrap().insert(id, span);
        Id::from_u64(id)
    }

    fn record(&self, id: &Id, values: &Record<'_>) {
        if let Some(span) = self.0.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, id: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(id.into_u64()));
    }

    fn exit(&self, _: &Id) {
        ENTERED.with(|e| e.borrow_mut().pop());
    }
}

impl Captured {
    fn take(&self) -> HashMap<u64, Span> {
        std::mem::take(&mut *self.spans.lock().unwrap())
    }
}

/// The cluster call span with code `code`, its attempts (by number) and each attempt's
/// client request span.
fn call_tree(spans: &HashMap<u64, Span>, code: i32) -> (Span, Vec<(Span, Span)>) {
    let code = code.to_string();
    let (&call_id, call) = spans
        .iter()
        .find(|(_, s)| s.name == "remora.cluster.call" && s.get("code") == Some(&code))
        .unwrap_or_else(|| panic!("no call span for code {code}: {spans:#?}"));
    let mut attempts: Vec<(Span, Span)> = spans
        .iter()
        .filter(|(_, s)| s.name == "remora.attempt" && s.parent == Some(call_id))
        .map(|(&id, attempt)| {
            let request = spans
                .values()
                .find(|s| s.name == "remora.request" && s.parent == Some(id))
                .unwrap_or_else(|| panic!("no request span under {attempt:?}"))
                .clone();
            (attempt.clone(), request)
        })
        .collect();
    attempts.sort_by_key(|(a, _)| a.get("attempt").unwrap().parse::<u32>().unwrap());
    (call.clone(), attempts)
}

/// A request span's fields say what the attempt sent and how it ended.
fn check_request(request: &Span, attempt: &Span, code: i32, body: usize) {
    assert_eq!(request.get("side"), Some("client"));
    assert_eq!(request.get("code"), Some(code.to_string().as_str()));
    assert_eq!(request.get("endpoint"), attempt.get("endpoint"));
    assert_eq!(request.get("serialize"), Some("Json"));
    assert_eq!(request.get("body"), Some(body.to_string().as_str()));
    assert_eq!(
        request.get("outcome"),
        attempt.get("outcome"),
        "{request:?}"
    );
    assert!(request.get("latency_us").is_some(), "{request:?}");
    if attempt.get("outcome") != Some("unsent") {
        assert!(request.get("opaque").is_some(), "{request:?}");
    }
}

/// Waits (bounded) until every attempt of the call with `code` has an outcome.
fn settled(captured: &Captured, code: i32, attempts: usize) -> HashMap<u64, Span> {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let done = {
            let spans = captured.spans.lock().unwrap();
            let (_, tree) = call_tree(&spans, code);
            tree.len() == attempts
                && tree
                    .iter()
                    .all(|(a, r)| a.get("outcome").is_some() && r.get("outcome").is_some())
        };
        if done || Instant::now() > give_up {
            return captured.take();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn spans_follow_retried_hedged_and_failed_cluster_calls() {
    let captured = Arc::new(Captured::default());
    tracing::subscriber::set_global_default(Capture(Arc::clone(&captured))).unwrap();
    let body = b"seven b";

    // Retried: the first request anywhere is answered SYSTEM_BUSY, the rest succeed.
    let seen = Arc::new(AtomicU32::new(0));
    let busy_once = {
        let seen = Arc::clone(&seen);
        move |r: Command| {
            let code = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                codes::SYSTEM_BUSY
            } else {
                codes::SUCCESS
            };
            r.response(code)
        }
    };
    let a = Server::bind("127.0.0.1:0", busy_once.clone()).unwrap();
    let b = Server::bind("127.0.0.1:0", busy_once).unwrap();
    let addrs = [a.local_addr().to_string(), b.local_addr().to_string()];
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let cluster = Cluster::new(&refs, ClusterConfig::testing()).unwrap();
    let response = cluster
        .call(Command::request(71).with_body(&body[..]))
        .unwrap();
    assert_eq!(response.code, codes::SUCCESS);
    let spans = settled(&captured, 71, 2);
    let (call, attempts) = call_tree(&spans, 71);
    assert_eq!(call.get("outcome"), Some("success"), "{call:?}");
    assert_eq!(call.get("final_attempt"), Some("2"), "{call:?}");
    let reasons: Vec<_> = attempts
        .iter()
        .map(|(a, _)| (a.get("reason").unwrap(), a.get("outcome").unwrap()))
        .collect();
    assert_eq!(reasons, [("first", "busy"), ("retry", "success")]);
    for (attempt, request) in &attempts {
        assert!(addrs
            .iter()
            .any(|x| Some(x.as_str()) == attempt.get("endpoint")));
        check_request(request, attempt, 71, body.len());
    }
    // The servers' side: a span per handled request, with its outcome.
    let handled: Vec<_> = spans
        .values()
        .filter(|s| s.get("side") == Some("server") && s.get("code") == Some("71"))
        .filter_map(|s| s.get("outcome"))
        .collect();
    assert_eq!(handled.len(), 2, "{spans:#?}");
    assert!(handled.contains(&"busy") && handled.contains(&"success"));
    cluster.close();

    // Hedged: the first request anywhere takes 400 ms; the hedge after 50 ms wins.
    let seen = Arc::new(AtomicU32::new(0));
    let slow_once = {
        let seen = Arc::clone(&seen);
        move |r: Command| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(400));
            }
            r.response(codes::SUCCESS)
        }
    };
    let c = Server::bind("127.0.0.1:0", slow_once.clone()).unwrap();
    let d = Server::bind("127.0.0.1:0", slow_once).unwrap();
    let addrs = [c.local_addr().to_string(), d.local_addr().to_string()];
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut config = ClusterConfig::testing();
    config.policies.timeout = Duration::from_secs(2);
    config.policies.hedge = Some(HedgePolicy {
        delay: Duration::from_millis(50),
        max_attempts: 2,
    });
    let cluster = Cluster::new(&refs, config).unwrap();
    cluster
        .call(Command::request(72).with_body(&body[..]))
        .unwrap();
    let spans = settled(&captured, 72, 2);
    let (call, attempts) = call_tree(&spans, 72);
    assert_eq!(call.get("outcome"), Some("success"), "{call:?}");
    assert_eq!(
        call.get("final_attempt"),
        Some("2"),
        "the hedge answered: {call:?}"
    );
    let reasons: Vec<_> = attempts
        .iter()
        .map(|(a, _)| (a.get("reason").unwrap(), a.get("outcome").unwrap()))
        .collect();
    // The slow first attempt also succeeds, later; its answer is dropped.
    assert_eq!(reasons, [("first", "success"), ("hedge", "success")]);
    assert_ne!(attempts[0].0.get("endpoint"), attempts[1].0.get("endpoint"));
    let latency = |(_, r): &(Span, Span)| r.get("latency_us").unwrap().parse::<u64>().unwrap();
    assert!(latency(&attempts[0]) >= 400_000, "{attempts:?}");
    for (attempt, request) in &attempts {
        check_request(request, attempt, 72, body.len());
    }
    cluster.close();

    // Failed: nothing listens at the only endpoint.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    let cluster = Cluster::new(&[addr.as_str()], ClusterConfig::testing()).unwrap();
    let error = cluster
        .call(Command::request(73).with_body(&body[..]))
        .unwrap_err();
    assert!(error.never_left(), "{error}");
    let spans = captured.take();
    let (call, attempts) = call_tree(&spans, 73);
    assert_eq!(call.get("outcome"), Some("unsent"), "{call:?}");
    assert!(!attempts.is_empty());
    assert_eq!(attempts[0].0.get("reason"), Some("first"));
    for (attempt, request) in &attempts {
        assert_eq!(attempt.get("endpoint"), Some(addr.as_str()));
        assert_eq!(attempt.get("outcome"), Some("unsent"));
        check_request(request, attempt, 73, body.len());
    }
    cluster.close();
    drop((a, b, c, d));

    // Split calls on the tokio client: each started call gets its request span, ended when its
    // future completes (awaited out of order here), or as cancelled when dropped unawaited.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let echo = |r: Command| {
            let body = r.body_bytes();
            r.response(codes::SUCCESS).with_body(body)
        };
        let server =
            remora_tokio::Server::bind("127.0.0.1:0", echo, remora_tokio::ServerConfig::default())
                .await
                .unwrap();
        let client = remora_tokio::Client::connect(
            server.local_addr(),
            remora_tokio::ClientConfig::default(),
        )
        .await
        .unwrap();
        let start = |code: i32| client.start_call(Command::request(code), Duration::from_secs(5));
        let first = start(74).await.unwrap();
        let second = start(75).await.unwrap();
        let dropped = start(76).await.unwrap();
        assert_eq!(second.await.unwrap().code, codes::SUCCESS);
        assert_eq!(first.await.unwrap().code, codes::SUCCESS);
        drop(dropped);
        client.close();
        server.stop().await;
    });
    let spans = captured.take();
    for (code, outcome) in [(74, "success"), (75, "success"), (76, "cancelled")] {
        let code = code.to_string();
        let request: Vec<_> = spans
            .values()
            .filter(|s| {
                s.name == "remora.request"
                    && s.get("side") == Some("client")
                    && s.get("code") == Some(&code)
            })
            .collect();
        assert_eq!(
            request.len(),
            1,
            "one client span for code {code}: {spans:#?}"
        );
        assert_eq!(request[0].get("outcome"), Some(outcome), "{:?}", request[0]);
        assert!(request[0].get("latency_us").is_some(), "{:?}", request[0]);
    }
}
