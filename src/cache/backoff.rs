//! Jittered exponential backoff for failed refreshes: a pure function of the failure count.

use std::time::Duration;

/// Validated backoff bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure (before jitter).
    pub min: Duration,
    /// Upper bound for any delay.
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `failures` (1-based): `min · 2^(failures-1)` capped at `max`,
    /// then "equal jitter" — uniformly within the upper half — so a fleet that failed together
    /// does not retry together, while each retry still waits at least half the nominal delay.
    /// `unit` is a uniform sample in `[0, 1)`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let nominal = self.min.saturating_mul(1 << exp).min(self.max);
        nominal.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// Spreads a refresh interval: uniformly in `[interval · (1 - jitter), interval]`, so values
/// are never refreshed later than configured.
pub fn jittered(interval: Duration, jitter: f64, unit: f64) -> Duration {
    interval.mul_f64(1.0 - jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_until_capped_and_jitters_within_upper_half() {
        let b = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let check =
            |n, unit, want_ms| assert_eq!(b.delay(n, unit).as_millis(), want_ms, "{n} {unit}");
        check(1, 0.0, 500);
        check(1, 0.999_999, 999);
        check(2, 0.0, 1000);
        check(4, 1.0, 8000);
        check(7, 1.0, 60_000);
        check(u32::MAX, 0.0, 30_000);
    }

    #[test]
    fn jitter_never_delays_past_the_interval() {
        let i = Duration::from_secs(100);
        assert_eq!(jittered(i, 0.1, 0.0), i);
        assert_eq!(jittered(i, 0.1, 1.0), Duration::from_secs(90));
        assert_eq!(jittered(i, 5.0, 0.5), Duration::from_secs(50));
    }
}
