//! Small helpers: store URLs and daemon configs, clocks, `/proc` readings
//! and Prometheus samples.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use docfetch::store::Store;
use std::sync::{Mutex, MutexGuard};

/// The value behind `mutex`, even if a panicking holder poisoned it (the
/// benchmark only keeps plain lists behind its locks).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Closes the store's writer so the file is free for another process.
pub(crate) async fn close_store(store: &Store) {
    if let Store::Sqlite(s) = store {
        s.pool().close().await;
    }
}

/// A TOML basic string.
pub(crate) fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A daemon config rooted in `dir`, its API on `api` (`""`: none), warnings only; the
/// drop directory keeps its defaults unless `extra` sets `[inbox]`.
pub(crate) fn daemon_toml(
    dir: &Path,
    scheduler: &str,
    extra: &str,
    accounts: &str,
    api: &str,
) -> String {
    let at = |name: &str| toml_str(&dir.join(name).display().to_string());
    let log = if extra.contains("[log]") {
        ""
    } else {
        "[log]\nlevel = \"warn\"\n"
    };
    format!(
        "[store]\nurl = {}\n[paths]\nrequests = {}\noutput = {}\nattachments = {}\nschedules = {}\n[scheduler]\n{scheduler}\n{log}[api]\nlisten = {}\n{extra}\n{accounts}",
        toml_str(&sqlite_url(&dir.join("docfetch.db"))),
        at("requests"),
        at("output"),
        at("attachments"),
        at("schedules.d"),
        toml_str(api),
    )
}

/// Wall-clock milliseconds since the Unix epoch, with sub-millisecond precision.
pub(crate) fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

pub(crate) fn mtime_ms(path: &Path) -> Result<f64> {
    let modified = std::fs::metadata(path)?.modified()?;
    Ok(modified.duration_since(UNIX_EPOCH)?.as_secs_f64() * 1000.0)
}

/// User + system CPU seconds of `/proc/{pid}` (`self` or a pid), all threads.
pub(crate) fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .context("unreadable /proc stat")
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name;
    // USER_HZ is 100 on every Linux architecture docfetch runs on.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Voluntary and involuntary context switches summed over a process's threads.
pub(crate) fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `key → value` of every sample line of a Prometheus text rendering.
pub(crate) fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sample `{name}{suffix}{…label…}`, or 0.
pub(crate) fn prometheus_value(
    samples: &HashMap<String, f64>,
    name: &str,
    suffix: &str,
    label: &str,
) -> f64 {
    let prefix = format!("{name}{suffix}");
    samples
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(&prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                && k.contains(label)
        })
        .map(|(_, v)| v)
        .sum()
}

/// The growth of histogram `name` (samples matching `label`) from `before`
/// to `after`: `(sum, count)`.
pub(crate) fn histogram_delta(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    name: &str,
    label: &str,
) -> (f64, f64) {
    let grown = |suffix: &str| {
        prometheus_value(after, name, suffix, label) - prometheus_value(before, name, suffix, label)
    };
    (grown("_sum"), grown("_count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        // The bench reads its own /proc entry; the fields must parse.
        assert!(cpu_seconds("self").is_ok());
    }

    #[test]
    fn prometheus_samples_are_matched_by_name_suffix_and_label() {
        let text = "# TYPE x histogram\nx_sum{op=\"claim\"} 1.5\nx_count{op=\"claim\"} 3\nx_sum{op=\"finish\"} 9\nxy_sum{op=\"claim\"} 100\n";
        let samples = parse_prometheus(text);
        assert_eq!(prometheus_value(&samples, "x", "_sum", "op=\"claim\""), 1.5);
        assert_eq!(
            prometheus_value(&samples, "x", "_count", "op=\"claim\""),
            3.0
        );
        assert_eq!(prometheus_value(&samples, "x", "_sum", "op=\"nope\""), 0.0);
    }
}
