//! A client over several endpoints (std driver): the core's balancer spreads calls, and calls
//! to an endpoint that is down are retried on another.
//!
//! ```text
//! cargo run --example cluster
//! ```

use remora_core::{codes, Command};
use remora_std::{Cluster, ClusterConfig, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two echo servers that say who they are, and an address where nothing listens.
    let named = |name: &'static str| {
        move |request: Command| request.response(codes::SUCCESS).with_body(name.as_bytes())
    };
    let a = Server::bind("127.0.0.1:0", named("a"))?;
    let b = Server::bind("127.0.0.1:0", named("b"))?;
    let down = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.to_string() // closed again when `probe` drops
    };
    let addresses = [a.local_addr().to_string(), b.local_addr().to_string(), down];
    println!("endpoints: {addresses:?} (the last one is down)");

    let endpoints: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let cluster = Cluster::new(&endpoints, ClusterConfig::development())?;
    let (mut from_a, mut from_b) = (0, 0);
    for _ in 0..30 {
        let response = cluster.call(Command::request(codes::SEND_MESSAGE_V2))?;
        match response.body() {
            b"a" => from_a += 1,
            _ => from_b += 1,
        }
    }
    println!("30 calls succeeded: {from_a} answered by a, {from_b} by b");
    for endpoint in cluster.report() {
        println!(
            "  {}: {} attempts, {} ok, {} retryable failures, ejected {}",
            endpoint.address,
            endpoint.counts.attempts,
            endpoint.counts.successes,
            endpoint.counts.retryable_failures,
            endpoint.ejected
        );
    }
    cluster.close();
    Ok(())
}
