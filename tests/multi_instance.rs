//! Three daemons share one PostgreSQL queue, and one of them dies midway.
//!
//! Each daemon is a `Scheduler` with its own owner id, its own `Store`
//! handle and its own tokio runtime, so killing one (shutting its runtime
//! down) stops all of its tasks at once without releasing its leases, as a
//! crash would. A trigger in the test database logs every change of a job's
//! state or lease holder together with who made it (each daemon connects
//! with `application_name` = its owner id), which lets the test check that
//! no job was ever taken from a daemon whose lease was still alive.
//!
//! Runs only when `DOCFETCH_TEST_POSTGRES_URL` is set.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use docfetch::config::Settings;
use docfetch::job::request::RequestFormat;
use docfetch::job::{JobState, now_ms};
use docfetch::providers::Providers;
use docfetch::scheduler::Scheduler;
use docfetch::sim::SimConfig;
use docfetch::sim::fresh::FreshSimConfig;
use docfetch::store::{JobFilter, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, wait_until};
use crate::store_contract::TestDb;

const JOBS: usize = 2_000;
const OWNERS: [&str; 3] = ["daemon-a", "daemon-b", "daemon-c"];
/// The daemon that is killed.
const VICTIM: &str = "daemon-a";

/// Every change of state or lease holder, with who made it and when.
const LEASE_LOG: &str = r#"
CREATE TABLE lease_log (
    seq             BIGSERIAL PRIMARY KEY,
    job_id          TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    old_state       TEXT NOT NULL,
    new_state       TEXT NOT NULL,
    old_owner       TEXT,
    new_owner       TEXT,
    old_lease_until BIGINT
);
CREATE FUNCTION log_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lease_log (job_id, at_ms, actor, old_state, new_state, old_owner, new_owner,
                           old_lease_until)
    VALUES (NEW.id, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
            current_setting('application_name'), OLD.state, NEW.state, OLD.lease_owner,
            NEW.lease_owner, OLD.lease_until);
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_lease_log AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.lease_owner IS DISTINCT FROM NEW.lease_owner)
    EXECUTE FUNCTION log_lease();
"#;

/// One daemon: a runtime of its own running `Scheduler::run`.
struct Daemon {
    runtime: tokio::runtime::Runtime,
    stop: CancellationToken,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Daemon {
    fn start(owner: &'static str, settings: Arc<Settings>) -> Daemon {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(owner)
            .enable_all()
            .build()
            .expect("daemon runtime");
        let stop = CancellationToken::new();
        let (finished, done) = tokio::sync::oneshot::channel();
        let stopping = stop.clone();
        runtime.spawn(async move {
            let store = Store::open(&settings.store.url)
                .await
                .expect("daemon store opens");
            let http = docfetch::http::client(&settings.http).expect("http client");
            let scheduler = Arc::new(Scheduler::new(
                store,
                Providers::from_settings(&settings),
                http,
                settings.clone(),
                owner.to_string(),
            ));
            scheduler.run(stopping, None).await;
            let _ = finished.send(());
        });
        Daemon {
            runtime,
            stop,
            done,
        }
    }

    /// A crash: every task stops where it is; leases stay in the store.
    async fn kill(self) {
        Daemon::shut_down(self.runtime).await;
    }

    async fn shut_down(runtime: tokio::runtime::Runtime) {
        // A runtime cannot be dropped from async code; a blocking thread can.
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5)))
            .await
            .expect("runtime shut down");
    }

    /// A clean stop: running steps finish and leases are released.
    async fn stop(self) {
        let Daemon {
            runtime,
            stop,
            done,
        } = self;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), done)
            .await
            .expect("the daemon stops in time")
            .expect("the daemon stopped");
        Daemon::shut_down(runtime).await;
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Change {
    job_id: String,
    at_ms: i64,
    actor: String,
    old_state: String,
    new_state: String,
    old_owner: Option<String>,
    new_owner: Option<String>,
    old_lease_until: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_share_one_queue_and_one_dying_loses_nothing_and_steals_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // Each job is ordered, waits, and is found ready at its first poll and
    // downloaded: two claims, with a wait between them.
    let sim = SimConfig {
        fresh: FreshSimConfig {
            pending_polls: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    // An account whose fleet-wide `concurrency` leaves every daemon's 16
    // workers busy: the victim must be holding leases when it dies.
    let wide = format!(
        "[accounts.fresh-wide]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = \"{{fresh_base}}\"\n\
         username = \"{}\"\npassword = \"{}\"\nconcurrency = 64\n",
        FreshSimConfig::default().username,
        FreshSimConfig::default().password,
    );
    let app = TestApp::spawn_with(sim, &wide, &[]).await;
    let settings_for = |owner: &str| {
        let mut settings = (*app.settings).clone();
        settings.store.url = db.plain_url_as(owner);
        Arc::new(settings)
    };
    let test_settings = settings_for("test");
    let store = Store::open(&test_settings.store.url).await.unwrap();
    let Store::Postgres(pg) = &store else {
        panic!("a PostgreSQL store")
    };
    let pool = pg.pool().clone();
    sqlx::raw_sql(LEASE_LOG).execute(&pool).await.unwrap();

    let started = Instant::now();
    let mut daemons: HashMap<&str, Daemon> = OWNERS
        .iter()
        .map(|&owner| (owner, Daemon::start(owner, settings_for(owner))))
        .collect();

    // Requests arrive while the daemons run, from several submitters.
    let mut submitters = tokio::task::JoinSet::new();
    for part in 0..8 {
        let store = store.clone();
        let settings = test_settings.clone();
        submitters.spawn(async move {
            for i in (part..JOBS).step_by(8) {
                let request = json!({
                    "account": "fresh-wide", "operation": "balance_sheet",
                    "name": format!("mi-{i:04}"),
                    "params": {"_sim": {"filename": format!("mi-{i:04}.json")}},
                });
                let bytes = serde_json::to_vec(&request).unwrap();
                docfetch::inbox::accept(
                    &store,
                    &settings,
                    &bytes,
                    RequestFormat::Json,
                    None,
                    "test",
                )
                .await
                .expect("request accepted");
            }
        });
    }
    while let Some(joined) = submitters.join_next().await {
        joined.unwrap();
    }
    let submitted = started.elapsed();

    // Kill the victim midway, while it holds work.
    let done_count = || {
        let store = store.clone();
        async move { count(&store, JobState::Done).await }
    };
    let held_by_victim = || {
        let store = store.clone();
        async move {
            store
                .list(&JobFilter {
                    state: Some(JobState::Running),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .filter(|j| j.lease_owner.as_deref() == Some(VICTIM))
                .count()
        }
    };
    wait_until(Duration::from_secs(120), "half the jobs done", || async {
        (done_count().await >= JOBS / 2 && held_by_victim().await > 0).then_some(())
    })
    .await;
    daemons.remove(VICTIM).unwrap().kill().await;
    // Its connections are gone once the server has seen the sockets close;
    // from then on nothing the victim sent can still change a row.
    wait_until(
        Duration::from_secs(10),
        "the victim's sessions to end",
        || {
            let pool = pool.clone();
            async move {
                let sessions: (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = $1",
                )
                .bind(VICTIM)
                .fetch_one(&pool)
                .await
                .unwrap();
                (sessions.0 == 0).then_some(())
            }
        },
    )
    .await;
    let held = held_by_victim().await;
    let killed_at = started.elapsed();
    assert!(held > 0, "the victim died holding leases");

    // Housekeeping, as `docfetch run` does it: take back expired leases
    // every half lease (from a survivor's point of view). It starts only
    // once the victim's holdings are counted: before the kill no lease can
    // expire (all daemons renew theirs), and the kill itself may take longer
    // than a lease on a loaded machine.
    let lease = app.settings.scheduler.lease;
    let housekeeping = {
        let store = Store::open(&settings_for("daemon-b").store.url)
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(lease / 2);
            loop {
                every.tick().await;
                store.reclaim_expired(now_ms(), &[]).await.expect("reclaim");
            }
        })
    };

    wait_until(Duration::from_secs(120), "every job to finish", || async {
        (done_count().await == JOBS).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    housekeeping.abort();
    for (_, daemon) in daemons.drain() {
        daemon.stop().await;
    }

    // Every job done, nothing else.
    let counts = store.counts().await.unwrap();
    assert_eq!(counts, [(JobState::Done, JOBS as u64)], "{counts:?}");

    // Done exactly once each, by the daemon that held its lease.
    let log: Vec<Change> = sqlx::query_as("SELECT * FROM lease_log ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut dones: HashMap<&str, usize> = HashMap::new();
    let mut claims: HashMap<&str, usize> = HashMap::new();
    for c in &log {
        if c.new_state == "running" {
            // A claim: only of free work, by the claimer itself.
            assert!(
                matches!(c.old_state.as_str(), "queued" | "waiting") && c.old_owner.is_none(),
                "{c:?}"
            );
            assert_eq!(c.new_owner.as_deref(), Some(c.actor.as_str()), "{c:?}");
            *claims.entry(c.actor.as_str()).or_default() += 1;
        } else if c.old_state == "running" {
            let owner = c.old_owner.as_deref().expect("a running job has an owner");
            if c.actor != owner {
                // Only an expired lease may be taken back by someone else,
                // and only back to waiting, never to an outcome.
                let until = c.old_lease_until.expect("a lease has an end");
                assert!(until < c.at_ms, "a live lease was taken: {c:?}");
                assert_eq!(c.new_state, "waiting", "{c:?}");
            }
        }
        if c.new_state == "done" {
            *dones.entry(c.job_id.as_str()).or_default() += 1;
        }
    }
    assert_eq!(dones.len(), JOBS);
    assert!(dones.values().all(|&n| n == 1), "a job was done twice");
    for owner in ["daemon-b", "daemon-c", VICTIM] {
        assert!(
            claims.get(owner).copied().unwrap_or(0) > 0,
            "{owner} took part"
        );
    }
    let reclaimed = log
        .iter()
        .filter(|c| c.old_owner.as_deref() == Some(VICTIM) && c.actor != VICTIM)
        .count();
    assert_eq!(reclaimed, held, "exactly the victim's jobs were taken back");

    // One outcome and one saved file per job. Transient errors on the way
    // (each may repeat one remote request) are collected for the bounds and
    // messages below.
    let per_job: Vec<(String, i64, Vec<String>)> = sqlx::query_as(
        "SELECT j.name,
                COUNT(e.seq) FILTER (WHERE e.kind = 'done'),
                COALESCE(array_agg(e.message) FILTER (WHERE e.kind = 'error'), '{}')
         FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id
         GROUP BY j.name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_job.len(), JOBS);
    let mut troubles = Vec::new();
    for (name, done_events, errors) in per_job {
        assert_eq!(done_events, 1, "{name} has one done event");
        let file = app.output(&name).join(format!("{name}.json"));
        assert!(file.is_file(), "{} is saved", file.display());
        troubles.extend(errors.into_iter().map(|e| format!("{name}: {e}")));
    }

    // Remote work repeated only for what the victim was in the middle of
    // (and for transient errors, which are retried by design).
    let orders = app.sim.fresh.orders() as usize;
    let downloads = app.sim.fresh.counters.downloads.load(Ordering::SeqCst) as usize;
    let bound = JOBS + held + troubles.len();
    assert!(
        (JOBS..=bound).contains(&orders),
        "{orders} orders for {JOBS} jobs, {held} interrupted; errors: {troubles:#?}"
    );
    assert!(
        (JOBS..=bound).contains(&downloads),
        "{downloads} downloads for {JOBS} jobs, {held} interrupted; errors: {troubles:#?}"
    );

    let total_claims: usize = claims.values().sum();
    println!(
        "multi-instance: {JOBS} jobs, 3 daemons (one killed at {killed_at:.1?} holding {held}): \
         submitted in {submitted:.1?}, all done in {elapsed:.1?}; {total_claims} claims \
         ({:.0}/s), {orders} orders, {downloads} downloads, {} transient errors; \
         claims by daemon {claims:?}",
        total_claims as f64 / elapsed.as_secs_f64(),
        troubles.len()
    );
    for trouble in &troubles {
        println!("  transient error: {trouble}");
    }
}

async fn count(store: &Store, state: JobState) -> usize {
    store
        .counts()
        .await
        .unwrap()
        .into_iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| n as usize)
}

/// An account's `concurrency` is a limit for the fleet, not per daemon:
/// two daemons with `concurrency = 2` never have more than two requests in
/// flight at the provider together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_accounts_concurrency_holds_across_daemons() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    const NARROW_JOBS: usize = 24;
    let sim = SimConfig {
        fresh: FreshSimConfig {
            pending_polls: 0,
            latency: Duration::from_millis(60),
            ..Default::default()
        },
        ..Default::default()
    };
    let extra = format!(
        "[accounts.fresh-narrow]\nprovider = \"1c-fresh\"\nflow = \"plain\"\nbase_url = \"{{fresh_base}}\"\n\
         username = \"{}\"\npassword = \"{}\"\nconcurrency = 2\n",
        FreshSimConfig::default().username,
        FreshSimConfig::default().password,
    );
    let app = TestApp::spawn_with(sim, &extra, &[]).await;
    let settings_for = |owner: &str| {
        let mut settings = (*app.settings).clone();
        settings.store.url = db.plain_url_as(owner);
        Arc::new(settings)
    };
    let test_settings = settings_for("test");
    let store = Store::open(&test_settings.store.url).await.unwrap();
    for i in 0..NARROW_JOBS {
        let request = json!({
            "account": "fresh-narrow", "operation": "balance_sheet",
            "name": format!("narrow-{i:02}"),
        });
        docfetch::inbox::accept(
            &store,
            &test_settings,
            &serde_json::to_vec(&request).unwrap(),
            RequestFormat::Json,
            None,
            "test",
        )
        .await
        .expect("request accepted");
    }
    let daemons = ["narrow-a", "narrow-b"].map(|owner| Daemon::start(owner, settings_for(owner)));
    wait_until(Duration::from_secs(120), "every job to finish", || async {
        (count(&store, JobState::Done).await == NARROW_JOBS).then_some(())
    })
    .await;
    for daemon in daemons {
        daemon.stop().await;
    }
    let max = app.sim.fresh.counters.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&max),
        "{max} requests were in flight at once for an account limited to 2"
    );
    let slots: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM account_slots")
        .fetch_one(&match &store {
            Store::Postgres(pg) => pg.pool().clone(),
            Store::Sqlite(_) => panic!("a PostgreSQL store"),
        })
        .await
        .unwrap();
    assert_eq!(slots.0, 0, "every slot was given back");
}
