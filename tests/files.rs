//! Files and folders below the configured roots: a symbolic link planted
//! where docfetch writes (`output/NAME`) is refused, and nothing is written
//! where it points. (The drop directory's races are unit tests in
//! `src/inbox.rs`; attachments are in `kontur_extern.rs` and
//! `src/providers/kontur_extern.rs`.)

use serde_json::json;

use docfetch::job::JobState;

use crate::helpers::TestApp;

#[tokio::test]
async fn a_link_planted_at_a_jobs_output_folder_is_refused_and_nothing_lands_where_it_points() {
    let app = TestApp::spawn().await;
    // Someone who can write to the output folder points the job's folder
    // at a place of their choosing before the job saves its file.
    let elsewhere = app.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::create_dir_all(&app.settings.paths.output).unwrap();
    std::os::unix::fs::symlink(&elsewhere, app.output("planted")).unwrap();
    app.submit(json!({
        "account": "fresh-sim-plain", "operation": "sales_book", "name": "planted",
        "params": {"_sim": {"size": 1000, "filename": "book.xml"}},
    }))
    .await;
    let job = app.run_until_finished("planted").await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.clone().unwrap_or_default();
    assert!(error.contains("symbolic link"), "{error}");
    assert_eq!(job.attempts, 0, "refused for good, not retried: {job:?}");
    let landed: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
    assert!(
        landed.is_empty(),
        "nothing written through the link: {landed:?}"
    );
    assert!(
        std::fs::symlink_metadata(app.output("planted"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link itself is left for a person to look at"
    );
}

#[tokio::test]
async fn a_job_whose_folder_is_real_saves_its_file_and_receipt_as_before() {
    let app = TestApp::spawn().await;
    app.submit(json!({
        "account": "fresh-sim-plain", "operation": "sales_book", "name": "plain",
        "params": {"_sim": {"size": 1000, "filename": "book.xml"}},
    }))
    .await;
    let job = app.run_until_finished("plain").await;
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    assert_eq!(
        std::fs::read(app.output("plain").join("book.xml"))
            .unwrap()
            .len(),
        1000
    );
    assert_eq!(app.receipt("plain")["state"], "done");
}
