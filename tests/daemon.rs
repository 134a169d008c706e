//! The real `docfetch` binary: started, fed through the drop directory,
//! killed with SIGKILL mid-job, restarted, stopped with SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use docfetch::job::JobState;
use docfetch::store::Store;

use crate::helpers::{TestApp, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_docfetch");

fn start(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("docfetch starts")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

async fn exit_status(mut child: Child) -> std::process::ExitStatus {
    wait_until(Duration::from_secs(20), "docfetch to exit", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await
}

async fn job_state(store: &Store, name: &str) -> Option<docfetch::job::Job> {
    store.find(name).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_survives_sigkill_mid_wait_and_finishes_without_a_second_order() {
    let app = TestApp::spawn().await;
    let config = app.dir.path().join("docfetch.toml");
    std::fs::write(&config, app.config_toml()).unwrap();
    let log = app.dir.path().join("daemon.log");
    let requests = app.requests();
    let daemon = start(&config, &log);

    let request = r#"{"account": "fresh-sim", "operation": "sales_book",
        "params": {"_sim": {"pending": 8, "size": 100000, "filename": "Книга продаж.xlsx"}}}"#;
    std::fs::write(requests.join("book.json.tmp"), request).unwrap();
    std::fs::rename(requests.join("book.json.tmp"), requests.join("book.json")).unwrap();

    let store = Store::open(&app.settings.store.url).await.unwrap();
    wait_until(Duration::from_secs(20), "the job to be polled", || async {
        job_state(&store, "book").await.filter(|j| j.polls >= 2)
    })
    .await;
    let mut daemon = daemon;
    daemon.kill().unwrap(); // SIGKILL
    daemon.wait().unwrap();
    assert!(!app.output("book").join("job.json").exists());

    let daemon = start(&config, &log);
    let receipt = app.output("book").join("job.json");
    wait_until(Duration::from_secs(30), "the receipt", || async {
        receipt.exists().then_some(())
    })
    .await;
    // The receipt is written just before the store commits the job as done.
    let job = wait_until(Duration::from_secs(10), "the job to be done", || async {
        job_state(&store, "book")
            .await
            .filter(|j| j.state.is_finished())
    })
    .await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(app.sim.fresh.orders(), 1, "restarting never orders twice");
    assert!(app.output("book").join("Книга продаж.xlsx").is_file());
    assert!(requests.join("accepted/book.json").is_file());

    signal(&daemon, "TERM");
    let status = exit_status(daemon).await;
    assert!(
        status.success(),
        "SIGTERM ends docfetch with exit 0: {status:?}"
    );

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("request accepted"), "{logs}");
    assert!(
        !logs.contains(&app.sim.config.fresh.password),
        "the password reached the log"
    );
    assert!(
        !logs.to_ascii_lowercase().contains("authorization: basic"),
        "an Authorization header reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_reports_the_outcome_in_its_exit_code() {
    let app = TestApp::spawn().await;
    let config = app.dir.path().join("docfetch.toml");
    std::fs::write(&config, app.config_toml()).unwrap();
    let daemon = start(&config, &app.dir.path().join("daemon.log"));

    let good = app.dir.path().join("usn-2018q3.json");
    std::fs::write(
        &good,
        r#"{"account": "fresh-sim", "operation": "tax_usn_calculator", "params": {}}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["submit", "--wait"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("usn-2018q3: done: tax_usn_calculator.json"),
        "{stdout}"
    );

    let bad = app.dir.path().join("missing.json");
    std::fs::write(
        &bad,
        r#"{"account": "fresh-sim", "operation": "no_such_data"}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["submit", "--wait"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a failed job exits 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("10404"));

    // The same name again is refused, not run twice.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("submit")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["jobs", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 2);

    signal(&daemon, "INT");
    assert!(exit_status(daemon).await.success());
}

#[tokio::test]
async fn configuration_errors_exit_with_code_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[scheduler]\nworkers = 0\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheduler.workers"));

    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("absent.toml"))
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = Command::new(BIN)
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "no config file at all is fine");
}

/// The Debian package's config, with the commented account examples made
/// real and their secrets read from `secrets`.
fn packaged_config_with_its_accounts(secrets: &Path) -> String {
    let shipped = include_str!("../deploy/debian/docfetch.toml");
    let mut out = String::new();
    let mut in_account = false;
    for line in shipped.lines() {
        let header = line.starts_with("# [accounts.") && line.ends_with(']');
        in_account = header || (in_account && line.starts_with("# "));
        out.push_str(if in_account { &line[2..] } else { line });
        out.push('\n');
    }
    out.replace("/etc/docfetch/secrets/", &format!("{}/", secrets.display()))
}

#[tokio::test]
async fn require_account_keeps_a_fresh_install_down_and_fails_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &Path, require: bool| {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(config).arg("check-config");
        if require {
            command.arg("--require-account");
        }
        command.output().unwrap()
    };

    // The packaged config as installed: valid, and names no account.
    let shipped = dir.path().join("shipped.toml");
    std::fs::write(&shipped, include_str!("../deploy/debian/docfetch.toml")).unwrap();
    let out = check(&shipped, false);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("accounts:  none"));
    let out = check(&shipped, true);
    assert_eq!(
        out.status.code(),
        Some(1),
        "systemd skips the unit: {out:?}"
    );
    assert!(out.stdout.is_empty());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("names no account") && said.contains("[accounts.NAME]"),
        "{said}"
    );

    // Its commented examples, filled in, are five valid accounts.
    for secret in [
        "fresh",
        "ofd",
        "atol",
        "extern-api-key",
        "diadoc-client-id",
        "diadoc",
    ] {
        std::fs::write(dir.path().join(secret), "s3cret\n").unwrap();
    }
    let configured = dir.path().join("configured.toml");
    std::fs::write(&configured, packaged_config_with_its_accounts(dir.path())).unwrap();
    let out = check(&configured, true);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let out = check(&configured, false);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.matches("account:   ").count(), 5, "{listed}");

    // A config that does not load fails the start instead of skipping it.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[scheduler]\nworkers = 0\n").unwrap();
    let out = check(&broken, true);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheduler.workers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_and_stopping_on_its_notify_socket() {
    let app = TestApp::spawn().await;
    let config = app.dir.path().join("docfetch.toml");
    std::fs::write(&config, app.config_toml()).unwrap();
    let socket_path = app.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = std::fs::File::create(app.dir.path().join("daemon.log")).unwrap();
    let daemon = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .expect("a notification before the timeout");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "READY=1");
    // Ready means the store and the drop directory are there.
    assert!(app.requests().join("accepted").is_dir());
    signal(&daemon, "TERM");
    let n = socket.recv(&mut buf).expect("STOPPING before the timeout");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "STOPPING=1");
    assert!(exit_status(daemon).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_carry_the_job_fields() {
    let app = TestApp::spawn().await;
    let config = app.dir.path().join("docfetch.toml");
    std::fs::write(&config, app.config_toml()).unwrap();
    let log_path = app.dir.path().join("daemon.jsonl");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("DOCFETCH__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(
        app.requests().join("logged.json"),
        r#"{"account": "fresh-sim", "operation": "tax_usn_calculator", "params": {}}"#,
    )
    .unwrap();
    let receipt = app.output("logged").join("job.json");
    wait_until(Duration::from_secs(30), "the receipt", || async {
        receipt.exists().then_some(())
    })
    .await;
    signal(&daemon, "TERM");
    assert!(exit_status(daemon).await.success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["message"] == "job done")
        .unwrap_or_else(|| panic!("no 'job done' line in {text}"));
    let span = &done["span"];
    assert_eq!(span["job"], "logged");
    assert_eq!(span["provider"], "1c-fresh");
    assert_eq!(span["account"], "fresh-sim");
    assert!(span["job_id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(span["attempt"].is_number() || span["attempt"].is_string());
    assert!(done["level"] == "INFO" && done["timestamp"].is_string());
}

/// Lines a child prints, handed over as they come so that a test can wait
/// for one with a deadline.
fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until one contains `needle`; all lines read so far go to `seen`.
fn read_until(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => panic!(
                "no line with {needle:?} within {limit:?}; printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serve_keeps_the_dashboard_up_until_ctrl_c_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // A free loopback port: bound, read and released for the demo to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut demo = Command::new(BIN)
        .args([
            "demo",
            "--serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--dir",
        ])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut demo);
    let mut seen = Vec::new();
    let address = read_until(&lines, "dashboard: ", Duration::from_secs(60), &mut seen);
    assert_eq!(
        address.trim(),
        format!("dashboard: http://127.0.0.1:{port}/")
    );
    let login = read_until(&lines, "api-token", Duration::from_secs(5), &mut seen);
    assert!(login.contains("docfetch --config"), "{login}");
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap();
    assert!(
        !seen.iter().any(|l| l.contains(token.trim())),
        "the token itself is not printed"
    );

    read_until(
        &lines,
        "the demo jobs are finished",
        Duration::from_secs(240),
        &mut seen,
    );
    // Still up after the jobs: the dashboard answers with every demo job done.
    let client = reqwest::Client::new();
    let page = client
        .get(format!("http://127.0.0.1:{port}/jobs"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    for name in [
        "usn-2018q3",
        "sales-book",
        "ofd-shifts",
        "inventory",
        "registers",
        "protocol",
    ] {
        assert!(body.contains(name), "{name} on the jobs page");
    }
    // Without the token: the login form only.
    let anonymous = client
        .get(format!("http://127.0.0.1:{port}/jobs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!anonymous.contains("usn-2018q3"));

    signal(&demo, "INT");
    read_until(&lines, "files are in", Duration::from_secs(30), &mut seen);
    let status = exit_status(demo).await;
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the dashboard is gone after Ctrl-C"
    );
}
