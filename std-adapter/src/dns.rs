//! Endpoints from the system's name resolver: the std driver's DNS for a cluster (the core
//! never resolves names).

use std::net::ToSocketAddrs;
use std::time::Duration;

use remora_core::resilience::resolve::Resolve;

/// `host:port` names looked up through the system resolver now and again every `every`; each
/// address a name resolves to is an endpoint (use it as `Resolver::source(Dns { .. })`).
#[derive(Clone, Debug)]
pub struct Dns {
    /// The names.
    pub names: Vec<String>,
    /// How often to look them up again.
    pub every: Duration,
}

impl Resolve for Dns {
    fn resolve(&self) -> Vec<String> {
        let found = self.names.iter().filter_map(|n| n.to_socket_addrs().ok());
        let mut out: Vec<String> = found.flatten().map(|a| a.to_string()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn every(&self) -> Option<Duration> {
        Some(self.every)
    }
}
