//! Hostile input: request files built to break the drop directory, and
//! provider answers built to escape the output folder or exhaust the disk.
//! `inbox.rs` covers malformed JSON, an unknown account, a wrong extension,
//! a taken name, a symlink to /etc/passwd, a FIFO and a 2 MB file;
//! `kontur_extern.rs` covers attachments outside `paths.attachments`
//! (`attachment_paths_that_leave_the_attachments_folder_are_refused_at_submit`,
//! `a_symlink_out_of_the_attachments_folder_is_refused_at_run_time_before_any_upload`,
//! `a_symlinked_signature_out_of_the_attachments_folder_is_refused_too`).
//! Here: the rest.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use docfetch::job::JobState;
use docfetch::sim::SimConfig;
use serde_json::json;

use crate::helpers::TestApp;
use crate::support::fs::{contains, files_under, names};
use crate::support::hostile::{Answer, Hostile, Payload};

/// Scans once and returns the rejection note written for `stem`.
async fn rejected_note(app: &TestApp, stem: &str) -> String {
    let path = app
        .requests()
        .join("rejected")
        .join(format!("{stem}.error.txt"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no note {}: {e}; rejected/: {:?}",
            path.display(),
            names(&app.requests().join("rejected"))
        )
    })
}

fn write(app: &TestApp, name: &str, bytes: &[u8]) {
    std::fs::write(app.requests().join(name), bytes).unwrap();
}

#[tokio::test]
async fn broken_request_files_each_get_a_precise_reason_and_nothing_runs() {
    let app = TestApp::spawn().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "latin1.json",
            b"{\"account\": \"fresh-sim\", \"operation\": \"caf\xe9\"}".to_vec(),
            "not valid UTF-8 text (first bad byte at offset 42)",
        ),
        (
            "bad.toml",
            b"account = \"fresh-sim\"\noperation = \"x\"\nparams = {a = }\n".to_vec(),
            "not valid TOML",
        ),
        (
            "deep.json",
            format!(
                "{{\"account\":\"fresh-sim\",\"operation\":\"x\",\"params\":{}{}}}",
                "[".repeat(200_000),
                "]".repeat(200_000)
            )
            .into_bytes(),
            "recursion limit exceeded",
        ),
        (
            "nested.toml",
            format!(
                "account = \"fresh-sim\"\noperation = \"x\"\n[params]\na = {}{}\n",
                "[".repeat(200_000),
                "]".repeat(200_000)
            )
            .into_bytes(),
            "max recursion depth met at line 4",
        ),
        (
            "dotted.toml",
            format!(
                "account = \"fresh-sim\"\noperation = \"x\"\n[params.{}]\nb = 1\n",
                vec!["a"; 100_000].join(".")
            )
            .into_bytes(),
            "recursion limit",
        ),
        (
            "provider.json",
            br#"{"account": "fresh-sim", "provider": "1c-fresh", "operation": "x"}"#.to_vec(),
            "unknown field `provider`",
        ),
        (
            "noaccount.json",
            br#"{"account": "ghost", "operation": "x"}"#.to_vec(),
            "unknown account \"ghost\"; configured accounts:",
        ),
        (
            "badop.json",
            br#"{"account": "fresh-sim", "operation": "../../etc/passwd"}"#.to_vec(),
            "field `operation`: \"../../etc/passwd\" is not a 1C:Fresh data id",
        ),
        (
            "ofdop.json",
            br#"{"account": "ofd-sim", "operation": "delete-everything", "params": {}}"#.to_vec(),
            "field `operation`: \"delete-everything\" is not an OFD.ru operation",
        ),
        (
            "slash.json",
            br#"{"account": "fresh-sim", "operation": "x", "name": "a/b"}"#.to_vec(),
            "field `name`: \"a/b\" is not a valid job name",
        ),
        (
            "dots.json",
            br#"{"account": "fresh-sim", "operation": "x", "name": ".."}"#.to_vec(),
            "field `name`: \"..\" is not a valid job name",
        ),
        (
            "nul.json",
            br#"{"account": "fresh-sim", "operation": "x", "name": "a\u0000b"}"#.to_vec(),
            "field `name`: \"a\\0b\" is not a valid job name",
        ),
        (
            "emoji.json",
            "{\"account\": \"fresh-sim\", \"operation\": \"x\", \"name\": \"отчёт😀\"}"
                .as_bytes()
                .to_vec(),
            "field `name`: \"отчёт😀\" is not a valid job name",
        ),
        // No `name`: the file's stem is the name, and this one is no job name.
        (
            "квартал 😀.json",
            br#"{"account": "fresh-sim", "operation": "x"}"#.to_vec(),
            "is not a valid job name",
        ),
        (
            "array.json",
            b"[1, 2, 3]".to_vec(),
            "not valid JSON: invalid type: integer `1`, expected a string at line 1 column 2",
        ),
        (
            "empty.json",
            Vec::new(),
            "EOF while parsing a value at line 1 column 0",
        ),
        (
            "bom.json",
            b"\xef\xbb\xbf\xef\xbb\xbf{}".to_vec(),
            "not valid JSON",
        ),
    ];
    for (name, bytes, _) in &cases {
        write(&app, name, bytes);
    }
    let report = app.inbox.scan_once().await.unwrap();
    assert!(report.accepted.is_empty(), "{report:?}");
    assert_eq!(report.rejected.len(), cases.len(), "{report:?}");
    for (name, bytes, reason) in &cases {
        let stem = Path::new(name).file_stem().unwrap().to_str().unwrap();
        let note = rejected_note(&app, stem).await;
        assert!(
            note.contains(reason),
            "{name}: expected {reason:?} in\n{note}"
        );
        assert!(note.contains(&format!("file:   {name}")), "{note}");
        // Kept byte for byte for the user to fix.
        assert_eq!(
            &std::fs::read(app.requests().join("rejected").join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    assert!(
        app.store
            .list(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        app.sim
            .fresh
            .counters
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn a_file_name_that_is_not_utf8_is_rejected_under_a_readable_name() {
    let app = TestApp::spawn().await;
    let raw = std::ffi::OsStr::from_bytes(b"caf\xe9.json");
    std::fs::write(
        app.requests().join(raw),
        br#"{"account": "fresh-sim", "operation": "x"}"#,
    )
    .unwrap();
    let report = app.inbox.scan_once().await.unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    let note = rejected_note(&app, "caf\u{fffd}").await;
    assert!(note.contains("file name is not valid UTF-8"), "{note}");
    // Set aside under the name its note shows, content intact.
    assert!(!app.requests().join(raw).exists());
    assert_eq!(
        std::fs::read(app.requests().join("rejected/caf\u{fffd}.json")).unwrap(),
        br#"{"account": "fresh-sim", "operation": "x"}"#
    );
}

#[tokio::test]
async fn a_100_mb_request_is_refused_by_its_size_without_being_read() {
    let app = TestApp::spawn().await;
    let path = app.requests().join("huge.json");
    // Sparse: 100 MB that cost nothing to make, and would take a while to read.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(100 * 1024 * 1024).unwrap();
    drop(file);
    let started = Instant::now();
    let report = app.inbox.scan_once().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.rejected.len(), 1);
    let note = rejected_note(&app, "huge").await;
    assert!(
        note.contains("the request is 104857600 bytes; requests are limited to 1048576 bytes"),
        "{note}"
    );
    let kept = app.requests().join("rejected/huge.json");
    assert_eq!(std::fs::metadata(kept).unwrap().len(), 100 * 1024 * 1024);
}

#[tokio::test]
async fn links_fifos_and_sockets_are_rejected_and_never_read() {
    let app = TestApp::spawn().await;
    let requests = app.requests();
    std::os::unix::fs::symlink("/etc/shadow", requests.join("shadow.json")).unwrap();
    std::os::unix::fs::symlink("/etc", requests.join("folder.json")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", requests.join("dangling.toml")).unwrap();
    let socket = std::os::unix::net::UnixListener::bind(requests.join("socket.json")).unwrap();
    let fifo = requests.join("pipe.json");
    crate::support::fs::mkfifo(&fifo);
    // A scan must not block on the FIFO (opening one for reading waits for
    // a writer): bounded, or this test hangs.
    let report = tokio::time::timeout(Duration::from_secs(10), app.inbox.scan_once())
        .await
        .expect("the scan does not block")
        .unwrap();
    drop(socket);
    for stem in ["shadow", "folder", "dangling"] {
        let note = rejected_note(&app, stem).await;
        assert!(note.contains("symbolic link"), "{stem}: {note}");
        let moved = app.requests().join("rejected").join(format!(
            "{stem}.{}",
            if stem == "dangling" { "toml" } else { "json" }
        ));
        assert!(
            std::fs::symlink_metadata(&moved)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{stem}: the link itself is set aside, not a copy of its target"
        );
    }
    let note = rejected_note(&app, "socket").await;
    assert!(note.contains("not a regular file"), "{note}");
    let note = rejected_note(&app, "pipe").await;
    assert!(note.contains("not a regular file"), "{note}");
    assert_eq!(report.rejected.len(), 5, "{report:?}");
    // Nothing outside the drop directory was read into the test's folder.
    let shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    let marker = shadow.split(|b| *b == b'\n').next().unwrap_or_default();
    for file in files_under(app.dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            marker.len() < 8 || !contains(&bytes, marker),
            "{} holds /etc/shadow",
            file.display()
        );
    }
    assert!(
        app.store
            .list(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// 2,000 files by default (each rejection costs two fsyncs, about 4 ms
/// here); `DOCFETCH_HOSTILE_DROP_COUNT=10000` for the full ten thousand.
async fn thousands_of_files_dropped_at_once_are_each_accepted_or_rejected_once() {
    let count: usize = std::env::var("DOCFETCH_HOSTILE_DROP_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let app = TestApp::spawn().await;
    let requests = app.requests();
    // One in ten is good; the others are broken in turn.
    let mut good = 0;
    for i in 0..count {
        let (name, body): (String, Vec<u8>) = match i % 10 {
            0 => {
                good += 1;
                (
                    format!("job-{i:05}.json"),
                    format!("{{\"account\": \"fresh-sim\", \"operation\": \"sales_book\", \"params\": {{\"n\": {i}}}}}")
                        .into_bytes(),
                )
            }
            1 | 2 => (format!("job-{i:05}.json"), b"{\"account\": ".to_vec()),
            3 | 4 => (format!("job-{i:05}.toml"), b"account = [".to_vec()),
            5 | 6 => (
                format!("job-{i:05}.json"),
                br#"{"account": "ghost", "operation": "x"}"#.to_vec(),
            ),
            _ => (format!("job-{i:05}.txt"), b"hello".to_vec()),
        };
        std::fs::write(requests.join(name), body).unwrap();
    }
    let started = Instant::now();
    let mut accepted = 0;
    let mut rejected = 0;
    // One scan takes them all; more are allowed only for deferred files.
    for _ in 0..5 {
        let report = app.inbox.scan_once().await.unwrap();
        accepted += report.accepted.len();
        rejected += report.rejected.len();
        if report.deferred == 0 {
            break;
        }
    }
    let took = started.elapsed();
    println!("{count} request files scanned in {took:?}: {accepted} accepted, {rejected} rejected");
    assert_eq!(accepted, good);
    assert_eq!(rejected, count - good);
    let left: Vec<String> = names(&requests)
        .into_iter()
        .filter(|n| n != "accepted" && n != "rejected")
        .collect();
    assert!(left.is_empty(), "{} left", left.len());
    assert_eq!(names(&requests.join("accepted")).len(), good);
    // Each rejected file and its note.
    assert_eq!(names(&requests.join("rejected")).len(), 2 * (count - good));
    assert_eq!(
        app.store.list(&Default::default()).await.unwrap().len(),
        good
    );
}

// ---------------------------------------------------------------------------
// Provider answers
// ---------------------------------------------------------------------------

/// A TestApp with a hostile 1C:Fresh stand-in as account `hostile` (plain flow).
async fn hostile_app(hostile: &Hostile, overrides: &[(&str, &str)]) -> TestApp {
    TestApp::spawn_with(
        SimConfig::default(),
        &hostile.account("hostile", "plain"),
        overrides,
    )
    .await
}

#[tokio::test]
async fn hostile_content_disposition_names_land_inside_the_job_folder() {
    let hostile = Hostile::start().await;
    let long = format!("attachment; filename=\"{}.pdf\"", "Ж".repeat(5_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cd-up", b"attachment; filename=\"../../x\"".to_vec(), "x"),
        (
            "cd-abs",
            b"attachment; filename=\"/etc/passwd\"".to_vec(),
            "passwd",
        ),
        (
            "cd-back",
            b"attachment; filename=..\\..\\windows\\evil.txt".to_vec(),
            "evil.txt",
        ),
        (
            "cd-nul",
            b"attachment; filename*=UTF-8''a%00b.txt".to_vec(),
            "ab.txt",
        ),
        (
            "cd-abs-star",
            b"attachment; filename*=UTF-8''%2Fetc%2Fshadow".to_vec(),
            "shadow",
        ),
        (
            "cd-con",
            b"attachment; filename=\"CON.txt\"".to_vec(),
            "_CON.txt",
        ),
        ("cd-lpt", b"attachment; filename=\"lpt1\"".to_vec(), "_lpt1"),
        (
            "cd-receipt",
            b"attachment; filename=\"job.json\"".to_vec(),
            "_job.json",
        ),
        (
            "cd-part",
            b"attachment; filename=\".job.json.part\"".to_vec(),
            "job.json.part",
        ),
        (
            "cd-dots",
            b"attachment; filename=\"..\"".to_vec(),
            "cd-dots.bin",
        ),
        (
            "cd-badpct",
            b"attachment; filename*=UTF-8''%E0%A4%A; filename=\"fallback.txt\"".to_vec(),
            "fallback.txt",
        ),
        (
            "cd-notutf8",
            b"attachment; filename*=UTF-8''%FF%FE.txt".to_vec(),
            "cd-notutf8.bin",
        ),
        (
            "cd-latin1",
            b"attachment; filename=\"caf\xe9.txt\"".to_vec(),
            "caf\u{e9}.txt",
        ),
        (
            "cd-ctl",
            b"attachment; filename=\"a\tb.txt\"".to_vec(),
            "ab.txt",
        ),
        ("cd-long", long.into_bytes(), ""),
    ];
    for (id, disposition, _) in &cases {
        hostile.on_file(
            id,
            Answer::file(disposition, format!("content of {id}").as_bytes()),
        );
    }
    let app = hostile_app(&hostile, &[]).await;
    for (id, _, _) in &cases {
        app.submit(json!({"account": "hostile", "operation": id, "name": id}))
            .await;
    }
    for (id, _, expected) in &cases {
        let job = app.run_until_finished(id).await;
        assert_eq!(job.state, JobState::Done, "{id}: {:?}", job.last_error);
        let files = &job.result.unwrap().files;
        assert_eq!(files.len(), 1);
        let name = &files[0].name;
        assert!(
            name.len() <= 200
                && !name.contains('/')
                && !name.contains('\\')
                && !name.contains('\0')
                && !name.starts_with('.')
                && name != "job.json",
            "{id}: unsafe name {name:?}"
        );
        if expected.is_empty() {
            assert!(
                name.ends_with(".pdf") && name.starts_with('Ж'),
                "{id}: {name}"
            );
        } else {
            assert_eq!(name, expected, "{id}");
        }
        let path = app.output(id).join(name);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            format!("content of {id}").as_bytes(),
            "{id}"
        );
        // The receipt is still the receipt.
        assert_eq!(app.receipt(id)["state"], "done", "{id}");
    }
    // Nothing landed anywhere but in the jobs' folders.
    let output = app.settings.paths.output.clone();
    for file in files_under(app.dir.path()) {
        if file.starts_with(&output) {
            let rel = file.strip_prefix(&output).unwrap();
            assert_eq!(rel.components().count(), 2, "{}", file.display());
        } else {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.starts_with("docfetch.db"),
                "stray file {}",
                file.display()
            );
        }
    }
}

#[tokio::test]
async fn bodies_larger_than_max_file_size_fail_with_nothing_left_behind() {
    let hostile = Hostile::start().await;
    // Announced: refused before a byte is written.
    hostile.on_file(
        "announced",
        Answer::file(b"attachment; filename=\"big.bin\"", &vec![7u8; 300_000]),
    );
    // Chunked and endless: cut off at the limit.
    hostile.on_file(
        "endless",
        Answer::status(200)
            .header(
                "content-disposition",
                b"attachment; filename=\"endless.bin\"",
            )
            .body(Payload::Endless {
                chunk: 64 * 1024,
                every: Duration::from_millis(1),
            }),
    );
    hostile.on_file(
        "fits",
        Answer::file(b"attachment; filename=\"fits.bin\"", &vec![1u8; 100_000]),
    );
    let app = hostile_app(
        &hostile,
        &[("DOCFETCH__SCHEDULER__MAX_FILE_SIZE", "256KiB")],
    )
    .await;
    for id in ["announced", "endless", "fits"] {
        app.submit(json!({"account": "hostile", "operation": id, "name": id}))
            .await;
    }
    for id in ["announced", "endless"] {
        let job = app.run_until_finished(id).await;
        assert_eq!(job.state, JobState::Failed, "{id}");
        let error = job.last_error.unwrap_or_default();
        assert!(
            error.contains("larger than the 262144-byte limit (scheduler.max_file_size)"),
            "{id}: {error}"
        );
        assert_eq!(job.attempts, 0, "{id}: too large is not retried");
        let left: Vec<String> = names(&app.output(id))
            .into_iter()
            .filter(|n| n != "job.json")
            .collect();
        assert!(left.is_empty(), "{id}: {left:?}");
        assert_eq!(app.receipt(id)["state"], "failed");
    }
    let job = app.run_until_finished("fits").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
}

#[tokio::test]
async fn html_pages_and_json_of_the_wrong_shape_are_retried_then_fail_with_an_excerpt() {
    let hostile = Hostile::start().await;
    let html = Answer::status(200)
        .header("content-type", b"text/html")
        .body(Payload::Bytes(
            b"<html><body><h1>Service Unavailable</h1></body></html>".to_vec(),
        ));
    hostile.on_poll("html", html);
    hostile.on_poll(
        "shape",
        Answer::status(200)
            .header("content-type", b"application/json")
            .body(Payload::Bytes(
                br#"{"general": {"response": "many"}, "result": [1, 2]}"#.to_vec(),
            )),
    );
    hostile.on_poll(
        "array",
        Answer::status(200)
            .header("content-type", b"application/json")
            .body(Payload::Bytes(b"[]".to_vec())),
    );
    hostile.on_file(
        "fine",
        Answer::file(b"attachment; filename=\"fine.bin\"", b"fine"),
    );
    let app = hostile_app(&hostile, &[]).await;
    for id in ["html", "shape", "array", "fine"] {
        app.submit(json!({"account": "hostile", "operation": id, "name": id}))
            .await;
    }
    for (id, excerpt) in [
        ("html", "Service Unavailable"),
        ("shape", "\"many\""),
        ("array", "[]"),
    ] {
        let job = app.run_until_finished(id).await;
        assert_eq!(job.state, JobState::Failed, "{id}");
        let error = job.last_error.unwrap_or_default();
        assert!(
            error.starts_with("gave up after 4 attempts in a row") && error.contains(excerpt),
            "{id}: {error}"
        );
    }
    assert_eq!(app.run_until_finished("fine").await.state, JobState::Done);
}

#[test]
fn hostile_names_are_never_written_outside_and_never_replace_the_receipt() {
    // The same property at the unit level, for every name above and more.
    for raw in [
        "../../x",
        "/etc/passwd",
        "..\\..\\x",
        "a\0b",
        "..",
        ".",
        "",
        "job.json",
        "JOB.JSON",
        ".job.json.part",
        "con",
        "nul.txt",
        "com9.zip",
        "a/b/../../../c",
    ] {
        let name = docfetch::filename::sanitize(raw, "op.bin");
        assert!(
            !name.is_empty()
                && name.len() <= 200
                && !name.contains(['/', '\\', '\0'])
                && !name.starts_with('.')
                && !name.eq_ignore_ascii_case("job.json"),
            "{raw:?} -> {name:?}"
        );
    }
}

/// Regression (fixed in 9b40509): a dot behind a space used to survive
/// `sanitize` (". .x" became ".x"), so a download named `. .job.json.part`
/// took the receipt's temporary name and could be swept away as a stale
/// part when the receipt was written.
#[tokio::test]
async fn a_file_named_like_the_receipts_temporary_file_is_kept() {
    let hostile = Hostile::start().await;
    hostile.on_file(
        "sneaky",
        Answer::file(b"attachment; filename=\". .job.json.part\"", b"the data"),
    );
    let app = hostile_app(&hostile, &[]).await;
    app.submit(json!({"account": "hostile", "operation": "sneaky", "name": "sneaky"}))
        .await;
    let job = app.run_until_finished("sneaky").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let name = job.result.unwrap().files[0].name.clone();
    assert!(!name.starts_with('.'), "saved as a hidden name {name:?}");
    assert_eq!(
        std::fs::read(app.output("sneaky").join(&name))
            .ok()
            .as_deref(),
        Some(&b"the data"[..]),
        "the file the receipt lists is there"
    );
}
