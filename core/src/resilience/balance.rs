//! Choosing an endpoint for a call: round robin, smooth weighted round robin (nginx), random,
//! weighted random, least loaded, power of two choices, and a consistent hash ring with virtual
//! nodes (Ketama). Every strategy skips endpoints that are not available (ejected, or breaker
//! open); randomness comes from the caller.

use alloc::vec::Vec;

/// What the balancer knows of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Relative share of calls for the weighted strategies (0 = none).
    pub weight: u32,
    /// Calls in flight to it now (for least loaded and power of two choices).
    pub in_flight: u32,
    /// Whether it may be picked (not ejected, breaker not open).
    pub available: bool,
}

/// How to choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Strategy {
    /// Each available endpoint in turn.
    RoundRobin,
    /// Smooth weighted round robin (nginx): proportional to weight, evenly interleaved.
    WeightedRoundRobin,
    /// Uniformly at random.
    Random,
    /// At random, proportional to weight.
    WeightedRandom,
    /// The one with the fewest calls in flight (the lowest index on a tie).
    LeastLoaded,
    /// Two at random, the less loaded of them (Mitzenmacher).
    PowerOfTwoChoices,
    /// A ring of `vnodes` points per endpoint; a call's key goes to the first available point
    /// clockwise of its hash. Adding or removing one of N endpoints moves about 1/N of keys.
    ConsistentHash {
        /// Points per endpoint on the ring.
        vnodes: u32,
    },
}

/// A balancer's state (round-robin cursor, weights' running credits, the hash ring).
#[derive(Clone, Debug)]
pub struct Balancer {
    strategy: Strategy,
    next: usize,
    credit: Vec<i64>,
    ring: Vec<(u64, u32)>,
}

/// 64-bit FNV-1a followed by a murmur3 finaliser: stable across runs and platforms (for ring
/// points and call keys).
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Uniform in `0..n` from 64 random bits.
fn below(entropy: u64, n: usize) -> usize {
    ((u128::from(entropy) * n as u128) >> 64) as usize
}

impl Balancer {
    /// A balancer using `strategy`. For [`Strategy::ConsistentHash`], call
    /// [`Balancer::set_ring`] with the endpoints' identities first.
    pub fn new(strategy: Strategy) -> Self {
        Balancer {
            strategy,
            next: 0,
            credit: Vec::new(),
            ring: Vec::new(),
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Rebuilds the hash ring for endpoints with these stable identities (addresses, names), in
    /// the same order as the slice later given to [`Balancer::pick`].
    pub fn set_ring<I: AsRef<[u8]>>(&mut self, ids: &[I]) {
        let vnodes = match self.strategy {
            Strategy::ConsistentHash { vnodes } => vnodes.max(1),
            _ => return,
        };
        self.ring.clear();
        let mut point = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            for v in 0..vnodes {
                point.clear();
                point.extend_from_slice(id.as_ref());
                point.push(b'#');
                point.extend_from_slice(&v.to_be_bytes());
                self.ring.push((hash_key(&point), i as u32));
            }
        }
        self.ring.sort_unstable();
    }

    /// Whether [`Balancer::pick_among`] serves this strategy: round robin, random, power of two
    /// choices and consistent hashing pick from a list of available endpoints in O(1) (the ring
    /// in O(log n)); the weighted strategies and least loaded need every endpoint's view
    /// ([`Balancer::pick`]).
    pub fn picks_among(&self) -> bool {
        matches!(
            self.strategy,
            Strategy::RoundRobin
                | Strategy::Random
                | Strategy::PowerOfTwoChoices
                | Strategy::ConsistentHash { .. }
        )
    }

    /// Picks among `members` (the available endpoints' indices, in any order; `is_member` says
    /// whether an index is one of them) the strategy's choice, or the next in the strategy's
    /// order that `accept` takes (a half-open breaker may refuse; `accept` is asked only about
    /// the endpoint about to be returned). `in_flight` is an endpoint's load. No allocation;
    /// O(1) unless candidates are refused, O(log n) for the ring. `None` when nothing is
    /// accepted or the strategy is not one [`Balancer::picks_among`] serves.
    pub fn pick_among(
        &mut self,
        members: &[u32],
        is_member: impl Fn(usize) -> bool,
        in_flight: impl Fn(usize) -> u32,
        key: Option<u64>,
        entropy: u64,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let len = members.len();
        if len == 0 {
            return None;
        }
        let at = |k: usize| members[k % len] as usize;
        // From position `start`, the first member `accept` takes.
        let probe = |start: usize, accept: &mut dyn FnMut(usize) -> bool| {
            (0..len).map(|k| start + k).find(|&k| accept(at(k)))
        };
        match self.strategy {
            Strategy::RoundRobin => {
                let k = probe(self.next % len, &mut accept)?;
                self.next = (k + 1) % len;
                Some(at(k))
            }
            Strategy::Random => probe(below(entropy, len), &mut accept).map(at),
            Strategy::PowerOfTwoChoices => {
                let a = below(entropy, len);
                let mut choice = a;
                if len > 1 {
                    // A second, different one from the other half of the bits.
                    let b = (a + 1 + below(entropy.rotate_left(32), len - 1)) % len;
                    if in_flight(at(b)) < in_flight(at(a)) {
                        choice = b;
                    }
                }
                probe(choice, &mut accept).map(at)
            }
            Strategy::ConsistentHash { .. } => {
                let Some(key) = key else {
                    return probe(below(entropy, len), &mut accept).map(at);
                };
                if self.ring.is_empty() {
                    return probe(below(key, len), &mut accept).map(at);
                }
                let start = self.ring.partition_point(|&(h, _)| h < key);
                (0..self.ring.len())
                    .map(|step| self.ring[(start + step) % self.ring.len()].1 as usize)
                    .find(|&i| is_member(i) && accept(i))
            }
            _ => None,
        }
    }

    /// The index of the endpoint for the next call, or `None` if none is available. `key` is
    /// the call's hash key (see [`hash_key`]), used by consistent hashing (without one it picks
    /// at random); `entropy` is any 64 random bits.
    pub fn pick(
        &mut self,
        endpoints: &[Endpoint],
        key: Option<u64>,
        entropy: u64,
    ) -> Option<usize> {
        let available = endpoints.iter().filter(|e| e.available).count();
        if available == 0 {
            return None;
        }
        let nth_available = |n: usize| {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.available)
                .nth(n)
                .map(|(i, _)| i)
        };
        match self.strategy {
            Strategy::RoundRobin => {
                for step in 0..endpoints.len() {
                    let i = (self.next + step) % endpoints.len();
                    if endpoints[i].available {
                        self.next = i + 1;
                        return Some(i);
                    }
                }
                None
            }
            Strategy::WeightedRoundRobin => {
                self.credit.resize(endpoints.len(), 0);
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for (i, e) in endpoints.iter().enumerate() {
                    if !e.available || e.weight == 0 {
                        continue;
                    }
                    self.credit[i] += i64::from(e.weight);
                    total += i64::from(e.weight);
                    if best.map_or(true, |b| self.credit[i] > self.credit[b]) {
                        best = Some(i);
                    }
                }
                let best = best?;
                self.credit[best] -= total;
                Some(best)
            }
            Strategy::Random => nth_available(below(entropy, available)),
            Strategy::WeightedRandom => {
                let total: u64 = endpoints
                    .iter()
                    .filter(|e| e.available)
                    .map(|e| u64::from(e.weight))
                    .sum();
                if total == 0 {
                    return nth_available(below(entropy, available));
                }
                let mut r = ((u128::from(entropy) * u128::from(total)) >> 64) as u64;
                for (i, e) in endpoints.iter().enumerate() {
                    if !e.available {
                        continue;
                    }
                    if r < u64::from(e.weight) {
                        return Some(i);
                    }
                    r -= u64::from(e.weight);
                }
                None
            }
            Strategy::LeastLoaded => endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.available)
                .min_by_key(|(i, e)| (e.in_flight, *i))
                .map(|(i, _)| i),
            Strategy::PowerOfTwoChoices => {
                let a = nth_available(below(entropy, available))?;
                if available == 1 {
                    return Some(a);
                }
                // A second, different one: draw among the others with the other half of the bits.
                let mut b = below(entropy.rotate_left(32), available - 1);
                let a_rank = endpoints[..a].iter().filter(|e| e.available).count();
                if b >= a_rank {
                    b += 1;
                }
                let b = nth_available(b)?;
                Some(if endpoints[b].in_flight < endpoints[a].in_flight {
                    b
                } else {
                    a
                })
            }
            Strategy::ConsistentHash { .. } => {
                let Some(key) = key else {
                    return nth_available(below(entropy, available));
                };
                if self.ring.is_empty() {
                    return nth_available(below(key, available));
                }
                let start = self.ring.partition_point(|&(h, _)| h < key);
                (0..self.ring.len())
                    .map(|step| self.ring[(start + step) % self.ring.len()].1 as usize)
                    .find(|&i| endpoints.get(i).is_some_and(|e| e.available))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    fn ep(weight: u32, in_flight: u32, available: bool) -> Endpoint {
        Endpoint {
            weight,
            in_flight,
            available,
        }
    }

    #[test]
    fn round_robin_skips_unavailable() {
        let eps = [ep(1, 0, true), ep(1, 0, false), ep(1, 0, true)];
        let mut b = Balancer::new(Strategy::RoundRobin);
        let picks: Vec<_> = (0..4).map(|_| b.pick(&eps, None, 0).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(b.pick(&[ep(1, 0, false)], None, 0), None);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a (per 7).
        let eps = [ep(5, 0, true), ep(1, 0, true), ep(1, 0, true)];
        let mut b = Balancer::new(Strategy::WeightedRoundRobin);
        let picks: Vec<_> = (0..7).map(|_| b.pick(&eps, None, 0).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn random_strategies_cover_and_weigh() {
        let eps = [
            ep(3, 0, true),
            ep(1, 0, true),
            ep(0, 0, true),
            ep(9, 0, false),
        ];
        let mut counts = [0u32; 4];
        let mut wcounts = [0u32; 4];
        let mut b = Balancer::new(Strategy::Random);
        let mut w = Balancer::new(Strategy::WeightedRandom);
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..40_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            counts[b.pick(&eps, None, x).unwrap()] += 1;
            wcounts[w.pick(&eps, None, x).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        assert!(
            counts[..3].iter().all(|&c| (12_000..14_700).contains(&c)),
            "{counts:?}"
        );
        assert_eq!((wcounts[2], wcounts[3]), (0, 0));
        let ratio = f64::from(wcounts[0]) / f64::from(wcounts[1]);
        assert!((2.7..3.3).contains(&ratio), "{wcounts:?}");
    }

    #[test]
    fn load_aware_strategies_prefer_the_less_loaded() {
        let eps = [
            ep(1, 5, true),
            ep(1, 1, true),
            ep(1, 0, false),
            ep(1, 3, true),
        ];
        let mut ll = Balancer::new(Strategy::LeastLoaded);
        assert_eq!(ll.pick(&eps, None, 0), Some(1));
        let mut p2c = Balancer::new(Strategy::PowerOfTwoChoices);
        let mut x = 7u64;
        for _ in 0..1000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = p2c.pick(&eps, None, x).unwrap();
            assert_ne!(i, 2, "unavailable");
            assert_ne!(i, 0, "the most loaded never wins a pair");
        }
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys() {
        let ids: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:10911")).collect();
        let mut ring = Balancer::new(Strategy::ConsistentHash { vnodes: 160 });
        ring.set_ring(&ids);
        let eps10 = vec![ep(1, 0, true); 10];
        let keys: Vec<u64> = (0..20_000)
            .map(|k| hash_key(format!("key-{k}").as_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| ring.pick(&eps10, Some(k), 0).unwrap())
            .collect();

        let mut ids11 = ids.clone();
        ids11.push("10.0.0.10:10911".into());
        ring.set_ring(&ids11);
        let eps11 = vec![ep(1, 0, true); 11];
        let mut moved = 0;
        for (k, &old) in keys.iter().zip(&before) {
            let new = ring.pick(&eps11, Some(*k), 0).unwrap();
            if new != old {
                assert_eq!(new, 10, "a key only ever moves to the new endpoint");
                moved += 1;
            }
        }
        let fraction = f64::from(moved) / keys.len() as f64;
        assert!((0.06..0.13).contains(&fraction), "moved {fraction}");

        // An unavailable endpoint's keys go to the next point clockwise; the rest stay.
        let mut eps = eps11.clone();
        eps[3].available = false;
        for (k, &old) in keys.iter().zip(&before) {
            let new = ring.pick(&eps, Some(*k), 0).unwrap();
            assert_ne!(new, 3);
            let was = ring.pick(&eps11, Some(*k), 0).unwrap();
            if was != 3 {
                assert_eq!(new, was);
            }
            let _ = old;
        }
    }
}
