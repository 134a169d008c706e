//! docfetch tried as a new user would run it, and attacked as a web page,
//! a local user without the token, and a writer of the drop directory would
//! attack it: the real binary on the example config, in its own folder.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use docfetch::sim::{Sim, SimConfig};
use serde_json::json;

use crate::api::raw;
use crate::helpers::wait_until;
use crate::support::daemon::{BIN, Daemon};
use crate::support::fs::drop_request;

/// A free loopback port (bound and released; the daemon binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `config/docfetch.example.toml` as a new user edits it: the account
/// pointed at the simulator, the API on a free port. Everything else, the
/// relative `var/…` paths included, as shipped.
fn example_config(dir: &Path, sim: &Sim, port: u16) -> PathBuf {
    let secret = dir.join("fresh-password");
    std::fs::write(&secret, format!("{}\n", sim.config.fresh.password)).unwrap();
    let text = include_str!("../config/docfetch.example.toml")
        .replace(
            "listen = \"127.0.0.1:8750\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "https://stage.1cfresh.com/a/bs/10098/hs/dt/storage",
            &sim.fresh.base_url(),
        )
        .replace(
            "/run/credentials/docfetch/fresh",
            &secret.display().to_string(),
        )
        .replace(
            "username = \"api\"",
            &format!("username = \"{}\"", sim.config.fresh.username),
        )
        .replace("poll_initial = \"2s\"", "poll_initial = \"100ms\"")
        .replace("settle = \"2s\"", "settle = \"0s\"")
        .replace("scan_interval = \"1s\"", "scan_interval = \"100ms\"");
    let path = dir.join("docfetch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `docfetch ARGS` in `dir`, its output.
fn docfetch(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("DOCFETCH_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("docfetch runs")
}

fn start(dir: &Path, config: &Path) -> Daemon {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    Daemon::spawn_prepared(command)
}

async fn healthy(base: &str) {
    wait_until(Duration::from_secs(30), "the daemon to answer", || async {
        let r = reqwest::get(format!("{base}/healthz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_example_config_a_web_page_and_a_request_carrying_a_command_both_fail_and_nothing_runs()
 {
    let sim = Sim::start_local(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = example_config(dir.path(), &sim, port);
    let checked = docfetch(dir.path(), &["--config", "docfetch.toml", "check-config"]);
    assert!(checked.status.success(), "{checked:?}");
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        said.contains("token in var/api-token (made when the daemon first starts)"),
        "{said}"
    );
    assert!(
        !dir.path().join("var/api-token").exists(),
        "check-config makes nothing"
    );

    let mut daemon = start(dir.path(), &config);
    let base = format!("http://127.0.0.1:{port}");
    healthy(&base).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // The token was made at first start, for the daemon's user only, and the
    // CLI finds it from the same config.
    let token_path = dir.path().join("var/api-token");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let printed = docfetch(dir.path(), &["--config", "docfetch.toml", "api-token"]);
    assert!(printed.status.success(), "{printed:?}");
    let token = String::from_utf8(printed.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        token,
        std::fs::read_to_string(&token_path).unwrap().trim(),
        "docfetch api-token prints the daemon's token"
    );
    assert_eq!(token.len(), 64);

    let marker = dir.path().join("pwned");
    let evil = serde_json::to_string(&json!({
        "account": "fresh-main", "operation": "tax_usn_calculator", "name": "evil",
        "on_done": ["/usr/bin/touch", marker.display().to_string()]}))
    .unwrap();

    // 1. A web page the operator opens posts cross-site as text/plain.
    let request = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{evil}",
        evil.len()
    );
    let (status, answer) = raw(addr, &request).await;
    assert_eq!(status, 403, "{answer}");
    // 2. A local user (or a page that guessed the content type) with no token.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/jobs"))
        .json(&serde_json::from_str::<serde_json::Value>(&evil).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // 3. A writer of the drop directory.
    let requests = dir.path().join("var/requests");
    drop_request(&requests, "evil.json", evil.as_bytes());
    let note = requests.join("rejected/evil.error.txt");
    let why = wait_until(
        Duration::from_secs(30),
        "the request to be rejected",
        || {
            let note = note.clone();
            async move { std::fs::read_to_string(note).ok() }
        },
    )
    .await;
    assert!(
        why.contains("[hooks.touch] with command = [\"/usr/bin/touch\"")
            && why.contains("on_done = \"touch\""),
        "the note says how to configure the hook: {why}"
    );
    // 4. Even the token holder cannot hand docfetch a command.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/jobs"))
        .bearer_auth(&token)
        .json(&serde_json::from_str::<serde_json::Value>(&evil).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The right call works.
    let r = client
        .post(format!("{base}/api/jobs"))
        .bearer_auth(&token)
        .json(&json!({"account": "fresh-main", "operation": "tax_usn_calculator", "name": "good"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    wait_until(
        Duration::from_secs(60),
        "the good job to finish",
        || async {
            let r = client
                .get(format!("{base}/api/jobs/good"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            let job: serde_json::Value = r.json().await.ok()?;
            (job["state"] == "done").then_some(())
        },
    )
    .await;
    assert!(
        dir.path()
            .join("var/output/good/tax_usn_calculator.json")
            .is_file()
    );
    let r = client
        .get(format!("{base}/api/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["good"], "no attack created a job");
    assert!(daemon.terminate().await.success());
    assert!(!marker.exists(), "no command ran");

    // A restart reuses the token.
    let mut daemon = start(dir.path(), &config);
    healthy(&base).await;
    let r = client
        .get(format!("{base}/api/jobs/good"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(daemon.terminate().await.success());
    sim.stop().await;
}

#[tokio::test]
async fn the_unix_socket_has_mode_0660_whatever_the_umask() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for umask in ["000", "077"] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/api.sock");
        let config = dir.path().join("docfetch.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"sqlite://{d}/docfetch.db\"\n[paths]\nrequests = \"{d}/requests\"\noutput = \"{d}/output\"\nattachments = \"{d}/attachments\"\nschedules = \"{d}/schedules.d\"\n[api]\nlisten = \"{}\"\nauth = \"none\"\n",
                socket.display(),
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(BIN)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut daemon = Daemon::spawn_prepared(command);
        let answer = wait_until(Duration::from_secs(30), "the socket to answer", || async {
            let mut stream = tokio::net::UnixStream::connect(&socket).await.ok()?;
            stream
                .write_all(
                    b"GET /api/jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .await
                .ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.ok()?;
            Some(answer)
        })
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "umask {umask}");
        assert!(daemon.terminate().await.success());
        assert!(!socket.exists(), "the socket is removed on stop");
        assert!(
            !dir.path().join("api-token").exists(),
            "no token is made when none is asked for"
        );
    }
}

#[test]
fn configs_that_would_open_a_door_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        (
            "[api]\nlisten = \"127.0.0.1:8750\"\nauth = \"none\"\n",
            "api.auth",
        ),
        (
            "[hooks.notify]\nurl = \"http://intranet.example/hook\"\nsecret = \"0123456789abcdef\"\n",
            "hooks.notify.url",
        ),
        (
            "[hooks.notify]\nurl = \"https://intranet.example/hook\"\n",
            "hooks.notify.secret",
        ),
    ] {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let out = docfetch(dir.path(), &["--config", "bad.toml", "check-config"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn docfetch_submit_refuses_a_request_carrying_a_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docfetch.toml"),
        "[accounts.fresh-main]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/a/hs/dt/storage\"\nusername = \"api\"\npassword = \"pw\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("usn.json"),
        r#"{"account": "fresh-main", "operation": "tax_usn_calculator", "on_failed": ["/usr/local/bin/alert"]}"#,
    )
    .unwrap();
    let out = docfetch(
        dir.path(),
        &["--config", "docfetch.toml", "submit", "usn.json"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("field `on_failed`") && err.contains("[hooks.alert]"),
        "{err}"
    );
    let listed = docfetch(dir.path(), &["--config", "docfetch.toml", "jobs", "--json"]);
    assert!(listed.status.success());
    assert!(listed.stdout.is_empty(), "nothing was queued");
}
