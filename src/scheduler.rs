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

    async fn done(&self, mut job: Job, result: JobResult, commit: &Commit) -> Outcome {
        for warning in &result.warnings {
            warn!(warning = %warning, "the provider reported a warning");
        }
        job.result = Some(result);
        job.attempts = 0;
        job.last_error = None;
        self.settle(job, commit).await
    }

    /// The first of a job's two final commits: its outcome (the result, or
    /// the error) is stored while the job stays running under the lease, so
    /// a crash from here on never repeats a step at the service. Then
    /// [`Scheduler::publish`].
    async fn settle(&self, mut job: Job, commit: &Commit) -> Outcome {
        let finished_at = now_ms();
        let settlement = Settlement {
            cursor: job.cursor.clone(),
            result: job.result.clone(),
            last_error: job.last_error.clone(),
            attempts: job.attempts,
            finished_at,
        };
        let settled = self
            .patiently("the job's outcome", commit, || {
                self.store.settle(&job.id, &self.owner, &settlement)
            })
            .await;
        if let Err(e) = settled {
            return self.abandoned(&job, e).await;
        }
        job.finished_at = Some(finished_at);
        self.publish(job, commit).await
    }

    /// The second: writes `job.json` durably, then moves the settled job to
    /// `done` or `failed` (and makes its hooks due). Nothing reads the job
    /// as finished before its receipt is on disk; a crash in between finds
    /// the job settled and comes back here.
    async fn publish(&self, job: Job, commit: &Commit) -> Outcome {
        let Some(state) = job.settled() else {
            return Outcome::Abandoned("publish called for a job that is not settled".into());
        };
        let mut finished = job.clone();
        finished.state = state;
        let mut unwritable = None;
        if let Err(e) = receipt::write(&self.settings.paths.output, &finished).await {
            if crate::beneath::is_refused(&e) {
                // The job's folder is not one docfetch may write to (a link
                // was planted there): trying again changes nothing, so the
                // job finishes without its receipt and says why.
                error!(error = %e, "the receipt cannot be written where it belongs; the job finishes without it");
                unwritable = Some(e.to_string());
            } else {
                // The outcome is committed: the job never goes back to the
                // service; only its receipt is tried again.
                let delay = self.policy.retry_initial.mul_f64(1.0 + fastrand::f64());
                error!(error = %e, retry_in = %format_duration(delay), "cannot write the receipt; the outcome is kept and the receipt is tried again");
                let why = (NextRunWhy::Backoff, None);
                let message = "cannot write the receipt; trying it again";
                return self.postpone(&job, delay, why, message).await;
            }
        }
        let mut message = match state {
            JobState::Done => {
                let files: Vec<String> = job
                    .result
                    .iter()
                    .flat_map(|r| r.files.iter())
                    .map(|f| format!("{} ({} bytes)", f.name, f.size))
                    .collect();
                format!("done: {}", files.join(", "))
            }
            _ => job.last_error.clone().unwrap_or_default(),
        };
        if let Some(why) = unwritable {
            message = format!("{message} (job.json not written: {why})");
        }
        let hooks_pending = self.hooks_for(&job).applies_to(state);
        let t = Transition::finish(&job, state, message, hooks_pending);
        let outcome = self.persist(&job, t, commit).await;
        if outcome == Outcome::Persisted(JobState::Done) {
            let files: Vec<&str> = job
                .result
                .iter()
                .flat_map(|r| r.files.iter())
                .map(|f| f.name.as_str())
                .collect();
            info!(files = %files.join(", "), polls = job.polls, "job done");
        }
        outcome
    }

    async fn error(&self, job: &Job, e: ProviderError, commit: &Commit) -> Outcome {
        let class = match e.class {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        };
        crate::metrics::error(&job.provider, &job.account, class);
        if let Some(account) = self.providers.get(&job.account) {
            account.note_error(now_ms(), &e.message);
        }
        if let (Some(pause), Some(account)) = (e.account_cooldown, self.providers.get(&job.account))
        {
            warn!(pause = %format_duration(pause), "the service asked to slow down; pausing the account");
            account.cool_down(pause);
            if let Err(e) = self
                .store
                .cool_down_account(&job.account, now_ms() + millis(pause))
                .await
            {
                warn!(error = %e, "cannot share the pause with other daemons");
            }
        }
        if e.class == ErrorClass::Permanent {
            return self.fail(job, e.message, commit).await;
        }
        let attempts = job.attempts + 1;
        match self
            .policy
            .retry_delay(attempts, e.retry_after, fastrand::f64())
        {
            Some(delay) => {
                warn!(attempts, retry_in = %format_duration(delay), error = %e.message, "transient error, will retry");
                let next = match e.retry_after {
                    Some(_) => {
                        self.next_run(job, delay, NextRunWhy::RetryAfter, e.retry_after, None)
                    }
                    None => self.next_run(job, delay, NextRunWhy::Backoff, None, Some(attempts)),
                };
                let message = format!(
                    "{} (attempt {attempts}, retry in {})",
                    e.message,
                    format_duration(delay)
                );
                let t = Transition::retry(job, attempts, e.message.clone(), next, message);
                self.persist(job, t, commit).await
            }
            None => {
                let message = format!("gave up after {attempts} attempts in a row: {}", e.message);
                let mut job = job.clone();
                job.attempts = attempts;
                self.fail(&job, message, commit).await
            }
        }
    }

    async fn fail(&self, job: &Job, message: String, commit: &Commit) -> Outcome {
        error!(error = %message, "job failed");
        let mut failed = job.clone();
        failed.result = None;
        failed.last_error = Some(message);
        self.settle(failed, commit).await
    }

    /// The hooks that apply to `job`: its request's, then its account's.
    fn hooks_for(&self, job: &Job) -> crate::job::Hooks {
        let account = self
            .settings
            .accounts
            .get(&job.account)
            .map(|a| a.hooks.clone())
            .unwrap_or_default();
        job.hooks.clone().unwrap_or_default().or(&account)
    }

    /// Hands the job back unrun, due again after `delay`, with an event
    /// saying why (`why`: the reason and the pause asked for, if any).
    async fn postpone(
        &self,
        job: &Job,
        delay: Duration,
        why: (NextRunWhy, Option<Duration>),
        message: &str,
    ) -> Outcome {
        let next = self.next_run(job, delay, why.0, why.1, None);
        let message = format!("{message}; next try in {}", format_duration(delay));
        match self
            .store
            .postpone_because(&job.id, &self.owner, &next, &message)
            .await
        {
            Ok(()) => {
                crate::metrics::step(&job.provider, &job.account, "postponed");
                Outcome::Persisted(JobState::Waiting)
            }
            Err(e) => self.abandoned(job, e).await,
        }
    }

    /// The next run time and why, never past the deadline (so a job that
    /// would sleep beyond it wakes up in time to fail as timed out).
    fn next_run(
        &self,
        job: &Job,
        delay: Duration,
        why: NextRunWhy,
        hint: Option<Duration>,
        step: Option<u32>,
    ) -> NextRun {
        NextRun::after(now_ms(), delay, job.deadline_at, why, hint, step)
    }

    /// Persists a transition, waiting out a store that cannot take it now.
    async fn persist(&self, job: &Job, t: Transition, commit: &Commit) -> Outcome {
        let started = std::time::Instant::now();
        let finished = self
            .patiently("the outcome of a step", commit, || {
                self.store.finish_step(&job.id, &self.owner, &t)
            })
            .await;
        crate::metrics::store_op("finish", started.elapsed());
        match finished {
            Ok(saved) => {
                let outcome = match t.event.0 {
                    EventKind::Poll => {
                        crate::metrics::poll(&job.provider, &job.account);
                        "waiting"
                    }
                    EventKind::Error => "retry",
                    EventKind::Done => "done",
                    EventKind::Failed => "failed",
                    _ => "waiting",
                };
                crate::metrics::step(&job.provider, &job.account, outcome);
                Outcome::Persisted(saved.state)
            }
            Err(e) => self.abandoned(job, e).await,
        }
    }

    /// Runs `write` (a store write that carries what a step learned from
    /// the service) until it lands. A busy store, a full disk or an I/O
    /// error is waited out, however long it lasts, while the lease is kept:
    /// an outcome dropped here would send the step to the service again at
    /// the next claim (for 1C:Fresh, a second order). Gives up only when
    /// the job moved under us (conflict), on another kind of error, or when
    /// the lease is lost (cancelled, or shutdown's grace ran out).
    async fn patiently<T, F, Fut>(
        &self,
        what: &str,
        commit: &Commit,
        mut write: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match write().await {
                Ok(written) => {
                    if failures > 0 {
                        info!(failures, "the store took {what} after all");
                    }
                    return Ok(written);
                }
                Err(e) if e.is_transient() || e.is_unavailable() => {
                    if failures == 0 {
                        warn!(error = %e, "cannot commit {what}; keeping it and trying again");
                    }
                    failures += 1;
                    tokio::select! {
                        _ = commit.lease_lost.cancelled() => return Err(e),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(STORE_PATIENCE_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The row moved under us: usually a user cancelled the job. Make sure the
    /// receipt tells the truth about its final state.
    async fn abandoned(&self, job: &Job, e: StoreError) -> Outcome {
        match self.store.find(&job.id).await {
            Ok(Some(current)) if current.state.is_finished() => {
                info!(state = %current.state, "the job was finished by someone else meanwhile");
                if let Err(e) = receipt::write(&self.settings.paths.output, &current).await {
                    error!(error = %e, "cannot write the receipt");
                }
            }
            _ => {
                warn!(error = %e, "could not persist the step; the job's lease will bring it back")
            }
        }
        Outcome::Abandoned(e.to_string())
    }

    /// The driver: runs until `shutdown`, then lets running steps finish for
    /// up to `scheduler.shutdown_grace`, and releases this process's leases.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        heartbeat: Option<Arc<dyn Fn() + Send + Sync>>,
    ) {
        let workers = self.settings.scheduler.workers;
        let wake = self.store.wakeup();
        let mut running: JoinSet<(String, Outcome)> = JoinSet::new();
        let steps_stop = CancellationToken::new();
        let mut last_version = self.store.change_counter().await.ok();
        let mut next_due: Option<Millis> = None;
        let mut dirty = true;
        let mut store_trouble = Duration::ZERO;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(beat) = &heartbeat {
                beat();
            }
            while let Some(done) = running.try_join_next() {
                if let Err(e) = done {
                    error!(error = %e, "a job step panicked");
                }
            }
            let capacity = workers.saturating_sub(running.len());
            let due_now = next_due.is_some_and(|due| due <= now_ms());
            if capacity > 0 && (dirty || due_now) {
                match self
                    .claim_and_run(capacity, &mut running, &steps_stop)
                    .await
                {
                    Ok(claimed) => {
                        store_trouble = Duration::ZERO;
                        let full = claimed == capacity;
                        match self.store.next_due_at().await {
                            Ok(due) => next_due = due,
                            Err(e) => warn!(error = %e, "cannot read the next due time"),
                        }
                        dirty = full;
                        if full {
                            // More may be due: loop again once a worker frees up.
                            dirty = true;
                        }
                    }
                    Err(e) => {
                        store_trouble = (store_trouble * 2)
                            .clamp(Duration::from_millis(200), Duration::from_secs(10));
                        error!(error = %e, retry_in = ?store_trouble, "cannot claim jobs");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(store_trouble) => continue,
                        }
                    }
                }
            }
            // Sleep until the next due job, but at most a second, so work
            // added by another process is noticed.
            let until_due = next_due
                .map(|due| Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)))
                .unwrap_or(CROSS_PROCESS_CHECK);
            let can_claim = running.len() < workers;
            let sleep = if can_claim {
                until_due.min(CROSS_PROCESS_CHECK)
            } else {
                CROSS_PROCESS_CHECK
            };
            if can_claim && dirty {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => dirty = true,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = done {
                        error!(error = %e, "a job step panicked");
                    }
                    // The step may have scheduled its job sooner than `next_due`.
                    dirty = true;
                }
                _ = tokio::time::sleep(sleep) => {
                    if next_due.is_none_or(|due| due > now_ms()) {
                        match self.store.change_counter().await {
                            Ok(version) if Some(version) != last_version => {
                                last_version = Some(version);
                                dirty = true;
                            }
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "cannot check the store for changes"),
                        }
                    }
                }
            }
        }
        info!(running = running.len(), grace = %format_duration(self.settings.scheduler.shutdown_grace), "stopping: no new claims; letting running steps finish");
        let drained = tokio::time::timeout(self.settings.scheduler.shutdown_grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                running = running.len(),
                "shutdown grace ran out; interrupting the remaining steps"
            );
            steps_stop.cancel();
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
        match self.store.release_leases(Some(&self.owner), now_ms()).await {
            Ok(0) => {}
            Ok(n) => info!(
                jobs = n,
                "released leases; these jobs resume at the next start"
            ),
            Err(e) => error!(error = %e, "cannot release leases; they expire on their own"),
        }
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
