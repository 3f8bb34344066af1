//! An io_uring server with a handler, then a std client calling it.
//!
//! ```text
//! cargo run --example uring_server                       # serves on a free port, calls, stops
//! cargo run --example uring_server -- 127.0.0.1:9876 -f  # serves until killed
//! ```

use std::sync::Arc;
use std::time::Duration;

use remora_core::{codes, Command};
use remora_uring::{Server, ServerConfig};

/// Answers GET_ROUTEINFO_BY_TOPIC with a made-up route; every other code is refused, as a
/// RocketMQ server refuses codes it does not know.
fn handle(request: Command) -> Command {
    match request.code {
        codes::GET_ROUTEINFO_BY_TOPIC => {
            let topic = request.ext("topic").unwrap_or("?").to_string();
            let route = format!("{{\"topic\":\"{topic}\",\"brokers\":[\"broker-a\"]}}");
            request
                .response(codes::SUCCESS)
                .with_body(route.into_bytes())
        }
        code => request
            .response(codes::REQUEST_CODE_NOT_SUPPORTED)
            .with_remark(format!(" request type {code} not supported")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let forever = args.next().is_some_and(|a| a == "-f");

    // One thread (one ring, one listener); more threads share the port with SO_REUSEPORT.
    let config = ServerConfig {
        threads: 1,
        ..ServerConfig::default()
    };
    let mut server = Server::bind_with(listen.as_str(), Arc::new(handle), config)?;
    println!("io_uring server listening on {}", server.local_addr());
    if forever {
        loop {
            std::thread::park();
        }
    }

    let client = remora_std::Client::connect(server.local_addr(), Default::default())?;
    let request = Command::request(codes::GET_ROUTEINFO_BY_TOPIC).with_ext("topic", "orders");
    let response = client.call(request, Duration::from_secs(3))?;
    println!(
        "GET_ROUTEINFO_BY_TOPIC -> code {} body {}",
        response.code,
        String::from_utf8_lossy(response.body())
    );
    let response = client.call(Command::request(4242), Duration::from_secs(3))?;
    println!(
        "code 4242 -> code {} remark {:?}",
        response.code,
        response.remark()
    );
    client.close();
    server.stop();
    println!("server stopped");
    Ok(())
}
