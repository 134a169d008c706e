//! `docfetch schedules [run NAME]`: the schedules with their next firing, or one fired now.

use std::io::Write;
use std::sync::Arc;

use super::{CliError, SchedulesAction};
use crate::config::Settings;
use crate::job::rfc3339;
use crate::store::Store;

/// `docfetch schedules [run NAME]`.
pub(super) async fn schedules(
    settings: &Arc<Settings>,
    action: Option<SchedulesAction>,
    json: bool,
) -> Result<u8, CliError> {
    let store = Store::open(&settings.store.url).await?;
    let schedules = crate::schedule::Schedules::load(store.clone(), settings.clone());
    let (_, errors) = crate::schedule::load_dir(&settings.paths.schedules, settings);
    for e in &errors {
        eprintln!("not loaded: {e}");
    }
    let all = schedules.list().await;
    match action {
        Some(SchedulesAction::Run { name }) => {
            let Some(schedule) = all.iter().find(|s| s.name == name) else {
                let known: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                return Err(CliError::Usage(format!(
                    "no schedule named {name:?}; schedules: {}",
                    known.join(", ")
                )));
            };
            let now = chrono::Utc::now().with_timezone(&schedule.timezone);
            match schedules.fire(schedule, now).await? {
                crate::schedule::Fired::Created(job) => {
                    println!("fired {}: job {}", schedule.name, job.name)
                }
                crate::schedule::Fired::AlreadyThere(job) => {
                    println!("{} already fired this second: job {job}", schedule.name)
                }
            }
            Ok(0)
        }
        None => {
            let now = chrono::Utc::now();
            let last_jobs: std::collections::BTreeMap<String, crate::store::ScheduleJob> = store
                .schedule_jobs()
                .await?
                .into_iter()
                .map(|l| (l.schedule.clone(), l))
                .collect();
            let mut out = std::io::stdout().lock();
            let mut table = super::table([
                "NAME",
                "ENABLED",
                "CRON",
                "TIMEZONE",
                "NEXT (LOCAL)",
                "LAST JOB",
                "SOURCE",
            ]);
            for s in &all {
                let next = s.next_after(now);
                let last = store.last_fire(&s.name).await?;
                let last_job = last_jobs.get(&s.name);
                if json {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "name": s.name, "enabled": s.enabled, "cron": s.cron_text,
                            "timezone": s.timezone.name(), "next": next.map(|t| t.to_rfc3339()),
                            "last_fired": last.map(rfc3339), "source": s.source,
                            "last_job": last_job.map(|l| serde_json::json!({
                                "name": l.job, "scheduled_at": rfc3339(l.at),
                            })),
                        })
                    );
                } else {
                    let next = if s.enabled {
                        next.map(|t| t.format("%Y-%m-%d %H:%M:%S %Z").to_string())
                            .unwrap_or_else(|| "never".into())
                    } else {
                        "-".into()
                    };
                    table.add_row([
                        s.name.clone(),
                        if s.enabled { "yes" } else { "no" }.to_string(),
                        s.cron_text.clone(),
                        s.timezone.name().to_string(),
                        next,
                        last_job.map_or_else(|| "-".to_string(), |l| l.job.clone()),
                        s.source.clone(),
                    ]);
                }
            }
            if !json {
                let _ = out.write_all(super::render(&table).as_bytes());
            }
            Ok(if errors.is_empty() { 0 } else { 1 })
        }
    }
}
