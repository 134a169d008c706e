//! Crash consistency: the real `docfetch run` against the simulator, killed
//! with SIGKILL at random moments and restarted, while request files for
//! all five providers keep arriving (1C:Fresh in both flows, OFD.ru,
//! Kontur.Extern, ATOL Online, Kontur.Diadoc). At the end every job must be
//! `done` exactly once, with the bytes the simulator served, nothing
//! half-written left anywhere, and duplicate remote work within what the
//! README admits. At every kill, a `job.json` that says done must belong to
//! a job whose outcome the store has committed.
//!
//! The simulator sits behind the fault proxy ([`crate::support::proxy`]),
//! which holds every answer back for a while and drips file downloads:
//! that widens the windows a kill must hit (the service has acted but the
//! daemon has not committed; a download is half-way). After each kill the
//! test inspects the frozen state (store, drop directory, output) and
//! records which windows the kill hit, so the report says how often each
//! was exercised rather than hoping it was.
//!
//! `cargo test` runs a short version (20 kills), CI a 50-kill one
//! (`scripts/crash-soak 50`); `scripts/crash-soak` (or
//! `DOCFETCH_CRASH_KILLS=200 cargo test --release --test integration
//! crash::long -- --ignored --nocapture`) runs the long one. The seed is
//! printed; `DOCFETCH_CRASH_SEED=N` replays a run's choices.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use docfetch::job::{Job, JobState};
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::{JobFilter, Store};
use serde_json::{Value, json};

use crate::helpers::wait_until;
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::fs::{drop_request, files_under, mode, sha256_file, sha256_hex};
use crate::support::proxy::{Fault, Proxy};

/// How a run is set up.
#[derive(Debug, Clone)]
struct Plan {
    kills: u32,
    seed: u64,
    /// A batch of requests (one job per provider flow) is dropped on every
    /// `batch_every`-th life of the daemon, at a random moment of it.
    batch_every: u32,
    /// A daemon lives this long (uniformly random) before its SIGKILL.
    life_ms: (u64, u64),
    /// How long the last daemon gets to finish everything.
    finish_within: Duration,
}

impl Plan {
    fn from_env(default_kills: u32) -> Plan {
        let kills = std::env::var("DOCFETCH_CRASH_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_kills);
        let seed = std::env::var("DOCFETCH_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        Plan {
            kills,
            seed,
            batch_every: if kills > 40 { 2 } else { 1 },
            life_ms: (120, 1100),
            finish_within: Duration::from_secs(90 + u64::from(kills) / 2),
        }
    }
}

/// The kinds of jobs a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    FreshIbSession,
    FreshPlain,
    Ofd,
    Extern,
    /// ATOL Online's register list, walked page by page.
    Atol,
    /// Kontur.Diadoc's transfer protocol (PDF and signature), polled.
    Diadoc,
}

/// Registers the ATOL simulator holds: several pages at the limits used.
const ATOL_REGISTERS: usize = 45;

/// A submitted job and what it should end with.
#[derive(Debug, Clone)]
struct Submitted {
    name: String,
    kind: Kind,
    /// The files the job saves (`build-result.json` for Extern).
    files: Vec<String>,
    /// For Extern: the SHA-256 of the attachment that must be uploaded.
    attachment_sha256: Option<String>,
}

/// What one kill froze, read from the store and the folders while no
/// daemon runs.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    /// Request files still in the drop directory whose job was not stored
    /// yet (killed during submit).
    pending_requests: u32,
    /// Request files still in the drop directory whose job was already
    /// committed (killed between the commit and the move).
    committed_not_moved: u32,
    /// `.NAME.part` downloads in progress (killed mid-download).
    parts: u32,
    /// `.job.json.part`: killed while writing a receipt.
    receipt_parts: u32,
    /// A downloaded file in place, the job's outcome not yet committed
    /// (killed between the rename and the commit that settles it).
    file_without_receipt: u32,
    /// The outcome committed (settled), no receipt yet (killed between
    /// that commit and `job.json`).
    settled_without_receipt: u32,
    /// A receipt on disk, job not yet done in the store (killed between
    /// the receipt and the commit that moves the job to done).
    receipt_not_committed: u32,
    /// Running 1C jobs without a remote job id (an order in flight).
    fresh_ordering: u32,
    /// Running OFD jobs in their ordering phase.
    ofd_ordering: u32,
    /// Running Extern jobs by their next action.
    extern_uploading: u32,
    extern_creating_builder: u32,
    extern_creating_document: u32,
    extern_attaching: u32,
    extern_building: u32,
    /// The jobs that were running (their claim never finished), with the
    /// claim's lease (owner, end): a daemon killed before it took back the
    /// previous one's leases finds the same claim still there.
    running: Vec<(String, Option<String>, Option<i64>)>,
    /// (window, what showed it): a state a kill found that may outlive the
    /// kill (a file left in place) is counted once, at the kill that made it.
    marks: Vec<(&'static str, String)>,
}

impl Snapshot {
    fn add(&mut self, other: &Snapshot) {
        self.pending_requests += other.pending_requests;
        self.committed_not_moved += other.committed_not_moved;
        self.parts += other.parts;
        self.receipt_parts += other.receipt_parts;
        self.file_without_receipt += other.file_without_receipt;
        self.settled_without_receipt += other.settled_without_receipt;
        self.receipt_not_committed += other.receipt_not_committed;
        self.fresh_ordering += other.fresh_ordering;
        self.ofd_ordering += other.ofd_ordering;
        self.extern_uploading += other.extern_uploading;
        self.extern_creating_builder += other.extern_creating_builder;
        self.extern_creating_document += other.extern_creating_document;
        self.extern_attaching += other.extern_attaching;
        self.extern_building += other.extern_building;
    }
}

/// Kills (out of all) that hit each window: whose frozen state showed a
/// trace of it that no earlier kill had already shown.
#[derive(Debug, Default)]
struct WindowHits {
    kills: BTreeMap<&'static str, u32>,
    seen: std::collections::HashSet<(&'static str, String)>,
}

const WINDOWS: &[&str] = &[
    SUBMIT,
    COMMIT_MOVE,
    MID_DOWNLOAD,
    RECEIPT_WRITE,
    RENAME_RECEIPT,
    SETTLE_RECEIPT,
    RECEIPT_COMMIT,
    FRESH_ORDER,
    OFD_ORDER,
    EXTERN_UPLOAD,
    EXTERN_BUILDER,
    EXTERN_DOCUMENT,
    EXTERN_ATTACH,
    EXTERN_BUILD,
];
const SUBMIT: &str = "during submit (request file not yet stored)";
const COMMIT_MOVE: &str = "between commit and drop-dir move";
const MID_DOWNLOAD: &str = "mid-download (.part present)";
const RECEIPT_WRITE: &str = "while writing a receipt (.job.json.part)";
const RENAME_RECEIPT: &str = "between rename and outcome commit";
const SETTLE_RECEIPT: &str = "between outcome commit and receipt";
const RECEIPT_COMMIT: &str = "between receipt and done commit";
const FRESH_ORDER: &str = "1C order in flight (claimed, no job id stored)";
const OFD_ORDER: &str = "OFD order in flight (claimed, no report stored)";
const EXTERN_UPLOAD: &str = "Extern upload in flight";
const EXTERN_BUILDER: &str = "Extern builder creation in flight";
const EXTERN_DOCUMENT: &str = "Extern document creation in flight";
const EXTERN_ATTACH: &str = "Extern file attachment in flight";
const EXTERN_BUILD: &str = "Extern build start in flight";

impl WindowHits {
    fn count(&mut self, s: &Snapshot) {
        let mut hit: BTreeSet<&'static str> = BTreeSet::new();
        for (window, what) in &s.marks {
            if self.seen.insert((window, what.clone())) {
                hit.insert(window);
            }
        }
        for window in WINDOWS {
            *self.kills.entry(window).or_default() += u32::from(hit.contains(window));
        }
    }
}

/// A file's identity for [`WindowHits`]: path, size and modification time.
fn stamp(path: &Path) -> String {
    let meta = std::fs::symlink_metadata(path).ok();
    format!(
        "{}:{:?}:{:?}",
        path.display(),
        meta.as_ref().map(std::fs::Metadata::len),
        meta.and_then(|m| m.modified().ok())
    )
}

/// Starts the simulator behind the proxy; the simulated services name the
/// proxy as their origin, so hand-off URLs and account URLs go through it.
async fn services() -> (Sim, Proxy) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let mut config = SimConfig::default();
    config.fresh.pending_polls = 1;
    config.ofd.assumptive_delay = Duration::from_millis(300);
    config.kontur_extern.build_polls = 1;
    config.atol.registers = ATOL_REGISTERS;
    let sim = Sim::start_local(config).await.unwrap();
    let proxy = Proxy::serve(listener, sim.addr);
    point_at(&sim, &origin);
    // Every answer is held back a little: the service has acted, the
    // daemon has not heard yet. Downloads drip.
    proxy.set_latency(Duration::from_millis(25));
    let drip = Fault::Drip {
        chunk: 48 * 1024,
        delay: Duration::from_millis(4),
    };
    proxy.add("/hs/dt/download/", drip.clone(), None);
    proxy.add("/hs/dt/storage/files/", drip.clone(), None);
    proxy.add("GET /ofd/api/customer/reports/", drip, None);
    (sim, proxy)
}

/// Makes every simulated service announce `origin` (a proxy) as its own.
pub fn point_at(sim: &Sim, origin: &str) {
    use docfetch::sim::{atol, identity, kontur_diadoc, kontur_extern, ofd};
    sim.fresh.set_origin(origin);
    sim.ofd.set_origin(&format!("{origin}{}", ofd::PREFIX));
    sim.atol.set_origin(&format!("{origin}{}", atol::PREFIX));
    sim.identity
        .set_origin(&format!("{origin}{}", identity::PREFIX));
    sim.kontur_extern
        .set_origin(&format!("{origin}{}", kontur_extern::PREFIX));
    sim.kontur_diadoc
        .set_origin(&format!("{origin}{}", kontur_diadoc::PREFIX));
}

/// The requests of batch `b`, with what each must produce.
fn batch(b: u32, rng: &mut fastrand::Rng, attachments: &Path) -> Vec<(Submitted, Value)> {
    let mut out = Vec::new();
    let size = |rng: &mut fastrand::Rng| {
        if rng.u8(..4) == 0 {
            rng.usize(1_000_000..3_000_000)
        } else {
            rng.usize(2_000..150_000)
        }
    };
    for (kind, account, tag) in [
        (Kind::FreshIbSession, "fresh-sim", "fi"),
        (Kind::FreshPlain, "fresh-sim-plain", "fp"),
    ] {
        let name = format!("b{b:03}-{tag}");
        let file = format!("{name}.bin");
        let request = json!({
            "account": account, "operation": "sales_book", "name": name,
            "params": {"_sim": {"pending": rng.u32(0..3), "size": size(rng), "filename": file}},
        });
        out.push((
            Submitted {
                name,
                kind,
                files: vec![file],
                attachment_sha256: None,
            },
            request,
        ));
    }
    let name = format!("b{b:03}-ofd");
    let file = format!("{name}.xlsx");
    let request = json!({
        "account": "ofd-sim", "operation": "report", "name": name,
        "params": {
            "ReportType": "CloseShiftReport",
            "DateFrom": "2026-11-01T00:00:00", "DateTo": "2026-11-30T23:59:59",
            "SelectAllKkts": true, "UseXlsxFile": true,
            "_sim": {"size": size(rng), "filename": file, "pending_lists": rng.u32(0..2)},
        },
    });
    out.push((
        Submitted {
            name,
            kind: Kind::Ofd,
            files: vec![file],
            attachment_sha256: None,
        },
        request,
    ));
    if b.is_multiple_of(2) {
        let name = format!("b{b:03}-ke");
        let rel = format!("{name}/scan.pdf");
        let mut bytes = b"%PDF-1.4 ".to_vec();
        bytes.extend((0..rng.usize(1_000..200_000)).map(|_| rng.u8(..)));
        let path = attachments.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let request = json!({
            "account": "kontur-extern-sim", "operation": "drafts-build", "name": name,
            "params": {
                "builder-type": "urn:drafts-builder-type:fns534-inventory",
                "sender": {"inn": "7810000000", "kpp": "781001001", "certificate": {"content": "MIIBsim"}},
                "payer": {"inn": "7810000000", "organization": {"kpp": "781001001"}},
                "recipient": {"ifns-code": "7810"},
                "builder-data": {"related-document": {
                    "related-docflow-id": "d6b0c7a2-5f0e-4f37-9a5b-0c1e2d3f4a5b",
                    "related-document-id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}},
                "documents": [{
                    "builder-data": {"claim-item-number": "1.01", "scanned-document-name": "Скан.pdf", "type": "scanned"},
                    "files": [{"path": rel}],
                }],
            },
        });
        out.push((
            Submitted {
                name,
                kind: Kind::Extern,
                files: vec!["build-result.json".into()],
                attachment_sha256: Some(sha256_hex(&bytes)),
            },
            request,
        ));
    } else {
        // ATOL and Diadoc on the batches without Extern: read-only services,
        // so a repeated step costs nothing but must still end with the
        // exact bytes.
        let name = format!("b{b:03}-atol");
        let request = json!({
            "account": "atol-sim", "operation": "cash-registers", "name": name,
            "params": {"limit": rng.u32(5..=20)},
        });
        out.push((
            Submitted {
                name,
                kind: Kind::Atol,
                files: vec!["cash-registers.csv".into(), "cash-registers.json".into()],
                attachment_sha256: None,
            },
            request,
        ));
        let name = format!("b{b:03}-diadoc");
        let document = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            rng.u32(..),
            rng.u16(..),
            rng.u16(..0x1000),
            rng.u16(..0x1000),
            rng.u64(..1 << 48)
        );
        let request = json!({
            "account": "kontur-diadoc-sim", "operation": "document-protocol", "name": name,
            "params": {"boxId": "0f4bb5a6-6c1d-4c2c-9a57-7a6f7d1f0b31",
                       "messageId": "b1e9c0d2-2f4a-4f5e-8d43-6f3c1a9e7b20",
                       "documentId": document},
        });
        out.push((
            Submitted {
                name,
                kind: Kind::Diadoc,
                files: vec![
                    format!("{document}.protocol.pdf"),
                    format!("{document}.protocol.sig"),
                ],
                attachment_sha256: None,
            },
            request,
        ));
    }
    out
}

/// What the store and the folders show right after a kill.
async fn snapshot(store: &Store, config: &DaemonConfig, life: u32) -> Snapshot {
    let mut s = Snapshot::default();
    let jobs: HashMap<String, Job> = store
        .list(&JobFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.name.clone(), j))
        .collect();
    for name in crate::support::fs::names(&config.requests()) {
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let path = config.requests().join(&name);
        if jobs.contains_key(stem) {
            s.committed_not_moved += 1;
            s.marks.push((COMMIT_MOVE, stamp(&path)));
        } else {
            s.pending_requests += 1;
            s.marks.push((SUBMIT, stamp(&path)));
        }
    }
    for (name, job) in &jobs {
        let dir = config.output().join(name);
        let names = crate::support::fs::names(&dir);
        for file in &names {
            if file == ".job.json.part" {
                s.receipt_parts += 1;
                s.marks.push((RECEIPT_WRITE, stamp(&dir.join(file))));
            } else if file.starts_with('.') && file.ends_with(".part") {
                s.parts += 1;
                s.marks.push((MID_DOWNLOAD, stamp(&dir.join(file))));
            }
        }
        let receipt = names.iter().any(|f| f == "job.json");
        let data = names.iter().any(|f| !f.starts_with('.') && f != "job.json");
        if receipt {
            // The promise of the two final commits, at every kill: a
            // receipt that says done belongs to a job whose outcome is
            // committed.
            let text: Value =
                serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
            if text["state"] == "done" {
                assert!(
                    job.state == JobState::Done || job.settled() == Some(JobState::Done),
                    "{name}: job.json says done but the store holds the job {} with no committed outcome",
                    job.state
                );
            }
        }
        if job.state != JobState::Done {
            if receipt {
                s.receipt_not_committed += 1;
                s.marks.push((RECEIPT_COMMIT, stamp(&dir.join("job.json"))));
            } else if job.settled().is_some() {
                s.settled_without_receipt += 1;
                s.marks.push((SETTLE_RECEIPT, format!("{life}:{name}")));
            } else if data {
                s.file_without_receipt += 1;
                let file = names.iter().find(|f| !f.starts_with('.')).unwrap();
                s.marks.push((RENAME_RECEIPT, stamp(&dir.join(file))));
            }
        }
        if job.state != JobState::Running {
            continue;
        }
        s.running
            .push((name.clone(), job.lease_owner.clone(), job.lease_until));
        let c = &job.cursor;
        let claim = format!("{life}:{name}");
        match job.provider.as_str() {
            "1c-fresh" if c.get("job_id").is_none() => {
                s.fresh_ordering += 1;
                s.marks.push((FRESH_ORDER, claim));
            }
            "ofd-ru"
                if c.get("phase").and_then(Value::as_str) != Some("waiting")
                    && c.get("report").is_none() =>
            {
                s.ofd_ordering += 1;
                s.marks.push((OFD_ORDER, claim));
            }
            "kontur-extern" => {
                let files: Vec<&Value> = c["documents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|d| d["files"].as_array().into_iter().flatten())
                    .collect();
                let uploaded = !files.is_empty()
                    && files.iter().all(|f| {
                        f.get("content-id").is_some()
                            && f["uploaded"].as_u64() == f["size"].as_u64()
                    });
                let documents_made = c["documents"]
                    .as_array()
                    .is_some_and(|d| d.iter().all(|d| d.get("document-id").is_some()));
                let attached = files.iter().all(|f| f.get("file-id").is_some());
                let window = if c.get("task-id").is_some() {
                    None
                } else if !uploaded {
                    s.extern_uploading += 1;
                    Some(EXTERN_UPLOAD)
                } else if c.get("builder-id").is_none() {
                    s.extern_creating_builder += 1;
                    Some(EXTERN_BUILDER)
                } else if !documents_made {
                    s.extern_creating_document += 1;
                    Some(EXTERN_DOCUMENT)
                } else if !attached {
                    s.extern_attaching += 1;
                    Some(EXTERN_ATTACH)
                } else {
                    s.extern_building += 1;
                    Some(EXTERN_BUILD)
                };
                if let Some(window) = window {
                    s.marks.push((window, claim));
                }
            }
            _ => {}
        }
    }
    s
}

/// Drops a batch of requests after `delay` (a random moment of the daemon's
/// life, or just after its death).
fn drop_later(requests: std::path::PathBuf, batch: Vec<(Submitted, Value)>, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        for (s, request) in batch {
            drop_request(
                &requests,
                &format!("{}.json", s.name),
                &serde_json::to_vec_pretty(&request).unwrap(),
            );
        }
    });
}

/// The figures of a run, printed and checked.
#[derive(Debug, Default)]
struct Figures {
    kills: u32,
    jobs: usize,
    by_kind: BTreeMap<String, usize>,
    fresh_orders: u64,
    fresh_duplicate_orders: u64,
    fresh_order_bound: u32,
    fresh_downloads: u64,
    ofd_orders: u64,
    ofd_adopted_after_restart: usize,
    extern_builds: u64,
    extern_builders: u64,
    extern_documents: u64,
    extern_files: u64,
    extern_contents: u64,
    extern_conflicts: u64,
    /// Files attached more than once to the documents of a builder that
    /// was then built (the attach step repeated after a kill).
    extern_repeated_attachments: usize,
    atol_pages: u64,
    diadoc_protocol_requests: u64,
    windows: WindowHits,
    totals: Snapshot,
    seconds: f64,
}

async fn run(plan: Plan) -> Figures {
    let started = Instant::now();
    println!(
        "crash run: seed {} (replay with DOCFETCH_CRASH_SEED={}), {} kills",
        plan.seed, plan.seed, plan.kills
    );
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let dir = tempfile::tempdir().unwrap();
    let (sim, proxy) = services().await;
    let config = DaemonConfig::new(dir.path(), sim.accounts_toml());
    let config_path = config.write();
    std::fs::create_dir_all(config.requests()).unwrap();
    let log = dir.path().join("daemon.log");
    let store = Store::open(&config.store_url()).await.unwrap();

    let mut submitted: Vec<Submitted> = Vec::new();
    let mut totals = Snapshot::default();
    let mut windows = WindowHits::default();
    // Per job: kills that found it running (claims that never finished).
    let mut interrupted: HashMap<String, u32> = HashMap::new();
    let mut cut_claims: HashSet<(String, Option<String>, Option<i64>)> = HashSet::new();
    let mut batches = 0u32;
    for life in 0..plan.kills {
        let mut daemon = Daemon::start(&config_path, &log, "docfetch=info");
        let lives_for = Duration::from_millis(rng.u64(plan.life_ms.0..=plan.life_ms.1));
        if life.is_multiple_of(plan.batch_every) {
            let jobs = batch(batches, &mut rng, &config.attachments());
            batches += 1;
            submitted.extend(jobs.iter().map(|(s, _)| s.clone()));
            let at = Duration::from_millis(rng.u64(0..=lives_for.as_millis() as u64 + 50));
            drop_later(config.requests(), jobs, at);
        }
        tokio::time::sleep(lives_for).await;
        if let Some(status) = daemon.exited() {
            panic!(
                "the daemon died on its own ({status}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        daemon.kill();
        let s = snapshot(&store, &config, life).await;
        for claim in &s.running {
            // Each cut claim counts once, however many kills find it.
            if cut_claims.insert(claim.clone()) {
                *interrupted.entry(claim.0.clone()).or_default() += 1;
            }
        }
        windows.count(&s);
        totals.add(&s);
    }
    // Let the last drops land, then one daemon finishes everything.
    tokio::time::sleep(Duration::from_millis(plan.life_ms.1 + 100)).await;
    let starts = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("docfetch is running")
            .count()
    };
    let before = starts(&log);
    let mut daemon = Daemon::start(&config_path, &log, "docfetch=info");
    // The earlier daemons may have finished every job already; the SIGTERM
    // below is only a clean stop once this one is up.
    wait_until(Duration::from_secs(30), "the last daemon to start", || {
        let up = starts(&log) > before;
        async move { up.then_some(()) }
    })
    .await;
    let names: BTreeSet<String> = submitted.iter().map(|s| s.name.clone()).collect();
    let total = names.len();
    let finished = wait_until(plan.finish_within, "every job to finish", || async {
        let jobs = store.list(&JobFilter::default()).await.ok()?;
        let done = jobs.iter().filter(|j| j.state.is_finished()).count();
        (jobs.len() == total && done == total).then_some(jobs)
    })
    .await;
    let status = daemon.terminate().await;
    assert!(
        status.success(),
        "SIGTERM ends the last daemon with 0: {status}"
    );

    let figures = check(
        &plan,
        &sim,
        &proxy,
        &config,
        &store,
        &submitted,
        finished,
        &interrupted,
        &log,
    )
    .await;
    let figures = Figures {
        fresh_order_bound: totals.fresh_ordering,
        windows,
        totals,
        seconds: started.elapsed().as_secs_f64(),
        ..figures
    };
    report(&plan, &figures);
    // Duplicate remote work only where a kill found that work in flight.
    let t = &figures.totals;
    let extern_jobs = *figures.by_kind.get("Extern").unwrap_or(&0) as u64;
    assert!(
        figures.fresh_duplicate_orders <= u64::from(t.fresh_ordering),
        "1C: {} duplicate orders, but kills found only {} orders in flight",
        figures.fresh_duplicate_orders,
        t.fresh_ordering
    );
    for (what, made, bound) in [
        (
            "builders",
            figures.extern_builders,
            t.extern_creating_builder,
        ),
        (
            "documents",
            figures.extern_documents,
            t.extern_creating_document,
        ),
        ("files", figures.extern_files, t.extern_attaching),
        ("contents", figures.extern_contents, t.extern_uploading),
    ] {
        assert!(
            made.saturating_sub(extern_jobs) <= u64::from(bound),
            "Extern: {made} {what} for {extern_jobs} jobs, but kills found only {bound} in flight"
        );
    }
    figures
}

/// Checks every promise and gathers the figures.
#[allow(clippy::too_many_arguments)]
async fn check(
    plan: &Plan,
    sim: &Sim,
    proxy: &Proxy,
    config: &DaemonConfig,
    store: &Store,
    submitted: &[Submitted],
    jobs: Vec<Job>,
    interrupted: &HashMap<String, u32>,
    log: &Path,
) -> Figures {
    let by_name: HashMap<&str, &Job> = jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    // No job lost, none invented.
    let stored: BTreeSet<&str> = by_name.keys().copied().collect();
    let expected: BTreeSet<&str> = submitted.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stored, expected,
        "the store holds exactly the submitted jobs"
    );
    assert!(proxy.requests() > 0);

    let fresh_served: Vec<(String, String)> = sim.fresh.served_files();
    let ofd_served: Vec<(String, String)> = sim.ofd.served_files();
    let extern_files = sim.kontur_extern.files();
    let mut repeated_attachments = 0;
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for s in submitted {
        *by_kind.entry(format!("{:?}", s.kind)).or_default() += 1;
        let job = by_name[s.name.as_str()];
        assert_eq!(
            job.state,
            JobState::Done,
            "{} ended {} ({:?})",
            s.name,
            job.state,
            job.last_error
        );
        // Exactly one acceptance and one completion: never run twice.
        let events = store.events(&job.id).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(count("accepted"), 1, "{}: {kinds:?}", s.name);
        assert_eq!(count("done"), 1, "{}: {kinds:?}", s.name);
        assert_eq!(count("failed"), 0, "{}: {kinds:?}", s.name);
        // Every claim either ended with one event or was cut by a kill.
        let ended = kinds
            .iter()
            .filter(|k| matches!(**k, "poll" | "progress" | "error" | "done" | "failed"))
            .count() as u32;
        let cut = interrupted.get(&s.name).copied().unwrap_or(0);
        assert_eq!(
            job.steps,
            ended + cut,
            "{}: steps = claims that ended ({ended}) + claims cut by a kill ({cut}); events {kinds:?}",
            s.name
        );
        // The files and the receipt.
        let dir = config.output().join(&s.name);
        let receipt: Value =
            serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
        assert_eq!(receipt["state"], "done", "{}", s.name);
        let result = job.result.as_ref().expect("a done job has a result");
        let mut saved: Vec<&str> = result.files.iter().map(|f| f.name.as_str()).collect();
        saved.sort_unstable();
        assert_eq!(saved, s.files, "{}", s.name);
        let listed = receipt["files"].as_array().unwrap();
        assert_eq!(listed.len(), s.files.len(), "{}", s.name);
        for saved in &result.files {
            let path = dir.join(&saved.name);
            let sha = sha256_file(&path);
            assert_eq!(saved.sha256, sha, "{}: {}", s.name, saved.name);
            assert_eq!(saved.size, std::fs::metadata(&path).unwrap().len());
            let in_receipt = listed.iter().find(|f| f["name"] == saved.name.as_str());
            assert_eq!(
                in_receipt.map(|f| f["sha256"].clone()),
                Some(Value::from(sha.as_str())),
                "{}: {}",
                s.name,
                saved.name
            );
        }
        let file = dir.join(&s.files[0]);
        let sha = sha256_file(&file);
        match s.kind {
            Kind::FreshIbSession | Kind::FreshPlain => assert!(
                fresh_served.contains(&(s.files[0].clone(), sha.clone())),
                "{}: the file is not what 1C served",
                s.name
            ),
            Kind::Ofd => assert!(
                ofd_served.contains(&(s.files[0].clone(), sha.clone())),
                "{}: the file is not what OFD served",
                s.name
            ),
            Kind::Atol => {
                let doc: Value = serde_json::from_slice(
                    &std::fs::read(dir.join("cash-registers.json")).unwrap(),
                )
                .unwrap();
                let registers = doc["cashRegisters"].as_array().unwrap();
                assert_eq!(registers.len(), ATOL_REGISTERS, "{}", s.name);
                for (i, register) in registers.iter().enumerate() {
                    assert_eq!(
                        register,
                        &docfetch::sim::atol::register_value(i),
                        "{}: register {i}",
                        s.name
                    );
                }
            }
            Kind::Diadoc => {
                let document = s.files[0].trim_end_matches(".protocol.pdf");
                let served = docfetch::sim::kontur_diadoc::KonturDiadocSim::protocol_of(document);
                assert_eq!(
                    std::fs::read(&file).unwrap(),
                    served.print_form,
                    "{}",
                    s.name
                );
                assert_eq!(
                    std::fs::read(dir.join(&s.files[1])).unwrap(),
                    served.signature,
                    "{}",
                    s.name
                );
            }
            Kind::Extern => {
                let built: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
                assert!(built.to_string().contains("draft"), "{}: {built}", s.name);
                let builder = job.cursor["builder-id"].as_str().expect("builder id");
                let attached: Vec<_> = extern_files
                    .iter()
                    .filter(|f| f.builder_id == builder)
                    .collect();
                assert!(
                    !attached.is_empty()
                        && attached
                            .iter()
                            .all(|f| Some(&f.content_sha256) == s.attachment_sha256.as_ref()),
                    "{}: the built builder holds {attached:?}",
                    s.name
                );
                // One file was requested.
                repeated_attachments += attached.len() - 1;
            }
        }
    }
    // Nothing half-written anywhere; the drop directory is empty and every
    // request file sits in accepted/ once.
    for file in files_under(config.dir.as_path()) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".part"),
            "a partial file was left: {}",
            file.display()
        );
    }
    let root: Vec<String> = crate::support::fs::names(&config.requests())
        .into_iter()
        .filter(|n| n != "accepted" && n != "rejected")
        .collect();
    assert!(root.is_empty(), "left in the drop directory: {root:?}");
    let accepted = crate::support::fs::names(&config.requests().join("accepted"));
    let wanted: Vec<String> = expected.iter().map(|n| format!("{n}.json")).collect();
    assert_eq!(accepted, wanted, "each request moved to accepted/ once");
    assert!(crate::support::fs::names(&config.requests().join("rejected")).is_empty());
    for dir in crate::support::fs::dirs_under(&config.output()) {
        assert_eq!(mode(&dir), 0o750, "{}", dir.display());
    }
    for file in files_under(&config.output()) {
        assert_eq!(mode(&file), 0o640, "{}", file.display());
    }

    // Duplicate remote work.
    let count = |k: Kind| submitted.iter().filter(|s| s.kind == k).count() as u64;
    let fresh_jobs = count(Kind::FreshIbSession) + count(Kind::FreshPlain);
    let ofd_jobs = count(Kind::Ofd);
    let extern_jobs = count(Kind::Extern);
    let c = &sim.kontur_extern.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
    let logs = std::fs::read_to_string(log).unwrap_or_default();
    let figures = Figures {
        kills: plan.kills,
        jobs: submitted.len(),
        by_kind,
        fresh_orders: sim.fresh.orders(),
        fresh_duplicate_orders: sim.fresh.orders().saturating_sub(fresh_jobs),
        fresh_downloads: sim.fresh.counters.downloads.load(Ordering::SeqCst),
        ofd_orders: sim.ofd.orders(),
        ofd_adopted_after_restart: logs
            .matches("the report was ordered before a restart")
            .count(),
        extern_builds: sim.kontur_extern.builds(),
        extern_builders: load(&c.builders),
        extern_documents: load(&c.documents),
        extern_files: load(&c.files),
        extern_contents: load(&c.contents),
        extern_conflicts: load(&c.conflicts),
        extern_repeated_attachments: repeated_attachments,
        atol_pages: sim.atol.counters.pages.load(Ordering::SeqCst),
        diadoc_protocol_requests: load(&sim.kontur_diadoc.counters.protocol_requests),
        ..Default::default()
    };
    assert!(sim.fresh.orders() >= fresh_jobs);
    assert_eq!(
        sim.ofd.orders(),
        ofd_jobs,
        "OFD reports are found again by name, never ordered twice"
    );
    assert_eq!(
        sim.kontur_extern.builds(),
        extern_jobs,
        "a running build is adopted from the 409, never started twice"
    );
    figures
}

/// Prints the figures in the form RELIABILITY.md quotes.
fn report(plan: &Plan, f: &Figures) {
    println!("crash run report (seed {}):", plan.seed);
    println!(
        "  kills {}, jobs {} {:?}, {:.1} s",
        f.kills, f.jobs, f.by_kind, f.seconds
    );
    println!(
        "  1C: {} orders, {} duplicates (bound: {} kills found a 1C order in flight), {} complete downloads",
        f.fresh_orders, f.fresh_duplicate_orders, f.fresh_order_bound, f.fresh_downloads
    );
    println!(
        "  OFD: {} orders, 0 duplicates; {} found again by name after a restart ({} kills found an OFD order in flight)",
        f.ofd_orders, f.ofd_adopted_after_restart, f.totals.ofd_ordering
    );
    println!(
        "  Extern: {} builds, {} builders, {} documents, {} files, {} contents, {} 409 adoptions, {} files attached twice in built builders",
        f.extern_builds,
        f.extern_builders,
        f.extern_documents,
        f.extern_files,
        f.extern_contents,
        f.extern_conflicts,
        f.extern_repeated_attachments
    );
    println!(
        "  ATOL: {} list pages served for {} jobs; Diadoc: {} protocol requests for {} jobs",
        f.atol_pages,
        f.by_kind.get("Atol").unwrap_or(&0),
        f.diadoc_protocol_requests,
        f.by_kind.get("Diadoc").unwrap_or(&0)
    );
    println!("  windows hit (kills whose frozen state showed it):");
    for (window, kills) in &f.windows.kills {
        println!("    {window}: {kills}");
    }
}

/// The short run of `cargo test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_duplicates_within_bounds() {
    let plan = Plan::from_env(20);
    let f = run(plan).await;
    assert!(f.jobs >= 20);
}

/// The long run: `scripts/crash-soak` (DOCFETCH_CRASH_KILLS, default 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/crash-soak"]
async fn long() {
    let mut plan = Plan::from_env(200);
    plan.kills = plan.kills.max(1);
    let f = run(plan).await;
    assert!(f.kills >= 1);
}

/// A helper the other reliability tests share: the sim behind a proxy.
pub async fn sim_behind_proxy(config: SimConfig) -> (Arc<Sim>, Proxy) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let sim = Sim::start_local(config).await.unwrap();
    let proxy = Proxy::serve(listener, sim.addr);
    point_at(&sim, &origin);
    (Arc::new(sim), proxy)
}
