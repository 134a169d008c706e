//! The driver loop around [`Scheduler::step`]'s claim-and-run: keeps up to
//! `workers` jobs in flight, sleeps until work is due or announced, and
//! drains under a deadline at shutdown.

use super::*;

impl Scheduler {
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
