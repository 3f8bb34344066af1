//! Outlier ejection (Envoy's outlier detection, gRPC A50): endpoints that fail in a row, or whose
//! success rate falls far below their peers', are taken out of balancing for a time that grows
//! each time they are ejected again. At most `max_ejection_percent` of endpoints are ejected at
//! once, and below `panic_threshold` healthy endpoints ejection is ignored altogether (better to
//! use a doubtful endpoint than none).

use alloc::vec::Vec;
use core::time::Duration;

use crate::time::Instant;

/// When endpoints are ejected and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EjectionConfig {
    /// Eject after this many failures in a row (0: never on this rule).
    pub consecutive_failures: u32,
    /// The success-rate rule, evaluated at each [`Ejector::tick`] (`None`: off).
    pub success_rate: Option<SuccessRateRule>,
    /// First ejection time; the n-th ejection in a row lasts n times this.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent (at least one endpoint may always be ejected
    /// when this is above 0).
    pub max_ejection_percent: u32,
    /// Below this percentage of non-ejected endpoints, ejection is ignored (every endpoint is
    /// available).
    pub panic_threshold: u32,
}

/// Eject endpoints whose success rate in the last interval is below `mean - stdev_factor * stdev`
/// of the endpoints with enough requests.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SuccessRateRule {
    /// Evaluate only when at least this many endpoints had `request_volume` requests.
    pub minimum_hosts: u32,
    /// Requests an endpoint needs in the interval to be judged.
    pub request_volume: u32,
    /// How many standard deviations below the mean is an outlier (Envoy: 1.9).
    pub stdev_factor: f64,
}

impl Default for EjectionConfig {
    /// Envoy's defaults: 5 in a row; success rate over 5 hosts × 100 requests at 1.9 σ; 30 s
    /// base, 300 s max; 10 % at most; panic below 50 % healthy.
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            success_rate: Some(SuccessRateRule {
                minimum_hosts: 5,
                request_volume: 100,
                stdev_factor: 1.9,
            }),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            panic_threshold: 50,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Host {
    consecutive: u32,
    successes: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// Ejection state for a set of endpoints, indexed like the balancer's endpoint slice.
#[derive(Clone, Debug)]
pub struct Ejector {
    config: EjectionConfig,
    hosts: Vec<Host>,
    /// The hosts ejected (some perhaps expired since), so counting them does not walk every host.
    active: Vec<usize>,
}

impl Ejector {
    /// Tracks `endpoints` endpoints, none ejected.
    pub fn new(config: EjectionConfig, endpoints: usize) -> Self {
        Ejector {
            config,
            hosts: alloc::vec![Host::default(); endpoints],
            active: Vec::new(),
        }
    }

    /// Grows or shrinks to `endpoints` (new ones start healthy).
    pub fn resize(&mut self, endpoints: usize) {
        self.hosts.resize(endpoints, Host::default());
        self.active.retain(|&i| i < endpoints);
    }

    /// Whether endpoint `i` is ejected at `now` (ignoring the panic threshold).
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.hosts
            .get(i)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// How many times in a row endpoint `i` has been ejected.
    pub fn times_ejected(&self, i: usize) -> u32 {
        self.hosts.get(i).map_or(0, |h| h.times_ejected)
    }

    /// Whether each endpoint may be balanced to at `now`: not ejected, unless too few are left
    /// (the panic threshold), in which case all are.
    pub fn available(&self, now: Instant, out: &mut Vec<bool>) {
        out.clear();
        out.extend((0..self.hosts.len()).map(|i| !self.is_ejected(i, now)));
        let healthy = out.iter().filter(|&&a| a).count();
        if !self.hosts.is_empty()
            && healthy * 100 < self.hosts.len() * self.config.panic_threshold as usize
        {
            out.iter_mut().for_each(|a| *a = true);
        }
    }

    /// When endpoint `i`'s ejection ends, if it is ejected at all (expired ones included).
    pub fn ejected_until(&self, i: usize) -> Option<Instant> {
        self.hosts.get(i).and_then(|h| h.ejected_until)
    }

    /// The panic threshold (percent of endpoints that must be healthy for ejection to count).
    pub fn panic_threshold(&self) -> u32 {
        self.config.panic_threshold
    }

    /// Endpoints ejected at `now`: walks only those ejected lately, forgetting the expired.
    fn ejected_count(&mut self, now: Instant) -> usize {
        let hosts = &self.hosts;
        self.active
            .retain(|&i| hosts[i].ejected_until.is_some_and(|until| now < until));
        self.active.len()
    }

    /// Whether one more endpoint may be ejected now.
    fn may_eject(&mut self, now: Instant) -> bool {
        let n = self.hosts.len();
        let max = (n * self.config.max_ejection_percent as usize).div_ceil(100);
        self.config.max_ejection_percent > 0 && self.ejected_count(now) < max.max(1)
    }

    fn eject(&mut self, i: usize, now: Instant) {
        let host = &mut self.hosts[i];
        host.times_ejected = host.times_ejected.saturating_add(1);
        let time = self
            .config
            .base_ejection_time
            .saturating_mul(host.times_ejected)
            .min(
                self.config
                    .max_ejection_time
                    .max(self.config.base_ejection_time),
            );
        host.ejected_until = Some(now + time);
        host.consecutive = 0;
        if !self.active.contains(&i) {
            self.active.push(i);
        }
    }

    /// A health probe found endpoint `i` healthy: end its ejection now (its ejection count stays,
    /// so a relapse is ejected for longer).
    pub fn reinstate(&mut self, i: usize) {
        if let Some(h) = self.hosts.get_mut(i) {
            h.ejected_until = None;
            h.consecutive = 0;
            self.active.retain(|&a| a != i);
        }
    }

    /// A call to endpoint `i` ended at `now`. Returns true if this ejected it.
    pub fn record(&mut self, i: usize, success: bool, now: Instant) -> bool {
        let Some(host) = self.hosts.get_mut(i) else {
            return false;
        };
        if success {
            host.successes += 1;
            host.consecutive = 0;
            return false;
        }
        host.failures += 1;
        host.consecutive += 1;
        let streak = self.config.consecutive_failures > 0
            && host.consecutive >= self.config.consecutive_failures;
        if streak && !self.is_ejected(i, now) && self.may_eject(now) {
            self.eject(i, now);
            return true;
        }
        false
    }

    /// The end of an evaluation interval: applies the success-rate rule, lets expired ejections
    /// end, lowers the ejection multiplier of endpoints that stayed healthy, and starts a new
    /// interval. Returns the endpoints ejected now.
    pub fn tick(&mut self, now: Instant) -> Vec<usize> {
        let mut ejected = Vec::new();
        if let Some(rule) = self.config.success_rate {
            let rates: Vec<(usize, f64)> = self
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.successes + h.failures >= rule.request_volume.max(1))
                .map(|(i, h)| {
                    (
                        i,
                        f64::from(h.successes) / f64::from(h.successes + h.failures),
                    )
                })
                .collect();
            if rates.len() >= rule.minimum_hosts as usize && !rates.is_empty() {
                let n = rates.len() as f64;
                let mean = rates.iter().map(|r| r.1).sum::<f64>() / n;
                let variance = rates
                    .iter()
                    .map(|r| (r.1 - mean) * (r.1 - mean))
                    .sum::<f64>()
                    / n;
                let bar = mean - rule.stdev_factor * sqrt(variance);
                for &(i, rate) in &rates {
                    if rate < bar && !self.is_ejected(i, now) && self.may_eject(now) {
                        self.eject(i, now);
                        ejected.push(i);
                    }
                }
            }
        }
        for host in &mut self.hosts {
            match host.ejected_until {
                Some(until) if now >= until => host.ejected_until = None,
                None if host.failures == 0 => {
                    host.times_ejected = host.times_ejected.saturating_sub(1)
                }
                _ => {}
            }
            host.successes = 0;
            host.failures = 0;
        }
        ejected
    }
}

/// √x by Newton's method (no `libm` in `no_std`); exact enough for a standard deviation.
fn sqrt(x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let mut y = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..60 {
        let next = 0.5 * (y + x / y);
        let step = next - y;
        // (`f64::abs` is only in `core` from Rust 1.85.)
        if step <= f64::EPSILON * y && -step <= f64::EPSILON * y {
            return next;
        }
        y = next;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn sqrt_is_close() {
        for x in [0.25, 2.0, 9.0, 1e-6, 12345.678] {
            let r = sqrt(x);
            assert!((r * r - x).abs() <= 1e-9 * x.max(1.0), "{x} -> {r}");
        }
    }

    #[test]
    fn a_failing_endpoint_is_ejected_and_comes_back_with_growing_time() {
        let mut e = Ejector::new(
            EjectionConfig {
                max_ejection_percent: 50,
                success_rate: None,
                ..EjectionConfig::default()
            },
            4,
        );
        let t = Instant::ZERO;
        for k in 0..4 {
            assert!(!e.record(1, false, t));
            assert_eq!(k < 4, !e.is_ejected(1, t));
        }
        assert!(e.record(1, false, t), "fifth failure in a row");
        assert!(e.is_ejected(1, t + 29 * SEC));
        assert!(!e.is_ejected(1, t + 30 * SEC), "back after the base time");
        e.tick(t + 30 * SEC);
        for _ in 0..5 {
            e.record(1, false, t + 31 * SEC);
        }
        assert!(
            e.is_ejected(1, t + 31 * SEC + 59 * SEC),
            "second ejection lasts twice as long"
        );
        assert_eq!(e.times_ejected(1), 2);
    }

    #[test]
    fn max_ejection_percent_and_panic_threshold_hold() {
        let mut e = Ejector::new(
            EjectionConfig {
                success_rate: None,
                max_ejection_percent: 20,
                panic_threshold: 50,
                ..EjectionConfig::default()
            },
            10,
        );
        let t = Instant::ZERO;
        for i in 0..10 {
            for _ in 0..5 {
                e.record(i, false, t);
            }
        }
        let ejected = (0..10).filter(|&i| e.is_ejected(i, t)).count();
        assert_eq!(ejected, 2, "20 % of 10");
        let mut avail = Vec::new();
        e.available(t, &mut avail);
        assert_eq!(avail.iter().filter(|&&a| a).count(), 8);
        // Panic: when fewer than half are healthy, everyone is available.
        let mut p = Ejector::new(
            EjectionConfig {
                success_rate: None,
                max_ejection_percent: 100,
                panic_threshold: 50,
                ..EjectionConfig::default()
            },
            2,
        );
        for _ in 0..5 {
            p.record(0, false, t);
        }
        p.available(t, &mut avail);
        assert_eq!(
            avail,
            [false, true],
            "one of two ejected: exactly 50 % healthy"
        );
        for _ in 0..5 {
            p.record(1, false, t);
        }
        p.available(t, &mut avail);
        assert_eq!(avail, [true, true], "no healthy endpoint left: panic mode");
    }

    #[test]
    fn success_rate_outliers_are_ejected_at_the_tick() {
        let mut e = Ejector::new(
            EjectionConfig {
                consecutive_failures: 0,
                max_ejection_percent: 50,
                ..EjectionConfig::default()
            },
            6,
        );
        let t = Instant::ZERO;
        for i in 0..6 {
            for k in 0..200 {
                // Endpoint 4 fails one call in two; the others one in a hundred.
                let fail = if i == 4 { k % 2 == 0 } else { k % 100 == 0 };
                e.record(i, !fail, t);
            }
        }
        assert_eq!(e.tick(t), [4]);
        assert!(e.is_ejected(4, t + SEC));
        assert!((0..6)
            .filter(|&i| i != 4)
            .all(|i| !e.is_ejected(i, t + SEC)));
    }
}
