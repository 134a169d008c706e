//! The dashboard over real HTTP on loopback, without a browser: the login
//! form and nothing else without a credential, sessions and logout, the
//! guard against other sites' forms and missing CSRF tokens, submit,
//! cancel, retry and download through the forms, and keyset pages of the
//! job list. (`browser.rs` drives the same pages in Chromium.)

use std::collections::HashSet;

use docfetch::job::JobState;
use serde_json::json;

use crate::api::{Api, serve};
use crate::helpers::TestApp;

/// A form's body, as a browser encodes it.
fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A client that follows no redirects, so each answer can be checked.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in through the form; returns the session cookie and the CSRF token.
async fn login(api: &Api) -> (String, String) {
    let r = client()
        .post(format!("{}/login", api.base))
        .header("origin", &api.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("token", api.token.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = get(api, &cookie, "/submit").await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    (cookie, csrf)
}

async fn get(api: &Api, cookie: &str, path: &str) -> String {
    let r = client()
        .get(format!("{}{path}", api.base))
        .header("cookie", cookie)
        .header("accept-language", "en")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

async fn post_form(
    api: &Api,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(format!("{}{path}", api.base))
        .header("cookie", cookie)
        .header("origin", &api.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(form))
        .send()
        .await
        .unwrap()
}

fn usn(name: &str) -> serde_json::Value {
    json!({"account": "fresh-sim", "operation": "tax_usn_calculator",
           "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
           "name": name})
}

#[tokio::test]
async fn without_a_credential_every_page_is_the_login_form_alone() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    app.submit(usn("secret-looking-name")).await;
    for path in [
        "/",
        "/jobs",
        "/jobs/secret-looking-name",
        "/accounts",
        "/schedules",
        "/submit",
        "/events",
        "/jobs/secret-looking-name/files/job.json",
    ] {
        let r = client()
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("action=\"/login\""), "{path}: {body}");
        for leak in ["secret-looking-name", "fresh-sim", "queued"] {
            assert!(!body.contains(leak), "{path} shows {leak}");
        }
    }
    // A wrong token gets the form again, and a wrong cookie is no session.
    let r = client()
        .post(format!("{}/login", api.base))
        .header("origin", &api.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("token", "wrong")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = client()
        .get(format!("{}/", api.base))
        .header("cookie", "docfetch_session=0000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_session_shows_the_pages_and_ends_at_logout() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    app.submit(usn("usn-page")).await;
    let (cookie, csrf) = login(&api).await;
    let overview = get(&api, &cookie, "/").await;
    assert!(overview.contains("Overview") && overview.contains("<svg"));
    let list = get(&api, &cookie, "/jobs").await;
    assert!(list.contains("usn-page"));
    let filtered = get(&api, &cookie, "/jobs?state=done").await;
    assert!(!filtered.contains("usn-page"), "a queued job is not done");
    let job = get(&api, &cookie, "/jobs/usn-page").await;
    assert!(job.contains("Timeline") && job.contains("tax_usn_calculator"));
    let accounts = get(&api, &cookie, "/accounts").await;
    assert!(accounts.contains("fresh-sim"));
    get(&api, &cookie, "/schedules").await;
    // Russian unless the browser prefers English.
    let r = client()
        .get(format!("{}/jobs", api.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("Задания"));
    // The bearer token works too, for scripts.
    let r = client()
        .get(format!("{}/", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post_form(&api, &cookie, "/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let r = client()
        .get(format!("{}/", api.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the session ended");
}

#[tokio::test]
async fn forms_from_other_sites_or_without_the_csrf_token_are_refused() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    app.submit(usn("victim")).await;
    let (cookie, csrf) = login(&api).await;
    let cancel = format!("{}/jobs/victim/cancel", api.base);
    // Another site's page posting the form (the browser sends its Origin).
    let r = client()
        .post(&cancel)
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(&cancel)
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .header("origin", &api.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A form without an Origin is not let past the JSON-only rule.
    let r = client()
        .post(&cancel)
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Same origin, but no or a wrong CSRF token.
    let r = post_form(&api, &cookie, "/jobs/victim/cancel", &[("csrf", "x")]).await;
    assert_eq!(r.status(), 403);
    let r = post_form(&api, &cookie, "/jobs/victim/cancel", &[]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.job("victim").await.state, JobState::Queued);
    // The API's own rule is unchanged: a form never reaches /api.
    let r = client()
        .post(format!("{}/api/jobs/victim/cancel", api.base))
        .bearer_auth(&api.token)
        .header("origin", &api.base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(app.job("victim").await.state, JobState::Queued);
}

#[tokio::test]
async fn submit_cancel_retry_and_download_through_the_forms() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    let (cookie, csrf) = login(&api).await;
    // A bad request gets the drop folder's message and keeps the text.
    let r = post_form(
        &api,
        &cookie,
        "/submit",
        &[
            ("csrf", &csrf),
            ("format", "json"),
            ("request", "{\"account\": 1"),
        ],
    )
    .await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(body.contains("submit-error") && body.contains("{&quot;account&quot;: 1"));
    let request = usn("from-form").to_string();
    let r = post_form(
        &api,
        &cookie,
        "/submit",
        &[("csrf", &csrf), ("format", "json"), ("request", &request)],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/jobs/from-form");
    let job = app.run_until_finished("from-form").await;
    assert_eq!(job.state, JobState::Done);
    let file = &job.result.unwrap().files[0];
    let r = client()
        .get(format!("{}/jobs/from-form/files/{}", api.base, file.name))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let on_disk = std::fs::read(app.output("from-form").join(&file.name)).unwrap();
    assert_eq!(bytes.as_ref(), on_disk.as_slice());
    // TOML too; then cancel it and retry it.
    let toml = "account = \"fresh-sim\"\noperation = \"tax_usn_calculator\"\nname = \"toml-job\"\n[params]\ndate = \"2018-09-30T23:59:59\"\n[params.organization]\ninn = \"783900281039\"\nkpp = \"\"\n";
    let r = post_form(
        &api,
        &cookie,
        "/submit",
        &[("csrf", &csrf), ("format", "toml"), ("request", toml)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = post_form(&api, &cookie, "/jobs/toml-job/cancel", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(app.job("toml-job").await.state, JobState::Cancelled);
    let r = post_form(&api, &cookie, "/jobs/toml-job/retry", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(app.job("toml-job").await.state, JobState::Queued);
    // Retrying a queued job is refused with the store's reason.
    let r = post_form(&api, &cookie, "/jobs/toml-job/retry", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn the_job_list_pages_by_keyset_without_losing_or_repeating_a_job() {
    let app = TestApp::spawn().await;
    let api = serve(&app).await;
    for i in 0..120 {
        app.submit(usn(&format!("bulk-{i:03}"))).await;
    }
    let (cookie, _) = login(&api).await;
    let mut seen = HashSet::new();
    let mut path = "/jobs?account=fresh-sim".to_string();
    let mut pages = 0;
    loop {
        let body = get(&api, &cookie, &path).await;
        pages += 1;
        for name in body.split("data-job=\"").skip(1) {
            let name = name.split('"').next().unwrap().to_string();
            assert!(seen.insert(name.clone()), "{name} shown twice");
        }
        let Some(next) = body
            .split("rel=\"next\"")
            .next()
            .and_then(|head| head.rsplit("href=\"").next())
            .filter(|_| body.contains("rel=\"next\""))
        else {
            break;
        };
        path = next.split('"').next().unwrap().replace("&amp;", "&");
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen.len(), 120);
    assert_eq!(pages, 3);
    let body = get(&api, &cookie, "/jobs?q=bulk-11").await;
    assert_eq!(body.matches("data-job=").count(), 10);
}
