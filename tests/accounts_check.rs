//! `docfetch accounts check`: the real binary logs in to every simulated
//! provider over loopback. Right secrets give OK and order nothing; a wrong
//! secret for each provider is an `auth` failure with exit status 1; an
//! Extern account the client may not use is `access`; a closed port is
//! `network` and a silent server `timeout`; an unknown name is exit 2. No
//! secret or token the simulators issued appears in what is printed.

use std::path::Path;
use std::process::Output;

use docfetch::sim::{Sim, SimConfig};

const BIN: &str = env!("CARGO_BIN_EXE_docfetch");
const WRONG: &str = "wrong-secret-5e1a9c";

fn config(dir: &Path, accounts: &str) -> std::path::PathBuf {
    let path = dir.join("docfetch.toml");
    let toml = format!(
        "[store]\nurl = \"sqlite://{d}/docfetch.db\"\n[paths]\nrequests = \"{d}/requests\"\noutput = \"{d}/output\"\n\n{accounts}",
        d = dir.display()
    );
    std::fs::write(&path, toml).expect("config written");
    path
}

async fn run(config: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("accounts")
        .arg("check")
        .args(args)
        .env_remove("DOCFETCH_CONFIG")
        .env("RUST_LOG", "trace")
        .output()
        .await
        .expect("docfetch runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// One account per provider, each with a wrong secret; Fresh's is read
/// from a file so the fix can name it.
fn wrong_accounts(sim: &Sim, dir: &Path) -> String {
    let c = &sim.config;
    let id = &c.identity;
    let fresh_file = dir.join("fresh-password");
    std::fs::write(&fresh_file, format!("{WRONG}\n")).expect("secret file");
    format!(
        "[accounts.fresh-wrong]\nprovider = \"1c-fresh\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword_file = \"{}\"\n\n\
         [accounts.ofd-wrong]\nprovider = \"ofd-ru\"\nbase_url = \"{}\"\nlogin = \"{}\"\npassword = \"{WRONG}\"\n\n\
         [accounts.atol-wrong]\nprovider = \"atol-kkt\"\nbase_url = \"{}\"\nlogin = \"{}\"\npassword = \"{WRONG}\"\n\n\
         [accounts.extern-wrong]\nprovider = \"kontur-extern\"\nbase_url = \"{}\"\nidentity_url = \"{}\"\naccount_id = \"{}\"\nclient_id = \"{}\"\napi_key = \"{WRONG}\"\n\n\
         [accounts.diadoc-wrong]\nprovider = \"kontur-diadoc\"\nbase_url = \"{}\"\nauth = \"diadoc\"\nclient_id = \"{}\"\nlogin = \"{}\"\npassword = \"{WRONG}\"\n\n",
        sim.fresh.base_url(),
        c.fresh.username,
        fresh_file.display(),
        sim.ofd.base_url(),
        c.ofd.login,
        sim.atol.base_url(),
        c.atol.login,
        sim.kontur_extern.base_url(),
        sim.identity.url(),
        c.kontur_extern.account_id,
        id.client_id,
        sim.kontur_diadoc.base_url(),
        c.kontur_diadoc.client_id,
        c.kontur_diadoc.login,
    )
}

/// Every secret of the simulators and every token they issued.
fn secrets_and_tokens(sim: &Sim) -> Vec<String> {
    let c = &sim.config;
    let mut all = vec![
        WRONG.to_string(),
        c.fresh.password.clone(),
        c.ofd.password.clone(),
        c.atol.password.clone(),
        c.identity.api_key.clone(),
        c.identity.password.clone(),
        c.kontur_diadoc.password.clone(),
    ];
    all.extend(sim.ofd.issued_tokens());
    all.extend(sim.atol.issued_tokens());
    all.extend(sim.identity.issued_tokens());
    all.extend(sim.kontur_diadoc.issued_tokens());
    all
}

fn assert_no_secret(sim: &Sim, printed: &str) {
    for secret in secrets_and_tokens(sim) {
        assert!(
            !printed.contains(&secret),
            "a secret or token was printed: {printed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_secrets_log_in_to_every_provider_and_order_nothing() {
    let sim = Sim::start_local(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.accounts_toml());
    let output = run(&config, &[]).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    for name in [
        "fresh-sim",
        "fresh-sim-plain",
        "ofd-sim",
        "atol-sim",
        "kontur-extern-sim",
        "kontur-diadoc-sim",
        "kontur-diadoc-oidc-sim",
    ] {
        assert!(printed.contains(&format!("OK      {name} (")), "{printed}");
    }
    assert!(printed.contains("all 7 accounts logged in"), "{printed}");
    // Each service was really asked: a token was issued by every one that
    // issues them, and nothing was ordered.
    assert!(!sim.ofd.issued_tokens().is_empty());
    assert!(!sim.atol.issued_tokens().is_empty());
    assert!(!sim.kontur_diadoc.issued_tokens().is_empty());
    assert!(!sim.identity.issued_tokens().is_empty());
    assert_eq!(sim.fresh.orders(), 0);
    assert_no_secret(&sim, &printed);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_an_auth_failure_for_each_provider_with_exit_1() {
    let sim = Sim::start_local(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let accounts = format!(
        "{}{}",
        sim.accounts_toml(),
        wrong_accounts(&sim, dir.path())
    );
    let config = config(dir.path(), &accounts);

    let names = [
        ("fresh-wrong", "1c-fresh"),
        ("ofd-wrong", "ofd-ru"),
        ("atol-wrong", "atol-kkt"),
        ("extern-wrong", "kontur-extern"),
        ("diadoc-wrong", "kontur-diadoc"),
    ];
    let mut args: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    args.push("--json");
    let output = run(&config, &args).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    let lines = lines(&output);
    assert_eq!(lines.len(), names.len(), "{printed}");
    for (name, provider) in names {
        let line = lines
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} is reported: {printed}"));
        assert_eq!(line["provider"], provider, "{line}");
        assert_eq!(line["ok"], false, "{line}");
        assert_eq!(line["kind"], "auth", "{line}");
        assert!(line["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            line["fix"]
                .as_str()
                .is_some_and(|f| f.starts_with("check "))
        );
        assert!(line["elapsed_ms"].is_u64(), "{line}");
    }
    let fresh = lines.iter().find(|l| l["name"] == "fresh-wrong").unwrap();
    let fix = fresh["fix"].as_str().unwrap();
    assert!(
        fix.contains("accounts.fresh-wrong.password_file") && fix.contains("fresh-password"),
        "{fix}"
    );

    // A right account next to a wrong one: the right one is OK, the run fails.
    let output = run(&config, &["atol-sim", "atol-wrong"]).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(printed.contains("OK      atol-sim (atol-kkt)"), "{printed}");
    assert!(
        printed.contains("FAILED  atol-wrong (atol-kkt): auth: "),
        "{printed}"
    );
    assert!(printed.contains("        fix: check "), "{printed}");
    assert!(printed.contains("1 of 2 accounts failed"), "{printed}");
    assert_no_secret(&sim, &printed);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_account_name_is_exit_2_and_checks_nothing() {
    let sim = Sim::start_local(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.accounts_toml());
    let output = run(&config, &["ofd-sim", "no-such-account"]).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(2), "{printed}");
    assert!(printed.contains("no-such-account"), "{printed}");
    assert!(sim.ofd.issued_tokens().is_empty(), "nothing was checked");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extern_account_the_client_may_not_use_is_an_access_failure() {
    let sim = Sim::start_local(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = "4bfa1b0a-6f2c-4bd4-8a4e-5f1d5b3c9e10";
    assert_ne!(sim.config.kontur_extern.account_id, other);
    let accounts = sim
        .kontur_extern
        .accounts_toml()
        .replace(&sim.config.kontur_extern.account_id, other);
    let config = config(dir.path(), &accounts);
    let output = run(&config, &["--json"]).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    let lines = lines(&output);
    assert_eq!(lines.len(), 1, "{printed}");
    assert_eq!(lines[0]["kind"], "access", "{printed}");
    assert!(
        lines[0]["message"].as_str().unwrap().contains("HTTP 403"),
        "{printed}"
    );
    assert_no_secret(&sim, &printed);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_a_network_failure_and_a_silent_server_a_timeout() {
    // A port that was free a moment ago: nothing listens there now.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let accounts = format!(
        "[accounts.closed]\nprovider = \"atol-kkt\"\nbase_url = \"http://{closed}\"\nlogin = \"l\"\npassword = \"{WRONG}\"\n\n\
         [accounts.silent]\nprovider = \"ofd-ru\"\nbase_url = \"http://{silent_addr}\"\nlogin = \"l\"\npassword = \"{WRONG}\"\n"
    );
    let config = config(dir.path(), &accounts);
    let output = run(&config, &["--json", "--timeout", "1"]).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    let lines = lines(&output);
    let kind = |name: &str| {
        lines
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| l["kind"].clone())
    };
    assert_eq!(kind("closed"), Some("network".into()), "{printed}");
    assert_eq!(kind("silent"), Some("timeout".into()), "{printed}");
    assert!(!printed.contains(WRONG), "{printed}");
    holder.abort();
}

/// A read-only tmpfs, unmounted when dropped: a folder not even root may
/// write, so the check is the same whoever runs the tests.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn mount(path: &Path) -> Result<ReadOnlyMount, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(ReadOnlyMount(path.to_path_buf()))
        } else {
            Err(format!(
                "mount -t tmpfs -o ro failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn check_config(config: &Path) -> Output {
    std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .env_remove("DOCFETCH_CONFIG")
        .output()
        .expect("docfetch runs")
}

#[tokio::test]
async fn check_config_warns_about_an_output_folder_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning:"));
    let _mount = match ReadOnlyMount::mount(&dir.path().join("output")) {
        Ok(m) => m,
        Err(why) => return crate::support::evidence::skip(&why),
    };
    let out = check_config(&config);
    let said = String::from_utf8_lossy(&out.stdout);
    // A warning, not an error: the daemon still starts.
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        said.contains("warning:   paths.output ") && said.contains("is not writable by this user"),
        "{said}"
    );
}

#[tokio::test]
async fn check_config_fails_on_a_schedule_file_naming_a_missing_account() {
    let dir = tempfile::tempdir().unwrap();
    let schedules = dir.path().join("var/schedules.d");
    std::fs::create_dir_all(&schedules).unwrap();
    std::fs::write(
        schedules.join("nightly.toml"),
        "name = \"nightly\"\ncron = \"0 2 * * *\"\n[request]\naccount = \"nobody\"\noperation = \"x\"\nname = \"n-{{now | %Y%m%d}}\"\n",
    )
    .unwrap();
    let config_path = dir.path().join("docfetch.toml");
    std::fs::write(
        &config_path,
        format!(
            "[paths]\nrequests = \"{d}/requests\"\noutput = \"{d}/output\"\nschedules = \"{d}/var/schedules.d\"\n\
             [accounts.remote]\nprovider = \"atol-kkt\"\nbase_url = \"http://atol.example.com\"\nallow_plain_http = true\nlogin = \"l\"\npassword = \"p\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let out = check_config(&config_path);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(said.contains("error:     schedule "), "{said}");
    assert!(
        said.contains("nightly.toml") && said.contains("nobody"),
        "{said}"
    );
    assert!(
        said.contains("warning:   accounts.remote.base_url http://atol.example.com"),
        "{said}"
    );
}
