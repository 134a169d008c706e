//! One schedule as written (`[[schedules]]` or a schedule file), parsed
//! and checked: its cron, time zone, catch-up policy and request template,
//! and the firing times and requests it gives. The settings read their own
//! `[[schedules]]` with it, so it checks requests through
//! [`crate::intake::Rules`] rather than the settings; the running set of
//! schedules is [`super::Schedules`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use super::template::Template;
use crate::intake::{Rules, Trust, prepare};
use crate::job::Hooks;
use crate::job::request::JobRequest;
use crate::units::parse_duration;

/// An occurrence this close to "now" is on time, not missed.
pub const GRACE: Duration = Duration::from_secs(60);

/// What to do with occurrences missed while the daemon was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Skip them.
    None,
    /// Run the most recent one once (the default).
    Latest,
    /// Run every one within `window` (at most 1000).
    All { window: Duration },
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron_text: String,
    pub cron: Cron,
    pub timezone: Tz,
    pub enabled: bool,
    pub catch_up: CatchUp,
    pub account: String,
    pub operation: String,
    /// `params` with every string parsed as a template.
    params: serde_json::Value,
    name_template: Template,
    pub hooks: Hooks,
    /// `config` or the schedule file's path.
    pub source: String,
}

/// A schedule that does not load, with where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ScheduleError {
    pub source_name: String,
    pub message: String,
}

pub(crate) fn bad(source: &str, message: impl Into<String>) -> ScheduleError {
    ScheduleError {
        source_name: source.to_string(),
        message: message.into(),
    }
}

/// Where a template string sits in its file (1-based line and column of the
/// string's first character), found by searching the file's text.
fn locate(text: Option<&str>, needle: &str) -> Option<(usize, usize)> {
    let text = text?;
    let at = text.find(needle)?;
    let line = text[..at].matches('\n').count() + 1;
    let column = text[..at]
        .rsplit('\n')
        .next()
        .map_or(0, |l| l.chars().count())
        + 1;
    Some((line, column))
}

/// Parses every string in `value` as a template (reporting the first error
/// with its position) and returns the value unchanged.
fn check_templates(
    value: &serde_json::Value,
    path: &str,
    source: &str,
    text: Option<&str>,
) -> Result<(), ScheduleError> {
    match value {
        serde_json::Value::String(s) => Template::parse(s).map(|_| ()).map_err(|e| {
            let place = match locate(text, s) {
                Some((line, column)) => format!("line {line} column {}", column + e.column - 1),
                None => format!("column {} of the value", e.column),
            };
            bad(source, format!("{path}: {place}: {}", e.message))
        }),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_templates(v, &format!("{path}[{i}]"), source, text)),
        serde_json::Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_templates(v, &format!("{path}.{k}"), source, text)),
        _ => Ok(()),
    }
}

fn render_value(
    value: &serde_json::Value,
    at: chrono::NaiveDateTime,
    schedule: &str,
) -> serde_json::Value {
    match value {
        serde_json::Value::String(s) => match Template::parse(s) {
            Ok(t) => serde_json::Value::String(t.render(at, schedule)),
            Err(_) => value.clone(),
        },
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| render_value(v, at, schedule))
                .collect(),
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_value(v, at, schedule)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The default job name: unique per firing.
const DEFAULT_NAME: &str = "{{schedule}}-{{now | %Y%m%d-%H%M%S}}";

impl Schedule {
    /// Builds a schedule from one TOML table (a `[[schedules]]` entry or a
    /// schedule file). `text` is the file's text, for error positions.
    pub fn from_table<R: Rules + ?Sized>(
        table: toml::Table,
        source: &str,
        text: Option<&str>,
        rules: &R,
    ) -> Result<Schedule, ScheduleError> {
        let value = serde_json::to_value(&table).map_err(|e| bad(source, e.to_string()))?;
        let obj = value.as_object().cloned().unwrap_or_default();
        for key in obj.keys() {
            if ![
                "name",
                "cron",
                "timezone",
                "enabled",
                "catch_up",
                "catch_up_window",
                "request",
            ]
            .contains(&key.as_str())
            {
                return Err(bad(source, format!("unknown key `{key}`")));
            }
        }
        let string = |key: &str| obj.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let name = string("name").ok_or_else(|| bad(source, "`name` is required"))?;
        if name.len() > 80 || !crate::job::is_valid_name(&name) {
            return Err(bad(
                source,
                format!("schedule name {name:?}: use 1 to 80 of A-Z a-z 0-9 . _ -"),
            ));
        }
        let source = format!("{source} (schedule {name})");
        let cron_text = string("cron")
            .ok_or_else(|| bad(&source, "`cron` is required, such as \"0 6 * * *\""))?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(&cron_text)
            .map_err(|e| bad(&source, format!("cron {cron_text:?}: {e}")))?;
        let timezone: Tz = string("timezone")
            .unwrap_or_else(|| "Europe/Moscow".into())
            .parse()
            .map_err(|_| {
                bad(
                    &source,
                    "`timezone` must be an IANA zone such as \"Europe/Moscow\"",
                )
            })?;
        let enabled = match obj.get("enabled") {
            None => true,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(&source, "`enabled` must be true or false"))?,
        };
        let window = match string("catch_up_window") {
            None => Duration::from_secs(7 * 86_400),
            Some(text) => {
                parse_duration(&text).map_err(|e| bad(&source, format!("catch_up_window: {e}")))?
            }
        };
        let catch_up = match string("catch_up").as_deref() {
            None | Some("latest") => CatchUp::Latest,
            Some("none") => CatchUp::None,
            Some("all") => CatchUp::All { window },
            Some(other) => {
                return Err(bad(
                    &source,
                    format!("catch_up {other:?}: expected \"none\", \"latest\" or \"all\""),
                ));
            }
        };
        let request = obj.get("request").cloned().ok_or_else(|| {
            bad(
                &source,
                "a [request] table is required (account, operation, params)",
            )
        })?;
        let mut request: JobRequest =
            serde_json::from_value(request).map_err(|e| bad(&source, format!("request: {e}")))?;
        let name_text = request
            .name
            .take()
            .unwrap_or_else(|| DEFAULT_NAME.to_string());
        let name_template = Template::parse(&name_text).map_err(|e| {
            bad(
                &source,
                format!("request.name: column {}: {}", e.column, e.message),
            )
        })?;
        if name_template.is_literal() {
            return Err(bad(
                &source,
                "request.name must contain a time variable (such as {{now | %Y%m%d-%H%M}}) so each firing gets its own job",
            ));
        }
        check_templates(&request.params, "request.params", &source, text)?;
        let schedule = Schedule {
            name,
            cron_text,
            cron,
            timezone,
            enabled,
            catch_up,
            account: request.account.clone(),
            operation: request.operation.clone(),
            params: request.params.clone(),
            name_template,
            hooks: Hooks {
                on_done: request.on_done.clone(),
                on_failed: request.on_failed.clone(),
                on_done_url: request.on_done_url.clone(),
            },
            source: source.clone(),
        };
        // Render once now and validate like a request file, so a schedule
        // that can never produce a valid job is refused at load.
        let sample = schedule.request_at(Utc::now().with_timezone(&schedule.timezone));
        prepare(
            sample,
            None,
            rules,
            Trust::Operator,
            "schedule",
            String::new(),
            0,
        )
        .map_err(|e| bad(&source, e.to_string()))?;
        Ok(schedule)
    }

    /// The request a firing at `at` creates.
    pub fn request_at(&self, at: DateTime<Tz>) -> JobRequest {
        let local = at.naive_local();
        JobRequest {
            account: self.account.clone(),
            operation: self.operation.clone(),
            params: render_value(&self.params, local, &self.name),
            name: Some(self.name_template.render(local, &self.name)),
            on_done: self.hooks.on_done.clone(),
            on_failed: self.hooks.on_failed.clone(),
            on_done_url: self.hooks.on_done_url.clone(),
        }
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.timezone), false)
            .ok()
    }

    /// The occurrences to fire now, given the last firing and the policy.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Vec<DateTime<Tz>> {
        let mut missed = Vec::new();
        let mut cursor = last;
        while let Some(next) = self.next_after(cursor) {
            let next_utc = next.with_timezone(&Utc);
            if next_utc > now {
                break;
            }
            missed.push(next);
            cursor = next_utc;
            // A minutely schedule down for a year would be half a million
            // occurrences; only the newest can matter.
            if missed.len() > 10_000 {
                missed.drain(..5_000);
            }
        }
        let age = |t: &DateTime<Tz>| {
            (now - t.with_timezone(&Utc))
                .to_std()
                .unwrap_or(Duration::ZERO)
        };
        match self.catch_up {
            CatchUp::None => missed.into_iter().filter(|t| age(t) <= GRACE).collect(),
            CatchUp::Latest => missed.pop().into_iter().collect(),
            CatchUp::All { window } => {
                let mut kept: Vec<_> = missed.into_iter().filter(|t| age(t) <= window).collect();
                if kept.len() > 1000 {
                    kept.drain(..kept.len() - 1000);
                }
                kept
            }
        }
    }
}
