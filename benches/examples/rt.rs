//! Round trips through two `Connection`s in one thread, for instruction counts under
//! callgrind: `rt <json|rocketmq> <body bytes> <iterations> [batch]`, the same steps as the
//! `connection` bench (`batch` requests in flight per iteration, 1 by default). Run it twice
//! with different iteration counts and divide the difference by the difference of round trips.

use std::time::Duration;

use bytes::Bytes;
use remora_core::{Command, Config, Connection, Event, Instant, SerializeType};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ty = match args.get(1).map(String::as_str) {
        Some("json") => SerializeType::Json,
        _ => SerializeType::RocketMq,
    };
    let body = Bytes::from(vec![0x42u8; args.get(2).map_or(0, |a| a.parse().unwrap())]);
    let n: usize = args.get(3).map_or(10_000, |a| a.parse().unwrap());
    let batch: usize = args.get(4).map_or(1, |a| a.parse().unwrap());
    let mut client = Connection::new(Config::default());
    let mut server = Connection::new(Config::default());
    let now = Instant::ZERO;
    let deadline = now + Duration::from_secs(3600);
    for _ in 0..n {
        for _ in 0..batch {
            let request = Command::request(310)
                .with_serialize_type(ty)
                .with_body(body.clone());
            client.send_request(request, deadline, now).unwrap();
        }
        while let Some(bytes) = client.take_transmit() {
            server.handle_input(&bytes, now);
        }
        while let Some(event) = server.poll_event() {
            if let Event::Request { request, command } = event {
                let body = command.body_bytes();
                server
                    .send_response(request, command.response(0).with_body(body))
                    .unwrap();
            }
        }
        while let Some(bytes) = server.take_transmit() {
            client.handle_input(&bytes, now);
        }
        while let Some(event) = client.poll_event() {
            if let Event::Response { response, .. } = event {
                assert_eq!(response.body().len(), body.len());
                std::hint::black_box(response);
            }
        }
    }
}
