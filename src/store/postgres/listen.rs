//! The `LISTEN` task: announcements from other processes become the
//! in-process wake-ups the scheduler and hook runner wait on.

use super::*;

/// What the listener task needs; no reference back to [`Inner`], so the
/// store can be dropped while the task runs.
#[derive(Clone)]
pub(super) struct Signals {
    pub(super) instance: String,
    pub(super) wakeup: Arc<Notify>,
    pub(super) hooks_wakeup: Arc<Notify>,
    pub(super) changes: Arc<AtomicI64>,
}

impl Signals {
    fn received(&self, n: &PgNotification) {
        let (sender, due) = n
            .payload()
            .split_once(' ')
            .unwrap_or((n.payload(), DUE_NOW));
        if sender == self.instance {
            return;
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
        if n.channel() == HOOKS_CHANNEL {
            self.hooks_wakeup.notify_one();
        } else if due != DUE_LATER {
            self.wakeup.notify_one();
        }
    }

    /// Announcements may have been missed: make everyone look again.
    fn missed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.wakeup.notify_one();
        self.hooks_wakeup.notify_one();
    }
}

pub(super) async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(JOBS_CHANNEL).await?;
    listener.listen(HOOKS_CHANNEL).await?;
    Ok(listener)
}

/// Turns notifications into wake-ups until `stop`. A lost connection is
/// restored with backoff; announcements sent while it was down are lost,
/// so both the loss and the restore count as a change and wake everyone.
pub(super) async fn listen(
    pool: PgPool,
    mut listener: PgListener,
    signals: Signals,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => {
                backoff = Duration::from_millis(100);
                signals.received(&notification);
            }
            // The connection dropped; sqlx has already reconnected and
            // listens again.
            Ok(None) => {
                debug!("the store's notification connection was restored");
                signals.missed();
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "lost the store's notification connection; polling until it is back");
                // Count the loss now, not only on restore: whoever watches
                // the counter learns of the gap as soon as it opens, and
                // the wake-up makes the scheduler poll the store meanwhile.
                signals.missed();
                // Start from a fresh listener: the failed one may hold a
                // broken connection.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                    match connect_listener(&pool).await {
                        Ok(fresh) => {
                            listener = fresh;
                            signals.missed();
                            break;
                        }
                        Err(sqlx::Error::PoolClosed) => return,
                        Err(e) => {
                            warn!(error = %e, retry_in = ?backoff, "cannot listen for store notifications yet")
                        }
                    }
                }
            }
        }
    }
}
