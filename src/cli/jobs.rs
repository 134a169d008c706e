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
    if json {
        for job in jobs {
            let _ = writeln!(out, "{}", job.summary_json());
        }
        return;
    }
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:<10} {:>6} {:>6}  {:<20}  LAST ERROR",
        "NAME", "PROVIDER", "STATE", "AGE", "POLLS", "NEXT"
    );
    for job in jobs {
        let age = Duration::from_millis(u64::try_from(now_ms() - job.created_at).unwrap_or(0));
        let next = if job.state.is_finished() {
            "-".to_string()
        } else {
            rfc3339(job.next_run_at)
        };
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:<10} {:>6} {:>6}  {:<20}  {}",
            job.name,
            job.provider,
            job.state.as_str(),
            format_duration(age),
            job.polls,
            next,
            job.last_error.as_deref().unwrap_or("")
        );
    }
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
                .map(|e| serde_json::json!({"at": rfc3339(e.at), "kind": e.kind, "message": e.message}))
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
    println!("history:");
    for e in events {
        println!("  {}  {:<9} {}", rfc3339(e.at), e.kind, e.message);
    }
    Ok(())
}
