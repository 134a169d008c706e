//! Dashboard sessions: the login form takes the API token and, when it
//! matches (in constant time), makes a random session id kept in memory
//! with an expiry and a CSRF token of its own. The id travels in an
//! `HttpOnly; SameSite=Strict` cookie; the CSRF token in every form.
//! Failed logins are limited so the token cannot be guessed through the
//! form. Sessions end at logout, at expiry, or when the daemon stops.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::guard::constant_time_eq;

/// A session lasts this long after its last use.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at once; the oldest goes first beyond this.
pub const MAX_SESSIONS: usize = 1000;
/// Failed logins allowed per [`FAIL_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);

/// The cookie's name.
pub const COOKIE: &str = "docfetch_session";

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    last_used: Instant,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    WrongToken,
    TooMany,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    failures: u32,
    window_start: Option<Instant>,
}

/// The sessions of one listener.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

/// 32 random bytes as hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // getrandom fails only without an entropy source; fall back to a
    // UUID's (also OS-random) bytes rather than panic.
    if getrandom::fill(&mut bytes).is_err() {
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        bytes[..16].copy_from_slice(a.as_bytes());
        bytes[16..].copy_from_slice(b.as_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `given` against `token`; on success returns the new session id.
    pub fn login(&self, given: &str, token: &str, now: Instant) -> Result<String, LoginError> {
        let mut inner = self.lock();
        if inner
            .window_start
            .is_none_or(|start| now.duration_since(start) >= FAIL_WINDOW)
        {
            inner.window_start = Some(now);
            inner.failures = 0;
        }
        if inner.failures >= MAX_FAILURES {
            return Err(LoginError::TooMany);
        }
        if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
            inner.failures += 1;
            return Err(LoginError::WrongToken);
        }
        inner
            .sessions
            .retain(|_, s| now.duration_since(s.last_used) < IDLE);
        if inner.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone())
        {
            inner.sessions.remove(&oldest);
        }
        let id = random_hex();
        inner.sessions.insert(
            id.clone(),
            Session {
                csrf: random_hex(),
                last_used: now,
            },
        );
        Ok(id)
    }

    /// The live session with this id (its idle time starts again).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut inner = self.lock();
        let live = inner
            .sessions
            .get(id)
            .is_some_and(|s| now.duration_since(s.last_used) < IDLE);
        if !live {
            inner.sessions.remove(id);
            return None;
        }
        let session = inner.sessions.get_mut(id)?;
        session.last_used = now;
        Some(session.clone())
    }

    pub fn logout(&self, id: &str) {
        self.lock().sessions.remove(id);
    }
}

/// The session id in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_needs_the_token_and_ends_at_logout_or_expiry() {
        let s = Sessions::default();
        let t0 = Instant::now();
        assert_eq!(s.login("nope", "secret", t0), Err(LoginError::WrongToken));
        let id = s.login(" secret ", "secret", t0).unwrap();
        let session = s.get(&id, t0).unwrap();
        assert_eq!(session.csrf.len(), 64);
        assert!(s.get("other", t0).is_none());
        assert!(s.get(&id, t0 + IDLE).is_none(), "expired");
        let id = s.login("secret", "secret", t0).unwrap();
        s.logout(&id);
        assert!(s.get(&id, t0).is_none());
    }

    #[test]
    fn failed_logins_are_limited_per_window() {
        let s = Sessions::default();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(s.login("x", "secret", t0), Err(LoginError::WrongToken));
        }
        assert_eq!(
            s.login("secret", "secret", t0),
            Err(LoginError::TooMany),
            "even the right token waits"
        );
        assert!(s.login("secret", "secret", t0 + FAIL_WINDOW).is_ok());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(cookie_value("a=1; docfetch_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_value("a=1"), None);
        assert!(set_cookie("x").contains("HttpOnly; SameSite=Strict"));
    }
}
