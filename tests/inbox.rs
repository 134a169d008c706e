//! The drop directory: accepted, rejected with a reason, left alone.

use docfetch::job::JobState;
use docfetch::sim::SimConfig;

use crate::helpers::TestApp;

const GOOD: &str = r#"{ "account": "fresh-sim",
  "operation": "tax_usn_calculator",
  "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
  "name": "usn-2018q3" }"#;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_good_request_is_accepted_and_moved_after_its_job_is_stored() {
    let app = TestApp::spawn().await;
    std::fs::write(app.requests().join("usn-2018q3.json"), GOOD).unwrap();
    let report = app.inbox.scan_once().await.unwrap();
    assert_eq!(report.accepted, vec!["usn-2018q3".to_string()]);
    assert_eq!(
        names(&app.requests().join("accepted")),
        vec!["usn-2018q3.json"]
    );
    assert!(!app.requests().join("usn-2018q3.json").exists());
    let job = app.job("usn-2018q3").await;
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.source, "usn-2018q3.json");
    assert_eq!(
        app.run_until_finished("usn-2018q3").await.state,
        JobState::Done
    );
}

#[tokio::test]
async fn a_malformed_request_is_set_aside_with_its_reason_and_the_scan_goes_on() {
    let app = TestApp::spawn().await;
    std::fs::write(
        app.requests().join("broken.json"),
        "{\"account\": \"fresh-sim\",\n \"operation\": ",
    )
    .unwrap();
    std::fs::write(
        app.requests().join("unknown.json"),
        r#"{"account": "nope", "operation": "x"}"#,
    )
    .unwrap();
    std::fs::write(
        app.requests().join("good.toml"),
        "account = \"fresh-sim\"\noperation = \"balance_sheet\"\n",
    )
    .unwrap();
    std::fs::write(app.requests().join("notes.txt"), "hello").unwrap();
    let report = app.inbox.scan_once().await.unwrap();
    assert_eq!(report.accepted, vec!["good".to_string()]);
    assert_eq!(report.rejected.len(), 3, "{report:?}");
    let rejected = app.requests().join("rejected");
    assert_eq!(
        names(&rejected),
        vec![
            "broken.error.txt",
            "broken.json",
            "notes.error.txt",
            "notes.txt",
            "unknown.error.txt",
            "unknown.json"
        ]
    );
    let why = std::fs::read_to_string(rejected.join("broken.error.txt")).unwrap();
    assert!(
        why.contains("not valid JSON") && why.contains("line 2"),
        "{why}"
    );
    let why = std::fs::read_to_string(rejected.join("unknown.error.txt")).unwrap();
    assert!(
        why.contains("field `account`") && why.contains("fresh-sim"),
        "{why}"
    );
    let why = std::fs::read_to_string(rejected.join("notes.error.txt")).unwrap();
    assert!(why.contains(".json or .toml"), "{why}");
    // The rejected file is kept byte for byte.
    assert_eq!(
        std::fs::read(rejected.join("unknown.json")).unwrap(),
        br#"{"account": "nope", "operation": "x"}"#
    );
}

#[tokio::test]
async fn a_second_request_with_a_taken_name_is_rejected_never_run_twice() {
    let app = TestApp::spawn().await;
    std::fs::write(app.requests().join("usn-2018q3.json"), GOOD).unwrap();
    app.inbox.scan_once().await.unwrap();
    assert_eq!(
        app.run_until_finished("usn-2018q3").await.state,
        JobState::Done
    );
    let other = GOOD.replace("2018-09-30", "2018-12-31");
    std::fs::write(app.requests().join("again.json"), other).unwrap();
    let report = app.inbox.scan_once().await.unwrap();
    assert!(report.accepted.is_empty());
    let why = std::fs::read_to_string(app.requests().join("rejected/again.error.txt")).unwrap();
    assert!(
        why.contains("already exists") && why.contains("state done"),
        "{why}"
    );
    assert_eq!(app.sim.fresh.orders(), 1);
}

#[tokio::test]
async fn a_request_seen_again_after_a_crash_before_its_move_is_only_moved() {
    let app = TestApp::spawn().await;
    // The job was committed, then the daemon died before moving the file.
    docfetch::inbox::accept(
        &app.store,
        &app.settings,
        GOOD.as_bytes(),
        docfetch::job::request::RequestFormat::Json,
        Some("usn-2018q3"),
        "usn-2018q3.json",
    )
    .await
    .unwrap();
    std::fs::write(app.requests().join("usn-2018q3.json"), GOOD).unwrap();
    let report = app.inbox.scan_once().await.unwrap();
    assert_eq!(report.accepted, vec!["usn-2018q3".to_string()]);
    assert!(report.rejected.is_empty());
    assert_eq!(
        names(&app.requests().join("accepted")),
        vec!["usn-2018q3.json"]
    );
    assert_eq!(app.store.list(&Default::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn files_being_written_and_hidden_files_are_left_alone() {
    let app = TestApp::spawn_with(
        SimConfig::default(),
        "",
        &[("DOCFETCH__INBOX__SETTLE", "1h")],
    )
    .await;
    std::fs::write(app.requests().join("fresh.json"), GOOD).unwrap();
    std::fs::write(app.requests().join("x.json.tmp"), "{").unwrap();
    std::fs::write(app.requests().join("x.json.part"), "{").unwrap();
    std::fs::write(app.requests().join(".hidden.json"), "{").unwrap();
    std::fs::create_dir(app.requests().join("folder.json")).unwrap();
    let report = app.inbox.scan_once().await.unwrap();
    assert_eq!(
        report.deferred, 1,
        "the just-written file waits for the next scan"
    );
    assert!(report.accepted.is_empty() && report.rejected.is_empty());
    assert!(app.requests().join("fresh.json").exists());
    assert!(app.requests().join("x.json.tmp").exists());
}

#[tokio::test]
async fn symlinks_and_fifos_are_rejected_without_being_read() {
    let app = TestApp::spawn().await;
    std::os::unix::fs::symlink("/etc/passwd", app.requests().join("link.json")).unwrap();
    let fifo = app.requests().join("pipe.json");
    crate::support::fs::mkfifo(&fifo);
    let report = app.inbox.scan_once().await.unwrap();
    let rejected = app.requests().join("rejected");
    let why = std::fs::read_to_string(rejected.join("link.error.txt")).unwrap();
    assert!(why.contains("symbolic link"), "{why}");
    let why = std::fs::read_to_string(rejected.join("pipe.error.txt")).unwrap();
    assert!(why.contains("not a regular file"), "{why}");
    assert_eq!(report.rejected.len(), 2);
}

#[tokio::test]
async fn an_oversized_request_is_rejected_without_parsing() {
    let app = TestApp::spawn().await;
    let big = format!(
        "{{\"account\": \"fresh-sim\", \"operation\": \"x\", \"params\": \"{}\"}}",
        "a".repeat(2 << 20)
    );
    std::fs::write(app.requests().join("big.json"), big).unwrap();
    app.inbox.scan_once().await.unwrap();
    let why = std::fs::read_to_string(app.requests().join("rejected/big.error.txt")).unwrap();
    assert!(why.contains("limited to 1048576 bytes"), "{why}");
}

/// Two daemons watching one drop directory (a PostgreSQL fleet): each file
/// is handled by exactly one of them — one job, one move, one note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scanners_sharing_a_directory_take_each_file_exactly_once() {
    let app = TestApp::spawn().await;
    let other = docfetch::inbox::Inbox::new(app.store.clone(), app.settings.clone());
    let requests = app.requests();
    for i in 0..150 {
        let body = format!(
            r#"{{"account": "fresh-sim", "operation": "balance_sheet", "name": "shared-{i:03}"}}"#
        );
        std::fs::write(requests.join(format!("shared-{i:03}.json")), body).unwrap();
    }
    for i in 0..20 {
        std::fs::write(requests.join(format!("bad-{i:02}.json")), "{\"account\": ").unwrap();
    }
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for _ in 0..20 {
        let (a, b) = tokio::join!(app.inbox.scan_once(), other.scan_once());
        for report in [a.unwrap(), b.unwrap()] {
            accepted.extend(report.accepted);
            rejected.extend(report.rejected.into_iter().map(|(file, _)| file));
        }
        if names(&requests)
            .iter()
            .all(|n| n == "accepted" || n == "rejected")
        {
            break;
        }
    }
    accepted.sort();
    rejected.sort();
    let expected: Vec<String> = (0..150).map(|i| format!("shared-{i:03}")).collect();
    assert_eq!(accepted, expected, "each request accepted once");
    let expected: Vec<String> = (0..20).map(|i| format!("bad-{i:02}.json")).collect();
    assert_eq!(rejected, expected, "each bad request rejected once");
    assert_eq!(
        names(&requests),
        ["accepted", "rejected"],
        "no claim is left"
    );
    assert_eq!(names(&requests.join("accepted")).len(), 150);
    // One file and one note per bad request: no second copy with a stamp.
    assert_eq!(names(&requests.join("rejected")).len(), 40);
    assert_eq!(app.store.counts().await.unwrap(), [(JobState::Queued, 150)]);
}

/// A claim is a daemon's for milliseconds; one found later was left by a
/// daemon that stopped mid-way. A scan leaves a young one to its owner; a
/// daemon alone on its store puts every one back when it starts.
#[tokio::test]
async fn claims_left_by_a_stopped_daemon_are_put_back() {
    let app = TestApp::spawn().await;
    let requests = app.requests();
    std::fs::write(requests.join(".usn-2018q3.json.claimed-4242-dead"), GOOD).unwrap();
    let report = app.inbox.scan_once().await.unwrap();
    assert!(report.accepted.is_empty(), "a young claim is its owner's");
    assert_eq!(app.inbox.put_back_all_claims().await.unwrap(), 1);
    assert!(requests.join("usn-2018q3.json").is_file());
    let report = app.inbox.scan_once().await.unwrap();
    assert_eq!(report.accepted, ["usn-2018q3"]);
    assert_eq!(names(&requests), ["accepted", "rejected"]);
}
