//! Backoff between attempts.

use std::time::Duration;

use crate::model::Retry;

/// How long to wait after failed attempt `attempt` (from 1) before the next
/// one: `initial × multiplier^(attempt−1)`, at most `max`. With jitter, a
/// uniformly random time between half of that and all of it, so that steps
/// that failed together do not retry together. A server's `Retry-After` is
/// honoured when it asks for longer, up to the backoff's maximum: a server
/// (or whoever answers in its place) cannot park a step for a year.
pub fn retry_delay(retry: &Retry, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = &retry.backoff;
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let factor = backoff.multiplier.powi(exponent);
    let max = backoff.max.as_secs_f64();
    let mut delay = (backoff.initial.as_secs_f64() * factor).min(max);
    if !delay.is_finite() {
        delay = max;
    }
    if retry.jitter {
        delay *= 0.5 + fastrand::f64() * 0.5;
    }
    let delay = Duration::from_secs_f64(delay.max(0.0));
    match retry_after {
        Some(asked) if asked > delay => asked.min(backoff.max.max(delay)),
        _ => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Backoff;

    fn retry(jitter: bool) -> Retry {
        Retry {
            max_attempts: 10,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(1000),
                multiplier: 2.0,
            },
            jitter,
        }
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_maximum() {
        let delays: Vec<u128> = (1..=6)
            .map(|a| retry_delay(&retry(false), a, None).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for attempt in 1..=5 {
            let full = retry_delay(&retry(false), attempt, None);
            for _ in 0..200 {
                let d = retry_delay(&retry(true), attempt, None);
                assert!(
                    d <= full && d >= full / 2,
                    "{d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn a_longer_retry_after_wins_a_shorter_one_does_not() {
        let r = retry(false);
        assert_eq!(
            retry_delay(&r, 1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            retry_delay(&r, 3, Some(Duration::from_millis(10))),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn retry_after_is_capped_by_the_backoff_maximum() {
        let r = retry(false);
        for asked in [Duration::from_secs(2), Duration::from_secs(u64::MAX)] {
            assert_eq!(
                retry_delay(&r, 1, Some(asked)),
                Duration::from_millis(1000),
                "asked {asked:?}"
            );
        }
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        assert_eq!(
            retry_delay(&retry(false), u32::MAX, None),
            Duration::from_secs(1)
        );
    }
}
