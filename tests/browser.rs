//! The dashboard in a real browser: Debian's Chromium driven through
//! chromedriver against the real `docfetch run` binary and the built-in
//! simulators. Logs in, submits a request through the form and watches it
//! go from waiting to done without a reload, downloads its file and
//! compares the bytes, cancels a waiting job, retries a failed one, fires a
//! schedule, and checks that a page without the session shows the login
//! form only and that another site's form post is refused. Screenshots of
//! each page go to `target/screenshots/` (or `$DOCFETCH_SCREENSHOTS`).

use std::path::PathBuf;
use std::time::Duration;

use docfetch::job::JobState;
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::Store;
use serde_json::{Value, json};

use crate::helpers::wait_until;
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::webdriver::{Browser, CHROMEDRIVER, CHROMIUM};

fn screenshots() -> PathBuf {
    std::env::var_os("DOCFETCH_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Submits a request through the dashboard's form; returns the job's page.
async fn submit_in_form(browser: &Browser, base: &str, request: &Value) -> String {
    browser.goto(&format!("{base}/submit")).await;
    browser.type_into("#request", &request.to_string()).await;
    browser.click("#submit button[type=submit]").await;
    let name = request["name"].as_str().unwrap();
    let want = format!("{base}/jobs/{name}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let url = browser.url().await;
        if url == want {
            return url;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "submit went to {url}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn state(store: &Store, name: &str) -> Option<JobState> {
    store.find(name).await.ok().flatten().map(|j| j.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_chromium() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !std::path::Path::new(tool).exists() {
            crate::support::cannot_run(
                "browser::the_dashboard_works_in_chromium",
                &format!("{tool} is missing (apt-get install chromium chromium-driver)"),
            );
            return;
        }
    }
    let shots = screenshots();
    let sim = Sim::start_local(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut config = DaemonConfig::new(dir.path(), sim.accounts_toml());
    config.api_listen = format!("127.0.0.1:{port}");
    // Slow enough that a job is seen waiting before it is done.
    config.poll_initial = "700ms".into();
    config.poll_max = "700ms".into();
    std::fs::create_dir_all(dir.path().join("schedules.d")).unwrap();
    std::fs::write(
        dir.path().join("schedules.d/usn-yearly.toml"),
        "name = \"usn-yearly\"\ncron = \"0 0 6 1 1 *\"\ncatch_up = \"none\"\n[request]\naccount = \"fresh-sim\"\noperation = \"tax_usn_calculator\"\n[request.params]\norganization = { inn = \"783900281039\", kpp = \"\" }\ndate = \"{{last_month.end}}\"\n",
    )
    .unwrap();
    let path = config.write();
    let mut daemon = Daemon::start(&path, &dir.path().join("daemon.log"), "info");
    let token_file = dir.path().join("api-token");
    let http = reqwest::Client::new();
    let token = wait_until(Duration::from_secs(30), "the daemon's API", || {
        let http = http.clone();
        let (base, token_file) = (base.clone(), token_file.clone());
        async move {
            let token = std::fs::read_to_string(&token_file).ok()?;
            let ok = http.get(format!("{base}/healthz")).send().await.ok()?;
            ok.status().is_success().then(|| token.trim().to_string())
        }
    })
    .await;
    let store = Store::open(&config.store_url()).await.unwrap();
    let browser = Browser::start().await;

    // Without a session: the login form and nothing else.
    browser.goto(&format!("{base}/jobs")).await;
    browser.find("form#login").await;
    assert!(browser.try_find("#main table").await.is_none());
    assert!(browser.try_find("nav").await.is_none());
    browser.screenshot(&shots.join("login.png")).await;

    // A wrong token is refused; the right one opens the overview.
    browser.type_into("#token", "not-the-token-at-all").await;
    browser.click("form#login button").await;
    browser.find("form#login").await;
    browser.type_into("#token", &token).await;
    browser.click("form#login button").await;
    browser.find("form.logout").await;
    assert_eq!(browser.url().await, format!("{base}/"));

    // Submit through the form and watch the job finish without a reload.
    let watched = json!({"account": "fresh-sim", "operation": "sales_book", "name": "watched",
        "params": {"_sim": {"pending": 4, "size": 30000, "filename": "book.xlsx"}}});
    submit_in_form(&browser, &base, &watched).await;
    browser.find("h1 .badge").await;
    let first = browser.text("h1 .badge").await;
    assert_ne!(first, "done", "the job is seen waiting before it is done");
    browser
        .run("window.__sameDocument = 42; return 1;", json!([]))
        .await;
    browser
        .wait_for("h1 .badge.s-done", Duration::from_secs(60))
        .await;
    assert_eq!(
        browser
            .run("return window.__sameDocument;", json!([]))
            .await,
        json!(42),
        "the page changed in place, not by a reload"
    );
    browser.find("table.timeline tr.ev-poll").await;
    browser.screenshot(&shots.join("job.png")).await;

    // Download through the page's link, in the browser's session: same bytes.
    let digest = browser
        .run(
            "var a = document.querySelector('a.download'); \
             return fetch(a.href).then(function (r) { return r.arrayBuffer(); }) \
               .then(function (b) { return crypto.subtle.digest('SHA-256', b); }) \
               .then(function (h) { return Array.from(new Uint8Array(h)).map(function (x) { \
                 return x.toString(16).padStart(2, '0'); }).join(''); });",
            json!([]),
        )
        .await;
    let saved = std::fs::read(config.output().join("watched/book.xlsx")).unwrap();
    assert_eq!(saved.len(), 30000);
    assert_eq!(digest, json!(crate::support::fs::sha256_hex(&saved)));

    // Cancel a waiting job, with the confirmation.
    let long = json!({"account": "fresh-sim", "operation": "sales_book", "name": "long",
        "params": {"_sim": {"pending": 100000}}});
    submit_in_form(&browser, &base, &long).await;
    let asked = browser.click_and_confirm("#cancel").await;
    assert!(!asked.is_empty(), "cancel asks first");
    browser
        .wait_for("h1 .badge.s-cancelled", Duration::from_secs(20))
        .await;
    assert_eq!(state(&store, "long").await, Some(JobState::Cancelled));

    // Retry a failed one.
    let broken = json!({"account": "fresh-sim", "operation": "sales_book", "name": "broken",
        "params": {"_sim": {"order_code": 10400, "message": "period is closed"}}});
    submit_in_form(&browser, &base, &broken).await;
    browser
        .wait_for("h1 .badge.s-failed", Duration::from_secs(30))
        .await;
    browser.find("#job-error").await;
    browser.screenshot(&shots.join("failed-job.png")).await;
    browser.click_and_confirm("#retry").await;
    browser
        .wait_for("table.timeline tr.ev-retried", Duration::from_secs(20))
        .await;
    let events = store
        .events(&store.find("broken").await.unwrap().unwrap().id)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.kind == "retried"));

    // Fire a schedule: its occurrence's job opens.
    browser.goto(&format!("{base}/schedules")).await;
    browser.find("tr[data-schedule=usn-yearly]").await;
    browser.click("tr[data-schedule=usn-yearly] button").await;
    let fired = wait_until(Duration::from_secs(20), "the fired job's page", || async {
        let url = browser.url().await;
        let name = url.strip_prefix(&format!("{base}/jobs/"))?.to_string();
        name.starts_with("usn-yearly").then_some(name)
    })
    .await;
    browser.find("h1 .badge").await;
    // The schedules page names the job of the last firing, linked.
    browser.goto(&format!("{base}/schedules")).await;
    let last = browser
        .text("tr[data-schedule=usn-yearly] td.last-firing")
        .await;
    assert!(last.contains(&fired), "last firing shows {fired}: {last:?}");
    browser.screenshot(&shots.join("schedules.png")).await;

    // The other pages, for the record.
    browser.goto(&format!("{base}/jobs")).await;
    browser.find("#main table").await;
    let list = browser.source().await;
    for name in ["watched", "long", "broken", "usn-yearly"] {
        assert!(list.contains(name), "{name} listed");
    }
    browser.screenshot(&shots.join("jobs.png")).await;
    browser.goto(&format!("{base}/accounts")).await;
    browser.find("#main table").await;
    // The account remembers the last error one of its steps met.
    let last = browser
        .text("tr[data-account=fresh-sim] td.last-error")
        .await;
    assert!(last.contains("period is closed"), "{last}");
    browser.screenshot(&shots.join("accounts.png")).await;
    browser.goto(&format!("{base}/submit")).await;
    browser.find("#request").await;
    browser.screenshot(&shots.join("submit.png")).await;
    browser.goto(&format!("{base}/")).await;
    browser.find("#main svg").await;
    browser.screenshot(&shots.join("overview.png")).await;

    // Another site's page posting a form to the dashboard, in the same
    // browser with the session's cookie: refused, the job still waits.
    let target = json!({"account": "fresh-sim", "operation": "sales_book", "name": "target",
        "params": {"_sim": {"pending": 100000}}});
    submit_in_form(&browser, &base, &target).await;
    let evil = format!(
        "<!doctype html><form id=f method=post action=\"{base}/jobs/target/cancel\">\
         <input type=hidden name=csrf value=guessed></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let site = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let evil = evil.clone();
                async move { axum::response::Html(evil) }
            }),
        );
        let _ = axum::serve(other, app).await;
    });
    browser.goto(&format!("http://{other_addr}/")).await;
    wait_until(
        Duration::from_secs(20),
        "the cross-site post to be answered",
        || async { browser.url().await.starts_with(&base).then_some(()) },
    )
    .await;
    let refused = browser.source().await;
    assert!(
        refused.contains("refused") || refused.contains("403"),
        "{refused}"
    );
    assert_eq!(state(&store, "target").await, Some(JobState::Waiting));
    site.abort();

    // Logging out ends the session: the login form only again.
    browser.goto(&format!("{base}/")).await;
    browser.click("form.logout button").await;
    browser.find("form#login").await;
    browser.goto(&format!("{base}/jobs/watched")).await;
    browser.find("form#login").await;
    assert!(!browser.source().await.contains("book.xlsx"));

    browser.quit().await;
    daemon.terminate().await;
    sim.stop().await;
}
