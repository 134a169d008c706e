//! Copies one job store into another, for `docfetch store copy --from …
//! --to …` (typically the embedded SQLite file into a shared PostgreSQL
//! database, or back).
//!
//! Each job travels with every column (leases, counters, hooks state), and
//! its history, in one transaction on the target, so an interrupted copy
//! leaves only whole jobs behind and running it again picks up where it
//! stopped: jobs already present (same id, or same name) are skipped, and
//! schedule firings only ever move forward. Jobs are read in id order a
//! page at a time, so memory stays flat however large the store is.
//!
//! Copy from a store no daemon is writing to: a job that changes while the
//! copy runs is copied as it was when its page was read.

use super::{Store, StoreError};

/// Jobs read from the source per round trip.
const PAGE: u32 = 500;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Jobs written to the target, with their history.
    pub jobs_copied: u64,
    /// Jobs the target already had (same id): an earlier copy brought them.
    pub jobs_skipped: u64,
    /// Names the target already uses for a *different* job (another id);
    /// these jobs were not copied.
    pub name_conflicts: Vec<String>,
    /// History lines written with the copied jobs.
    pub events_copied: u64,
    /// Schedules whose last firing was written (or already as recent).
    pub schedules_copied: u64,
}

/// Copies every job, its history and hooks state, and the schedules' last
/// firings from `from` to `to`. Safe to run again: nothing is copied twice.
pub async fn copy(from: &Store, to: &Store) -> Result<CopyReport, StoreError> {
    let mut report = CopyReport::default();
    let mut after: Option<String> = None;
    loop {
        let page = from.export_jobs(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.job.id.clone());
        for stored in &page {
            let events = from.events(&stored.job.id).await?;
            if to.import_job(stored, &events).await? {
                report.jobs_copied += 1;
                report.events_copied += u64::try_from(events.len()).unwrap_or(u64::MAX);
                continue;
            }
            match to.find(&stored.job.id).await? {
                Some(existing) if existing.id == stored.job.id => report.jobs_skipped += 1,
                _ => report.name_conflicts.push(stored.job.name.clone()),
            }
        }
    }
    for (schedule, at) in from.schedule_runs().await? {
        to.set_last_fire(&schedule, at).await?;
        report.schedules_copied += 1;
    }
    for last in from.schedule_jobs().await? {
        to.note_schedule_job(&last.schedule, &last.job, last.at)
            .await?;
    }
    Ok(report)
}
