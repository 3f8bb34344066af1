//! Where a multi-endpoint client's endpoints come from, and who hears when they change. The
//! core only asks and compares: looking names up (DNS) is a driver's job, behind [`Resolve`].

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::time::Duration;

/// A source of `host:port` endpoints, asked again every [`Resolve::every`].
pub trait Resolve: Send + Sync {
    /// The endpoints now (an empty answer keeps the endpoints a client has).
    fn resolve(&self) -> Vec<String>;
    /// How often to ask again (`None`: never).
    fn every(&self) -> Option<Duration>;
}

/// Where a cluster client's endpoints come from.
#[derive(Clone)]
pub enum Resolver {
    /// A fixed list of `host:port`.
    Static(Vec<String>),
    /// Your own source of `host:port` endpoints, asked again every `every`.
    Custom {
        /// Returns the current endpoints.
        resolve: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        /// How often to ask.
        every: Duration,
    },
    /// Any [`Resolve`] (the drivers' DNS resolvers, a name server's route table).
    Source(Arc<dyn Resolve>),
}

impl Resolver {
    /// A [`Resolver::Static`] list.
    pub fn fixed(addresses: &[&str]) -> Self {
        Resolver::Static(addresses.iter().map(|a| String::from(*a)).collect())
    }

    /// A [`Resolver::Custom`] from a closure, asked again every `every`.
    pub fn custom(
        every: Duration,
        resolve: impl Fn() -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        Resolver::Custom {
            resolve: Arc::new(resolve),
            every,
        }
    }

    /// A [`Resolver::Source`].
    pub fn source(source: impl Resolve + 'static) -> Self {
        Resolver::Source(Arc::new(source))
    }
}

impl Resolve for Resolver {
    fn every(&self) -> Option<Duration> {
        match self {
            Resolver::Static(_) => None,
            Resolver::Custom { every, .. } => Some(*every),
            Resolver::Source(s) => s.every(),
        }
    }

    fn resolve(&self) -> Vec<String> {
        match self {
            Resolver::Static(list) => list.clone(),
            Resolver::Custom { resolve, .. } => resolve(),
            Resolver::Source(s) => s.resolve(),
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
    let mut add: Vec<String> = Vec::new();
    for w in wanted {
        if !current.iter().any(|(_, a)| a == w) && !add.contains(w) {
            add.push(w.clone());
        }
    }
    (!retire.is_empty() || !add.is_empty()).then_some((retire, add))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn diff_retires_the_gone_and_adds_the_new() {
        let current = [(0, "a:1"), (2, "b:1")];
        let wanted = ["b:1".to_string(), "c:1".to_string(), "c:1".to_string()];
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

    #[test]
    fn a_closure_resolver_is_asked_on_its_schedule() {
        let r = Resolver::custom(Duration::from_secs(3), || vec!["x:1".to_string()]);
        assert_eq!(r.every(), Some(Duration::from_secs(3)));
        assert_eq!(r.resolve(), vec!["x:1".to_string()]);
        assert_eq!(Resolver::Static(vec![]).every(), None);
    }
}
