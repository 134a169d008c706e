//! What a step's end becomes in the store: a result published, a wait
//! postponed, an error retried or failed, each persisted patiently through
//! a store that may be briefly unavailable.

use super::*;

impl Scheduler {
    pub(super) async fn done(&self, mut job: Job, result: JobResult, commit: &Commit) -> Outcome {
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
    pub(super) async fn settle(&self, mut job: Job, commit: &Commit) -> Outcome {
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
    pub(super) async fn publish(&self, job: Job, commit: &Commit) -> Outcome {
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

    pub(super) async fn error(&self, job: &Job, e: ProviderError, commit: &Commit) -> Outcome {
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

    pub(super) async fn fail(&self, job: &Job, message: String, commit: &Commit) -> Outcome {
        error!(error = %message, "job failed");
        let mut failed = job.clone();
        failed.result = None;
        failed.last_error = Some(message);
        self.settle(failed, commit).await
    }

    /// The hooks that apply to `job`: its request's, then its account's.
    pub(super) fn hooks_for(&self, job: &Job) -> crate::job::Hooks {
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
    pub(super) async fn postpone(
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
    pub(super) fn next_run(
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
    pub(super) async fn persist(&self, job: &Job, t: Transition, commit: &Commit) -> Outcome {
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
    pub(super) async fn patiently<T, F, Fut>(
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
    pub(super) async fn abandoned(&self, job: &Job, e: StoreError) -> Outcome {
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
}
