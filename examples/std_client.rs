//! The blocking std client: calls from several threads over one multiplexed connection.
//!
//! ```text
//! cargo run --example std_client                    # starts its own echo server
//! cargo run --example std_client -- 127.0.0.1:9876  # or talks to yours (`remora serve`)
//! ```

use std::time::Duration;

use remora_core::{codes, Command};
use remora_std::{Client, ClientConfig, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // With no address given, run an echo server in this process on a free loopback port.
    let server;
    let addr = match std::env::args().nth(1) {
        Some(addr) => addr,
        None => {
            server = Server::bind("127.0.0.1:0", |request: Command| {
                let body = request.body_bytes();
                request.response(codes::SUCCESS).with_body(body)
            })?;
            println!("started an echo server on {}", server.local_addr());
            server.local_addr().to_string()
        }
    };

    let client = Client::connect(addr.as_str(), ClientConfig::default())?;
    println!("connected to {addr}");

    // One call: a request code, an extension field, a body; any response code is a response.
    let request = Command::request(codes::SEND_MESSAGE_V2)
        .with_ext("topic", "orders")
        .with_body(&b"hello"[..]);
    let response = client.call(request, Duration::from_secs(3))?;
    println!(
        "call: response code {} body {:?}",
        response.code,
        String::from_utf8_lossy(response.body())
    );

    // The client is Clone + Send: four threads share its connection, each gets its own answers.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || -> Result<usize, remora_std::Error> {
                for i in 0..25 {
                    let body = format!("thread {t} call {i}");
                    let response = client.call(
                        Command::request(codes::SEND_MESSAGE_V2)
                            .with_body(body.clone().into_bytes()),
                        Duration::from_secs(3),
                    )?;
                    assert_eq!(response.body()[..], *body.as_bytes(), "its own answer");
                }
                Ok(25)
            })
        })
        .collect();
    let mut calls = 0;
    for t in threads {
        calls += t.join().expect("caller thread")?;
    }
    println!("{calls} calls from 4 threads, every response matched its request");

    // A failed call says whether the request may have reached the server.
    if let Err(e) = client.call(Command::request(1), Duration::from_nanos(1)) {
        println!("a call with a 1 ns timeout: {e}");
        println!(
            "  safe to retry without duplicating it: {}",
            e.is_safe_to_retry()
        );
    }
    client.close();
    println!("closed");
    Ok(())
}
