//! ATOL Online KKT/FN information end to end against the simulator: the
//! paged list walk, one register, token renewal, the service's RFC 7807
//! errors, and the token never leaving memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use docfetch::job::JobState;
use docfetch::job::request::RequestFormat;
use docfetch::sim::SimConfig;
use docfetch::sim::atol::{AtolSimConfig, SpentToken, register_value, serial_number};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::TestApp;

async fn spawn(atol: AtolSimConfig) -> TestApp {
    TestApp::spawn_with(
        SimConfig {
            atol,
            ..Default::default()
        },
        "",
        &[],
    )
    .await
}

fn registers(n: usize) -> AtolSimConfig {
    AtolSimConfig {
        registers: n,
        ..Default::default()
    }
}

fn list_request(name: &str, limit: Option<u32>) -> Value {
    let params = match limit {
        Some(limit) => json!({"limit": limit}),
        None => json!({}),
    };
    json!({"account": "atol-sim", "operation": "cash-registers", "name": name, "params": params})
}

fn one_request(name: &str, serial: &str) -> Value {
    json!({
        "account": "atol-sim", "operation": "cash-register", "name": name,
        "params": {"serialNumber": serial},
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    docfetch::job::digest::hex(&Sha256::digest(bytes))
}

/// `cash-registers.json` of a finished job.
fn list_json(app: &TestApp, name: &str) -> Value {
    let bytes = std::fs::read(app.output(name).join("cash-registers.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A CSV file as rows of fields, after checking the BOM and CRLF line ends.
fn read_csv(path: &std::path::Path) -> Vec<Vec<String>> {
    let text = String::from_utf8(std::fs::read(path).unwrap()).unwrap();
    let text = text
        .strip_prefix('\u{feff}')
        .expect("a UTF-8 BOM for Excel");
    assert!(text.ends_with("\r\n"), "CRLF line ends");
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ';' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    rows
}

fn column(rows: &[Vec<String>], name: &str) -> usize {
    rows[0]
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", rows[0]))
}

async fn events(app: &TestApp, name: &str) -> Vec<docfetch::job::JobEvent> {
    let job = app.job(name).await;
    app.store.events(&job.id).await.unwrap()
}

#[tokio::test]
async fn the_whole_list_is_walked_page_by_page_and_saved_as_json_and_csv() {
    let app = spawn(registers(23)).await;
    app.submit(list_request("kkt", Some(5))).await;
    let job = app.run_until_finished("kkt").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);

    let doc = list_json(&app, "kkt");
    assert_eq!(doc["total"], 23);
    assert!(doc["fetchedAt"].as_str().unwrap().ends_with('Z'));
    let saved = doc["cashRegisters"].as_array().unwrap();
    assert_eq!(saved.len(), 23);
    for (i, data) in saved.iter().enumerate() {
        assert_eq!(data, &register_value(i), "register {i}");
    }

    let rows = read_csv(&app.output("kkt").join("cash-registers.csv"));
    assert_eq!(rows.len(), 1 + 23, "a header and one row per register");
    assert!(rows.iter().all(|r| r.len() == rows[0].len()));
    let serial = column(&rows, "serialNumber");
    let code = column(&rows, "networkErrorCode");
    let meaning = column(&rows, "networkErrorMeaning");
    let address = column(&rows, "fiscalStoragePaymentAddress");
    let percent = column(&rows, "fiscalStoragePercentageUse");
    assert_eq!(
        rows[1][serial], "=\"00107703864827\"",
        "leading zeros kept for Excel"
    );
    assert_eq!(
        rows[1][percent], "85,34",
        "a decimal comma for a Russian Excel"
    );
    assert_eq!(rows[3][code], "2");
    assert_eq!(
        rows[3][meaning],
        "Ошибка сетевых настроек или нет соединения с сервером ОФД"
    );
    assert_eq!(rows[9][meaning], "ОФД-процесс не инициализирован");
    assert_eq!(
        rows[5][address], "г. Москва, ул. Тверская, д. 5; касса \"Север\"",
        "a field with ; and quotes survives the round trip"
    );
    assert_eq!(rows[4][column(&rows, "unsentDocs")], "0");

    let receipt = app.receipt("kkt");
    assert_eq!(receipt["state"], "done");
    for (i, name) in ["cash-registers.json", "cash-registers.csv"]
        .into_iter()
        .enumerate()
    {
        let bytes = std::fs::read(app.output("kkt").join(name)).unwrap();
        assert_eq!(receipt["files"][i]["name"], name);
        assert_eq!(receipt["files"][i]["size"], bytes.len());
        assert_eq!(receipt["files"][i]["sha256"], sha256_hex(&bytes));
    }
    let pages = app.sim.atol.pages_by_offset();
    assert_eq!(
        pages.into_iter().collect::<Vec<_>>(),
        vec![(0, 1), (5, 1), (10, 1), (15, 1), (20, 1)]
    );
    assert_eq!(app.sim.atol.logins(), 1, "one token for the whole walk");
}

#[tokio::test]
async fn a_group_without_cash_registers_saves_an_empty_list_and_a_header_only_csv() {
    let app = spawn(registers(0)).await;
    app.submit(list_request("empty", None)).await;
    let job = app.run_until_finished("empty").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let doc = list_json(&app, "empty");
    assert_eq!(doc["total"], 0);
    assert_eq!(doc["cashRegisters"], json!([]));
    let rows = read_csv(&app.output("empty").join("cash-registers.csv"));
    assert_eq!(rows.len(), 1, "the header alone");
}

#[tokio::test]
async fn the_default_page_size_is_the_seeds_maximum_of_100() {
    let app = spawn(registers(237)).await;
    app.submit(list_request("big", None)).await;
    let job = app.run_until_finished("big").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(
        list_json(&app, "big")["cashRegisters"]
            .as_array()
            .unwrap()
            .len(),
        237
    );
    assert_eq!(
        app.sim
            .atol
            .pages_by_offset()
            .into_keys()
            .collect::<Vec<_>>(),
        vec![0, 100, 200]
    );
}

#[tokio::test]
async fn a_long_walk_pauses_every_fifteen_pages_instead_of_tripping_the_continue_guard() {
    let app = spawn(registers(40)).await;
    app.submit(list_request("long", Some(1))).await;
    let job = app.run_until_finished("long").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(list_json(&app, "long")["total"], 40);
    let pages = app.sim.atol.pages_by_offset();
    assert_eq!(pages.len(), 40);
    assert!(pages.values().all(|&n| n == 1), "{pages:?}");
    let pauses = events(&app, "long")
        .await
        .into_iter()
        .filter(|e| e.kind == "progress" && e.message.contains("pausing briefly"))
        .count();
    assert_eq!(pauses, 2, "after pages 15 and 30");
}

#[tokio::test]
async fn one_cash_register_is_saved_by_its_serial_number_keeping_the_first_repeated_key() {
    let app = spawn(registers(7)).await;
    let serial = serial_number(2);
    app.submit(one_request("one", &serial)).await;
    let job = app.run_until_finished("one").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);

    let json_name = format!("cash-register-{serial}.json");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(app.output("one").join(&json_name)).unwrap())
            .unwrap();
    // The simulator repeats `serialNumber` as the seed does, the second
    // value being the next register's: the first one is kept.
    assert_eq!(saved, register_value(2));
    let rows = read_csv(
        &app.output("one")
            .join(format!("cash-register-{serial}.csv")),
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], format!("=\"{serial}\""));

    let receipt = app.receipt("one");
    let names: Vec<&str> = receipt["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [json_name, format!("cash-register-{serial}.csv")]);
    let warning = receipt["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("data.serialNumber") && warning.contains("first value was kept"),
        "{warning}"
    );
    assert!(warning.contains(&serial_number(3)), "{warning}");
    assert_eq!(
        app.sim
            .atol
            .counters
            .register_fetches
            .load(Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn an_unknown_serial_number_fails_at_once_saying_it_was_not_found() {
    let app = spawn(registers(7)).await;
    app.submit(one_request("nope", "00000000000001")).await;
    let job = app.run_until_finished("nope").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1, "a 404 is not retried");
    let error = app.receipt("nope")["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("HTTP 404 Not Found"), "{error}");
    assert!(
        error.contains("no cash register with serial number 00000000000001"),
        "{error}"
    );
    assert!(error.contains("traceId"), "{error}");
}

#[tokio::test]
async fn a_page_failing_mid_walk_is_retried_without_reading_the_earlier_pages_again() {
    let app = spawn(AtolSimConfig {
        fail_pages: vec![10],
        ..registers(23)
    })
    .await;
    app.submit(list_request("flaky", Some(5))).await;
    let job = app.run_until_finished("flaky").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(list_json(&app, "flaky")["total"], 23);
    let pages = app.sim.atol.pages_by_offset();
    assert!(pages.values().all(|&n| n == 1), "{pages:?}");
    assert_eq!(pages.len(), 5);
    assert_eq!(app.sim.atol.counters.faults.load(Ordering::SeqCst), 1);
    let errors: Vec<_> = events(&app, "flaky")
        .await
        .into_iter()
        .filter(|e| e.kind == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("HTTP 500"), "{errors:?}");
    assert!(errors[0].message.contains("Ошибка сервера"), "{errors:?}");
}

#[tokio::test]
async fn an_html_page_instead_of_json_is_retried() {
    let app = spawn(AtolSimConfig {
        garbage_pages: vec![5],
        ..registers(12)
    })
    .await;
    app.submit(list_request("html", Some(5))).await;
    let job = app.run_until_finished("html").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let errors: Vec<_> = events(&app, "html")
        .await
        .into_iter()
        .filter(|e| e.kind == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("not the expected JSON")
            && errors[0].message.contains("Технические работы"),
        "{errors:?}"
    );
}

async fn renews_a_spent_token_once(spent: SpentToken) {
    let app = spawn(AtolSimConfig {
        token_uses: Some(3),
        spent_token: spent,
        ..registers(23)
    })
    .await;
    app.submit(list_request("renew", Some(5))).await;
    let job = app.run_until_finished("renew").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(list_json(&app, "renew")["total"], 23);
    assert_eq!(app.sim.atol.logins(), 2, "one new login after three pages");
    let counters = &app.sim.atol.counters;
    let (expired, missing) = (
        counters.expired.load(Ordering::SeqCst),
        counters.missing.load(Ordering::SeqCst),
    );
    match spent {
        SpentToken::Expired => assert_eq!((expired, missing), (1, 0)),
        SpentToken::Forgotten => assert_eq!((expired, missing), (0, 1)),
    }
    let pages = app.sim.atol.pages_by_offset();
    assert!(pages.values().all(|&n| n == 1), "{pages:?}");
    assert!(
        events(&app, "renew")
            .await
            .iter()
            .all(|e| e.kind != "error"),
        "the renewal happens inside the step, not as a retry"
    );
}

#[tokio::test]
async fn an_expired_token_mid_walk_is_replaced_by_one_new_login() {
    renews_a_spent_token_once(SpentToken::Expired).await;
}

#[tokio::test]
async fn a_missing_token_answer_is_handled_like_an_expired_one() {
    renews_a_spent_token_once(SpentToken::Forgotten).await;
}

#[tokio::test]
async fn a_service_that_rejects_every_new_token_fails_instead_of_logging_in_forever() {
    let app = spawn(AtolSimConfig {
        token_uses: Some(0),
        ..registers(7)
    })
    .await;
    app.submit(list_request("reject", None)).await;
    let job = app.run_until_finished("reject").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(error.contains("gave up after 4 attempts"), "{error}");
    assert!(error.contains("rejected a newly issued token"), "{error}");
    assert!(error.contains("ExpiredToken"), "{error}");
    assert_eq!(
        app.sim.atol.logins(),
        8,
        "two logins per attempt (max_attempts = 4), never more"
    );
}

#[tokio::test]
async fn a_wrong_password_fails_every_job_clearly_after_one_login_attempt() {
    let extra = r#"
[accounts.atol-wrong]
provider = "atol-kkt"
base_url = "{atol_base}"
login = "docfetch"
password = "not-the-password"
"#;
    let app = TestApp::spawn_with(SimConfig::default(), extra, &[]).await;
    for name in ["w1", "w2", "w3"] {
        app.submit(json!({"account": "atol-wrong", "operation": "cash-registers", "name": name}))
            .await;
    }
    for name in ["w1", "w2", "w3"] {
        let job = app.run_until_finished(name).await;
        assert_eq!(job.state, JobState::Failed, "{name}");
        assert_eq!(job.steps, 1, "{name}: wrong credentials are not retried");
        let error = job.last_error.unwrap();
        assert!(error.contains("wrong login or password"), "{error}");
        assert!(error.contains("account atol-wrong"), "{error}");
        assert!(error.contains("WrongLoginOrPassword"), "{error}");
        assert!(
            error.contains("accounts.atol-wrong.password"),
            "says what to fix: {error}"
        );
        assert!(!error.contains("not-the-password"), "{error}");
    }
    let counters = &app.sim.atol.counters;
    assert_eq!(counters.login_attempts.load(Ordering::SeqCst), 1);
    assert_eq!(counters.refused_logins.load(Ordering::SeqCst), 1);
    assert_eq!(counters.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_429_pauses_the_account_for_its_retry_after_and_the_job_still_finishes() {
    let app = spawn(AtolSimConfig {
        rate_limit_once: true,
        retry_after_secs: 1,
        ..registers(7)
    })
    .await;
    app.submit(list_request("slow", None)).await;
    let job = app.run_until_finished("slow").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let events = events(&app, "slow").await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "error" && e.message.contains("HTTP 429")),
        "{events:?}"
    );
    // The job's own retry is due after at most poll_max (200ms); the
    // account's pause of Retry-After holds it back for the full second.
    let gap = app
        .sim
        .atol
        .gap_after_rate_limit()
        .expect("a request after the 429");
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
}

#[tokio::test]
async fn a_validation_error_reaches_the_receipt_with_its_field_messages() {
    let app = spawn(AtolSimConfig {
        list_validation_errors: vec![(
            "limit".into(),
            "Значение limit должно быть от 1 до 100".into(),
        )],
        ..registers(7)
    })
    .await;
    app.submit(list_request("invalid", Some(5))).await;
    let job = app.run_until_finished("invalid").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1, "a 400 is not retried");
    let error = app.receipt("invalid")["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("HTTP 400"), "{error}");
    assert!(error.contains("Ошибка валидации"), "{error}");
    assert!(
        error.contains("limit: Значение limit должно быть от 1 до 100"),
        "{error}"
    );
    assert!(error.contains("(traceId 00-"), "{error}");
}

#[tokio::test]
async fn a_forbidden_register_fails_at_once_saying_the_token_does_not_allow_it() {
    let serial = serial_number(1);
    let app = spawn(AtolSimConfig {
        forbidden_serials: vec![serial.clone()],
        ..registers(7)
    })
    .await;
    app.submit(one_request("denied", &serial)).await;
    let job = app.run_until_finished("denied").await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.steps, 1);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("HTTP 403") && error.contains("does not allow"),
        "{error}"
    );
}

#[tokio::test]
async fn the_embedded_list_may_be_an_object_holding_the_array_as_table_3_says() {
    let app = spawn(AtolSimConfig {
        embedded_as_object: true,
        ..registers(9)
    })
    .await;
    app.submit(list_request("object", Some(4))).await;
    let job = app.run_until_finished("object").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let doc = list_json(&app, "object");
    assert_eq!(doc["cashRegisters"].as_array().unwrap().len(), 9);
    assert_eq!(doc["cashRegisters"][8], register_value(8));
}

#[tokio::test]
async fn next_links_to_another_host_are_never_followed_with_the_token() {
    // A listener standing in for another host: it must never hear from docfetch.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_origin = format!("http://{}", other.local_addr().unwrap());
    let contacts = Arc::new(AtomicUsize::new(0));
    let counted = contacts.clone();
    let listener = tokio::spawn(async move {
        while other.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let app = spawn(AtolSimConfig {
        link_origin: Some(format!("{other_origin}/atol")),
        ..registers(12)
    })
    .await;
    app.submit(list_request("elsewhere", Some(5))).await;
    let job = app.run_until_finished("elsewhere").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(list_json(&app, "elsewhere")["total"], 12);
    assert_eq!(app.sim.atol.pages_by_offset().len(), 3);
    assert_eq!(
        contacts.load(Ordering::SeqCst),
        0,
        "the other host was contacted"
    );
    let warning = app.receipt("elsewhere")["warnings"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        warning.contains(&other_origin) && warning.contains("never sent"),
        "{warning}"
    );
    listener.abort();
}

#[tokio::test]
async fn a_list_that_changes_while_it_is_read_is_read_again_from_the_start() {
    let app = spawn(AtolSimConfig {
        grow_after_pages: Some(2),
        ..registers(23)
    })
    .await;
    app.submit(list_request("moving", Some(5))).await;
    let job = app.run_until_finished("moving").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let doc = list_json(&app, "moving");
    assert_eq!(doc["total"], 24, "the register added meanwhile is included");
    assert_eq!(doc["cashRegisters"].as_array().unwrap().len(), 24);
    assert_eq!(
        app.sim.atol.pages_served_at(0),
        2,
        "read again from the start"
    );
    let warnings = app.receipt("moving")["warnings"].to_string();
    assert!(warnings.contains("read again from the start"), "{warnings}");
    assert!(
        events(&app, "moving")
            .await
            .iter()
            .any(|e| e.message.contains("changed from 23 to 24")),
        "the history says why"
    );
}

#[tokio::test]
async fn the_token_and_password_never_reach_the_store_the_receipts_or_the_output() {
    let app = spawn(AtolSimConfig {
        token_uses: Some(2),
        ..registers(23)
    })
    .await;
    app.submit(list_request("walk", Some(5))).await;
    app.submit(one_request("single", &serial_number(4))).await;
    app.submit(one_request("missing", "99")).await;
    assert_eq!(app.run_until_finished("walk").await.state, JobState::Done);
    assert_eq!(app.run_until_finished("single").await.state, JobState::Done);
    assert_eq!(
        app.run_until_finished("missing").await.state,
        JobState::Failed
    );
    let mut secrets = app.sim.atol.issued_tokens();
    assert!(
        secrets.len() >= 3,
        "several tokens were issued: {secrets:?}"
    );
    secrets.push(app.sim.config.atol.password.clone());
    let mut checked = 0;
    for path in walk(app.dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} contains a secret",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "the store, its WAL, the receipts and the files were checked ({checked} files)"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn bad_parameters_are_refused_when_the_request_is_submitted() {
    let app = spawn(registers(7)).await;
    for (request, expected) in [
        (
            json!({"account": "atol-sim", "operation": "cash-register", "name": "a"}),
            "params.serialNumber",
        ),
        (
            json!({"account": "atol-sim", "operation": "cash-register", "name": "b",
                   "params": {"serialNumber": "../etc"}}),
            "params.serialNumber",
        ),
        (
            json!({"account": "atol-sim", "operation": "cash-registers", "name": "c",
                   "params": {"limit": 101}}),
            "params.limit",
        ),
        (
            json!({"account": "atol-sim", "operation": "receipts", "name": "d"}),
            "operation",
        ),
    ] {
        let bytes = serde_json::to_vec(&request).unwrap();
        let error = docfetch::inbox::accept(
            &app.store,
            &app.settings,
            &bytes,
            RequestFormat::Json,
            None,
            "test",
        )
        .await
        .expect_err("refused")
        .to_string();
        assert!(error.contains(expected), "{request}: {error}");
    }
}

#[tokio::test]
async fn the_simulator_follows_the_seed_for_logins_and_bad_limits() {
    let app = spawn(registers(7)).await;
    let base = app.sim.atol.base_url();
    let http = reqwest::Client::new();
    // The seed's GET form of the login.
    let answer: Value = serde_json::from_slice(
        &http
            .get(format!(
                "{base}/api/auth/v1/gettoken?login=docfetch&pass=sim-atol-password"
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let token = answer["token"].as_str().unwrap().to_string();
    assert_eq!(answer["expiresIn"], 1440);
    assert!(answer["issued"].as_str().unwrap().ends_with("+03:00"));
    // A POST without the seed's Content-type is refused.
    let status = http
        .post(format!("{base}/api/auth/v1/gettoken"))
        .body(r#"{"login":"docfetch","pass":"sim-atol-password"}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 415);
    // limit above 100: the seed's validation error.
    let response = http
        .get(format!("{base}/api/kkt/v1/cash-registers?limit=101"))
        .header("Token", &token)
        .header("Accept", "application/hal+json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );
    let problem: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["title"], "Ошибка валидации");
    assert!(problem["errors"]["limit"][0].is_string());
    // No limit: the seed's default of 10; no prev link on the first page.
    let page: Value = serde_json::from_slice(
        &http
            .get(format!("{base}/api/kkt/v1/cash-registers"))
            .header("Token", &token)
            .header("Accept", "application/hal+json")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(page["limit"], 10);
    assert_eq!(page["total"], 7);
    assert!(page["_links"].get("prev").is_none() && page["_links"].get("next").is_none());
    // Without a token: MissingToken.
    let problem: Value = serde_json::from_slice(
        &http
            .get(format!("{base}/api/kkt/v1/cash-registers"))
            .header("Accept", "application/hal+json")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(problem["errorCode"], "MissingToken");
    assert_eq!(problem["status"], 401);
}
