//! The API's listener and connections: binding (a unix socket gets mode 0660
//! whatever the umask), and HTTP/1.1 served by hyper with the timeouts that
//! `axum::serve` lacks, so a slow client cannot hold a connection forever:
//!
//! - `api.header_timeout`: a request head must be complete this long after
//!   the connection opened or the previous answer was sent (hyper's
//!   `header_read_timeout`, whose clock also runs while a kept-alive
//!   connection is idle — so it closes idle connections too);
//! - `api.body_timeout`: the body, read whole by [`super::guard`];
//! - `api.send_timeout`: a client that takes none of an answer's bytes for
//!   this long is cut off ([`SendTimeout`]).
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once; one more is
//! closed at once rather than left to queue. On shutdown, idle connections
//! close, requests in flight get [`DRAIN`] to finish.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ApiState;
use super::guard::Served;
use crate::config::ApiListen;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// How long requests in flight may take to finish after shutdown.
pub const DRAIN: Duration = Duration::from_secs(10);

/// The mode of the API's unix socket: the daemon's user and group.
pub const SOCKET_MODE: u32 = 0o660;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {what} for the API (api.listen): {source}")]
pub struct ListenError {
    pub what: String,
    pub source: io::Error,
}

/// A bound listener, before serving.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Bound {
    /// The address to show in logs (for TCP, the real port when 0 was asked).
    pub fn describe(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Bound::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// What the guard needs to know about the listener.
    pub fn served(&self) -> io::Result<Served> {
        match self {
            Bound::Tcp(l) => l.local_addr().map(Served::Tcp),
            Bound::Unix(..) => Ok(Served::Unix),
        }
    }
}

/// Binds the configured address. A stale unix socket file is replaced.
pub async fn bind(listen: &ApiListen) -> Result<Option<Bound>, ListenError> {
    match listen {
        ApiListen::Disabled => Ok(None),
        ApiListen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(|l| Some(Bound::Tcp(l)))
            .map_err(|source| ListenError {
                what: addr.to_string(),
                source,
            }),
        ApiListen::Unix(path) => bind_unix(path)
            .map(|l| Some(Bound::Unix(l, path.clone())))
            .map_err(|source| ListenError {
                what: path.display().to_string(),
                source,
            }),
    }
}

/// Binds a unix socket at `path` with mode [`SOCKET_MODE`]. The socket is
/// made inside a fresh folder only this user can enter, given its mode
/// there, and then renamed into place: it is never reachable with the mode
/// the umask would have given it.
fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent,
        None => Path::new("."),
    };
    crate::beneath::ensure_dir(parent)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let private = tempfile::Builder::new()
        .prefix(".sock")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)?;
    let staged = private.path().join("s");
    let listener = tokio::net::UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    std::fs::rename(&staged, path)?;
    Ok(listener)
}

/// The per-connection limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    send: Duration,
}

/// Serves the API on `bound` until `shutdown`.
pub async fn serve(
    bound: Bound,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let served = bound.served()?;
    let limits = Limits {
        header: state.settings.api.header_timeout,
        send: state.settings.api.send_timeout,
    };
    let router = super::router(state, served);
    match bound {
        Bound::Tcp(listener) => {
            let listener = &listener;
            accept_loop(
                move || async move { listener.accept().await.map(|(s, _)| s) },
                router,
                limits,
                shutdown,
            )
            .await;
        }
        Bound::Unix(listener, path) => {
            let listener = &listener;
            accept_loop(
                move || async move { listener.accept().await.map(|(s, _)| s) },
                router,
                limits,
                shutdown,
            )
            .await;
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

async fn accept_loop<S, F, Fut>(
    mut accept: F,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept() => match accepted {
                Ok(stream) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let router = router.clone();
                        let shutdown = shutdown.clone();
                        connections.spawn(async move {
                            serve_connection(stream, router, limits, shutdown).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        warn!(limit = MAX_CONNECTIONS, "API: too many connections; closing a new one");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Out of file descriptors, most likely: give the
                    // connections in flight a moment to end.
                    warn!(error = %e, "API: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("API: connections still open after the drain time were closed");
        connections.abort_all();
    }
}

async fn serve_connection<S>(stream: S, router: Router, limits: Limits, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(SendTimeout::new(stream, limits.send));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .keep_alive(true);
    let connection = builder.serve_connection(io, TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            debug!("API: closed a connection whose request head was too slow or which sat idle");
        } else {
            debug!(error = %e, "API: connection ended with an error");
        }
    }
}

/// A stream whose writes fail with `TimedOut` once the peer has taken no
/// bytes for `limit`: a client that stops reading an answer is cut off.
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is stuck; cleared by any progress.
    stuck: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        SendTimeout {
            inner,
            limit,
            stuck: None,
        }
    }

    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = self.limit;
        let timer = self
            .stuck
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes of the answer for api.send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.stuck = None;
                Poll::Ready(result)
            }
            Poll::Pending => this.on_pending(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => {
                this.stuck = None;
                Poll::Ready(result)
            }
            Poll::Pending => this.on_pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.stuck = None;
                Poll::Ready(result)
            }
            Poll::Pending => this.on_pending(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_cut_off_after_the_send_timeout() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = SendTimeout::new(near, Duration::from_secs(60));
        // Progress resets the clock: a slow but steady reader is fine.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        stream.write_all(&[7u8; 64 * 5]).await.unwrap();
        let far = reader.await.unwrap();
        // Now nobody reads: the write fails once the limit has passed.
        let started = tokio::time::Instant::now();
        let err = stream.write_all(&[7u8; 64 * 2]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        drop(far);
    }
}
