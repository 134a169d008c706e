//! The scheduler: claims due jobs, runs one provider step for each under a
//! lease, and persists what the step decided.
//!
//! - [`Scheduler::step`] is one testable pass: claim what is due now, run
//!   it, persist the outcomes. Tests call it until the queue is idle.
//! - [`Scheduler::run`] is the thin driver: it keeps up to `workers` jobs in
//!   flight and sleeps until the next job is due, a new request arrives (an
//!   in-process wake-up), another process commits to the store (checked once
//!   a second with SQLite's cheap `data_version`), or a step ends. It never
//!   scans all jobs on a tick: due work is found through an index.
//!
//! Waiting is not failing: "not ready yet" answers are polls, spaced by the
//! provider's hint or by backoff, and never fail a job; transient errors back
//! off separately and fail the job after `max_attempts` in a row; permanent
//! errors fail it at once; the deadline bounds everything.

mod driver;
mod outcome;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::job::{
    EventKind, Job, JobResult, JobState, Millis, NextRun, NextRunWhy, RetryPolicy, now_ms,
};
use crate::providers::{Account, ErrorClass, ProviderError, Providers, Step, StepContext};
use crate::receipt;
use crate::store::{Settlement, SlotGrant, Store, StoreError, Transition};
use crate::units::format_duration;

/// Steps that may follow each other without a wait in one claim; a guard
/// against a provider that never stops asking to continue.
const MAX_CONTINUES: u32 = 16;

/// How long a claimed job waits for its account's concurrency limit before
/// stepping aside.
const ACCOUNT_WAIT: Duration = Duration::from_secs(2);

/// The longest wait between two tries of a write the store refused.
const STORE_PATIENCE_MAX: Duration = Duration::from_secs(5);

/// How often the idle driver asks whether another process (the CLI) added work.
const CROSS_PROCESS_CHECK: Duration = Duration::from_secs(1);

/// The history line of a job postponed because its account was busy.
const BUSY: &str = "every concurrency slot of the account is taken";

/// What a provider's wait hint is: Kontur.Diadoc's comes from the
/// `Retry-After` of its "not ready yet" answer; the others' from an ETA the
/// service gives (OFD.ru's `AssumptiveCompleteTime`) or the pacing their
/// module knows the service needs.
fn hint_why(provider: &str) -> NextRunWhy {
    if provider == crate::providers::kontur_diadoc::PROVIDER {
        NextRunWhy::RetryAfter
    } else {
        NextRunWhy::Eta
    }
}

/// Runs jobs. Cheap to share behind an `Arc`.
pub struct Scheduler {
    store: Store,
    providers: Providers,
    http: reqwest::Client,
    settings: Arc<Settings>,
    policy: RetryPolicy,
    /// This process's lease-owner id.
    owner: String,
    /// The jobs this process is working on.
    in_flight: InFlight,
}

/// The ids of the jobs this process is working on right now. Housekeeping
/// leaves their leases alone even when they expired: a lease lapses while
/// its job is still here only when the store refused the renewals (a full
/// disk), and the job's task is holding an outcome it will commit as soon
/// as the store takes writes again. Taking the job back would run its step
/// a second time at the service.
#[derive(Clone, Default)]
pub struct InFlight(Arc<std::sync::Mutex<HashSet<String>>>);

impl InFlight {
    /// The ids, in no order.
    pub fn ids(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `id` as in flight until the returned guard is dropped (when its
    /// task ends in any way: returning, panicking or being aborted).
    fn enter(&self, id: &str) -> InFlightGuard {
        self.lock().insert(id.to_string());
        InFlightGuard {
            set: self.clone(),
            id: id.to_string(),
        }
    }
}

struct InFlightGuard {
    set: InFlight,
    id: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

/// What ends the wait of a job's task for a store that cannot take its
/// writes (see [`Scheduler::patiently`]).
struct Commit {
    /// The job's lease was lost (it was cancelled or taken back), or
    /// shutdown's grace ran out.
    lease_lost: CancellationToken,
}

/// What became of one claimed job, for tests and the driver's bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The job was persisted in this state.
    Persisted(JobState),
    /// The job changed under us (cancelled) or could not be persisted; its
    /// lease will bring it back if needed.
    Abandoned(String),
}

/// How a job's provider calls ended: what is left to persist once the
/// account's permit and slot are handed back.
enum StepsEnd {
    /// The provider's last answer, as it gave it: `Wait`, `Done`, an
    /// error, or a `Continue`/`Next` past [`MAX_CONTINUES`].
    Answer(Result<Step, ProviderError>),
    /// The job fails without a provider answer (its deadline came).
    Fail(String),
    /// Nothing left to persist (the outcome is already decided).
    Over(Outcome),
}

impl Scheduler {
    pub fn new(
        store: Store,
        providers: Providers,
        http: reqwest::Client,
        settings: Arc<Settings>,
        owner: String,
    ) -> Self {
        let policy = settings.scheduler.retry_policy();
        Scheduler {
            store,
            providers,
            http,
            settings,
            policy,
            owner,
            in_flight: InFlight::default(),
        }
    }

    /// The jobs this process is working on, for housekeeping.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The accounts this scheduler runs jobs for.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    fn lease_ms(&self) -> Millis {
        millis(self.settings.scheduler.lease)
    }

    /// Claims up to `capacity` jobs that are due now.
    pub async fn claim(&self, capacity: usize) -> Result<Vec<Job>, StoreError> {
        let now = now_ms();
        let limit = u32::try_from(capacity).unwrap_or(u32::MAX);
        let started = std::time::Instant::now();
        let claimed = self
            .store
            .claim_due(&self.owner, now, now + self.lease_ms(), limit)
            .await;
        crate::metrics::store_op("claim", started.elapsed());
        claimed
    }

    /// One pass: claims every job due now (up to `workers`), runs one step
    /// of each concurrently, and persists the outcomes.
    #[tracing::instrument(name = "scheduler_step", skip_all)]
    pub async fn step(self: &Arc<Self>) -> Result<Vec<(String, Outcome)>, StoreError> {
        let mut set = JoinSet::new();
        self.claim_and_run(
            self.settings.scheduler.workers,
            &mut set,
            &CancellationToken::new(),
        )
        .await?;
        let mut outcomes = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => error!(error = %e, "a job step panicked"),
            }
        }
        Ok(outcomes)
    }

    /// Claims up to `capacity` due jobs and starts each one's step in
    /// `running` (interrupted by `stop`): the claim-and-run that both
    /// [`step`](Self::step) and the driver ([`run`](Self::run)) are made
    /// of. Returns how many were claimed.
    async fn claim_and_run(
        self: &Arc<Self>,
        capacity: usize,
        running: &mut JoinSet<(String, Outcome)>,
        stop: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let jobs = self.claim(capacity).await?;
        let claimed = jobs.len();
        for job in jobs {
            let this = self.clone();
            let name = job.name.clone();
            let stop = stop.child_token();
            running.spawn(async move { (name, this.run_job(job, stop).await) });
        }
        Ok(claimed)
    }

    /// Runs one claimed job until it waits, finishes or fails, and persists
    /// the result. Never returns an error: whatever happens is recorded on
    /// the job or left to its lease.
    #[tracing::instrument(
        name = "job",
        skip_all,
        fields(job = %job.name, job_id = %job.id, provider = %job.provider, account = %job.account, attempt = job.attempts + 1)
    )]
    pub async fn run_job(self: Arc<Self>, job: Job, stop: CancellationToken) -> Outcome {
        let _working = self.in_flight.enter(&job.id);
        self.run_job_inner(job, stop).await
    }

    async fn run_job_inner(self: Arc<Self>, job: Job, stop: CancellationToken) -> Outcome {
        // The lease is renewed in the background until the job's outcome is
        // committed; losing it (a user cancelled the job) stops the step.
        let lease_lost = stop.child_token();
        let renewer = tokio::spawn(renew_lease(
            self.store.clone(),
            job.id.clone(),
            self.owner.clone(),
            self.settings.scheduler.lease,
            lease_lost.clone(),
        ));
        let _stop_renewer = AbortOnDrop(renewer);
        let commit = Commit {
            lease_lost: lease_lost.clone(),
        };
        // Its outcome is committed already (a crash came before its
        // receipt): no provider call, no deadline, only the receipt and the
        // final state.
        if job.settled().is_some() {
            return self.publish(job, &commit).await;
        }
        if now_ms() >= job.deadline_at {
            let message = format!(
                "timed out: not finished within scheduler.deadline ({}) of being accepted",
                format_duration(self.settings.scheduler.deadline)
            );
            return self.fail(&job, message, &commit).await;
        }
        let Some(account) = self.providers.get(&job.account) else {
            let message = format!("account {:?} is no longer configured", job.account);
            return self.fail(&job, message, &commit).await;
        };
        // A 429 pauses the whole account: its jobs wait without spending a
        // request or an attempt.
        if let Some(until) = account.cooling_until() {
            let pause = until.saturating_duration_since(std::time::Instant::now());
            debug!(pause = %format_duration(pause), "account is pausing after a 429");
            let why = (NextRunWhy::AccountPause, Some(pause));
            return self
                .postpone(&job, pause, why, "the account is paused after a 429")
                .await;
        }
        // At most `concurrency` jobs per account talk to its service at once.
        let Some(permit) = account_permit(&account).await else {
            let delay = ACCOUNT_WAIT.mul_f64(1.0 + fastrand::f64());
            let why = (NextRunWhy::AccountBusy, None);
            return self.postpone(&job, delay, why, BUSY).await;
        };
        // The same limit and pause across every daemon sharing the store.
        match self
            .store
            .take_account_slot(
                &job.account,
                &job.id,
                &self.owner,
                account.concurrency,
                now_ms(),
            )
            .await
        {
            Ok(SlotGrant::Granted) => {}
            Ok(SlotGrant::Busy) => {
                debug!("every slot of the account is taken by other daemons");
                let delay = ACCOUNT_WAIT.mul_f64(1.0 + fastrand::f64());
                let why = (NextRunWhy::AccountBusy, None);
                return self.postpone(&job, delay, why, BUSY).await;
            }
            Ok(SlotGrant::Cooling(until)) => {
                let pause = Duration::from_millis(u64::try_from(until - now_ms()).unwrap_or(0));
                debug!(pause = %format_duration(pause), "another daemon got a 429 for this account; pausing it here too");
                account.cool_down(pause);
                let why = (NextRunWhy::AccountPause, Some(pause));
                let message = "the account is paused after a 429 (seen by another daemon)";
                return self.postpone(&job, pause, why, message).await;
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, "cannot take an account slot; trying the job again shortly");
                let why = (NextRunWhy::Backoff, None);
                let message = "cannot take an account slot from the store";
                return self.postpone(&job, ACCOUNT_WAIT, why, message).await;
            }
            Err(e) => return self.abandoned(&job, e).await,
        }
        let (account_name, job_id) = (job.account.clone(), job.id.clone());
        let (mut job, end) = self.run_steps(job, &account, &stop, &commit).await;
        // The account's permit and slot cover the provider's calls, not what
        // follows them: the commit, the receipt and their `fsync`s leave both
        // to the account's next job.
        drop(permit);
        if let Err(e) = self
            .store
            .release_account_slot(&account_name, &job_id, &self.owner)
            .await
        {
            // Harmless: a slot counts only while its job runs under our lease.
            debug!(error = %e, "cannot release the account slot; it lapses with the step");
        }
        match end {
            StepsEnd::Answer(Ok(Step::Wait {
                cursor,
                hint,
                poll,
                note,
            })) => self.wait(&job, cursor, hint, poll, note, &commit).await,
            StepsEnd::Answer(Ok(Step::Done { cursor, result })) => {
                job.cursor = cursor;
                self.done(job, result, &commit).await
            }
            StepsEnd::Answer(Ok(Step::Continue(cursor) | Step::Next(cursor))) => {
                let message =
                    "the provider kept asking to continue without waiting; giving up".to_string();
                job.cursor = cursor;
                self.fail(&job, message, &commit).await
            }
            StepsEnd::Answer(Err(e)) => self.error(&job, e, &commit).await,
            StepsEnd::Fail(message) => self.fail(&job, message, &commit).await,
            StepsEnd::Over(outcome) => outcome,
        }
    }

    /// The provider calls of one claimed job, under its lease and its
    /// account's permit, until one says to wait, finishes or fails. Returns
    /// the job as the calls left it and what to persist.
    async fn run_steps(
        self: &Arc<Self>,
        mut job: Job,
        account: &Account,
        stop: &CancellationToken,
        commit: &Commit,
    ) -> (Job, StepsEnd) {
        let lease_lost = &commit.lease_lost;
        let output_dir = receipt::job_folder(&self.settings.paths.output, &job);
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(job.deadline_at - now_ms()).unwrap_or(0));
        let mut continues = 0;
        loop {
            let ctx = StepContext {
                job: &job,
                http: &self.http,
                output_dir: output_dir.clone(),
                attachments_dir: self.settings.paths.attachments.clone(),
                max_file_size: self.settings.scheduler.max_file_size,
                timeout: self.settings.http.timeout,
            };
            let started = std::time::Instant::now();
            let result = tokio::select! {
                result = account.provider.step(&ctx) => {
                    crate::metrics::step_duration(&job.provider, started.elapsed());
                    result
                }
                // The deadline bounds a step too: a download that trickles
                // forever never goes silent long enough to time out.
                _ = tokio::time::sleep_until(deadline) => {
                    let message = format!(
                        "timed out: not finished within scheduler.deadline ({}) of being accepted",
                        format_duration(self.settings.scheduler.deadline)
                    );
                    return (job, StepsEnd::Fail(message));
                }
                _ = lease_lost.cancelled() => {
                    let why = if stop.is_cancelled() { "stopped by shutdown" } else { "lease lost (cancelled?)" };
                    info!("step interrupted: {why}");
                    return (job, StepsEnd::Over(Outcome::Abandoned(why.into())));
                }
            };
            match result {
                Ok(Step::Continue(cursor)) if continues < MAX_CONTINUES => {
                    continues += 1;
                    let saved = self
                        .patiently("the progress of a step", commit, || {
                            self.store.checkpoint(&job.id, &self.owner, &cursor)
                        })
                        .await;
                    if let Err(e) = saved {
                        let outcome = self.abandoned(&job, e).await;
                        return (job, StepsEnd::Over(outcome));
                    }
                    job.cursor = cursor;
                    job.attempts = 0;
                }
                Ok(Step::Next(cursor)) if continues < MAX_CONTINUES => {
                    continues += 1;
                    job.cursor = cursor;
                    job.attempts = 0;
                }
                // Waiting, done, failed, or past the limit of continues.
                answer => return (job, StepsEnd::Answer(answer)),
            }
        }
    }

    async fn wait(
        &self,
        job: &Job,
        cursor: serde_json::Value,
        hint: Option<Duration>,
        poll: bool,
        note: String,
        commit: &Commit,
    ) -> Outcome {
        let polls = job.polls + u32::from(poll);
        let delay = self.policy.poll_delay(polls, hint, fastrand::f64());
        let next = match hint {
            Some(_) => self.next_run(job, delay, hint_why(&job.provider), hint, None),
            None => self.next_run(job, delay, NextRunWhy::Backoff, None, Some(polls)),
        };
        debug!(polls, next_in = %format_duration(delay), why = next.why.as_str(), "{note}");
        let message = format!("{note}; next check in {}", format_duration(delay));
        let t = Transition::wait(job, cursor, poll, next, message);
        self.persist(job, t, commit).await
    }
}

/// A permit of `account`'s concurrency limit. A short wait keeps the account
/// busy without handing the job back and forth; past it (`None`), the job
/// steps aside so other accounts' jobs get the workers.
async fn account_permit(account: &Account) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match tokio::time::timeout(ACCOUNT_WAIT, account.limit.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

/// Renews a job's lease every third of its length until dropped; cancels
/// `lost` when the lease is gone.
async fn renew_lease(
    store: Store,
    id: String,
    owner: String,
    lease: Duration,
    lost: CancellationToken,
) {
    let period = lease / 3;
    loop {
        tokio::time::sleep(period).await;
        let until = now_ms() + millis(lease);
        match store.renew_lease(&id, &owner, until).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                lost.cancel();
                return;
            }
            Err(e) => warn!(error = %e, "cannot renew a lease; will try again"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
