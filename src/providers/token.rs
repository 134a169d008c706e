//! A login token shared by all jobs of one account: fetched once, cached in
//! memory until shortly before it expires, refreshed by a single caller at a
//! time (a hundred waiting jobs never log in a hundred times), dropped when
//! the service rejects it, and — when the service refuses the credentials —
//! remembered as refused for a while, so jobs fail with a clear message
//! instead of hammering the login endpoint.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{ErrorClass, ProviderError};
use crate::config::keys::Secret;

/// How long refused credentials are remembered before the next login try.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(600);

enum State {
    Empty,
    Valid { token: Secret, expires: Instant },
    Refused { message: String, until: Instant },
}

/// One account's token.
pub struct TokenCache {
    state: Mutex<State>,
    /// Refresh when less than this is left.
    margin: Duration,
    logins: AtomicU64,
    /// When the token in use was issued: for the dashboard's token age,
    /// readable without waiting for a login in progress.
    issued: std::sync::Mutex<Option<Instant>>,
}

impl TokenCache {
    pub fn new(margin: Duration) -> Self {
        TokenCache {
            state: Mutex::new(State::Empty),
            margin,
            logins: AtomicU64::new(0),
            issued: std::sync::Mutex::new(None),
        }
    }

    /// How old the token in use is; `None` before the first login and after
    /// the service rejected the token. Never the token itself.
    pub fn age(&self) -> Option<Duration> {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.map(|at| at.elapsed())
    }

    fn set_issued(&self, at: Option<Instant>) {
        *self.issued.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// Logins performed so far (for tests and metrics).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// Returns a valid token, logging in with `login` when there is none or
    /// it is about to expire. `login` returns the token and its lifetime
    /// from now. The lock is held across the login: concurrent callers wait
    /// for the one login instead of starting their own.
    pub async fn get<F, Fut>(&self, login: F) -> Result<Secret, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, Duration), ProviderError>>,
    {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        match &*state {
            State::Valid { token, expires } if *expires > now + self.margin => {
                return Ok(token.clone());
            }
            State::Refused { message, until } if *until > now => {
                return Err(ProviderError::permanent(message.clone()));
            }
            _ => {}
        }
        self.logins.fetch_add(1, Ordering::Relaxed);
        match login().await {
            Ok((token, lifetime)) => {
                *state = State::Valid {
                    token: token.clone(),
                    expires: now + lifetime,
                };
                self.set_issued(Some(now));
                Ok(token)
            }
            Err(e) if e.class == ErrorClass::Permanent => {
                *state = State::Refused {
                    message: e.message.clone(),
                    until: now + REFUSAL_MEMORY,
                };
                Err(e)
            }
            Err(e) => {
                *state = State::Empty;
                Err(e)
            }
        }
    }

    /// Forgets `token` after the service rejected it (expired, revoked). A
    /// token already replaced by another job's refresh is left alone.
    pub async fn invalidate(&self, token: &Secret) {
        let mut state = self.state.lock().await;
        if matches!(&*state, State::Valid { token: current, .. } if current == token) {
            *state = State::Empty;
            self.set_issued(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_age_counts_from_the_login_and_ends_with_the_token() {
        let cache = TokenCache::new(Duration::from_secs(1));
        assert_eq!(cache.age(), None, "no token yet");
        let token = cache
            .get(|| async { Ok((Secret::new("t-1"), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert!(cache.age().is_some_and(|age| age < Duration::from_secs(60)));
        cache.invalidate(&token).await;
        assert_eq!(cache.age(), None, "a rejected token has no age");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_login() {
        let cache = Arc::new(TokenCache::new(Duration::from_secs(60)));
        let mut handles = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            handles.push(tokio::spawn(async move {
                cache
                    .get(|| async {
                        tokio::task::yield_now().await;
                        Ok((Secret::new("t1"), Duration::from_secs(3600)))
                    })
                    .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap().expose(), "t1");
        }
        assert_eq!(cache.logins(), 1);
    }

    #[tokio::test]
    async fn a_token_near_expiry_or_invalidated_is_refreshed() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let t = cache
            .get(|| async { Ok((Secret::new("short"), Duration::from_secs(30))) })
            .await
            .unwrap();
        assert_eq!(t.expose(), "short");
        let t = cache
            .get(|| async { Ok((Secret::new("long"), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!(t.expose(), "long", "30s left is inside the 60s margin");
        cache.invalidate(&Secret::new("other")).await;
        let t = cache
            .get(|| async { Ok((Secret::new("never"), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!(
            t.expose(),
            "long",
            "invalidating a stale token keeps the current one"
        );
        cache.invalidate(&t).await;
        let t = cache
            .get(|| async { Ok((Secret::new("new"), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!(t.expose(), "new");
        assert_eq!(cache.logins(), 3);
    }

    #[tokio::test]
    async fn refused_credentials_are_remembered_instead_of_retried() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let err = cache
            .get(|| async { Err(ProviderError::permanent("wrong password")) })
            .await
            .unwrap_err();
        assert_eq!(err.message, "wrong password");
        let err = cache
            .get(|| async { Ok((Secret::new("x"), Duration::from_secs(3600))) })
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            cache.logins(),
            1,
            "no second login while the refusal is remembered"
        );
    }

    #[tokio::test]
    async fn a_transient_login_failure_is_not_remembered() {
        let cache = TokenCache::new(Duration::from_secs(60));
        assert!(
            cache
                .get(|| async { Err(ProviderError::transient("503")) })
                .await
                .is_err()
        );
        let t = cache
            .get(|| async { Ok((Secret::new("ok"), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!(t.expose(), "ok");
    }
}
