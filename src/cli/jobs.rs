//! The commands on jobs: `submit [--wait]`, `jobs [--watch]` and `show`
//! (`cancel` and `retry` are in [`crate::commands`], shared with the API).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::CliError;
use crate::config::Settings;
use crate::inbox::{self, AcceptError};
use crate::job::request::RequestFormat;
use crate::job::{Job, JobState, now_ms, rfc3339};
use crate::store::Store;
use crate::units::format_duration;

pub(super) async fn submit(
    settings: &Arc<Settings>,
    files: &[PathBuf],
    wait: bool,
) -> Result<u8, CliError> {
    let store = Store::open(&settings.store.url).await?;
    let mut submitted = Vec::new();
    let mut rejected = 0;
    for path in files {
        match submit_one(&store, settings, path).await {
            Ok(job) => {
                println!("submitted {} ({})", job.name, job.id);
                submitted.push(job);
            }
            Err(SubmitError::Rejected(reason)) => {
                eprintln!("{}: rejected: {reason}", path.display());
                rejected += 1;
            }
            Err(SubmitError::Failed(e)) => return Err(e),
        }
    }
    if rejected > 0 && submitted.is_empty() {
        return Err(CliError::Usage(format!(
            "{rejected} request(s) rejected; nothing submitted"
        )));
    }
    if !wait {
        return Ok(if rejected > 0 { 1 } else { 0 });
    }
    if let Store::Sqlite(s) = &store
        && let Ok(lock) = crate::store::sqlite::DaemonLock::acquire(s.path())
    {
        drop(lock);
        eprintln!(
            "note: no daemon is running on this store; the jobs run once `docfetch run` starts"
        );
    }
    let failed = wait_for(&store, &submitted, &settings.paths.output).await?;
    Ok(if failed > 0 || rejected > 0 { 1 } else { 0 })
}

pub(super) enum SubmitError {
    Rejected(String),
    Failed(CliError),
}

pub(super) async fn submit_one(
    store: &Store,
    settings: &Settings,
    path: &Path,
) -> Result<Job, SubmitError> {
    let format =
        RequestFormat::from_path(path).map_err(|e| SubmitError::Rejected(e.to_string()))?;
    let meta = std::fs::metadata(path).map_err(|e| {
        SubmitError::Failed(CliError::Usage(format!(
            "cannot read {}: {e}",
            path.display()
        )))
    })?;
    if meta.len() > settings.inbox.max_request_size {
        return Err(SubmitError::Rejected(format!(
            "the request is {} bytes; requests are limited to {} bytes",
            meta.len(),
            settings.inbox.max_request_size
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        SubmitError::Failed(CliError::Usage(format!(
            "cannot read {}: {e}",
            path.display()
        )))
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    // Each submit is a new request: a duplicate name is refused even when
    // the content is identical (only the drop directory recognises a file
    // it has already accepted).
    let source = format!("cli:{}:{}", path.display(), uuid::Uuid::new_v4().simple());
    match inbox::accept(store, settings, &bytes, format, stem, &source).await {
        Ok(job) => Ok(job),
        Err(AcceptError::Request(e)) => Err(SubmitError::Rejected(e.to_string())),
        Err(AcceptError::Store(e)) => Err(SubmitError::Failed(e.into())),
    }
}

/// Waits until every job is finished and returns how many failed. On a
/// terminal it shows a live line per job (a spinner while waiting, bytes and
/// rate while a file is being written); otherwise it prints a line per change.
pub(super) async fn wait_for(
    store: &Store,
    jobs: &[Job],
    output: &Path,
) -> Result<usize, CliError> {
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let lines: Vec<indicatif::ProgressBar> = jobs
        .iter()
        .map(|job| {
            let bar = bars.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(job.name.clone());
            if live {
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            bar
        })
        .collect();
    let mut last: Vec<Option<(JobState, u32)>> = vec![None; jobs.len()];
    let mut written: Vec<(u64, std::time::Instant)> =
        vec![(0, std::time::Instant::now()); jobs.len()];
    loop {
        let mut finished = 0;
        let mut failed = 0;
        for (i, job) in jobs.iter().enumerate() {
            let Some(current) = store.find(&job.id).await? else {
                return Err(CliError::Failed(format!(
                    "job {} disappeared from the store",
                    job.name
                )));
            };
            let seen = Some((current.state, current.polls));
            let done = current.state.is_finished();
            if live {
                let message = match (current.state, part_bytes(&output.join(&current.name))) {
                    (JobState::Running, Some(bytes)) => {
                        let (before, at) = written[i];
                        let rate = (bytes.saturating_sub(before)) as f64
                            / at.elapsed().as_secs_f64().max(0.001);
                        written[i] = (bytes, std::time::Instant::now());
                        format!(
                            "downloading {} ({}/s)",
                            indicatif::HumanBytes(bytes),
                            indicatif::HumanBytes(rate as u64)
                        )
                    }
                    _ => describe_progress(&current),
                };
                if done && last[i] != seen {
                    lines[i].finish_with_message(message);
                } else if !done {
                    lines[i].set_message(message);
                }
            } else if last[i] != seen {
                println!("{}: {}", current.name, describe_progress(&current));
            }
            last[i] = seen;
            if done {
                finished += 1;
                if current.state != JobState::Done {
                    failed += 1;
                }
            }
        }
        if finished == jobs.len() {
            return Ok(failed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Bytes written so far to a download in progress (`.NAME.part`) in `dir`.
pub(super) fn part_bytes(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.ends_with(".part")
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
}

pub(super) fn describe_progress(job: &Job) -> String {
    match job.state {
        JobState::Done => {
            let files: Vec<String> = job
                .result
                .iter()
                .flat_map(|r| r.files.iter())
                .map(|f| format!("{} ({} bytes)", f.name, f.size))
                .collect();
            format!("done: {}", files.join(", "))
        }
        JobState::Failed => format!(
            "failed: {}",
            job.last_error.as_deref().unwrap_or("unknown error")
        ),
        JobState::Waiting => {
            let next =
                Duration::from_millis(u64::try_from(job.next_run_at - now_ms()).unwrap_or(0));
            match &job.last_error {
                Some(e) => format!(
                    "waiting after an error (next try in {}): {e}",
                    format_duration(next)
                ),
                None => format!(
                    "waiting ({} polls so far, next in {})",
                    job.polls,
                    format_duration(next)
                ),
            }
        }
        other => other.to_string(),
    }
}

pub(super) fn print_jobs(jobs: &[Job], json: bool) {
    let mut out = std::io::stdout().lock();
    let text = if json {
        jobs_json_lines(jobs)
    } else {
        jobs_table(jobs, now_ms())
    };
    let _ = out.write_all(text.as_bytes());
}

/// One JSON object per line, as the API's job summaries.
fn jobs_json_lines(jobs: &[Job]) -> String {
    jobs.iter()
        .map(|job| format!("{}\n", job.summary_json()))
        .collect()
}

/// The jobs as a table whose columns are as wide as their widest cell, so a
/// long provider or job name never pushes the next column out of line.
pub(super) fn jobs_table(jobs: &[Job], now: crate::job::Millis) -> String {
    let mut table = super::table([
        "NAME",
        "PROVIDER",
        "STATE",
        "AGE",
        "POLLS",
        "NEXT",
        "LAST ERROR",
    ]);
    for job in jobs {
        let age = Duration::from_millis(u64::try_from(now - job.created_at).unwrap_or(0));
        let next = if job.state.is_finished() {
            "-".to_string()
        } else {
            relative(job.next_run_at, now)
        };
        table.add_row([
            job.name.clone(),
            job.provider.clone(),
            job.state.as_str().to_string(),
            format_duration(age),
            job.polls.to_string(),
            next,
            job.last_error.clone().unwrap_or_default(),
        ]);
    }
    super::render(&table)
}

/// When something is due, said the way a person reads it: `in 4 min`,
/// `in 2 h`, `due now`, `12 s late`.
pub(super) fn relative(at: crate::job::Millis, now: crate::job::Millis) -> String {
    let delta = at - now;
    if delta.abs() < 1000 {
        return "due now".into();
    }
    let secs = delta.unsigned_abs() / 1000;
    let amount = match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs / 60 % 60),
        _ => format!("{} d {} h", secs / 86_400, secs / 3600 % 24),
    };
    if delta > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} late")
    }
}

/// `docfetch jobs --watch`: the same listing, redrawn every `every` until
/// Ctrl-C (SIGINT) or SIGTERM. On a terminal the table is redrawn in place:
/// the cursor goes home, each line clears only its own leftover end, and
/// the rest of the screen is cleared last, in one write, so nothing blinks.
/// When stdout is not a terminal (a pipe, a log), each refresh is printed
/// after the previous one, headed by its time, so nothing is lost.
pub(super) async fn watch(
    store: &Store,
    filter: &crate::store::JobFilter,
    json: bool,
    every: Duration,
) -> Result<u8, CliError> {
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let stop = crate::app::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let jobs = store.list(filter).await?;
        let body = if json {
            jobs_json_lines(&jobs)
        } else {
            jobs_table(&jobs, now_ms())
        };
        let frame = if live {
            watch_frame(&body)
        } else {
            format!("# {}\n{body}\n", rfc3339(now_ms()))
        };
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(frame.as_bytes()).and_then(|()| out.flush()) {
            // A closed pipe (`| head`) ends the watch quietly.
            return if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(0)
            } else {
                Err(CliError::Failed(format!("cannot write: {e}")))
            };
        }
        drop(out);
        tokio::select! {
            () = &mut stop => return Ok(0),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One in-place redraw: home, each line followed by "clear to end of line",
/// then "clear below".
fn watch_frame(body: &str) -> String {
    let mut frame = String::from("\x1b[H");
    for line in body.lines() {
        frame.push_str(line);
        frame.push_str("\x1b[K\n");
    }
    frame.push_str("\x1b[J");
    frame
}

pub(super) async fn show(settings: &Settings, key: &str, json: bool) -> Result<(), CliError> {
    let store = Store::open(&settings.store.url).await?;
    let job = store
        .find(key)
        .await?
        .ok_or_else(|| CliError::Usage(format!("no job named or with id {key:?}")))?;
    let events = store.events(&job.id).await?;
    if json {
        let mut value = job.summary_json();
        value["events"] = serde_json::to_value(
            events
                .iter()
                .map(crate::job::JobEvent::to_json)
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        println!("{value:#}");
        return Ok(());
    }
    println!("name:       {}", job.name);
    println!("id:         {}", job.id);
    println!("account:    {} ({})", job.account, job.provider);
    println!("operation:  {}", job.operation);
    println!("state:      {}", describe_progress(&job));
    println!(
        "attempts:   {} in a row, {} polls, {} steps",
        job.attempts, job.polls, job.steps
    );
    println!("created:    {}", rfc3339(job.created_at));
    if let Some(at) = job.finished_at {
        println!("finished:   {}", rfc3339(at));
    }
    println!("source:     {}", job.source);
    println!(
        "output:     {}",
        crate::receipt::job_dir(&settings.paths.output, &job).display()
    );
    if let Some(next) = crate::job::next_run_line(&job, &events) {
        println!("next:       {next}");
    }
    println!("history:");
    for e in events {
        println!("  {}  {:<9} {}", rfc3339(e.at), e.kind, e.message);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, provider: &str, state: JobState, next_run_at: i64) -> Job {
        Job {
            id: "id".into(),
            name: name.into(),
            account: "a".into(),
            provider: provider.into(),
            operation: "op".into(),
            params: serde_json::Value::Null,
            state,
            cursor: serde_json::Value::Null,
            attempts: 0,
            polls: 3,
            steps: 0,
            next_run_at,
            lease_owner: None,
            lease_until: None,
            last_error: None,
            result: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            deadline_at: 0,
            source: "cli".into(),
            request_sha256: String::new(),
            hooks: None,
            hooks_state: None,
            hooks_attempts: 0,
        }
    }

    #[test]
    fn a_long_provider_name_does_not_push_the_state_column_out_of_line() {
        let now = 1_000_000;
        let jobs = [
            job("a", "ofd", JobState::Waiting, now + 240_000),
            job(
                "protocol-with-a-long-name",
                "kontur-diadoc",
                JobState::Failed,
                0,
            ),
            job("b", "atol", JobState::Queued, now),
        ];
        let text = jobs_table(&jobs, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let column = lines[0].find("STATE").unwrap();
        for (line, state) in lines[1..].iter().zip(["waiting", "failed", "queued"]) {
            assert_eq!(line.find(state), Some(column), "{text}");
        }
        let next = lines[0].find("NEXT").unwrap();
        assert_eq!(lines[1].find("in 4 min"), Some(next), "{text}");
        assert_eq!(lines[3].find("due now"), Some(next), "{text}");
    }

    #[test]
    fn next_is_said_relative_to_now() {
        assert_eq!(relative(10_000, 10_500), "due now");
        assert_eq!(relative(45_000, 0), "in 45 s");
        assert_eq!(relative(4 * 60_000 + 59_000, 0), "in 4 min");
        assert_eq!(relative(3_600_000 * 2 + 60_000 * 5, 0), "in 2 h 5 min");
        assert_eq!(relative(0, 90_000), "1 min late");
        assert_eq!(relative(86_400_000 * 3, 0), "in 3 d 0 h");
    }

    #[test]
    fn a_watched_frame_is_redrawn_in_place_without_clearing_the_screen_first() {
        let frame = watch_frame("A  B\n1  2\n");
        assert_eq!(frame, "\x1b[HA  B\x1b[K\n1  2\x1b[K\n\x1b[J");
        assert!(!frame.contains("\x1b[2J"), "a full clear blinks");
    }
}
