//! Key distributions for `sluice bench`: none (keyless, sticky partitioning), uniform over N
//! keys, sequential round robin over N keys, or Zipf over N keys with exponent S. Keys are
//! rendered once up front so the send loop never allocates for them. This module must never
//! draw from a global RNG (runs are reproducible from the seed).

use bytes::Bytes;

use crate::error::{ClientError, Result};

/// Most distinct keys a distribution may have (they are rendered in memory).
pub const KEYS_MAX: u64 = 10_000_000;

/// How benchmark records get keys.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyDistribution {
    /// No keys.
    None,
    /// Uniformly random among N keys.
    Uniform(u64),
    /// Key i mod N for record i.
    Sequential(u64),
    /// Zipf among N keys with exponent s (key 0 is the hottest).
    Zipf(u64, f64),
}

impl std::str::FromStr for KeyDistribution {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid key distribution '{s}' (expected none, uniform:N, seq:N or zipf:N[:S])"
            )
        };
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let n = parts
            .next()
            .map(|n| n.parse::<u64>().map_err(|_| bad()))
            .transpose()?;
        let exponent = parts
            .next()
            .map(|e| e.parse::<f64>().map_err(|_| bad()))
            .transpose()?;
        if parts.next().is_some() {
            return Err(bad());
        }
        let check = |n: Option<u64>| match n {
            Some(n) if (1..=KEYS_MAX).contains(&n) => Ok(n),
            _ => Err(format!("key count in '{s}' must be 1..={KEYS_MAX}")),
        };
        match kind {
            "none" if n.is_none() => Ok(KeyDistribution::None),
            "uniform" if exponent.is_none() => Ok(KeyDistribution::Uniform(check(n)?)),
            "seq" | "sequential" if exponent.is_none() => {
                Ok(KeyDistribution::Sequential(check(n)?))
            }
            "zipf" => {
                let e = exponent.unwrap_or(1.0);
                if !(e > 0.0 && e.is_finite()) {
                    return Err(bad());
                }
                Ok(KeyDistribution::Zipf(check(n)?, e))
            }
            _ => Err(bad()),
        }
    }
}

/// xorshift64*: small, fast, seedable; plenty for picking keys.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws keys according to a distribution.
pub struct KeyGenerator {
    distribution: KeyDistribution,
    keys: Vec<Bytes>,
    zipf_cdf: Vec<f64>,
    rng: Rng,
    next_sequential: u64,
}

impl KeyGenerator {
    /// Renders the keys ("key-0000000042") and, for Zipf, the cumulative distribution.
    pub fn new(distribution: KeyDistribution, seed: u64) -> Result<KeyGenerator> {
        let n = match distribution {
            KeyDistribution::None => 0,
            KeyDistribution::Uniform(n)
            | KeyDistribution::Sequential(n)
            | KeyDistribution::Zipf(n, _) => n,
        };
        if n > KEYS_MAX {
            return Err(ClientError::Invalid(format!("at most {KEYS_MAX} keys")));
        }
        let keys = (0..n)
            .map(|i| Bytes::from(format!("key-{i:010}")))
            .collect();
        let zipf_cdf = match distribution {
            KeyDistribution::Zipf(n, s) => {
                let mut cdf = Vec::with_capacity(n as usize);
                let mut total = 0.0;
                for k in 1..=n {
                    total += 1.0 / (k as f64).powf(s);
                    cdf.push(total);
                }
                for c in &mut cdf {
                    *c /= total;
                }
                cdf
            }
            _ => Vec::new(),
        };
        Ok(KeyGenerator {
            distribution,
            keys,
            zipf_cdf,
            rng: Rng::new(seed),
            next_sequential: 0,
        })
    }

    /// Index of the next key, or None for keyless records.
    pub fn next_index(&mut self) -> Option<usize> {
        let n = self.keys.len() as u64;
        match self.distribution {
            KeyDistribution::None => None,
            KeyDistribution::Uniform(_) => Some((self.rng.next_u64() % n) as usize),
            KeyDistribution::Sequential(_) => {
                let i = self.next_sequential % n;
                self.next_sequential += 1;
                Some(i as usize)
            }
            KeyDistribution::Zipf(..) => {
                let u = self.rng.next_f64();
                Some(
                    self.zipf_cdf
                        .partition_point(|c| *c < u)
                        .min(self.keys.len() - 1),
                )
            }
        }
    }

    /// The next key (a cheap clone of a pre-rendered buffer).
    pub fn next_key(&mut self) -> Option<Bytes> {
        self.next_index().and_then(|i| self.keys.get(i).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(distribution: &str, draws: usize) -> Vec<u64> {
        let d: KeyDistribution = distribution.parse().unwrap_or(KeyDistribution::None);
        let mut g = match KeyGenerator::new(d, 42) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        };
        let mut counts = vec![0u64; g.keys.len()];
        for _ in 0..draws {
            if let Some(i) = g.next_index() {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn parses() {
        assert_eq!("none".parse(), Ok(KeyDistribution::None));
        assert_eq!("uniform:10".parse(), Ok(KeyDistribution::Uniform(10)));
        assert_eq!("seq:3".parse(), Ok(KeyDistribution::Sequential(3)));
        assert_eq!("zipf:100".parse(), Ok(KeyDistribution::Zipf(100, 1.0)));
        assert_eq!("zipf:100:1.2".parse(), Ok(KeyDistribution::Zipf(100, 1.2)));
        assert!("uniform:0".parse::<KeyDistribution>().is_err());
        assert!("uniform".parse::<KeyDistribution>().is_err());
        assert!("gauss:5".parse::<KeyDistribution>().is_err());
    }

    #[test]
    fn sequential_cycles_and_uniform_is_flat() {
        assert_eq!(counts("seq:4", 10), vec![3, 3, 2, 2]);
        let uniform = counts("uniform:10", 100_000);
        assert!(
            uniform.iter().all(|c| (9_000..=11_000).contains(c)),
            "{uniform:?}"
        );
    }

    #[test]
    fn zipf_favours_low_ranks_by_the_exponent() {
        let z = counts("zipf:10:1", 200_000);
        // P(k) ~ 1/k: rank 1 is drawn about twice as often as rank 2, ten times rank 10.
        let ratio_2 = z[0] as f64 / z[1] as f64;
        let ratio_10 = z[0] as f64 / z[9] as f64;
        assert!((1.8..2.2).contains(&ratio_2), "{z:?}");
        assert!((8.5..11.5).contains(&ratio_10), "{z:?}");
    }
}
