//! The overview (jobs by state and provider, the 24-hour chart, oldest
//! waiting job, next due, paused accounts, store size, version, uptime),
//! the accounts page and the schedules page.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use chrono::Utc;
use maud::html;

use super::present::{size, span, time};
use super::{Dashboard, require, store_error};
use crate::job::{JobState, now_ms};

pub async fn page(State(d): State<Arc<Dashboard>>, request: Request) -> Response {
    let viewer = match require(&d, &request) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let lang = viewer.lang;
    let store = &d.api.store;
    let now = now_ms();
    let snapshot = match store.snapshot().await {
        Ok(s) => s,
        Err(e) => return store_error(&viewer, e),
    };
    let hours = match store.finished_per_hour(now - 24 * 3_600_000).await {
        Ok(h) => h,
        Err(e) => return store_error(&viewer, e),
    };
    let store_size = store.size_bytes().await.ok();
    let pauses = paused_accounts(&d, now).await;
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_provider: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for (state, provider, n) in &snapshot.by_state {
        *by_state.entry(state.as_str()).or_default() += n;
        *by_provider
            .entry(provider.as_str())
            .or_default()
            .entry(state.as_str())
            .or_default() += n;
    }
    let body = html! {
        h1 { (lang.t("overview")) " " small class="live" { (lang.t("live")) } }
        section class="cards" id="counts" {
            @for s in JobState::ALL {
                div class={"card s-" (s.as_str())} {
                    div class="n" data-state=(s.as_str()) { (by_state.get(s.as_str()).copied().unwrap_or(0)) }
                    div { (lang.t(s.as_str())) }
                }
            }
        }
        h2 { (lang.t("per_hour")) }
        (super::chart::finished_per_hour(&hours, now))
        p class="legend" { span class="key done" {} (lang.t("done")) " " span class="key failed" {} (lang.t("failed")) }
        h2 { (lang.t("by_state")) }
        table {
            thead { tr { th { (lang.t("provider")) } @for s in JobState::ALL { th { (lang.t(s.as_str())) } } } }
            tbody {
                @for (provider, counts) in &by_provider {
                    tr { td { (provider) } @for s in JobState::ALL { td { (counts.get(s.as_str()).copied().unwrap_or(0)) } } }
                }
            }
        }
        dl class="facts" {
            dt { (lang.t("oldest_waiting")) }
            dd { @match snapshot.oldest_waiting_created { Some(t) => { (time(t)) " (" (span(now - t)) ")" }, None => (lang.t("none")) } }
            dt { (lang.t("next_due")) }
            dd { @match snapshot.next_due { Some(t) => { (time(t)) " (" (span(t - now)) ")" }, None => (lang.t("none")) } }
            dt { (lang.t("paused")) }
            dd { @if pauses.is_empty() { (lang.t("none")) } @else {
                @for (account, until) in &pauses { (account) " → " (time(*until)) " " } } }
            dt { (lang.t("store_size")) } dd { (store_size.map(size).unwrap_or_default()) }
            dt { (lang.t("version")) } dd { (env!("CARGO_PKG_VERSION")) }
            dt { (lang.t("uptime")) } dd { (span(i64::try_from(d.started.elapsed().as_millis()).unwrap_or(0))) }
        }
    };
    super::page(&viewer, "overview", true, body)
}

/// Accounts pausing after a 429: this daemon's own pauses, and on
/// PostgreSQL the fleet's.
async fn paused_accounts(d: &Dashboard, now: i64) -> Vec<(String, i64)> {
    let mut pauses: BTreeMap<String, i64> = d
        .api
        .store
        .account_pauses(now)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let instant_now = std::time::Instant::now();
    for account in d.api.providers.iter() {
        if let Some(until) = account.cooling_until() {
            let at =
                now + i64::try_from(until.duration_since(instant_now).as_millis()).unwrap_or(0);
            let slot = pauses.entry(account.name.clone()).or_insert(at);
            *slot = (*slot).max(at);
        }
    }
    pauses.into_iter().collect()
}

pub async fn accounts(State(d): State<Arc<Dashboard>>, request: Request) -> Response {
    let viewer = match require(&d, &request) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let lang = viewer.lang;
    let now = now_ms();
    let counts = match d.api.store.account_counts().await {
        Ok(c) => c,
        Err(e) => return store_error(&viewer, e),
    };
    let fleet: BTreeMap<String, u64> = d
        .api
        .store
        .account_slots_held()
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let shared = matches!(d.api.store, crate::store::Store::Postgres(_));
    let pauses: BTreeMap<String, i64> = paused_accounts(&d, now).await.into_iter().collect();
    let body = html! {
        h1 { (lang.t("accounts")) }
        table class="accounts" {
            thead { tr {
                th { (lang.t("account")) } th { (lang.t("provider")) } th { (lang.t("in_use")) }
                th { (lang.t("pause_until")) } th { (lang.t("token_age")) } th { (lang.t("last_error")) }
                @for s in JobState::ALL { th { (lang.t(s.as_str())) } }
            } }
            tbody {
                @for account in d.api.providers.iter() {
                    @let local = account.concurrency.saturating_sub(account.limit.available_permits());
                    @let in_use = if shared { fleet.get(&account.name).copied().unwrap_or(0) } else { local as u64 };
                    tr data-account=(account.name) {
                        td { (account.name) }
                        td { (account.provider.name()) }
                        td { (in_use) " / " (account.concurrency) }
                        td { @match pauses.get(&account.name) { Some(t) => (time(*t)), None => "—" } }
                        td class="token-age" { @match account.provider.token_age() {
                            Some(age) => (span(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))),
                            None => "—",
                        } }
                        td class="last-error" { @match account.last_error() {
                            Some((at, message)) => { (time(at)) ": " (message) },
                            None => "—",
                        } }
                        @for s in JobState::ALL {
                            td { (counts.iter().find(|c| c.account == account.name && c.state == s).map(|c| c.count).unwrap_or(0)) }
                        }
                    }
                }
            }
        }
    };
    super::page(&viewer, "accounts", true, body)
}

pub async fn schedules(State(d): State<Arc<Dashboard>>, request: Request) -> Response {
    let viewer = match require(&d, &request) {
        Ok(v) => v,
        Err(login) => return *login,
    };
    let lang = viewer.lang;
    // The latest fired occurrence and the job it became (its page may be
    // gone once retention has pruned the job).
    let last: BTreeMap<String, (String, i64)> = match d.api.store.schedule_jobs().await {
        Ok(r) => r.into_iter().map(|l| (l.schedule, (l.job, l.at))).collect(),
        Err(e) => return store_error(&viewer, e),
    };
    let list = d.schedules.list().await;
    let now = Utc::now();
    let body = html! {
        h1 { (lang.t("schedules")) }
        table class="schedules" {
            thead { tr {
                th { (lang.t("name")) } th { (lang.t("cron")) } th { (lang.t("zone")) }
                th { (lang.t("account")) } th { (lang.t("next_firings")) } th { (lang.t("last_firing")) } th {}
            } }
            tbody {
                @for s in &list {
                    tr data-schedule=(s.name) {
                        td { (s.name) @if !s.enabled { " (off)" } }
                        td { code { (s.cron_text) } }
                        td { (s.timezone.name()) }
                        td { (s.account) }
                        td { @for at in next_firings(s, now, 3) { (at) br; } }
                        td class="last-firing" {
                            @if let Some((job, at)) = last.get(&s.name) {
                                (time(*at)) br;
                                a href={"/jobs/" (super::jobs::urlencode(job))} { (job) }
                            } @else { "—" }
                        }
                        td {
                            form method="post" action={"/schedules/" (super::jobs::urlencode(&s.name)) "/fire"} {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button type="submit" { (lang.t("fire_now")) }
                            }
                        }
                    }
                }
            }
        }
    };
    super::page(&viewer, "schedules", false, body)
}

fn next_firings(
    s: &crate::schedule::Schedule,
    now: chrono::DateTime<Utc>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = now;
    while out.len() < n {
        let Some(at) = s.next_after(after) else { break };
        out.push(at.format("%Y-%m-%d %H:%M %Z").to_string());
        after = at.with_timezone(&Utc);
    }
    out
}
