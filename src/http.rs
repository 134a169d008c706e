//! The one place that builds HTTP clients and reads generic HTTP facts:
//! timeouts, user agent, redirects off (each provider follows its own
//! hand-offs, so credentials never follow a redirect to another host),
//! `Retry-After`, and error texts with URLs redacted.

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Timeouts and user agent of every client docfetch builds (`[http]`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    /// Bound on a whole non-download request, and on silence during a download.
    pub timeout: Duration,
    pub user_agent: String,
}

/// Builds the shared client. Redirects are never followed automatically.
pub fn client(settings: &HttpSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(settings.user_agent.clone())
        .connect_timeout(settings.connect_timeout)
        // A per-read timeout, not a whole-request one: downloads of large
        // files may take long, but never sit silent this long.
        .read_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

/// Parses `Retry-After`: delta-seconds or an HTTP date (a date in the past
/// means "now"). Garbage is ignored rather than trusted.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value, now)
}

/// The text form of [`retry_after`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurd values are capped by the retry policy; here only overflow matters.
        return value
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .or(Some(Duration::MAX));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Query parameters whose values are secrets at some provider.
const SECRET_QUERY_KEYS: &[&str] = &[
    "authtoken",
    "token",
    "access_token",
    "password",
    "api_key",
    "key",
];

/// A URL fit for logs and error texts: credentials and secret query values
/// replaced by `***`.
pub fn redact_url(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_QUERY_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Describes a reqwest error without its URL (which may carry a token) but
/// with its cause chain (`connection refused`, `operation timed out`, …).
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "failed reading the response body"
    } else if error.is_request() {
        "request failed"
    } else {
        "HTTP error"
    };
    let mut text = kind.to_string();
    let mut source = error.source();
    let mut last = String::new();
    while let Some(cause) = source {
        let piece = cause.to_string();
        // reqwest repeats the URL in some causes; never print one.
        if !piece.contains("://") && piece != last {
            text.push_str(": ");
            text.push_str(&piece);
            last = piece;
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn urls_lose_their_secrets() {
        let url = url::Url::parse("https://u:pw@ofd.ru/api/x?AuthToken=abc123&Inn=77").unwrap();
        let shown = redact_url(&url);
        assert!(
            !shown.contains("abc123") && !shown.contains("pw@"),
            "{shown}"
        );
        assert!(shown.contains("Inn=77"), "{shown}");
    }
}
