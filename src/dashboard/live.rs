//! `/events`: a server-sent event stream telling a signed-in page that the
//! store changed, so the page's script can refresh its live region without
//! a reload. One check a second per viewer; an event only when something
//! changed (and, on PostgreSQL, whose counter sees only other daemons'
//! commits, every few seconds).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use super::{Dashboard, require};
use crate::store::Store;

/// How often a viewer's stream looks for changes.
pub const TICK: Duration = Duration::from_secs(1);
/// On PostgreSQL, a change event at least this often.
pub const PG_REFRESH: u32 = 3;

pub async fn events(State(d): State<Arc<Dashboard>>, request: Request) -> Response {
    if let Err(login) = require(&d, &request) {
        return *login;
    }
    let store = d.api.store.clone();
    let shared = matches!(store, Store::Postgres(_));
    let first = store.change_counter().await.unwrap_or(0);
    let state = (store, first, 0u32);
    let stream = stream::unfold(state, move |(store, last, mut ticks)| async move {
        loop {
            tokio::time::sleep(TICK).await;
            ticks += 1;
            let now = store.change_counter().await.unwrap_or(last);
            if now != last || (shared && ticks % PG_REFRESH == 0) {
                let event = Event::default().event("change").data(now.to_string());
                return Some((Ok::<_, Infallible>(event), (store, now, ticks)));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
