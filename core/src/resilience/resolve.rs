//! Where a multi-endpoint client's endpoints come from, and who hears when they change
//! (`std` only: it resolves names).

use std::net::ToSocketAddrs;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

use core::time::Duration;

/// Where a cluster client's endpoints come from.
#[derive(Clone)]
pub enum Resolver {
    /// A fixed list of `host:port`.
    Static(Vec<String>),
    /// `host:port` names resolved through DNS now and again every `every`; each address a name
    /// resolves to is an endpoint.
    Dns {
        /// The names.
        names: Vec<String>,
        /// How often to resolve again.
        every: Duration,
    },
    /// Your own source of `host:port` endpoints, asked again every `every`.
    Custom {
        /// Returns the current endpoints.
        resolve: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        /// How often to ask.
        every: Duration,
    },
}

impl Resolver {
    /// How often to resolve again (`None`: never).
    pub fn every(&self) -> Option<Duration> {
        match self {
            Resolver::Static(_) => None,
            Resolver::Dns { every, .. } | Resolver::Custom { every, .. } => Some(*every),
        }
    }

    /// The endpoints now (a name that does not resolve contributes none).
    pub fn resolve(&self) -> Vec<String> {
        match self {
            Resolver::Static(list) => list.clone(),
            Resolver::Dns { names, .. } => {
                let mut out: Vec<String> = names
                    .iter()
                    .flat_map(|n| n.to_socket_addrs().into_iter().flatten())
                    .map(|a| a.to_string())
                    .collect();
                out.sort();
                out.dedup();
                out
            }
            Resolver::Custom { resolve, .. } => resolve(),
        }
    }
}

/// Called with the current endpoints whenever the set changes.
pub type Watch = Arc<dyn Fn(&[String]) + Send + Sync>;

/// What to change to go from the endpoints a client has (`current`, with the indices of those
/// not yet retired) to the set a resolver returned (`wanted`): the indices to retire and the
/// addresses to add. `None` when nothing changes or the resolver found nothing (keep the last
/// known endpoints rather than none).
pub fn diff(current: &[(usize, &str)], wanted: &[String]) -> Option<(Vec<usize>, Vec<String>)> {
    if wanted.is_empty() {
        return None;
    }
    let retire: Vec<usize> = current
        .iter()
        .filter(|(_, a)| !wanted.iter().any(|w| w == a))
        .map(|(i, _)| *i)
        .collect();
    let add: Vec<String> = wanted
        .iter()
        .filter(|w| !current.iter().any(|(_, a)| a == w))
        .cloned()
        .collect();
    (!retire.is_empty() || !add.is_empty()).then_some((retire, add))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn diff_retires_the_gone_and_adds_the_new() {
        let current = [(0, "a:1"), (2, "b:1")];
        let wanted = ["b:1".to_string(), "c:1".to_string()];
        assert_eq!(
            diff(&current, &wanted),
            Some((vec![0], vec!["c:1".to_string()]))
        );
        assert_eq!(diff(&current, &["a:1".into(), "b:1".into()]), None);
        assert_eq!(
            diff(&current, &[]),
            None,
            "an empty answer keeps what we have"
        );
    }
}
