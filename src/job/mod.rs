//! What a job is: its identity, the request that created it, its persisted
//! state machine and the retry policy that decides when it runs next.
//!
//! ```text
//! queued ──▶ running ──▶ waiting ──▶ running ──▶ done
//!               │  ▲                    │
//!               │  └────────────────────┘
//!               └──▶ failed / cancelled  (from any live state)
//! ```

pub mod digest;
pub mod next_run;
pub mod request;
pub mod retry;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use next_run::{NextRun, NextRunWhy};
pub use request::{JobRequest, RequestError};
pub use retry::RetryPolicy;

/// Milliseconds since the Unix epoch: how the store keeps every timestamp.
pub type Millis = i64;

/// The current wall-clock time in milliseconds.
pub fn now_ms() -> Millis {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Renders a stored timestamp as RFC 3339 UTC for receipts and the CLI.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Job names: `[A-Za-z0-9._-]{1,100}`, not `.` or `..`. They name folders
/// under `output/`, so nothing else is allowed.
pub fn is_valid_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A job's persisted state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, never run.
    Queued,
    /// Leased by a daemon that is running one of its steps.
    Running,
    /// Between steps: the provider is still working, or an error is being retried.
    Waiting,
    /// Files and receipt are on disk.
    Done,
    /// Ended with an error (kept in `last_error` and the receipt).
    Failed,
    /// Stopped by a user.
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Waiting,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Done, failed and cancelled jobs never run again (unless retried).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!("unknown state {s:?} (expected queued, running, waiting, done, failed or cancelled)")
            })
    }
}

/// A file a job saved, as recorded in the store and the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// File name inside `output/NAME/`.
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// What a finished job produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub files: Vec<SavedFile>,
    /// Warnings the provider reported with a successful result (1C `10240`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// A UUID, fixed at creation.
    pub id: String,
    /// Unique, user-visible; names the output folder.
    pub name: String,
    pub account: String,
    pub provider: String,
    pub operation: String,
    pub params: serde_json::Value,
    pub state: JobState,
    /// The provider's progress (remote job id, file id, …); opaque to the core.
    pub cursor: serde_json::Value,
    /// Consecutive transient errors; reset by every successful step.
    pub attempts: u32,
    /// "Not ready yet" answers so far.
    pub polls: u32,
    /// Steps started (for the receipt and duplicate detection in tests).
    pub steps: u32,
    pub next_run_at: Millis,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Millis>,
    pub last_error: Option<String>,
    pub result: Option<JobResult>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    pub deadline_at: Millis,
    /// Where the request came from: the request file name, `cli` or `api`.
    pub source: String,
    /// SHA-256 of the request as received; recognises a re-scanned request
    /// file after a crash between commit and move.
    pub request_sha256: String,
    /// Completion hooks given by the request (the account's come on top).
    pub hooks: Option<Hooks>,
    /// `pending` while completion hooks still have to run, then `done` or `failed`.
    pub hooks_state: Option<String>,
    pub hooks_attempts: u32,
}

/// A completion hook as a request, an account or a schedule gives it: the
/// name of a `[hooks.NAME]` the operator configured (a string), or a command
/// (an argv list, run without a shell). Stored as given, so jobs accepted
/// before hooks had to be named keep their commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum HookRef {
    Named(String),
    Command(Vec<String>),
}

impl<'de> Deserialize<'de> for HookRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HookRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "the name of a hook configured under [hooks.NAME], such as \"import-usn\"",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HookRef, E> {
                Ok(HookRef::Named(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<HookRef, A::Error> {
                let mut argv = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    argv.push(item);
                }
                Ok(HookRef::Command(argv))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What to run when a job finishes: a hook for each outcome, and (from an
/// account, or from requests accepted under older rules) a webhook URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_done: Option<HookRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failed: Option<HookRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_done_url: Option<String>,
}

/// Whether a URL's host is this machine (`localhost` or a loopback address),
/// where plain `http://` cannot be read on the way.
pub fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks a webhook URL: `https://`, or `http://` to this machine only (a
/// receipt posted in clear over the network could be read or changed).
pub fn validate_webhook_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => Ok(()),
        Ok(u) if u.scheme() == "http" && is_loopback_url(&u) => Ok(()),
        Ok(u) if u.scheme() == "http" => Err(format!(
            "{url:?} is plain http:// to another machine; use https:// (http:// is allowed to localhost only)"
        )),
        _ => Err(format!("expected an https:// URL, found {url:?}")),
    }
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.on_done.is_none() && self.on_failed.is_none() && self.on_done_url.is_none()
    }

    /// These hooks, with `fallback`'s filling the gaps (a request's hooks
    /// win over its account's).
    pub fn or(&self, fallback: &Hooks) -> Hooks {
        Hooks {
            on_done: self.on_done.clone().or_else(|| fallback.on_done.clone()),
            on_failed: self
                .on_failed
                .clone()
                .or_else(|| fallback.on_failed.clone()),
            on_done_url: self
                .on_done_url
                .clone()
                .or_else(|| fallback.on_done_url.clone()),
        }
    }

    /// Whether anything is to run for a job that ended in `state`.
    pub fn applies_to(&self, state: JobState) -> bool {
        match state {
            JobState::Done => self.on_done.is_some() || self.on_done_url.is_some(),
            JobState::Failed => self.on_failed.is_some(),
            _ => false,
        }
    }

    /// Whether these hooks carry a command or a URL of their own (rather
    /// than only names of configured hooks).
    pub fn carries_commands(&self) -> bool {
        matches!(self.on_done, Some(HookRef::Command(_)))
            || matches!(self.on_failed, Some(HookRef::Command(_)))
            || self.on_done_url.is_some()
    }

    /// Checks the shape of argv lists, hook names and the URL. Errors start
    /// with `PREFIXKEY: `.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        for (key, hook) in [("on_done", &self.on_done), ("on_failed", &self.on_failed)] {
            match hook {
                Some(HookRef::Command(argv))
                    if argv.first().is_none_or(|program| program.trim().is_empty()) =>
                {
                    return Err(format!(
                        "{prefix}{key}: expected a command as a list, such as [\"/usr/local/bin/import\", \"--quiet\"]"
                    ));
                }
                Some(HookRef::Named(name)) if !is_valid_name(name) => {
                    return Err(format!(
                        "{prefix}{key}: {name:?} is not a hook name (letters, digits, '.', '_' and '-')"
                    ));
                }
                _ => {}
            }
        }
        if let Some(url) = &self.on_done_url {
            validate_webhook_url(url).map_err(|e| format!("{prefix}on_done_url: {e}"))?;
        }
        Ok(())
    }

    /// Checks that every hook named is configured (`named` holds the
    /// `[hooks.NAME]` names). Errors start with `PREFIXKEY: `.
    pub fn check_names<V>(
        &self,
        prefix: &str,
        named: &std::collections::BTreeMap<String, V>,
    ) -> Result<(), String> {
        for (key, hook) in [("on_done", &self.on_done), ("on_failed", &self.on_failed)] {
            if let Some(HookRef::Named(name)) = hook
                && !named.contains_key(name)
            {
                let known: Vec<&str> = named.keys().map(String::as_str).collect();
                return Err(format!(
                    "{prefix}{key}: no hook named {name:?} is configured ({}); the operator defines hooks in the config as [hooks.{name}] with `command` or `url`",
                    if known.is_empty() {
                        "there are none".to_string()
                    } else {
                        format!("configured: {}", known.join(", "))
                    }
                ));
            }
        }
        Ok(())
    }
}

impl Job {
    /// The outcome a step already committed for this job while its receipt
    /// is not yet on disk: `Done` (it has a result) or `Failed`.
    ///
    /// A job ends in two commits. The first *settles* it: the result (or
    /// the error) and `finished_at` are stored while the job is still
    /// `running` under its lease, so no provider step runs again. Then
    /// `job.json` is written and made durable, and only then does the
    /// second commit move the job to `done` or `failed`. So the state
    /// readers see (API, CLI, hooks, other daemons) never says finished
    /// before the receipt is on disk, and the receipt never says finished
    /// before the outcome is committed. A job found settled (after a crash
    /// between the two) only has its receipt written and its state moved.
    pub fn settled(&self) -> Option<JobState> {
        if self.state.is_finished() || self.finished_at.is_none() {
            return None;
        }
        Some(if self.result.is_some() {
            JobState::Done
        } else {
            JobState::Failed
        })
    }

    /// The job as the CLI's `--json` and the API show it (no cursor, no
    /// lease details). A settled job (see [`Job::settled`]) shows no result
    /// and no end time until its receipt is written and its state moved.
    pub fn summary_json(&self) -> serde_json::Value {
        let finished = self.state.is_finished();
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "account": self.account,
            "provider": self.provider,
            "operation": self.operation,
            "state": self.state,
            "attempts": self.attempts,
            "polls": self.polls,
            "steps": self.steps,
            "next_run_at": rfc3339(self.next_run_at),
            "created_at": rfc3339(self.created_at),
            "finished_at": self.finished_at.filter(|_| finished).map(rfc3339),
            "last_error": self.last_error,
            "result": self.result.as_ref().filter(|_| finished),
            "source": self.source,
        })
    }
}

/// What a line of a job's history records. Stored as its [`as_str`]
/// name; [`JobEvent::kind`] stays a string so rows written by another
/// version still read.
///
/// [`as_str`]: EventKind::as_str
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The request was accepted (due now).
    Accepted,
    /// A step made progress and the job waits before the next one.
    Progress,
    /// The service said "not ready yet" (counts as a poll).
    Poll,
    /// A transient error, retried later.
    Error,
    /// The job was handed back unrun (its account paused or busy).
    Postponed,
    /// Every file is saved.
    Done,
    /// The job failed for good.
    Failed,
    /// A user cancelled the job.
    Cancelled,
    /// A user queued the job again.
    Retried,
    /// A completion hook ran.
    Hook,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Progress => "progress",
            EventKind::Poll => "poll",
            EventKind::Error => "error",
            EventKind::Postponed => "postponed",
            EventKind::Done => "done",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
            EventKind::Retried => "retried",
            EventKind::Hook => "hook",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a job's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEvent {
    pub at: Millis,
    pub kind: String,
    pub message: String,
    /// Why the next run is when it is, on events that set it.
    pub detail: Option<NextRun>,
}

/// The line `docfetch show` prints for a job that waits: when it runs next
/// and why, from the last event that set its run time.
pub fn next_run_line(job: &Job, events: &[JobEvent]) -> Option<String> {
    if !matches!(job.state, JobState::Queued | JobState::Waiting) {
        return None;
    }
    let next = events.iter().rev().find_map(|e| e.detail.as_ref())?;
    // A run time set since (a lease released at shutdown) makes the
    // stored reason stale.
    (next.next_run_at == job.next_run_at).then(|| next.describe(&job.provider))
}

impl JobEvent {
    /// The event as the API and `docfetch show --json` give it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "at": rfc3339(self.at),
            "kind": self.kind,
            "message": self.message,
            "detail": self.detail,
        })
    }
}

/// A new job as the inbox or the CLI hands it to the store.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub name: String,
    pub account: String,
    pub provider: String,
    pub operation: String,
    pub params: serde_json::Value,
    pub source: String,
    pub request_sha256: String,
    pub created_at: Millis,
    pub deadline_at: Millis,
    pub hooks: Option<Hooks>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_allow_only_the_documented_characters() {
        assert!(is_valid_name("usn-2018q3"));
        assert!(is_valid_name("A.b_c-9"));
        assert!(is_valid_name(&"x".repeat(100)));
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "ä",
            "x\0",
            &"x".repeat(101),
            "../etc",
        ] {
            assert!(!is_valid_name(bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("paused".parse::<JobState>().is_err());
        assert!(JobState::Done.is_finished() && !JobState::Waiting.is_finished());
    }
}
