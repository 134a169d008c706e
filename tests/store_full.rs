//! The store's disk fills up while jobs are ordering: the real daemon keeps
//! running, says what is wrong in its log and on `/readyz`, orders nothing
//! twice, loses no job (a request dropped meanwhile waits in the drop
//! folder), and carries on once space returns.
//!
//! The store lives on a small tmpfs mounted for the test (root and
//! `mount(8)` needed: without them the test says it is skipped, and under
//! `CI=true` it fails). The simulator sits behind the fault proxy, which
//! holds back the answers of the ordering calls — 1C:Fresh's order (in
//! the `ibsession` flow, the session's start, so that job orders on the
//! full disk), OFD's report order and Kontur.Extern's builder creation
//! (a `PUT` under an id committed before it) — until the disk is
//! full: each service has acted, and the daemon learns of it exactly when
//! it cannot commit.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use docfetch::job::{JobState, now_ms};
use docfetch::sim::SimConfig;
use docfetch::store::{JobFilter, Store};
use serde_json::{Value, json};

use crate::crash::sim_behind_proxy;
use crate::helpers::wait_until;
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::fs::{Tmpfs, drop_request, names};
use crate::support::proxy::{Fault, Gate};

/// Fills the file system of `dir` with one file until a write fails for
/// want of space; returns the file.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    loop {
        match file.write_all(&block).and_then(|()| file.flush()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Smaller pieces, down to the last page.
    for size in [4096usize, 512, 1] {
        while file.write_all(&block[..size]).is_ok() {}
    }
    ballast
}

/// `GET /readyz`: the status and the body.
async fn readyz(port: u16) -> Option<(u16, Value)> {
    let answer = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    let status = answer.status().as_u16();
    Some((status, answer.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_disk_fills_up_mid_order_orders_nothing_twice_loses_nothing_and_carries_on() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store-disk");
    let disk = match Tmpfs::mount(&store_dir, "6m") {
        Ok(disk) => disk,
        Err(why) => return crate::support::cannot_run("the store disk-full test", &why),
    };
    let mut sim_config = SimConfig::default();
    sim_config.fresh.pending_polls = 1;
    sim_config.ofd.assumptive_delay = Duration::from_millis(200);
    sim_config.kontur_extern.build_polls = 1;
    let (sim, proxy) = sim_behind_proxy(sim_config).await;
    let gate = Gate::default();
    // Extern's first `PUT` is the builder's: the job's small file goes up
    // in one part (`POST`), and documents come only after the builder.
    let extern_builder = format!("PUT {}/v1/", docfetch::sim::kontur_extern::PREFIX);
    for ordering in [
        "/storage/async/",
        "POST /ofd/api/customer/reports",
        extern_builder.as_str(),
    ] {
        proxy.add(ordering, Fault::Hold(gate.clone()), None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = DaemonConfig::new(root.path(), sim.accounts_toml());
    config.store = Some(store_dir.join("docfetch.db"));
    config.api_listen = format!("127.0.0.1:{port}");
    // The answers are held for seconds; a timeout would be a failure of
    // its own.
    config.http_timeout = "60s".into();
    let config_path = config.write();
    std::fs::create_dir_all(config.requests()).unwrap();
    let scan = config.attachments().join("full/scan.pdf");
    std::fs::create_dir_all(scan.parent().unwrap()).unwrap();
    std::fs::write(&scan, b"%PDF-1.4 a scan for a full disk").unwrap();
    let requests = [
        json!({"account": "fresh-sim", "operation": "sales_book", "name": "full-fresh",
               "params": {"_sim": {"pending": 1, "size": 30_000, "filename": "session.bin"}}}),
        json!({"account": "fresh-sim-plain", "operation": "sales_book", "name": "full-plain",
               "params": {"_sim": {"pending": 0, "size": 20_000, "filename": "plain.bin"}}}),
        json!({"account": "ofd-sim", "operation": "report", "name": "full-ofd",
               "params": {"ReportType": "CloseShiftReport",
                          "DateFrom": "2026-11-01T00:00:00", "DateTo": "2026-11-30T23:59:59",
                          "SelectAllKkts": true, "UseXlsxFile": true,
                          "_sim": {"size": 20_000, "filename": "shifts.xlsx"}}}),
        json!({"account": "kontur-extern-sim", "operation": "drafts-build", "name": "full-extern",
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
                       "files": [{"path": "full/scan.pdf"}]}]}}),
    ];
    for request in &requests {
        let name = request["name"].as_str().unwrap();
        drop_request(
            &config.requests(),
            &format!("{name}.json"),
            &serde_json::to_vec(request).unwrap(),
        );
    }
    let log = root.path().join("daemon.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut daemon = Daemon::start(&config_path, &log, "docfetch=info");

    // Every service has taken its order; the answers wait at the gate.
    let reached = tokio::time::timeout(Duration::from_secs(60), async {
        while gate.held() < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "only {} of the 4 orders reached the services; log:\n{}",
        gate.held(),
        log_text()
    );
    let ordered = |sim: &docfetch::sim::Sim| {
        (
            sim.fresh.orders(),
            sim.ofd.orders(),
            sim.kontur_extern.counters.builders.load(Ordering::SeqCst),
        )
    };
    // 1C's plain flow ordered; its `ibsession` flow is held at the
    // session's start and orders (`PUT upload/…`) only once the disk is
    // full.
    assert_eq!(ordered(&sim), (1, 1, 1));
    let ballast = fill(&store_dir);
    gate.open();
    wait_until(
        Duration::from_secs(60),
        "the ibsession flow to order on a full disk",
        || {
            let orders = sim.fresh.orders();
            async move { (orders == 2).then_some(()) }
        },
    )
    .await;

    // The daemon cannot commit what the services answered: it says so, in
    // the log and on /readyz, and keeps every outcome.
    let mut last = None;
    let reason = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            last = readyz(port).await;
            if let Some((503, body)) = &last {
                return body["store"].as_str().unwrap_or_default().to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "/readyz never reported the full store (last answer {last:?}); log:\n{}",
            log_text()
        )
    });
    assert!(reason.contains("full"), "/readyz says why: {reason}");
    wait_until(
        Duration::from_secs(60),
        "the log to say the store is full",
        || {
            let said = log_text().contains("the job store cannot commit");
            async move { said.then_some(()) }
        },
    )
    .await;
    // A request dropped meanwhile cannot be stored: it waits in the drop
    // folder, neither accepted nor rejected.
    let late = json!({"account": "fresh-sim-plain", "operation": "sales_book", "name": "full-late",
                      "params": {"_sim": {"pending": 0, "size": 10_000, "filename": "late.bin"}}});
    drop_request(
        &config.requests(),
        "full-late.json",
        &serde_json::to_vec(&late).unwrap(),
    );
    wait_until(
        Duration::from_secs(60),
        "the late request to be refused by the store",
        || {
            let said = log_text().contains("the store refused a request");
            async move { said.then_some(()) }
        },
    )
    .await;
    assert!(names(&config.requests()).contains(&"full-late.json".to_string()));
    assert!(names(&config.requests().join("rejected")).is_empty());
    // Stay full past the jobs' leases and a housekeeping round after them:
    // a lease taken back now would send its step to the service again.
    let store = Store::open(&config.store_url()).await.unwrap();
    let leases_end = store
        .list(&JobFilter::default())
        .await
        .unwrap()
        .iter()
        .filter_map(|j| j.lease_until)
        .max()
        .unwrap_or_else(now_ms);
    let lease_ms = 3_000;
    wait_until(
        Duration::from_secs(60),
        "every lease to run out and a housekeeping round to pass",
        || {
            let past = now_ms() > leases_end + lease_ms;
            async move { past.then_some(()) }
        },
    )
    .await;
    assert!(
        daemon.exited().is_none(),
        "the daemon keeps running:\n{}",
        log_text()
    );
    assert_eq!(
        ordered(&sim),
        (2, 1, 1),
        "nothing was ordered again while the disk was full"
    );
    assert!(matches!(readyz(port).await, Some((503, _))));

    // Space returns: everything lands, each order once.
    std::fs::remove_file(&ballast).unwrap();
    let jobs = wait_until(Duration::from_secs(120), "every job to be done", || async {
        let jobs = store.list(&JobFilter::default()).await.ok()?;
        (jobs.len() == 5 && jobs.iter().all(|j| j.state == JobState::Done)).then_some(jobs)
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "/readyz to be ready again",
        || async { matches!(readyz(port).await, Some((200, _))).then_some(()) },
    )
    .await;
    assert_eq!(daemon.terminate().await.code(), Some(0));
    assert_eq!(
        ordered(&sim),
        (3, 1, 1),
        "1C: one order per job (the late one included); OFD: one report; Extern: one builder"
    );
    assert_eq!(sim.kontur_extern.builds(), 1);
    for job in &jobs {
        let receipt: Value = serde_json::from_slice(
            &std::fs::read(config.output().join(&job.name).join("job.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(receipt["state"], "done", "{}", job.name);
        let events = store.events(&job.id).await.unwrap();
        assert_eq!(
            events.iter().filter(|e| e.kind == "done").count(),
            1,
            "{}",
            job.name
        );
    }
    let text = log_text();
    assert!(text.contains("the job store commits again"), "{text}");
    assert!(names(&config.requests().join("accepted")).contains(&"full-late.json".to_string()));
    println!(
        "store disk full: 4 orders held until the disk was full, 1 request dropped meanwhile; \
         /readyz said {reason:?}; after space returned all 5 jobs done with 3 1C orders, 1 OFD order, 1 Extern builder"
    );
    store.close().await.unwrap();
    drop(disk);
}

/// SQLite rolls a transaction back itself when its `COMMIT` fails for want
/// of space; a driver that believes it still open turns every later commit
/// into a savepoint that never reaches the disk (sqlx 0.9 did: "done" with
/// nothing written). Through the store: writes on a full disk fail, each
/// time, and once space returns they reach the file another connection
/// reads.
#[tokio::test]
async fn after_a_commit_refused_for_want_of_space_no_write_claims_success_without_reaching_the_disk()
 {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tiny");
    let disk = match Tmpfs::mount(&dir, "2m") {
        Ok(disk) => disk,
        Err(why) => return crate::support::cannot_run("the store commit-refusal test", &why),
    };
    let url = format!("sqlite://{}", dir.join("docfetch.db").display());
    let store = Store::open(&url).await.unwrap();
    let new_job = |i: usize| docfetch::job::NewJob {
        id: format!("id-{i}"),
        name: format!("job-{i}"),
        account: "a".into(),
        provider: "1c-fresh".into(),
        operation: "o".into(),
        params: json!({"padding": "x".repeat(2000)}),
        source: "api".into(),
        request_sha256: "0".repeat(64),
        created_at: now_ms(),
        deadline_at: now_ms() + 3_600_000,
        hooks: None,
    };
    for i in 0..5 {
        store.insert(&new_job(i)).await.unwrap();
    }
    // Another process's view: a separate connection to the file.
    let other = || async {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&format!("{url}?mode=ro"))
            .await
            .unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    };
    let ballast = fill(&dir);
    let mut refused = 0;
    for i in 5..15 {
        match store.insert(&new_job(i)).await {
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                refused += 1;
            }
            Ok(job) => panic!(
                "{} reported stored on a full disk; another connection sees {} jobs",
                job.name,
                other().await
            ),
        }
    }
    assert_eq!(refused, 10);
    assert!(
        store.ping().await.is_err(),
        "the store says it cannot commit"
    );
    assert_eq!(other().await, 5);
    std::fs::remove_file(&ballast).unwrap();
    store.insert(&new_job(20)).await.unwrap();
    assert_eq!(
        other().await,
        6,
        "the first write after space returned is on disk"
    );
    store.ping().await.unwrap();
    store.close().await.unwrap();
    drop(disk);
}
