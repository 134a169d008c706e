//! How stored values read on a page: times, ages, sizes, and why a job's
//! next step is when it is.

use maud::{Markup, html};

use super::i18n::Lang;
use crate::job::{JobEvent, Millis};

/// A time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A span of milliseconds as `1 h 2 min`, `3 min 4 s`, `5 s`.
pub fn span(ms: i64) -> String {
    let sign = if ms < 0 { "−" } else { "" };
    if ms.unsigned_abs() < 1000 {
        // Sub-second waits (tests, the demo) would all read "0 s".
        return format!("{sign}{} ms", ms.unsigned_abs());
    }
    let s = ms.unsigned_abs() / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let text = if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {sec} s")
    } else {
        format!("{sec} s")
    };
    format!("{sign}{text}")
}

/// A byte count as `12.3 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Why the next step comes when it does, from an event's structured
/// detail (`{"next_run_at","why","wait_ms","hint_ms","step"}`) when the
/// event has one. Without it the event's own message already says it
/// ("next check in 30 s", "retry in 2 s"), and nothing is added.
///
/// `kind` is the event's kind: our own backoff means "retry after an
/// error" only on an `error` event; after a poll or a step it is the poll
/// backoff used when the service named no time.
pub fn why(detail: Option<&serde_json::Value>, kind: &str, lang: Lang) -> Option<String> {
    let detail = detail?;
    let reason = detail.get("why")?.as_str()?;
    let wait = detail
        .get("wait_ms")
        .and_then(serde_json::Value::as_i64)
        .map(span)
        .unwrap_or_default();
    let hint = detail
        .get("hint_ms")
        .and_then(serde_json::Value::as_i64)
        .map(span)
        .unwrap_or_default();
    let step = detail
        .get("step")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let ru = lang == Lang::Ru;
    Some(match reason {
        "retry_after" if ru => format!("сервис попросил Retry-After {hint}; ждём {wait}"),
        "retry_after" => format!("the service said Retry-After {hint}; waiting {wait}"),
        "eta" if ru => format!("сервис обещал готовность через {hint}; ждём {wait}"),
        "eta" => format!("the service promised it in {hint}; waiting {wait}"),
        "backoff" if kind == "error" && ru => format!("повтор после ошибки, шаг {step}: {wait}"),
        "backoff" if kind == "error" => {
            format!("retry after an error, backoff step {step}: {wait}")
        }
        "backoff" if ru && step > 0 => {
            format!("сервис не назвал срок; пауза растёт с каждым опросом ({step}-й): {wait}")
        }
        "backoff" if ru => format!("сервис не назвал срок; первая проверка через {wait}"),
        "backoff" if step > 0 => {
            format!(
                "the service named no time; the wait grows with each poll (poll {step}): {wait}"
            )
        }
        "backoff" => format!("the service named no time; first check in {wait}"),
        "account_pause" if ru => format!("учётная запись на паузе после 429: {wait}"),
        "account_pause" => format!("the account pauses after a 429: {wait}"),
        "account_busy" if ru => "все слоты учётной записи заняты".to_string(),
        "account_busy" => "all of the account's slots are busy".to_string(),
        "deadline" if ru => format!("крайний срок через {wait}"),
        "deadline" => format!("the deadline is in {wait}"),
        "now" if ru => "сразу".to_string(),
        "now" => "at once".to_string(),
        other => other.to_string(),
    })
}

/// The structured detail of an event (why the next run is when it is), as
/// [`why`] reads it; `None` for events that set no next run.
pub fn detail(event: &JobEvent) -> Option<serde_json::Value> {
    event
        .detail
        .as_ref()
        .and_then(|d| serde_json::to_value(d).ok())
}

/// A job state as a coloured badge.
pub fn state_badge(state: crate::job::JobState, lang: Lang) -> Markup {
    html! { span class={"badge s-" (state.as_str())} { (lang.t(state.as_str())) } }
}

/// Pretty JSON with every key that looks secret masked.
pub fn redacted_json(value: &serde_json::Value) -> String {
    fn mask(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = ["token", "password", "secret", "key", "auth", "cookie"]
                        .iter()
                        .any(|s| lower.contains(s));
                    let v = if secret && !v.is_null() {
                        serde_json::Value::String("•••".into())
                    } else {
                        mask(v)
                    };
                    (k.clone(), v)
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
            serde_json::Value::Array(items) => items.iter().map(mask).collect(),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&mask(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_sizes_read_naturally() {
        assert_eq!(span(5_000), "5 s");
        assert_eq!(span(125_000), "2 min 5 s");
        assert_eq!(span(3_725_000), "1 h 2 min");
        assert_eq!(span(-5_000), "−5 s");
        assert_eq!(size(100), "100 B");
        assert_eq!(size(1536), "1.5 KiB");
    }

    #[test]
    fn why_reads_the_structured_detail() {
        let d = serde_json::json!({"why": "retry_after", "wait_ms": 30000, "hint_ms": 30000});
        assert_eq!(
            why(Some(&d), "poll", Lang::En).unwrap(),
            "the service said Retry-After 30 s; waiting 30 s"
        );
        assert!(why(None, "poll", Lang::En).is_none());
        let d = serde_json::json!({"why": "account_pause", "wait_ms": 60000});
        assert!(
            why(Some(&d), "postponed", Lang::Ru)
                .unwrap()
                .contains("паузе")
        );
    }

    #[test]
    fn our_backoff_is_a_retry_only_after_an_error() {
        let d = serde_json::json!({"why": "backoff", "wait_ms": 4000, "step": 3});
        assert_eq!(
            why(Some(&d), "error", Lang::En).unwrap(),
            "retry after an error, backoff step 3: 4 s"
        );
        assert_eq!(
            why(Some(&d), "poll", Lang::En).unwrap(),
            "the service named no time; the wait grows with each poll (poll 3): 4 s"
        );
        let first = serde_json::json!({"why": "backoff", "wait_ms": 588, "step": 0});
        assert_eq!(
            why(Some(&first), "progress", Lang::En).unwrap(),
            "the service named no time; first check in 588 ms"
        );
    }

    #[test]
    fn secrets_in_a_request_are_masked() {
        let v = serde_json::json!({"inn": "7700", "api_token": "s3cr3t", "nested": [{"password": "p"}]});
        let text = redacted_json(&v);
        assert!(
            !text.contains("s3cr3t") && !text.contains("\"p\""),
            "{text}"
        );
        assert!(text.contains("7700"));
    }
}
