//! `docfetch accounts check`: what a provider's login test returns.
//!
//! Each provider logs in the cheapest way its document allows and orders
//! nothing. A failure is sorted into a small set of kinds, because what the
//! admin has to fix follows from the kind: a refused secret, an account the
//! user may not reach, the network (DNS, TLS, a refused connection), a
//! service too slow to answer, or a service that answered with an error.

use std::time::Duration;

use serde::Serialize;

use super::{ErrorClass, ProviderError, StepContext, Transport};
use crate::job::{Job, JobState};

/// Why a login test failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// The service refused the credentials (wrong password, unknown client id).
    Auth,
    /// Logged in, but the user may not reach the account's cabinet, box or account.
    Access,
    /// No connection: DNS, TLS, a refused or broken connection.
    Network,
    /// No answer within the check's time limit.
    Timeout,
    /// The service answered with an error of its own (5xx, an unexpected status).
    Service,
}

impl CheckKind {
    /// The name `--json` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Auth => "auth",
            CheckKind::Access => "access",
            CheckKind::Network => "network",
            CheckKind::Timeout => "timeout",
            CheckKind::Service => "service",
        }
    }
}

/// A failed login test: its kind and the provider's own reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    pub kind: CheckKind,
    /// Shown to the admin; never holds a secret or a token.
    pub message: String,
}

impl CheckFailure {
    pub fn new(kind: CheckKind, message: impl Into<String>) -> Self {
        CheckFailure {
            kind,
            message: redact(&message.into()),
        }
    }

    /// A failure while logging in: a refusal means the credentials.
    pub fn login(error: ProviderError) -> Self {
        let kind = classify(&error, CheckKind::Auth);
        CheckFailure::new(kind, error.message)
    }

    /// A failure after a successful login: a refusal means no access.
    pub fn access(error: ProviderError) -> Self {
        let kind = classify(&error, CheckKind::Access);
        CheckFailure::new(kind, error.message)
    }
}

/// The kind of a provider error; `refused` is what a refusal means at this
/// point of the check (the credentials while logging in, the access after).
pub fn classify(error: &ProviderError, refused: CheckKind) -> CheckKind {
    match (error.transport, error.status) {
        (Some(Transport::Timeout), _) => CheckKind::Timeout,
        (Some(Transport::Connect | Transport::Other), _) => CheckKind::Network,
        (None, Some(401 | 403)) => refused,
        // An HTTP status the provider did not read as a refusal: a wrong
        // base_url (404) or the service's own trouble.
        (None, Some(_)) => CheckKind::Service,
        // The providers turn refusals into permanent errors with their own
        // words; what is left (garbled answers, 5xx) is the service's.
        (None, None) if error.class == ErrorClass::Permanent => refused,
        (None, None) => CheckKind::Service,
    }
}

/// Hides a token in a text, should one have slipped into it: OFD.ru puts
/// its `AuthToken` in the query string, and a URL may be quoted by a cause.
pub fn redact(text: &str) -> String {
    const KEY: &str = "authtoken=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(KEY) {
        let value_start = at + found + KEY.len();
        out.push_str(&text[at..value_start]);
        out.push_str("***");
        let rest = &text[value_start..];
        let value_len = rest
            .find(|c: char| c == '&' || c == '#' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(rest.len());
        at = value_start + value_len;
    }
    out.push_str(&text[at..]);
    out
}

/// A job that exists only so that a login written for a step can run
/// outside one: it orders nothing and is never stored.
pub fn probe_job(account: &str, provider: &str) -> Job {
    let now = crate::job::now_ms();
    Job {
        id: "accounts-check".into(),
        name: "accounts-check".into(),
        account: account.into(),
        provider: provider.into(),
        operation: "accounts-check".into(),
        params: serde_json::Value::Null,
        state: JobState::Running,
        cursor: serde_json::Value::Null,
        attempts: 0,
        polls: 0,
        steps: 0,
        next_run_at: now,
        lease_owner: None,
        lease_until: None,
        last_error: None,
        result: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
        deadline_at: now,
        source: "accounts check".into(),
        request_sha256: String::new(),
        hooks: None,
        hooks_state: None,
        hooks_attempts: 0,
    }
}

/// The context of [`probe_job`]: no folder is ever opened through it (a
/// login writes nothing), so its folders are placeholders.
pub fn probe_context<'a>(
    job: &'a Job,
    http: &'a reqwest::Client,
    timeout: Duration,
) -> StepContext<'a> {
    let nowhere = std::env::temp_dir().join("docfetch-accounts-check");
    StepContext {
        job,
        http,
        output_dir: crate::beneath::Subfolder::new(nowhere.clone(), "unused"),
        attachments_dir: nowhere,
        max_file_size: 0,
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_query_strings_are_hidden() {
        assert_eq!(
            redact("GET /api/x?AuthToken=abc123&Inn=1 failed"),
            "GET /api/x?AuthToken=***&Inn=1 failed"
        );
        assert_eq!(redact("authtoken=zz"), "authtoken=***");
        assert_eq!(redact("no token here"), "no token here");
    }

    #[test]
    fn failures_are_sorted_by_what_went_wrong() {
        let refused = ProviderError::permanent("wrong password");
        assert_eq!(classify(&refused, CheckKind::Auth), CheckKind::Auth);
        assert_eq!(classify(&refused, CheckKind::Access), CheckKind::Access);
        let busy = ProviderError::transient("garbled");
        assert_eq!(classify(&busy, CheckKind::Auth), CheckKind::Service);
        let missing =
            ProviderError::from_status("x", reqwest::StatusCode::NOT_FOUND, "no such page");
        assert_eq!(classify(&missing, CheckKind::Auth), CheckKind::Service);
        let forbidden = ProviderError::from_status("x", reqwest::StatusCode::FORBIDDEN, "");
        assert_eq!(classify(&forbidden, CheckKind::Access), CheckKind::Access);
        let mut slow = ProviderError::transient("x");
        slow.transport = Some(Transport::Timeout);
        assert_eq!(classify(&slow, CheckKind::Auth), CheckKind::Timeout);
        let mut dns = ProviderError::transient("x");
        dns.transport = Some(Transport::Connect);
        assert_eq!(classify(&dns, CheckKind::Auth), CheckKind::Network);
    }
}
