//! The system's name resolver as a cluster's endpoint source (the core never resolves names).

use std::time::Duration;

use remora_core::resilience::resolve::Resolver;

/// A resolver of `host:port` names through the system's DNS, asked again every `every` (every
/// address a name has is an endpoint).
pub fn dns(names: Vec<String>, every: Duration) -> Resolver {
    Resolver::custom(every, move || {
        use std::net::ToSocketAddrs;
        let mut found = Vec::new();
        for name in &names {
            found.extend(
                name.to_socket_addrs()
                    .into_iter()
                    .flatten()
                    .map(|a| a.to_string()),
            );
        }
        found.sort_unstable();
        found.dedup();
        found
    })
}
