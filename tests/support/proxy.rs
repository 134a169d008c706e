//! A small fault-injecting TCP proxy for loopback tests, placed between
//! docfetch and a simulator (or any server): it forwards bytes both ways and,
//! for requests whose bytes contain a pattern, misbehaves the way networks
//! and middle boxes do — resets, cut bodies, slow drips, answers that never
//! come — or adds latency to every answer.
//!
//! It works on bytes, not HTTP: a chunk read from the client that starts
//! with an HTTP method begins a new request (docfetch's client writes a
//! request head in one go and never pipelines), and the fault armed by that
//! request applies to the bytes of its answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What happens to the answer of a matching request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The client's connection is reset (RST) before the request reaches
    /// the server.
    ResetBeforeRequest,
    /// The request reaches the server; the client's connection is reset
    /// after this many bytes of the answer.
    ResetAfter(usize),
    /// The request reaches the server; after this many bytes of the answer
    /// the connection is closed cleanly (FIN), so the body is shorter than
    /// its `Content-Length`.
    TruncateAfter(usize),
    /// The answer is forwarded `chunk` bytes at a time, `delay` apart.
    Drip { chunk: usize, delay: Duration },
    /// The request reaches the server; its answer is never forwarded and
    /// the connection stays open (half-open from the client's view).
    Stall,
    /// The request reaches the server; its answer waits until the gate is
    /// opened, then goes through whole.
    Hold(Gate),
}

/// Holds answers back until opened (see [`Fault::Hold`]).
#[derive(Clone, Default)]
pub struct Gate(Arc<GateState>);

#[derive(Default)]
struct GateState {
    open: AtomicBool,
    opened: tokio::sync::Notify,
    held: AtomicU64,
}

impl Gate {
    /// Lets every held answer (and every later one) through.
    pub fn open(&self) {
        self.0.open.store(true, Ordering::SeqCst);
        self.0.opened.notify_waiters();
    }

    /// Answers that reached the gate so far (their requests reached the
    /// server before).
    pub fn held(&self) -> u64 {
        self.0.held.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        self.0.held.fetch_add(1, Ordering::SeqCst);
        loop {
            let opened = self.0.opened.notified();
            if self.0.open.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate(held {})", self.held())
    }
}

/// A fault for requests whose bytes contain `pattern`, `times` times (or
/// for ever).
#[derive(Debug, Clone)]
struct Rule {
    pattern: Vec<u8>,
    fault: Fault,
    times: Option<u64>,
    fired: u64,
}

struct State {
    upstream: SocketAddr,
    rules: std::sync::Mutex<Vec<Rule>>,
    /// Added before the first byte of every answer.
    latency_ms: AtomicU64,
    requests: AtomicU64,
    faults: AtomicU64,
    stop: CancellationToken,
}

impl State {
    fn rules(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fault a request (its first chunk) arms, if a rule matches.
    fn arm(&self, chunk: &[u8]) -> Option<Fault> {
        let mut rules = self.rules();
        let rule = rules.iter_mut().find(|r| {
            r.times.is_none_or(|t| r.fired < t)
                && chunk.windows(r.pattern.len()).any(|w| w == r.pattern)
        })?;
        rule.fired += 1;
        self.faults.fetch_add(1, Ordering::SeqCst);
        Some(rule.fault.clone())
    }
}

/// A running proxy. Dropping it stops accepting; open connections end when
/// their peers close them.
pub struct Proxy {
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections accepted on `listener` (bound beforehand, so its
    /// address can be handed out before the upstream exists) to `upstream`.
    pub fn serve(listener: TcpListener, upstream: SocketAddr) -> Proxy {
        let state = Arc::new(State {
            upstream,
            rules: std::sync::Mutex::new(Vec::new()),
            latency_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            stop: CancellationToken::new(),
        });
        let accepting = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = accepting.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                tokio::spawn(connection(accepting.clone(), client));
            }
        });
        Proxy { state, task }
    }

    /// Applies `fault` to the next `times` requests containing `pattern`
    /// (`None`: to all of them). Earlier rules win when several match.
    pub fn add(&self, pattern: &str, fault: Fault, times: Option<u64>) {
        self.state.rules().push(Rule {
            pattern: pattern.as_bytes().to_vec(),
            fault,
            times,
            fired: 0,
        });
    }

    /// Delays the first byte of every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Faults applied so far.
    pub fn faults(&self) -> u64 {
        self.state.faults.load(Ordering::SeqCst)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.cancel();
        self.task.abort();
    }
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"PATCH ",
    b"OPTIONS ",
];

fn starts_request(chunk: &[u8]) -> bool {
    METHODS.iter().any(|m| chunk.starts_with(m))
}

/// Per-connection state shared by the two directions.
struct Conn {
    /// The fault of the request being answered.
    armed: std::sync::Mutex<Option<Fault>>,
    /// A new request was forwarded; its answer gets the latency.
    fresh_request: AtomicBool,
    /// Ends both directions; dropping the client socket with zero linger
    /// set turns that into a reset.
    end: CancellationToken,
}

async fn connection(state: Arc<State>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect(state.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let conn = Arc::new(Conn {
        armed: std::sync::Mutex::new(None),
        fresh_request: AtomicBool::new(false),
        end: state.stop.child_token(),
    });

    // Client → server: spot requests, arm their faults, forward.
    let up = {
        let state = state.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tokio::select! {
                    _ = conn.end.cancelled() => break,
                    read = client_read.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                };
                let chunk = &buf[..n];
                if starts_request(chunk) {
                    state.requests.fetch_add(1, Ordering::SeqCst);
                    let fault = state.arm(chunk);
                    if fault == Some(Fault::ResetBeforeRequest) {
                        let _ = client_read.as_ref().set_zero_linger();
                        break;
                    }
                    *conn.armed.lock().unwrap_or_else(|e| e.into_inner()) = fault;
                    conn.fresh_request.store(true, Ordering::SeqCst);
                }
                if upstream_write.write_all(chunk).await.is_err() {
                    break;
                }
            }
            conn.end.cancel();
            drop(client_read);
        })
    };

    // Server → client: forward answers, applying the armed fault.
    let down = {
        let state = state.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            // Bytes of the current answer forwarded so far.
            let mut sent: usize = 0;
            loop {
                let n = tokio::select! {
                    _ = conn.end.cancelled() => break,
                    read = upstream_read.read(&mut buf) => match read {
                        Ok(0) | Err(_) => {
                            let _ = client_write.shutdown().await;
                            break;
                        }
                        Ok(n) => n,
                    },
                };
                if conn.fresh_request.swap(false, Ordering::SeqCst) {
                    sent = 0;
                    let latency = state.latency_ms.load(Ordering::SeqCst);
                    if latency > 0 {
                        tokio::time::sleep(Duration::from_millis(latency)).await;
                    }
                }
                let fault = conn.armed.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let chunk = &buf[..n];
                match fault {
                    None | Some(Fault::ResetBeforeRequest) => {
                        if client_write.write_all(chunk).await.is_err() {
                            break;
                        }
                        sent += n;
                    }
                    Some(Fault::Hold(gate)) => {
                        if sent == 0 {
                            gate.pass().await;
                        }
                        if client_write.write_all(chunk).await.is_err() {
                            break;
                        }
                        sent += n;
                    }
                    Some(Fault::Stall) => {
                        // Hold the connection open until the client gives up.
                        conn.end.cancelled().await;
                        break;
                    }
                    Some(Fault::ResetAfter(limit)) | Some(Fault::TruncateAfter(limit)) => {
                        let room = limit.saturating_sub(sent).min(n);
                        if client_write.write_all(&chunk[..room]).await.is_err() {
                            break;
                        }
                        sent += room;
                        if sent >= limit {
                            if matches!(fault, Some(Fault::ResetAfter(_))) {
                                let _ = client_write.as_ref().set_zero_linger();
                            } else {
                                let _ = client_write.flush().await;
                                let _ = client_write.shutdown().await;
                                // Wait for the client to notice and close.
                                conn.end.cancelled().await;
                            }
                            break;
                        }
                    }
                    Some(Fault::Drip { chunk: size, delay }) => {
                        let mut failed = false;
                        for piece in chunk.chunks(size.max(1)) {
                            if client_write.write_all(piece).await.is_err() {
                                failed = true;
                                break;
                            }
                            tokio::time::sleep(delay).await;
                        }
                        if failed {
                            break;
                        }
                        sent += n;
                    }
                }
            }
            conn.end.cancel();
            drop(client_write);
        })
    };
    let _ = up.await;
    let _ = down.await;
}
