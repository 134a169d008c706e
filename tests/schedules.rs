//! Schedules, completion hooks and retention.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use docfetch::hooks::HookRunner;
use docfetch::job::{JobState, now_ms};
use docfetch::schedule::{Fired, Schedules};
use docfetch::sim::SimConfig;
use serde_json::json;

use crate::helpers::TestApp;

fn schedule_toml(name: &str, cron: &str, tz: &str, catch_up: &str) -> String {
    format!(
        r#"
[[schedules]]
name = "{name}"
cron = "{cron}"
timezone = "{tz}"
catch_up = "{catch_up}"
[schedules.request]
account = "fresh-sim"
operation = "tax_usn_calculator"
[schedules.request.params]
date = "{{{{yesterday.end}}}}"
from = "{{{{last_month.start | %Y-%m-%d}}}}"
"#
    )
}

fn sqlite_pool(app: &TestApp) -> &sqlx::SqlitePool {
    match &app.store {
        docfetch::store::Store::Sqlite(s) => s.pool(),
        _ => panic!("these tests run on the SQLite store"),
    }
}

fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
}

async fn created(fired: &[Fired]) -> Vec<String> {
    fired
        .iter()
        .filter_map(|f| match f {
            Fired::Created(job) => Some(job.name.clone()),
            Fired::AlreadyThere(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn firings_follow_the_zone_across_dst_and_templates_use_the_scheduled_time() {
    let extra = format!(
        "{}{}",
        schedule_toml("berlin", "0 0 6 * * *", "Europe/Berlin", "all"),
        schedule_toml("moscow", "0 6 * * *", "Europe/Moscow", "all")
    );
    let app = TestApp::spawn_with(SimConfig::default(), &extra, &[]).await;
    let schedules = Schedules::load(app.store.clone(), app.settings.clone());
    // Start tracking just before Berlin's summer time ends (2026-10-25).
    schedules.fire_due(utc(2026, 10, 23, 12, 0)).await.unwrap();
    let fired = schedules.fire_due(utc(2026, 10, 26, 12, 0)).await.unwrap();
    let mut names = created(&fired).await;
    names.sort();
    assert_eq!(
        names,
        [
            "berlin-20261024-060000",
            "berlin-20261025-060000",
            "berlin-20261026-060000",
            "moscow-20261024-060000",
            "moscow-20261025-060000",
            "moscow-20261026-060000"
        ]
    );
    // 06:00 in Berlin is 04:00 UTC in summer time and 05:00 UTC in winter
    // time; Moscow has no DST and stays at 03:00 UTC.
    let list = schedules.list().await;
    let berlin = list.iter().find(|s| s.name == "berlin").unwrap();
    let moscow = list.iter().find(|s| s.name == "moscow").unwrap();
    assert_eq!(
        berlin
            .next_after(utc(2026, 10, 23, 12, 0))
            .unwrap()
            .with_timezone(&Utc),
        utc(2026, 10, 24, 4, 0)
    );
    assert_eq!(
        berlin
            .next_after(utc(2026, 10, 24, 12, 0))
            .unwrap()
            .with_timezone(&Utc),
        utc(2026, 10, 25, 5, 0)
    );
    assert_eq!(
        moscow
            .next_after(utc(2026, 10, 24, 12, 0))
            .unwrap()
            .with_timezone(&Utc),
        utc(2026, 10, 25, 3, 0)
    );
    // Each schedule remembers the job of its latest occurrence.
    let last = app.store.schedule_jobs().await.unwrap();
    let last: Vec<(&str, &str, i64)> = last
        .iter()
        .map(|l| (l.schedule.as_str(), l.job.as_str(), l.at))
        .collect();
    assert_eq!(
        last,
        [
            (
                "berlin",
                "berlin-20261026-060000",
                utc(2026, 10, 26, 5, 0).timestamp_millis()
            ),
            (
                "moscow",
                "moscow-20261026-060000",
                utc(2026, 10, 26, 3, 0).timestamp_millis()
            ),
        ]
    );

    // Month and year boundaries, evaluated at the scheduled local time: the
    // 06:00 Berlin firing of 2027-01-01 is 05:00 UTC.
    let at = chrono_tz::Europe::Berlin
        .with_ymd_and_hms(2027, 1, 1, 6, 0, 0)
        .unwrap();
    let request = berlin.request_at(at);
    assert_eq!(request.params["date"], "2026-12-31T23:59:59");
    assert_eq!(request.params["from"], "2026-12-01");
    assert_eq!(request.name.as_deref(), Some("berlin-20270101-060000"));
    // At 01:00 Moscow time on the 1st it is still the 31st in Berlin.
    let at = chrono_tz::Europe::Moscow
        .with_ymd_and_hms(2026, 11, 1, 1, 0, 0)
        .unwrap();
    assert_eq!(moscow.request_at(at).params["from"], "2026-10-01");
    assert_eq!(
        berlin
            .request_at(at.with_timezone(&chrono_tz::Europe::Berlin))
            .params["from"],
        "2026-09-01"
    );
}

#[tokio::test]
async fn a_firing_is_never_doubled_by_a_restart() {
    let extra = schedule_toml("daily", "0 6 * * *", "Europe/Moscow", "latest");
    let mut app = TestApp::spawn_with(SimConfig::default(), &extra, &[]).await;
    let schedules = Schedules::load(app.store.clone(), app.settings.clone());
    schedules.fire_due(utc(2026, 11, 22, 12, 0)).await.unwrap();
    let fired = schedules.fire_due(utc(2026, 11, 23, 3, 0)).await.unwrap();
    assert_eq!(created(&fired).await, ["daily-20261123-060000"]);
    // The daemon dies before recording the firing, and starts again.
    sqlx::query("UPDATE schedule_runs SET last_fire_at = ?1")
        .bind(utc(2026, 11, 22, 12, 0).timestamp_millis())
        .execute(sqlite_pool(&app))
        .await
        .unwrap();
    app.restart().await;
    let schedules = Schedules::load(app.store.clone(), app.settings.clone());
    let fired = schedules.fire_due(utc(2026, 11, 23, 3, 0)).await.unwrap();
    assert_eq!(
        fired,
        vec![Fired::AlreadyThere("daily-20261123-060000".into())]
    );
    assert_eq!(app.store.list(&Default::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn missed_firings_follow_the_catch_up_policy() {
    let extra = format!(
        "{}{}{}",
        schedule_toml("none", "0 6 * * *", "Europe/Moscow", "none"),
        schedule_toml("latest", "0 6 * * *", "Europe/Moscow", "latest"),
        schedule_toml("all", "0 6 * * *", "Europe/Moscow", "all")
    );
    let app = TestApp::spawn_with(SimConfig::default(), &extra, &[]).await;
    let schedules = Schedules::load(app.store.clone(), app.settings.clone());
    schedules.fire_due(utc(2026, 11, 20, 12, 0)).await.unwrap();
    // Down for three days; back at 10:00 UTC (13:00 Moscow).
    let mut names = created(&schedules.fire_due(utc(2026, 11, 23, 10, 0)).await.unwrap()).await;
    names.sort();
    assert_eq!(
        names,
        [
            "all-20261121-060000",
            "all-20261122-060000",
            "all-20261123-060000",
            "latest-20261123-060000"
        ]
    );
    // On time, every policy fires.
    let mut names = created(&schedules.fire_due(utc(2026, 11, 24, 3, 0)).await.unwrap()).await;
    names.sort();
    assert_eq!(
        names,
        [
            "all-20261124-060000",
            "latest-20261124-060000",
            "none-20261124-060000"
        ]
    );
}

#[tokio::test]
async fn schedule_files_with_bad_templates_are_refused_with_line_and_column() {
    let app = TestApp::spawn().await;
    let dir = &app.settings.paths.schedules;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "name = \"bad\"\ncron = \"0 6 * * *\"\n[request]\naccount = \"fresh-sim\"\noperation = \"x\"\n[request.params]\ndate = \"from {{yestrday}}\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("good.toml"),
        "name = \"good\"\ncron = \"0 6 * * *\"\n[request]\naccount = \"fresh-sim\"\noperation = \"balance_sheet\"\n",
    )
    .unwrap();
    let (loaded, errors) = docfetch::schedule::load_dir(dir, &app.settings);
    assert_eq!(
        loaded.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert_eq!(errors.len(), 1);
    let message = errors[0].to_string();
    assert!(
        message.contains("line 7 column 16") && message.contains("yestrday"),
        "{message}"
    );
    let err = docfetch::config::Settings::from_toml(
        &format!(
            "{}\n{}",
            app.config_toml(),
            schedule_toml("x", "not a cron", "Europe/Moscow", "latest")
        ),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cron"), "{err}");
}

fn script(app: &TestApp, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = app.dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

async fn run_hooks(app: &TestApp) -> usize {
    let runner = HookRunner::new(
        app.store.clone(),
        app.settings.clone(),
        docfetch::http::client(&app.settings.http).unwrap(),
    );
    runner.step().await.unwrap()
}

#[tokio::test]
async fn hooks_get_the_job_in_their_environment_and_never_a_shell() {
    let app = TestApp::spawn_with(
        SimConfig::default(),
        "[hooks.record]\ncommand = [\"{dir}/record.sh\"]\n[hooks.literal]\ncommand = [\"/bin/echo\", \"$HOME; touch {dir}/pwned\"]\n",
        &[],
    )
    .await;
    script(
        &app,
        "record.sh",
        "env > \"$DOCFETCH_DIR/env.txt\"\necho \"arg=$1\" >> \"$DOCFETCH_DIR/env.txt\"",
    );
    app.submit(
        json!({"account": "fresh-sim", "operation": "tax_usn_calculator", "name": "hooked",
                      "on_done": "record"}),
    )
    .await;
    assert_eq!(app.run_until_finished("hooked").await.state, JobState::Done);
    assert_eq!(
        app.job("hooked").await.hooks_state.as_deref(),
        Some("pending")
    );
    assert_eq!(run_hooks(&app).await, 1);
    let env = std::fs::read_to_string(app.output("hooked").join("env.txt")).unwrap();
    let dir = std::path::absolute(app.output("hooked")).unwrap();
    assert!(env.contains("DOCFETCH_JOB=hooked\n"), "{env}");
    assert!(env.contains("DOCFETCH_STATE=done\n"), "{env}");
    assert!(
        env.contains(&format!("DOCFETCH_DIR={}\n", dir.display())),
        "{env}"
    );
    assert!(
        env.contains(&format!(
            "DOCFETCH_FILES={}",
            dir.join("tax_usn_calculator.json").display()
        )),
        "{env}"
    );
    assert!(
        env.contains(&format!("arg={}", dir.join("job.json").display())),
        "{env}"
    );
    assert!(
        !env.contains("sim-password"),
        "the daemon's environment is not passed on"
    );
    let job = app.job("hooked").await;
    assert_eq!(job.hooks_state.as_deref(), Some("done"));
    assert_eq!(run_hooks(&app).await, 0, "hooks run once they succeeded");

    // Shell syntax in an argument is just text.
    app.submit(
        json!({"account": "fresh-sim", "operation": "balance_sheet", "name": "literal",
                      "on_done": "literal"}),
    )
    .await;
    assert_eq!(
        app.run_until_finished("literal").await.state,
        JobState::Done
    );
    run_hooks(&app).await;
    assert!(
        !app.dir.path().join("pwned").exists(),
        "no shell ran the argument"
    );
    let events = app
        .store
        .events(&app.job("literal").await.id)
        .await
        .unwrap();
    let hook = events.iter().find(|e| e.kind == "hook").unwrap();
    assert!(
        hook.message.contains("exited with 0") && hook.message.contains("$HOME; touch"),
        "{}",
        hook.message
    );
}

#[tokio::test]
async fn a_failing_or_hanging_hook_is_retried_a_bounded_number_of_times_and_never_changes_the_outcome()
 {
    let app = TestApp::spawn_with(
        SimConfig::default(),
        // The hook's own timeout wins over hooks.timeout.
        "[hooks.hang]\ncommand = [\"{dir}/hang.sh\"]\ntimeout = \"200ms\"\n",
        &[
            ("DOCFETCH__HOOKS__TIMEOUT", "60s"),
            ("DOCFETCH__HOOKS__MAX_ATTEMPTS", "2"),
            ("DOCFETCH__HOOKS__RETRY_INITIAL", "10ms"),
        ],
    )
    .await;
    script(&app, "hang.sh", "sleep 5");
    app.submit(
        json!({"account": "fresh-sim", "operation": "balance_sheet", "name": "slow-hook",
                      "on_done": "hang"}),
    )
    .await;
    assert_eq!(
        app.run_until_finished("slow-hook").await.state,
        JobState::Done
    );
    let started = std::time::Instant::now();
    crate::helpers::wait_until(
        Duration::from_secs(10),
        "the hook to be given up",
        || async {
            run_hooks(&app).await;
            let job = app.job("slow-hook").await;
            (job.hooks_state.as_deref() == Some("failed")).then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the hanging hook was killed, not waited for"
    );
    let job = app.job("slow-hook").await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.hooks_attempts, 2);
    let events = app.store.events(&job.id).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.message.contains("timed out after 200ms"))
            .count(),
        2,
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("gave up after 2 attempts"))
    );
}

/// A webhook receiver on loopback that keeps every call's headers and body.
type Calls = Arc<tokio::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

async fn receiver() -> (std::net::SocketAddr, Calls) {
    use axum::routing::post;
    let received: Calls = Default::default();
    let sink = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock().await.push((headers, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, received)
}

/// What the README's receiver does: the timestamp is recent and the
/// signature over `TIMESTAMP.BODY` matches.
fn verify(secret: &[u8], headers: &axum::http::HeaderMap, body: &[u8], now: u64) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let Ok(timestamp) = header("x-docfetch-timestamp").parse::<u64>() else {
        return false;
    };
    timestamp.abs_diff(now) <= 300
        && header("x-docfetch-signature")
            == docfetch::hooks::webhook_signature(secret, timestamp, body)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn webhooks_are_signed_over_a_timestamp_so_a_captured_call_cannot_be_replayed() {
    let (addr, received) = receiver().await;
    let extra = format!(
        "[accounts.signed]\nprovider = \"1c-fresh\"\nbase_url = \"{{fresh_base}}\"\nusername = \"api\"\npassword = \"sim-password\"\non_done_url = \"http://{addr}/hook\"\nwebhook_secret = \"whsec-0123456789\"\n\n[hooks.notify]\nurl = \"http://localhost:{port}/hook\"\nsecret = \"named-secret-9876543210\"\n",
        port = addr.port()
    );
    let app = TestApp::spawn_with(SimConfig::default(), &extra, &[]).await;
    app.submit(json!({"account": "signed", "operation": "balance_sheet", "name": "posted"}))
        .await;
    app.submit(
        json!({"account": "fresh-sim", "operation": "balance_sheet", "name": "named",
                      "on_done": "notify"}),
    )
    .await;
    assert_eq!(app.run_until_finished("posted").await.state, JobState::Done);
    assert_eq!(app.run_until_finished("named").await.state, JobState::Done);
    assert_eq!(run_hooks(&app).await, 2);
    let got = received.lock().await.clone();
    assert_eq!(got.len(), 2);
    let now = unix_now();
    for (headers, body) in &got {
        let job = headers["x-docfetch-job"].to_str().unwrap();
        let secret: &[u8] = if job == "posted" {
            b"whsec-0123456789"
        } else {
            b"named-secret-9876543210"
        };
        assert_eq!(
            body,
            &std::fs::read(app.output(job).join("job.json")).unwrap()
        );
        assert!(verify(secret, headers, body, now), "{job}: {headers:?}");
        // The same call replayed ten minutes later is refused…
        assert!(!verify(secret, headers, body, now + 600));
        // …and the body cannot be kept with another timestamp.
        let mut moved = headers.clone();
        moved.insert(
            "x-docfetch-timestamp",
            (now + 600).to_string().parse().unwrap(),
        );
        assert!(!verify(secret, &moved, body, now + 600));
        // The other hook's secret does not sign it.
        assert!(!verify(b"someone-else", headers, body, now));
    }
    readme_receiver_accepts_the_call_and_refuses_its_replay(&got[0].0, &got[0].1);
}

/// Runs the Python receiver shown in README.md on a real call.
fn readme_receiver_accepts_the_call_and_refuses_its_replay(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) {
    let readme = include_str!("../README.md");
    let start = readme
        .find("<!-- webhook-receiver -->\n```python\n")
        .expect("README.md shows a webhook receiver");
    let code = &readme[start..];
    let code = &code[code.find("```python\n").unwrap() + 10..];
    let code = &code[..code.find("```").unwrap()];
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is needed to check README's webhook receiver under CI"
        );
        println!("python3 is not installed: README's webhook receiver NOT checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body"), body).unwrap();
    let harness = format!(
        "{code}\nimport sys, time\nbody = open(sys.argv[1], 'rb').read()\nheaders = {{'X-Docfetch-Timestamp': sys.argv[2], 'X-Docfetch-Signature': sys.argv[3]}}\nprint(verify(b'whsec-0123456789', headers, body))\ntime.time = lambda: int(sys.argv[2]) + 600\nprint(verify(b'whsec-0123456789', headers, body))\n"
    );
    std::fs::write(dir.path().join("receiver.py"), harness).unwrap();
    let out = std::process::Command::new("python3")
        .arg(dir.path().join("receiver.py"))
        .arg(dir.path().join("body"))
        .arg(headers["x-docfetch-timestamp"].to_str().unwrap())
        .arg(headers["x-docfetch-signature"].to_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "True\nFalse\n",
        "accepted now, refused ten minutes later"
    );
}

#[tokio::test]
async fn a_schedule_written_by_the_operator_may_carry_its_command_or_name_a_hook() {
    let extra = "[hooks.mark]\ncommand = [\"{dir}/mark.sh\", \"named\"]\n\n[[schedules]]\nname = \"with-argv\"\ncron = \"0 0 6 * * *\"\n[schedules.request]\naccount = \"fresh-sim\"\noperation = \"balance_sheet\"\non_done = [\"{dir}/mark.sh\", \"argv\"]\n\n[[schedules]]\nname = \"with-name\"\ncron = \"0 0 6 * * *\"\n[schedules.request]\naccount = \"fresh-sim\"\noperation = \"balance_sheet\"\non_done = \"mark\"\n";
    let app = TestApp::spawn_with(SimConfig::default(), extra, &[]).await;
    script(
        &app,
        "mark.sh",
        &format!("echo \"$1\" >> {}/marks.txt", app.dir.path().display()),
    );
    let schedules = Schedules::load(app.store.clone(), app.settings.clone());
    let mut names = Vec::new();
    for schedule in schedules.list().await {
        let at = Utc
            .with_ymd_and_hms(2026, 3, 1, 3, 0, 0)
            .unwrap()
            .with_timezone(&schedule.timezone);
        match schedules.fire(&schedule, at).await.unwrap() {
            Fired::Created(job) => names.push(job.name),
            other => panic!("{other:?}"),
        }
    }
    for name in &names {
        assert_eq!(app.run_until_finished(name).await.state, JobState::Done);
    }
    assert_eq!(run_hooks(&app).await, 2);
    let mut marks: Vec<String> = std::fs::read_to_string(app.dir.path().join("marks.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    marks.sort();
    assert_eq!(marks, ["argv", "named"]);
}

#[tokio::test]
async fn a_job_stored_with_its_own_command_before_the_upgrade_still_runs_it() {
    let app = TestApp::spawn().await;
    let marker = app.dir.path().join("legacy-ran");
    // A row as an older docfetch stored it: the request's own argv.
    let mut new = docfetch::intake::prepare(
        serde_json::from_value(
            json!({"account": "fresh-sim", "operation": "balance_sheet", "name": "legacy"}),
        )
        .unwrap(),
        None,
        app.settings.as_ref(),
        docfetch::intake::Trust::Submitted,
        "legacy.json",
        String::new(),
        now_ms(),
    )
    .unwrap();
    new.hooks = Some(docfetch::job::Hooks {
        on_done: Some(docfetch::job::HookRef::Command(vec![
            "/usr/bin/touch".into(),
            marker.display().to_string(),
        ])),
        ..Default::default()
    });
    app.store.insert(&new).await.unwrap();
    assert_eq!(app.run_until_finished("legacy").await.state, JobState::Done);
    assert_eq!(run_hooks(&app).await, 1);
    assert!(marker.exists(), "accepted under the old rules, it runs");
}

#[tokio::test]
async fn with_allow_request_commands_a_request_may_carry_its_command() {
    let app = TestApp::spawn_with(
        SimConfig::default(),
        "",
        &[("DOCFETCH__HOOKS__ALLOW_REQUEST_COMMANDS", "true")],
    )
    .await;
    let marker = app.dir.path().join("allowed-ran");
    app.submit(
        json!({"account": "fresh-sim", "operation": "balance_sheet", "name": "carried",
                      "on_done": ["/usr/bin/touch", marker.display().to_string()]}),
    )
    .await;
    assert_eq!(
        app.run_until_finished("carried").await.state,
        JobState::Done
    );
    assert_eq!(run_hooks(&app).await, 1);
    assert!(marker.exists());
}

#[tokio::test]
async fn retention_prunes_exactly_the_old_finished_jobs() {
    let app = TestApp::spawn().await;
    for name in [
        "old-done",
        "new-done",
        "old-failed",
        "mid-failed",
        "waiting",
    ] {
        app.submit(json!({"account": "fresh-sim", "operation": "balance_sheet", "name": name}))
            .await;
    }
    let day = 86_400_000_i64;
    let now = now_ms();
    let pool = sqlite_pool(&app).clone();
    for (name, state, age_days) in [
        ("old-done", "done", 31),
        ("new-done", "done", 29),
        ("old-failed", "failed", 91),
        ("mid-failed", "failed", 60),
    ] {
        sqlx::query("UPDATE jobs SET state = ?2, finished_at = ?3 WHERE name = ?1")
            .bind(name)
            .bind(state)
            .bind(now - age_days * day)
            .execute(&pool)
            .await
            .unwrap();
        std::fs::create_dir_all(app.output(name)).unwrap();
    }
    let accepted = app.requests().join("accepted");
    std::fs::write(accepted.join("ancient.json"), "{}").unwrap();
    std::fs::write(accepted.join("recent.json"), "{}").unwrap();
    let touched = std::process::Command::new("touch")
        .args(["-d", "2020-01-01"])
        .arg(accepted.join("ancient.json"))
        .status();
    let pruned = docfetch::retention::prune(&app.store, &app.settings, now)
        .await
        .unwrap();
    let mut jobs = pruned.jobs.clone();
    jobs.sort();
    assert_eq!(jobs, ["old-done", "old-failed"]);
    let left: Vec<String> = app
        .store
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(
        app.output("old-done").is_dir(),
        "files are kept unless delete_files = true"
    );
    if touched.is_ok_and(|s| s.success()) {
        assert_eq!(pruned.request_files, 1);
        assert!(!accepted.join("ancient.json").exists() && accepted.join("recent.json").exists());
    }
    let app2 = TestApp::spawn_with(
        SimConfig::default(),
        "",
        &[
            ("DOCFETCH__RETENTION__DELETE_FILES", "true"),
            ("DOCFETCH__RETENTION__DONE", "1d"),
        ],
    )
    .await;
    app2.submit(json!({"account": "fresh-sim", "operation": "balance_sheet", "name": "gone"}))
        .await;
    assert_eq!(app2.run_until_finished("gone").await.state, JobState::Done);
    let pruned = docfetch::retention::prune(&app2.store, &app2.settings, now_ms() + 2 * day)
        .await
        .unwrap();
    assert_eq!(pruned.jobs, ["gone"]);
    assert!(!app2.output("gone").exists());
}
