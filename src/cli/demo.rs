//! `docfetch sim` and `docfetch demo`: the fake providers on their own, or
//! together with a daemon on a temporary setup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::config::{Environment, Settings};
use crate::job::JobState;
use crate::store::Store;

pub(super) async fn sim(listen: std::net::SocketAddr, pending: u32) -> Result<(), CliError> {
    let config = crate::sim::SimConfig {
        fresh: crate::sim::fresh::FreshSimConfig {
            pending_polls: pending,
            ..Default::default()
        },
        ..Default::default()
    };
    let sim = crate::sim::Sim::start(listen, config)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {listen}: {e}")))?;
    println!("docfetch simulator listening on http://{}", sim.addr);
    println!("# accounts for your config file:\n{}", sim.accounts_toml());
    crate::app::shutdown_signal().await;
    sim.stop().await;
    Ok(())
}

/// The demo's requests: (file dropped, job name, content), one or more per provider.
pub(super) const DEMO_REQUESTS: &[(&str, &str, &str)] = &[
    (
        "usn-2018q3.json",
        "usn-2018q3",
        r#"{ "account": "fresh-sim", "operation": "tax_usn_calculator",
  "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
  "name": "usn-2018q3" }"#,
    ),
    (
        "sales-book.toml",
        "sales-book",
        "account = \"fresh-sim-plain\"\noperation = \"sales_book\"\n[params]\norganization = { inn = \"783900281039\", kpp = \"\" }\n_sim = { pending = 3, size = 65536, filename = \"Книга продаж 3 кв.xlsx\" }\n",
    ),
    (
        "ofd-shifts.json",
        "ofd-shifts",
        r#"{ "account": "ofd-sim", "operation": "report",
  "params": {"ReportType": "CloseShiftReport", "DateFrom": "2026-11-01T00:00:00", "DateTo": "2026-11-22T23:59:59",
             "SelectAllKkts": true, "UseXlsxFile": true} }"#,
    ),
    (
        "inventory.json",
        "inventory",
        r#"{ "account": "kontur-extern-sim", "operation": "drafts-build",
  "params": {
    "builder-type": "urn:drafts-builder-type:fns534-inventory",
    "sender": {"inn": "7810000000", "kpp": "781001001", "certificate": {"content": "MIIBdemo"}},
    "payer": {"inn": "7810000000", "organization": {"kpp": "781001001"}},
    "recipient": {"ifns-code": "7810"},
    "builder-data": {"related-document": {"related-docflow-id": "d6b0c7a2-5f0e-4f37-9a5b-0c1e2d3f4a5b",
                                          "related-document-id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}},
    "documents": [{"builder-data": {"claim-item-number": "1.01", "scanned-document-name": "Опись.pdf", "type": "scanned"},
                   "files": [{"path": "inventory/scan.pdf"}]}]
  } }"#,
    ),
    (
        "registers.json",
        "registers",
        r#"{ "account": "atol-sim", "operation": "cash-registers", "params": {"limit": 5} }"#,
    ),
    (
        "protocol.json",
        "protocol",
        r#"{ "account": "kontur-diadoc-sim", "operation": "document-protocol",
  "params": {"boxId": "0f4bb5a6-6c1d-4c2c-9a57-7a6f7d1f0b31", "messageId": "b1e9c0d2-2f4a-4f5e-8d43-6f3c1a9e7b20",
             "documentId": "5d6a4c8e-3b7f-4e0a-9c1d-8f2e6b4a7c90"} }"#,
    ),
];

/// `docfetch demo`: everything in one process, on a temporary setup. With
/// `serve`, the daemon (its dashboard and API on that address) and the
/// simulated services stay up after the demo jobs finish, until Ctrl-C or
/// SIGTERM.
pub(super) async fn demo(
    dir: Option<PathBuf>,
    serve: Option<std::net::SocketAddr>,
    env: &Environment,
) -> Result<u8, CliError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| CliError::Failed(format!("{what}: {e}"));
    let root = match dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("docfetch-demo-")
            .tempdir()
            .map_err(|e| fail("cannot create a temporary folder", &e))?
            .keep(),
    };
    std::fs::create_dir_all(&root).map_err(|e| fail("cannot create the demo folder", &e))?;
    let sim = crate::sim::Sim::start_local(crate::sim::SimConfig::default())
        .await
        .map_err(|e| fail("cannot start the simulator", &e))?;
    // Served, the jobs poll slower so that they can be watched finishing
    // on the dashboard; otherwise the demo is over in a few seconds.
    let (poll_initial, poll_max, listen) = match serve {
        Some(addr) => ("2s", "5s", addr.to_string()),
        None => ("300ms", "2s", String::new()),
    };
    let config = format!(
        "[store]\nurl = \"sqlite://{root}/docfetch.db\"\n[paths]\nrequests = \"{root}/requests\"\noutput = \"{root}/output\"\nattachments = \"{root}/attachments\"\nschedules = \"{root}/schedules.d\"\n[scheduler]\npoll_initial = \"{poll_initial}\"\npoll_max = \"{poll_max}\"\nretry_initial = \"300ms\"\n[inbox]\nscan_interval = \"200ms\"\nsettle = \"0s\"\n[log]\nlevel = \"warn\"\n[api]\nlisten = \"{listen}\"\n\n{}",
        sim.accounts_toml(),
        root = root.display()
    );
    let config_path = root.join("docfetch.toml");
    std::fs::write(&config_path, &config).map_err(|e| fail("cannot write the demo config", &e))?;
    let settings = Arc::new(Settings::from_toml(&config, env)?);
    crate::telemetry::init(&settings.log, env);
    println!("docfetch demo in {}", root.display());
    println!("simulated services at http://{}", sim.addr);

    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::app::run_until_stopped(
        settings.clone(),
        shutdown.clone(),
        Some(Box::new(move || {
            let _ = ready_tx.send(());
        })),
    ));
    if ready_rx.await.is_err() {
        return match (daemon.await, serve) {
            (Ok(Err(e)), Some(addr)) => Err(CliError::Failed(format!(
                "{e} (is another docfetch using {addr}? choose another address with --listen)"
            ))),
            (Ok(Err(e)), None) => Err(e.into()),
            _ => Err(CliError::Failed("the daemon did not start".into())),
        };
    }
    // Ctrl-C or SIGTERM ends a served demo at any point.
    let stop = CancellationToken::new();
    if let Some(addr) = serve {
        let signal = crate::app::shutdown_signal();
        let stop = stop.clone();
        tokio::spawn(async move {
            signal.await;
            stop.cancel();
        });
        println!("\ndashboard: http://{addr}/");
        println!(
            "log in with the API token: docfetch --config {} api-token",
            config_path.display()
        );
        if let Some(path) = settings.api.auth.token_path() {
            println!("(the token is kept in {})", path.display());
        }
        println!();
    }
    // The Extern build uploads a scanned document from the attachments folder.
    let scan = settings.paths.attachments.join("inventory/scan.pdf");
    std::fs::create_dir_all(settings.paths.attachments.join("inventory"))
        .and_then(|()| std::fs::write(&scan, b"%PDF-1.4\n% demo scan of an inventory\n"))
        .map_err(|e| fail("cannot write the demo attachment", &e))?;
    for (file, _, body) in DEMO_REQUESTS {
        // Write-then-rename, the way any writer should drop a request.
        let tmp = settings.paths.requests.join(format!("{file}.tmp"));
        std::fs::write(&tmp, body).map_err(|e| fail("cannot write a request", &e))?;
        std::fs::rename(&tmp, settings.paths.requests.join(file))
            .map_err(|e| fail("cannot drop a request", &e))?;
        println!("dropped requests/{file}");
    }
    let store = Store::open(&settings.store.url).await?;
    let names: Vec<&str> = DEMO_REQUESTS.iter().map(|(_, name, _)| *name).collect();
    let patience = if serve.is_some() { 300 } else { 120 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(patience);
    let mut shown: Vec<Option<(JobState, u32)>> = vec![None; names.len()];
    let mut failed = 0;
    loop {
        let mut finished = 0;
        for (i, name) in names.iter().enumerate() {
            if let Some(job) = store.find(name).await? {
                let seen = Some((job.state, job.polls));
                if shown[i] != seen {
                    shown[i] = seen;
                    println!("  {name:<12} {}", super::jobs::describe_progress(&job));
                }
                if job.state.is_finished() {
                    finished += 1;
                    failed += usize::from(job.state != JobState::Done);
                }
            }
        }
        if finished == names.len() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            shutdown.cancel();
            return Err(CliError::Failed(format!(
                "the demo jobs did not finish within {patience} s"
            )));
        }
        if stop.is_cancelled() {
            break;
        }
        failed = 0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(addr) = serve {
        if !stop.is_cancelled() {
            println!(
                "\nthe demo jobs are finished; the dashboard stays at http://{addr}/ until Ctrl-C"
            );
            println!(
                "more requests: drop files into {}",
                settings.paths.requests.display()
            );
        }
        stop.cancelled().await;
        println!("stopping");
    }
    shutdown.cancel();
    match daemon.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(CliError::Failed(e.to_string())),
    }
    sim.stop().await;
    println!("\nfiles are in {}:", settings.paths.output.display());
    for name in names {
        let dir = settings.paths.output.join(name);
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        println!("  {name}/  {}", entries.join("  "));
    }
    println!("\nconfig used: {}", config_path.display());
    println!(
        "look closer:  docfetch --config {} show usn-2018q3",
        config_path.display()
    );
    Ok(if failed > 0 { 1 } else { 0 })
}
