//! Why a job's next run is when it is: the structured `detail` of every
//! history event that sets the next run time (a poll, a retried error, a
//! postponement, acceptance), so the API, `docfetch show` and the dashboard
//! can say "next poll 14:05:00 (OFD.ru's estimate)" instead of leaving the
//! operator to guess between the service's answer, our backoff, an account
//! pause and the deadline.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::Millis;

/// What decided a job's next run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextRunWhy {
    /// The service's `Retry-After` (on an error, or on a "not ready yet"
    /// answer that carries one).
    RetryAfter,
    /// The provider's estimate of when the document is ready (OFD.ru's
    /// `AssumptiveCompleteTime`, the pacing its module knows the service
    /// needs).
    Eta,
    /// Our own backoff: polls double up to `scheduler.poll_max`, errors up
    /// to `scheduler.retry_max`; `step` says which one.
    Backoff,
    /// The account is paused after a 429 (here or in another daemon).
    AccountPause,
    /// Every concurrency slot of the account was taken.
    AccountBusy,
    /// The wait was cut short by the job's deadline: the job wakes up in
    /// time to fail as timed out.
    Deadline,
    /// Due at once (just accepted, or queued again by a user).
    Now,
}

impl NextRunWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            NextRunWhy::RetryAfter => "retry_after",
            NextRunWhy::Eta => "eta",
            NextRunWhy::Backoff => "backoff",
            NextRunWhy::AccountPause => "account_pause",
            NextRunWhy::AccountBusy => "account_busy",
            NextRunWhy::Deadline => "deadline",
            NextRunWhy::Now => "now",
        }
    }
}

/// The detail of an event that set a job's next run time. Stored as JSON
/// in `job_events.detail`: `{"next_run_at", "why", "wait_ms", "hint_ms",
/// "step"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextRun {
    /// When the job is due again (Unix ms).
    pub next_run_at: Millis,
    pub why: NextRunWhy,
    /// How long from the event to `next_run_at`.
    pub wait_ms: i64,
    /// The wait the service (or the account's pause) asked for, before our
    /// bounds were applied; absent when nobody asked.
    pub hint_ms: Option<i64>,
    /// The backoff step: the poll count for a poll, the attempt for an
    /// error; absent when no backoff was involved.
    pub step: Option<u32>,
}

impl NextRun {
    /// The detail for a wait of `delay` from `now`, cut at `deadline_at`.
    /// `why` is what decided the delay; the deadline wins when it comes
    /// first.
    pub fn after(
        now: Millis,
        delay: Duration,
        deadline_at: Millis,
        why: NextRunWhy,
        hint: Option<Duration>,
        step: Option<u32>,
    ) -> Self {
        // Run times are whole milliseconds, rounded down, and so is the
        // delay: one more keeps a poll from landing a fraction of a
        // millisecond before a provider's Retry-After or ETA is over.
        let wanted = now.saturating_add(ms(delay)).saturating_add(1);
        let (next_run_at, why) = if wanted > deadline_at {
            (deadline_at, NextRunWhy::Deadline)
        } else {
            (wanted, why)
        };
        NextRun {
            next_run_at,
            why,
            wait_ms: next_run_at.saturating_sub(now).max(0),
            hint_ms: hint.map(ms),
            step,
        }
    }

    /// Due at once.
    pub fn now(now: Millis) -> Self {
        NextRun {
            next_run_at: now,
            why: NextRunWhy::Now,
            wait_ms: 0,
            hint_ms: None,
            step: None,
        }
    }

    /// The JSON stored in `job_events.detail`.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored detail; anything unreadable (a newer or hand-edited
    /// row) is shown as no detail rather than failing the history.
    pub fn from_json_str(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }

    /// One short line for `docfetch show`: "next poll 14:05:00 (OFD.ru's
    /// estimate)". `provider` is the job's provider name.
    pub fn describe(&self, provider: &str) -> String {
        let at = chrono::DateTime::from_timestamp_millis(self.next_run_at)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_else(|| self.next_run_at.to_string());
        let service = service_name(provider);
        let why = match self.why {
            NextRunWhy::RetryAfter => format!("{service} asked to retry after"),
            NextRunWhy::Eta => format!("{service}'s estimate"),
            NextRunWhy::Backoff => match self.step {
                Some(step) => format!("backoff, step {step}"),
                None => "backoff".to_string(),
            },
            NextRunWhy::AccountPause => "the account is paused after a 429".to_string(),
            NextRunWhy::AccountBusy => "every slot of the account was taken".to_string(),
            NextRunWhy::Deadline => "the deadline".to_string(),
            NextRunWhy::Now => "due now".to_string(),
        };
        format!("next poll {at} UTC ({why})")
    }
}

/// How the services are named to people.
fn service_name(provider: &str) -> &str {
    match provider {
        "1c-fresh" => "1C:Fresh",
        "ofd-ru" => "OFD.ru",
        "atol-kkt" => "ATOL Online",
        "kontur-extern" => "Kontur.Extern",
        "kontur-diadoc" => "Kontur.Diadoc",
        other => other,
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_wins_when_it_comes_first() {
        let n = NextRun::after(
            1_000,
            Duration::from_secs(10),
            5_000,
            NextRunWhy::Eta,
            Some(Duration::from_secs(10)),
            Some(3),
        );
        assert_eq!(n.why, NextRunWhy::Deadline);
        assert_eq!(n.next_run_at, 5_000);
        assert_eq!(n.wait_ms, 4_000);
        assert_eq!(n.hint_ms, Some(10_000));
        let n = NextRun::after(
            1_000,
            Duration::from_secs(1),
            5_000,
            NextRunWhy::Eta,
            None,
            None,
        );
        assert_eq!(
            (n.why, n.next_run_at, n.wait_ms),
            (NextRunWhy::Eta, 2_001, 1_001)
        );
    }

    #[test]
    fn the_stored_json_has_the_documented_keys() {
        let n = NextRun::after(
            0,
            Duration::from_millis(99),
            i64::MAX,
            NextRunWhy::Backoff,
            None,
            Some(2),
        );
        let v: serde_json::Value = serde_json::from_str(&n.to_json_string()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"next_run_at": 100, "why": "backoff", "wait_ms": 100, "hint_ms": null, "step": 2})
        );
        assert_eq!(NextRun::from_json_str(&n.to_json_string()), Some(n));
        assert_eq!(NextRun::from_json_str("not json"), None);
    }

    #[test]
    fn the_line_names_the_service_and_the_reason() {
        let n = NextRun {
            next_run_at: 50_700_000, // 14:05:00 UTC on 1 January 1970
            why: NextRunWhy::Eta,
            wait_ms: 1,
            hint_ms: Some(1),
            step: None,
        };
        assert_eq!(
            n.describe("ofd-ru"),
            "next poll 14:05:00 UTC (OFD.ru's estimate)"
        );
    }
}
