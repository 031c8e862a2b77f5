//! The two measurements quotas are enforced against, as Kafka's metrics library defines them:
//! a windowed [`Rate`] (byte rates and request time) and a [`TokenBucket`] (partition
//! mutations, KIP-599), each with the throttle time Kafka derives from a violation.
//!
//! Owns arithmetic only, on caller-supplied millisecond clocks; must never read a clock, take a
//! lock or allocate after construction (the manager calls it under its lock).

/// `quota.window.num` and `quota.window.size.seconds`, in the form the measurements use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Samples kept (Kafka's `quota.window.num`, 11).
    pub count: u32,
    /// One sample's span in milliseconds (`quota.window.size.seconds` x 1000).
    pub window_ms: u64,
}

impl Windows {
    /// The longest span a measurement covers.
    pub fn span_ms(&self) -> u64 {
        self.window_ms * u64::from(self.count)
    }
}

/// One sample of a [`Rate`]: the sum recorded since `start_ms`.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    start_ms: u64,
    last_event_ms: u64,
    value: f64,
}

impl Sample {
    fn reset(&mut self, now_ms: u64) {
        *self = Sample {
            start_ms: now_ms,
            last_event_ms: now_ms,
            value: 0.0,
        };
    }
}

/// A rate over the last `count` windows, as Kafka's `Rate` over a `SampledStat`: samples start
/// when the first value after the previous one's window arrives, samples idle longer than the
/// whole span are cleared, and the elapsed time is padded to at least `count - 1` windows so
/// one burst after a quiet period does not measure as an enormous rate.
#[derive(Debug, Clone)]
pub struct Rate {
    /// `count + 1` samples: the extra one overlaps the start of the measured span.
    samples: Vec<Sample>,
    current: usize,
}

impl Rate {
    /// An empty rate whose first sample starts at `now_ms`.
    pub fn new(windows: Windows, now_ms: u64) -> Rate {
        let slots = windows.count as usize + 1;
        let mut samples = vec![Sample::default(); slots];
        samples[0].reset(now_ms);
        // Unused samples look idle since the beginning of time, so purging clears them.
        for sample in &mut samples[1..] {
            sample.start_ms = now_ms;
            sample.last_event_ms = 0;
        }
        assert!(samples.len() >= 2);
        Rate {
            samples,
            current: 0,
        }
    }

    /// Adds `value` (may be negative: Kafka "unrecords" a throttled fetch this way).
    pub fn record(&mut self, windows: Windows, value: f64, now_ms: u64) {
        let sample = &self.samples[self.current];
        if now_ms.saturating_sub(sample.start_ms) >= windows.window_ms {
            self.current = (self.current + 1) % self.samples.len();
            self.samples[self.current].reset(now_ms);
        }
        let sample = &mut self.samples[self.current];
        sample.value += value;
        sample.last_event_ms = now_ms;
    }

    fn purge(&mut self, windows: Windows, now_ms: u64) {
        let expire_ms = windows.span_ms();
        for sample in &mut self.samples {
            if now_ms.saturating_sub(sample.last_event_ms) >= expire_ms {
                sample.reset(now_ms);
            }
        }
    }

    /// The span the rate divides by, in milliseconds (Kafka's `Rate.windowSize`).
    pub fn window_size_ms(&mut self, windows: Windows, now_ms: u64) -> u64 {
        self.purge(windows, now_ms);
        let oldest_ms = self
            .samples
            .iter()
            .map(|s| s.start_ms)
            .min()
            .unwrap_or(now_ms);
        let mut elapsed_ms = now_ms.saturating_sub(oldest_ms);
        let full_windows = elapsed_ms / windows.window_ms;
        let min_full_windows = u64::from(windows.count.saturating_sub(1));
        if full_windows < min_full_windows {
            elapsed_ms += (min_full_windows - full_windows) * windows.window_ms;
        }
        elapsed_ms.max(1)
    }

    /// The rate per second now.
    pub fn measure(&mut self, windows: Windows, now_ms: u64) -> f64 {
        let window_ms = self.window_size_ms(windows, now_ms);
        let total: f64 = self.samples.iter().map(|s| s.value).sum();
        total * 1000.0 / window_ms as f64
    }

    /// Records `value` and returns the throttle time the rate's excess over `bound` calls
    /// for: Kafka's `(O - T) / T x W`, the delay that brings the observed rate O back to the
    /// bound T over the window W; 0 within the bound.
    pub fn record_and_throttle_ms(
        &mut self,
        windows: Windows,
        value: f64,
        bound: f64,
        now_ms: u64,
    ) -> u64 {
        self.record(windows, value, now_ms);
        let observed = self.measure(windows, now_ms);
        if observed <= bound || bound <= 0.0 {
            return 0;
        }
        let window_ms = self.window_size_ms(windows, now_ms) as f64;
        ((observed - bound) / bound * window_ms).round() as u64
    }
}

/// Kafka's `TokenBucket` for `controller_mutation_rate`: tokens refill at the quota per second
/// up to a burst of `count x window` seconds' worth, each mutation takes one, and the bucket
/// may go negative; a negative bucket is a violation whose throttle is the time to refill to 0.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last_update_ms: u64,
}

impl TokenBucket {
    /// A bucket that starts full.
    pub fn new(windows: Windows, quota: f64, now_ms: u64) -> TokenBucket {
        TokenBucket {
            tokens: Self::burst(windows, quota),
            last_update_ms: now_ms,
        }
    }

    fn burst(windows: Windows, quota: f64) -> f64 {
        windows.span_ms() as f64 / 1000.0 * quota
    }

    fn refill(&mut self, windows: Windows, quota: f64, now_ms: u64) {
        let elapsed_s = now_ms.saturating_sub(self.last_update_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + quota * elapsed_s).min(Self::burst(windows, quota));
        self.last_update_ms = now_ms;
    }

    /// The time until the bucket is back to 0 tokens; 0 if it is not negative.
    pub fn throttle_ms(&mut self, windows: Windows, quota: f64, now_ms: u64) -> u64 {
        self.refill(windows, quota, now_ms);
        if self.tokens >= 0.0 || quota <= 0.0 {
            return 0;
        }
        (-self.tokens / quota * 1000.0).round() as u64
    }

    /// Takes `mutations` tokens (the bucket may go negative) and returns the throttle time.
    pub fn record_and_throttle_ms(
        &mut self,
        windows: Windows,
        mutations: f64,
        quota: f64,
        now_ms: u64,
    ) -> u64 {
        self.refill(windows, quota, now_ms);
        self.tokens = (self.tokens - mutations).min(Self::burst(windows, quota));
        self.throttle_ms(windows, quota, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KAFKA: Windows = Windows {
        count: 11,
        window_ms: 1000,
    };

    #[test]
    fn a_first_burst_is_spread_over_count_minus_one_windows() {
        let mut rate = Rate::new(KAFKA, 0);
        rate.record(KAFKA, 10_000.0, 0);
        // 10 000 bytes over the padded 10 s.
        assert_eq!(rate.measure(KAFKA, 0), 1000.0);
        assert_eq!(rate.window_size_ms(KAFKA, 500), 10_500);
    }

    #[test]
    fn throttle_time_brings_the_rate_back_to_the_bound() {
        let mut rate = Rate::new(KAFKA, 0);
        // 2000 B/s observed against 1000 B/s over 10 s: 10 s of delay halves it.
        let throttle = rate.record_and_throttle_ms(KAFKA, 20_000.0, 1000.0, 0);
        assert_eq!(throttle, 10_000);
        let mut steady = Rate::new(KAFKA, 0);
        for second in 0..30u64 {
            let throttle = steady.record_and_throttle_ms(KAFKA, 500.0, 1000.0, second * 1000);
            assert_eq!(throttle, 0, "half the quota is never throttled");
        }
    }

    #[test]
    fn unrecording_restores_the_rate_and_idle_samples_expire() {
        let mut rate = Rate::new(KAFKA, 0);
        rate.record(KAFKA, 5000.0, 100);
        let before = rate.measure(KAFKA, 200);
        rate.record(KAFKA, 3000.0, 200);
        rate.record(KAFKA, -3000.0, 200);
        assert_eq!(rate.measure(KAFKA, 200), before);
        assert_eq!(rate.measure(KAFKA, 200 + KAFKA.span_ms()), 0.0);
    }

    #[test]
    fn token_bucket_goes_negative_and_refills() {
        let mut bucket = TokenBucket::new(KAFKA, 2.0, 0);
        // Burst: 11 s x 2/s = 22 mutations before any throttle.
        assert_eq!(bucket.record_and_throttle_ms(KAFKA, 22.0, 2.0, 0), 0);
        assert_eq!(bucket.record_and_throttle_ms(KAFKA, 4.0, 2.0, 0), 2000);
        assert_eq!(bucket.throttle_ms(KAFKA, 2.0, 1000), 1000);
        assert_eq!(bucket.throttle_ms(KAFKA, 2.0, 2000), 0);
    }
}
