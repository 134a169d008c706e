//! Kontur.Extern creates its builder, documents and files once: under ids
//! docfetch chooses and commits before a `PUT` creates them, and where a
//! server refuses that, with `POST` and a list look-up. Each creation point
//! is cut off after Extern acted and before the job committed the outcome.

use std::time::Duration;

use docfetch::job::JobState;
use docfetch::providers::{Step, StepContext};
use docfetch::sim::identity::{self, IdentitySimConfig};
use docfetch::sim::kontur_extern::{self, Created, KonturExternSimConfig};
use serde_json::{Value, json};

use crate::helpers::{TestApp, wait_until};
use crate::kontur_extern::{ACCOUNT, attach, counter, related, request, scanned, sim_config};
use crate::support::proxy::{Fault, Proxy};

/// A service that answers 404 to a `PUT` of an unknown id.
fn refusing() -> KonturExternSimConfig {
    KonturExternSimConfig {
        refuse_put_create: true,
        ..Default::default()
    }
}

async fn spawn_with(service: KonturExternSimConfig) -> TestApp {
    TestApp::spawn_with(sim_config(service), "", &[]).await
}

/// The account of [`spawn_behind_proxy`]: the same fake service, reached
/// through the fault proxy.
const PROXIED: &str = "kontur-extern-proxied";

/// An app with a second Extern account whose service and identity server
/// sit behind a fault proxy. The proxy's port is bound first so its address
/// can go into the config; it forwards to the simulator once that runs.
async fn spawn_behind_proxy(
    service: KonturExternSimConfig,
    overrides: &[(&str, &str)],
) -> (TestApp, Proxy) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy port");
    let origin = format!("http://{}", listener.local_addr().expect("proxy address"));
    let identity = IdentitySimConfig::default();
    let extra = format!(
        "[accounts.{PROXIED}]\nprovider = \"kontur-extern\"\nbase_url = \"{origin}{}\"\nidentity_url = \"{origin}{}\"\naccount_id = \"{}\"\nclient_id = \"{}\"\napi_key = \"{}\"\n",
        kontur_extern::PREFIX,
        identity::PREFIX,
        kontur_extern::ACCOUNT_ID,
        identity.client_id,
        identity.api_key,
    );
    let app = TestApp::spawn_with(sim_config(service), &extra, overrides).await;
    let proxy = Proxy::serve(listener, app.sim.addr);
    (app, proxy)
}

/// Two documents with the same `builder-data` (so finding one again must
/// skip the one the cursor already holds), with `files_each` files each.
fn twin_documents(app: &TestApp, name: &str, files_each: usize) -> Value {
    let documents: Vec<Value> = (0..2)
        .map(|d| {
            let files: Vec<Value> = (0..files_each)
                .map(|f| {
                    let rel = format!("{name}/{d}-{f}.pdf");
                    attach(
                        app,
                        &rel,
                        format!("{name} document {d} page {f}").as_bytes(),
                    );
                    json!({"path": rel})
                })
                .collect();
            scanned("Скан.pdf", Value::Array(files))
        })
        .collect();
    request(name, related(), Value::Array(documents))
}

/// Every builder the service saw holds `documents` documents, each with
/// `files_each` files, and every upload was attached exactly once.
fn assert_one_of_each(app: &TestApp, builders: usize, documents: usize, files_each: usize) {
    let sim = &app.sim.kontur_extern;
    let builder_ids = sim.builder_ids();
    assert_eq!(builder_ids.len(), builders, "builders: {builder_ids:?}");
    let files = sim.files();
    for builder in &builder_ids {
        let ids = sim.documents_of(builder);
        assert_eq!(ids.len(), documents, "documents of builder {builder}");
        for document in &ids {
            let attached = files.iter().filter(|f| &f.document_id == document).count();
            assert_eq!(attached, files_each, "files of document {document}");
        }
    }
    let mut contents: Vec<&str> = files.iter().map(|f| f.content_id.as_str()).collect();
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len(), files.len(), "a content attached twice");
}

/// Plays the scheduler for the only job: runs the provider's steps and
/// commits each cursor, until a step's `PUT` created something at Extern
/// and the answer is held back. That step is abandoned there, its outcome
/// never committed, as when the daemon dies at that moment. Returns the
/// cursor the store holds.
async fn run_until_cut_off(app: &TestApp, name: &str) -> Value {
    let mut job = app
        .scheduler
        .claim(10)
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    let account = app.scheduler.providers().get(ACCOUNT).expect("account");
    let http = docfetch::http::client(&app.settings.http).unwrap();
    for _ in 0..60 {
        let ctx = StepContext {
            job: &job,
            http: &http,
            output_dir: docfetch::beneath::Subfolder::new(&app.settings.paths.output, name),
            attachments_dir: app.settings.paths.attachments.clone(),
            max_file_size: app.settings.scheduler.max_file_size,
            timeout: app.settings.http.timeout,
        };
        let held_back = wait_until(Duration::from_secs(30), "a step to finish", || async {
            (counter(app, |c| &c.stalled) > 0).then_some(())
        });
        tokio::select! {
            outcome = account.provider.step(&ctx) => {
                let cursor = match outcome.expect("step") {
                    Step::Continue(cursor) | Step::Next(cursor) | Step::Wait { cursor, .. } => cursor,
                    Step::Done { .. } => panic!("done before the cut"),
                };
                app.store
                    .checkpoint(&job.id, app.scheduler.owner(), &cursor)
                    .await
                    .unwrap();
                job.cursor = cursor;
            }
            () = held_back => return app.job(name).await.cursor,
        }
    }
    panic!("no creation was cut off");
}

/// Cuts the job off right after the first `PUT` that creates a `what`
/// reached Extern, restarts the daemon, and checks that the job finishes
/// with exactly one builder, two documents and four files: the repeated
/// `PUT` found the object instead of making another. Returns the app.
async fn cut_off_after_creating(what: Created, name: &str) -> TestApp {
    let mut app = TestApp::spawn().await;
    app.submit(twin_documents(&app, name, 2)).await;
    app.sim.kontur_extern.stall_after_creating(what);
    let cursor = run_until_cut_off(&app, name).await;
    let sim = &app.sim.kontur_extern;
    let (chosen, confirmed) = match what {
        Created::Builder => ("/chosen-builder-id", "/builder-id"),
        Created::Document => (
            "/documents/0/chosen-document-id",
            "/documents/0/document-id",
        ),
        Created::File => (
            "/documents/0/files/0/chosen-file-id",
            "/documents/0/files/0/file-id",
        ),
    };
    let chosen = cursor
        .pointer(chosen)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the chosen id was committed before the PUT: {cursor}"))
        .to_string();
    assert!(
        cursor.pointer(confirmed).is_none(),
        "the outcome was never committed: {cursor}"
    );
    // Extern made it, under the chosen id.
    let made: Vec<String> = match what {
        Created::Builder => sim.builder_ids(),
        Created::Document => sim.documents_of(&sim.builder_ids()[0]),
        Created::File => sim.files().into_iter().map(|f| f.id).collect(),
    };
    assert_eq!(made, vec![chosen.clone()]);

    app.restart().await;
    let job = app.run_until_finished(name).await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_one_of_each(&app, 1, 2, 2);
    let sim = &app.sim.kontur_extern;
    assert_eq!(counter(&app, |c| &c.builders), 1, "no builder made twice");
    assert_eq!(counter(&app, |c| &c.documents), 2, "no document made twice");
    assert_eq!(counter(&app, |c| &c.files), 4, "no file made twice");
    assert_eq!(counter(&app, |c| &c.put_created), 7);
    assert_eq!(
        counter(&app, |c| &c.put_updated),
        1,
        "the repeated PUT found what the cut-off one made"
    );
    assert_eq!(counter(&app, |c| &c.put_refused), 0);
    assert_eq!(counter(&app, |c| &c.document_lists), 0, "nothing listed");
    assert_eq!(counter(&app, |c| &c.file_lists), 0);
    assert_eq!(sim.builds(), 1);
    // The thing made before the cut is the one the job went on with.
    let saved = app.job(name).await.cursor;
    let kept = saved.pointer(confirmed).and_then(Value::as_str);
    assert_eq!(kept, Some(chosen.as_str()), "{saved}");
    let result: Value = serde_json::from_slice(
        &std::fs::read(app.output(name).join("build-result.json")).expect("build-result.json"),
    )
    .expect("JSON");
    assert_eq!(result["builder-id"], json!(sim.builder_ids()[0]));
    assert_eq!(result["draft-ids"].as_array().map(Vec::len), Some(1));
    app
}

#[tokio::test]
async fn a_builder_cut_off_after_extern_made_it_is_found_again_and_never_orphaned() {
    cut_off_after_creating(Created::Builder, "cut-builder").await;
}

#[tokio::test]
async fn a_document_cut_off_after_extern_made_it_is_found_again_instead_of_made_twice() {
    cut_off_after_creating(Created::Document, "cut-document").await;
}

#[tokio::test]
async fn a_file_cut_off_after_extern_made_it_is_found_again_instead_of_attached_twice() {
    cut_off_after_creating(Created::File, "cut-file").await;
}

#[tokio::test]
async fn the_normal_path_creates_everything_with_put_under_chosen_ids_and_lists_nothing() {
    let app = TestApp::spawn().await;
    app.submit(twin_documents(&app, "put", 2)).await;
    let job = app.run_until_finished("put").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_one_of_each(&app, 1, 2, 2);
    assert_eq!(counter(&app, |c| &c.put_created), 7);
    assert_eq!(counter(&app, |c| &c.put_updated), 0);
    assert_eq!(counter(&app, |c| &c.document_lists), 0);
    assert_eq!(counter(&app, |c| &c.file_lists), 0);
    let cursor = app.job("put").await.cursor;
    assert_eq!(
        cursor.pointer("/builder-id").and_then(Value::as_str),
        app.sim
            .kontur_extern
            .builder_ids()
            .first()
            .map(String::as_str)
    );
    assert!(
        !cursor.to_string().contains("chosen-"),
        "no chosen id left over: {cursor}"
    );
}

#[tokio::test]
async fn a_builder_put_whose_answer_was_reset_is_repeated_and_finds_the_builder() {
    let (app, proxy) = spawn_behind_proxy(KonturExternSimConfig::default(), &[]).await;
    // Small files go up in one part each (`POST`), so the first `PUT` the
    // service sees is the builder's. Extern makes the builder; the
    // connection is reset before a byte of the answer.
    proxy.add(
        &format!("PUT {}/v1/", kontur_extern::PREFIX),
        Fault::ResetAfter(0),
        Some(1),
    );
    let mut request = twin_documents(&app, "reset-put", 1);
    request["account"] = json!(PROXIED);
    app.submit(request).await;
    let job = app.run_until_finished("reset-put").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(proxy.faults(), 1, "the reset happened");
    assert_one_of_each(&app, 1, 2, 1);
    assert_eq!(counter(&app, |c| &c.builders), 1);
    assert_eq!(counter(&app, |c| &c.put_updated), 1);
}

#[tokio::test]
async fn a_server_that_refuses_put_create_gets_post_and_the_account_remembers_it() {
    let app = spawn_with(refusing()).await;
    app.submit(twin_documents(&app, "first", 2)).await;
    let job = app.run_until_finished("first").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_one_of_each(&app, 1, 2, 2);
    assert_eq!(counter(&app, |c| &c.put_refused), 1, "one PUT, refused");
    assert_eq!(counter(&app, |c| &c.put_created), 0);
    assert_eq!(
        (counter(&app, |c| &c.documents), counter(&app, |c| &c.files)),
        (2, 4)
    );

    app.submit(twin_documents(&app, "second", 2)).await;
    let job = app.run_until_finished("second").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_one_of_each(&app, 2, 2, 2);
    assert_eq!(
        counter(&app, |c| &c.put_refused),
        1,
        "the second job went straight to POST"
    );
    let cursor = app.job("second").await.cursor;
    assert!(!cursor.to_string().contains("chosen-"), "{cursor}");
}

#[tokio::test]
async fn without_put_create_the_normal_path_posts_every_document_and_file_without_listing_anything()
{
    let app = spawn_with(refusing()).await;
    app.submit(twin_documents(&app, "straight", 2)).await;
    let job = app.run_until_finished("straight").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_one_of_each(&app, 1, 2, 2);
    assert_eq!(counter(&app, |c| &c.document_lists), 0);
    assert_eq!(counter(&app, |c| &c.file_lists), 0);
    assert_eq!(
        counter(&app, |c| &c.put_refused),
        1,
        "only the builder's PUT was tried"
    );
    assert_eq!(counter(&app, |c| &c.put_created), 0);
}

#[tokio::test]
async fn without_put_create_a_document_whose_answer_was_reset_is_found_again_by_listing() {
    let (app, proxy) = spawn_behind_proxy(refusing(), &[]).await;
    // The first document's POST reaches the service, which creates the
    // document; the connection is reset before a byte of the answer. (The
    // list request matches the pattern too, but the rule fires once.)
    proxy.add("/documents HTTP/1.1", Fault::ResetAfter(0), Some(1));
    let mut request = twin_documents(&app, "reset", 1);
    request["account"] = json!(PROXIED);
    app.submit(request).await;
    let job = app.run_until_finished("reset").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(proxy.faults(), 1, "the reset happened");
    assert_one_of_each(&app, 1, 2, 1);
    assert_eq!(
        counter(&app, |c| &c.documents),
        2,
        "no document created twice"
    );
    assert_eq!(
        counter(&app, |c| &c.document_lists),
        1,
        "looked once, after the reset; the next document was known unsent"
    );
    assert_eq!(counter(&app, |c| &c.file_lists), 0);
    assert_eq!(app.sim.kontur_extern.builds(), 1);
}

#[tokio::test]
async fn without_put_create_a_file_whose_answer_timed_out_is_found_again_by_listing() {
    let (app, proxy) = spawn_behind_proxy(refusing(), &[("DOCFETCH__HTTP__TIMEOUT", "1s")]).await;
    // The first attachment reaches the service, which attaches it; its
    // answer never comes and the request times out.
    proxy.add("/files HTTP/1.1", Fault::Stall, Some(1));
    let mut request = twin_documents(&app, "stall", 2);
    request["account"] = json!(PROXIED);
    app.submit(request).await;
    let job = app.run_until_finished("stall").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(proxy.faults(), 1, "the answer was held back");
    assert_one_of_each(&app, 1, 2, 2);
    assert_eq!(counter(&app, |c| &c.files), 4, "no file attached twice");
    assert_eq!(counter(&app, |c| &c.file_lists), 1);
    assert_eq!(counter(&app, |c| &c.document_lists), 0);
}

#[tokio::test]
async fn without_put_create_a_crash_after_a_document_was_created_finds_it_by_listing() {
    let mut app = spawn_with(refusing()).await;
    app.submit(twin_documents(&app, "lost", 1)).await;

    // Play the scheduler: run the provider's steps and save each cursor,
    // but "crash" right after the step that created the second document,
    // so its id never reaches the store.
    let mut job = app
        .scheduler
        .claim(10)
        .await
        .unwrap()
        .pop()
        .expect("claimed");
    let account = app.scheduler.providers().get(ACCOUNT).expect("account");
    let http = docfetch::http::client(&app.settings.http).unwrap();
    let mut crashed = false;
    for _ in 0..50 {
        let ctx = StepContext {
            job: &job,
            http: &http,
            output_dir: docfetch::beneath::Subfolder::new(&app.settings.paths.output, "lost"),
            attachments_dir: app.settings.paths.attachments.clone(),
            max_file_size: app.settings.scheduler.max_file_size,
            timeout: app.settings.http.timeout,
        };
        let cursor = match account.provider.step(&ctx).await.expect("step") {
            Step::Continue(cursor) | Step::Next(cursor) | Step::Wait { cursor, .. } => cursor,
            Step::Done { .. } => panic!("done before the crash"),
        };
        if cursor.pointer("/documents/1/document-id").is_some() {
            crashed = true;
            break;
        }
        app.store
            .checkpoint(&job.id, app.scheduler.owner(), &cursor)
            .await
            .unwrap();
        job.cursor = cursor;
    }
    assert!(crashed, "the second document was never created");
    assert_eq!(counter(&app, |c| &c.documents), 2, "both were created");
    let saved = app.job("lost").await;
    assert!(
        saved
            .cursor
            .pointer("/documents/0/files/0/file-id")
            .is_some()
    );
    assert!(
        saved.cursor.pointer("/documents/1/document-id").is_none(),
        "but the second was never saved"
    );
    assert_eq!(counter(&app, |c| &c.document_lists), 0);

    app.restart().await;
    let job = app.run_until_finished("lost").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_one_of_each(&app, 1, 2, 1);
    assert_eq!(counter(&app, |c| &c.documents), 2, "none created again");
    assert_eq!(counter(&app, |c| &c.document_lists), 1);
    assert_eq!(counter(&app, |c| &c.file_lists), 0);
    assert_eq!(
        counter(&app, |c| &c.put_refused),
        2,
        "the builder's PUT, and after the restart (which forgets) the second document's"
    );
}
