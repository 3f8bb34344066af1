//! The tokio client and server: concurrent calls from many tasks over one connection, a oneway,
//! and a request from the server to the client's handler.
//!
//! ```text
//! cargo run --example tokio_client                    # starts its own tokio echo server
//! cargo run --example tokio_client -- 127.0.0.1:9876  # or talks to yours (`remora serve`)
//! ```

use std::time::Duration;

use remora_core::{codes, Command};
use remora_tokio::{Client, ClientConfig, Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // With no address given, run a tokio echo server on this runtime, on a free loopback port.
    let mut server = None;
    let addr = match std::env::args().nth(1) {
        Some(addr) => addr,
        None => {
            let echo = |request: Command| {
                let body = request.body_bytes();
                request.response(codes::SUCCESS).with_body(body)
            };
            let s = Server::bind("127.0.0.1:0", echo, ServerConfig::default()).await?;
            println!("started a tokio echo server on {}", s.local_addr());
            let addr = s.local_addr().to_string();
            server = Some(s);
            addr
        }
    };

    // The handler answers requests the server sends to this client (as brokers do).
    let client = Client::connect_with_handler(
        addr.as_str(),
        ClientConfig::default(),
        |request: Command| {
            request
                .response(codes::SUCCESS)
                .with_remark("client is fine")
        },
    )
    .await?;
    println!("connected to {addr}");

    // Client is Send + Sync + Clone: 100 tasks call at once over the same connection.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let body = format!("task {i}");
                let request =
                    Command::request(codes::SEND_MESSAGE_V2).with_body(body.clone().into_bytes());
                let response = client.call(request, Duration::from_secs(3)).await?;
                assert_eq!(response.body()[..], *body.as_bytes(), "its own answer");
                Ok::<_, remora_core::CallError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    println!("100 concurrent calls from 100 tasks, every response matched its request");

    client
        .oneway(Command::oneway(codes::SEND_MESSAGE_V2))
        .await?;
    println!("sent a oneway request (no answer comes)");

    if let Some(server) = server {
        // The server calls its client back on the same connection.
        let peer = server.peers().pop().ok_or("no connection")?;
        let answer = peer
            // 39: CHECK_TRANSACTION_STATE, which brokers send to producers.
            .call(Command::request(39), Duration::from_secs(3))
            .await?;
        println!(
            "server -> client request answered: code {} remark {:?}",
            answer.code,
            answer.remark()
        );
        client.close();
        server.stop().await;
        println!("server stopped");
    } else {
        client.close();
    }
    Ok(())
}
