//! Reading name-server route data: `remora_core::route::TopicRoute::parse` against
//! `serde_json::from_slice::<Value>` (a generic JSON parse, the baseline; it cannot read the
//! fastjson form) on the same bytes, in the same run.
//!
//! Ids: `route/{captured,brokers-32}/{remora,serde_json}` and
//! `route/brokers-32-fastjson/remora`. `captured` is the Rust name server's answer in
//! `tests/fixtures/captures`; `brokers-32` a route of 32 broker groups with a master and a slave
//! each. Throughput is bytes per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use remora_core::route::TopicRoute;

const CAPTURED: &str =
    include_str!("../../tests/fixtures/captures/rocketmq-rust-1.0/route-response.json");

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn captured_body() -> Vec<u8> {
    let start = CAPTURED.find("\"body_hex\":\"").expect("body_hex") + 12;
    let end = CAPTURED[start..].find('"').expect("end of body_hex") + start;
    unhex(&CAPTURED[start..end])
}

fn brokers(n: usize, fastjson: bool) -> Vec<u8> {
    let key = |id: u32| {
        if fastjson {
            format!("{id}")
        } else {
            format!("\"{id}\"")
        }
    };
    let datas: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"brokerAddrs":{{{}:"10.0.{i}.1:10911",{}:"10.0.{i}.2:10911"}},"brokerName":"broker-{i:03}","cluster":"DefaultCluster","enableActingMaster":false,"zoneName":null}}"#,
                key(0),
                key(1)
            )
        })
        .collect();
    let queues: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"brokerName":"broker-{i:03}","perm":6,"readQueueNums":8,"topicSysFlag":0,"writeQueueNums":8}}"#
            )
        })
        .collect();
    format!(
        r#"{{"brokerDatas":[{}],"filterServerTable":{{}},"queueDatas":[{}]}}"#,
        datas.join(","),
        queues.join(",")
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("captured", captured_body(), true),
        ("brokers-32", brokers(32, false), true),
        ("brokers-32-fastjson", brokers(32, true), false),
    ];
    let mut group = c.benchmark_group("route");
    for (name, body, is_json) in &cases {
        let route = TopicRoute::parse(body).expect("the bench's route parses");
        assert!(!route.brokers.is_empty());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}/remora"), |b| {
            b.iter(|| TopicRoute::parse(black_box(body)).unwrap())
        });
        if *is_json {
            group.bench_function(format!("{name}/serde_json"), |b| {
                b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap())
            });
        } else {
            assert!(serde_json::from_slice::<serde_json::Value>(body).is_err());
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
