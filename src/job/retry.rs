//! When a job runs next: after a "not ready yet" answer (a poll) and after a
//! transient error (an attempt). Pure functions of the counters, the
//! provider's hint and a jitter factor, so they are tested without a clock.
//!
//! Polls and errors back off separately: waiting for a slow provider is
//! normal and never fails a job, while consecutive errors are bounded by
//! `max_attempts`. The job's deadline bounds both.

use std::time::Duration;

/// Backoff settings, taken from `[scheduler]`
/// (`SchedulerSettings::retry_policy` in [`crate::config`]).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub poll_initial: Duration,
    pub poll_max: Duration,
    pub retry_initial: Duration,
    pub max_attempts: u32,
}

/// Relative jitter applied to computed backoffs (not to provider hints, which
/// the provider chose on purpose): a delay `d` becomes a value in
/// `[d * (1 - JITTER), d]`, so many jobs ordered together spread out.
pub const JITTER: f64 = 0.2;

impl RetryPolicy {
    /// The wait before the next poll, after `polls` "not ready" answers
    /// (counting the one just received). A provider hint wins, clamped to
    /// `[min(1s, poll_initial), poll_max]`; without one the wait doubles from
    /// `poll_initial` up to `poll_max`. `jitter` is uniform in `[0, 1)`.
    pub fn poll_delay(&self, polls: u32, hint: Option<Duration>, jitter: f64) -> Duration {
        match hint {
            Some(hint) => hint.clamp(self.poll_initial.min(Duration::from_secs(1)), self.poll_max),
            None => backoff(
                self.poll_initial,
                self.poll_max,
                polls.saturating_sub(1),
                jitter,
            ),
        }
    }

    /// The wait before retrying after the `attempts`-th consecutive transient
    /// error, or `None` when the job has used up `max_attempts` and fails.
    pub fn retry_delay(
        &self,
        attempts: u32,
        hint: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        Some(match hint {
            Some(hint) => hint.clamp(
                self.retry_initial.min(Duration::from_secs(1)),
                self.poll_max,
            ),
            None => backoff(
                self.retry_initial,
                self.poll_max,
                attempts.saturating_sub(1),
                jitter,
            ),
        })
    }
}

/// `initial * 2^n`, capped at `max`, minus up to [`JITTER`] of itself.
pub fn backoff(initial: Duration, max: Duration, n: u32, jitter: f64) -> Duration {
    let factor = 2f64.powi(n.min(62) as i32);
    let full = initial.as_secs_f64() * factor;
    let capped = full.min(max.as_secs_f64());
    let jitter = jitter.clamp(0.0, 1.0);
    Duration::from_secs_f64(capped * (1.0 - JITTER * jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            poll_initial: Duration::from_secs(2),
            poll_max: Duration::from_secs(600),
            retry_initial: Duration::from_secs(5),
            max_attempts: 3,
        }
    }

    #[test]
    fn polls_double_from_the_initial_wait_up_to_the_cap() {
        let p = policy();
        let waits: Vec<u64> = (1..=12)
            .map(|n| p.poll_delay(n, None, 0.0).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]);
        assert_eq!(p.poll_delay(u32::MAX, None, 0.0), Duration::from_secs(600));
    }

    #[test]
    fn jitter_only_ever_shortens_by_at_most_a_fifth() {
        let p = policy();
        let shortest = p.poll_delay(3, None, 0.999_999);
        assert!(
            shortest >= Duration::from_secs_f64(8.0 * 0.8 - 0.001),
            "{shortest:?}"
        );
        assert!(shortest < Duration::from_secs(8));
    }

    #[test]
    fn a_provider_hint_wins_but_stays_within_bounds() {
        let p = policy();
        assert_eq!(
            p.poll_delay(7, Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.poll_delay(1, Some(Duration::from_secs(86_400)), 0.0),
            Duration::from_secs(600)
        );
        assert_eq!(
            p.poll_delay(1, Some(Duration::ZERO), 0.0),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn errors_back_off_until_max_attempts_then_give_up() {
        let p = policy();
        assert_eq!(p.retry_delay(1, None, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(p.retry_delay(2, None, 0.0), Some(Duration::from_secs(10)));
        assert_eq!(p.retry_delay(3, None, 0.0), None);
        assert_eq!(
            p.retry_delay(2, Some(Duration::from_secs(42)), 0.3),
            Some(Duration::from_secs(42))
        );
    }
}
