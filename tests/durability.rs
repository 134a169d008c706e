//! "done" means on disk, proven from the system calls of the real daemon.
//!
//! The real `docfetch run` runs under `strace -f -y -xx` against the
//! simulator on one job of every provider flow, and
//! [`crate::support::strace`] checks the recorded order for every file
//! that ends up in `output/` (its header says exactly what and why). The
//! proof is then shown to fail when any one sync it rests on is missing:
//! each such call deleted from the recorded trace in turn, and real runs
//! of the unchanged daemon with one `fsync` removed underneath it by an
//! `LD_PRELOAD` library (`tests/support/skip_sync.c`). A last test kills the
//! daemon (SIGKILL, from strace at the exact system call) after a job's
//! outcome is committed and before its `job.json` is written, and shows
//! the restart repairs it with nothing said done in between.
//!
//! These tests need `strace` (and `cc` for the library): without them they
//! say they are skipped, and under `CI=true` they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use docfetch::job::JobState;
use docfetch::sim::{Sim, SimConfig};
use docfetch::store::{JobFilter, Store};
use serde_json::{Value, json};

use crate::helpers::wait_until;
use crate::support::daemon::{BIN, Daemon, DaemonConfig};
use crate::support::fs::{drop_request, files_under, sha256_file};
use crate::support::strace::{self, TRACED, TracedJob};
use crate::support::{cannot_run, has_tool};

/// The simulator, quick: one pending poll, OFD ready at once, one build poll.
async fn sim() -> Sim {
    let mut config = SimConfig::default();
    config.fresh.pending_polls = 1;
    config.ofd.assumptive_delay = Duration::from_millis(200);
    config.kontur_extern.build_polls = 1;
    Sim::start_local(config).await.unwrap()
}

/// One request of every provider flow (1C:Fresh in both flows, OFD.ru,
/// Kontur.Extern with an attachment, ATOL Online, Kontur.Diadoc).
fn every_provider(attachments: &Path) -> Vec<(String, Value)> {
    let scan = attachments.join("t-extern/scan.pdf");
    std::fs::create_dir_all(scan.parent().unwrap()).unwrap();
    let mut pdf = b"%PDF-1.4 durability ".to_vec();
    pdf.extend((0..20_000u32).map(|i| (i * 7 % 251) as u8));
    std::fs::write(&scan, pdf).unwrap();
    vec![
        (
            "t-fresh-session".into(),
            json!({"account": "fresh-sim", "operation": "sales_book",
                   "params": {"_sim": {"pending": 1, "size": 180_000, "filename": "session.bin"}}}),
        ),
        (
            "t-fresh-plain".into(),
            json!({"account": "fresh-sim-plain", "operation": "sales_book",
                   "params": {"_sim": {"pending": 0, "size": 40_000, "filename": "plain.bin"}}}),
        ),
        (
            "t-ofd".into(),
            json!({"account": "ofd-sim", "operation": "report",
                   "params": {"ReportType": "CloseShiftReport",
                              "DateFrom": "2026-11-01T00:00:00", "DateTo": "2026-11-30T23:59:59",
                              "SelectAllKkts": true, "UseXlsxFile": true,
                              "_sim": {"size": 60_000, "filename": "shifts.xlsx"}}}),
        ),
        (
            "t-extern".into(),
            json!({"account": "kontur-extern-sim", "operation": "drafts-build",
                   "params": {
                       "builder-type": "urn:drafts-builder-type:fns534-inventory",
                       "sender": {"inn": "7810000000", "kpp": "781001001", "certificate": {"content": "MIIBsim"}},
                       "payer": {"inn": "7810000000", "organization": {"kpp": "781001001"}},
                       "recipient": {"ifns-code": "7810"},
                       "builder-data": {"related-document": {
                           "related-docflow-id": "d6b0c7a2-5f0e-4f37-9a5b-0c1e2d3f4a5b",
                           "related-document-id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"}},
                       "documents": [{
                           "builder-data": {"claim-item-number": "1.01", "scanned-document-name": "Скан.pdf", "type": "scanned"},
                           "files": [{"path": "t-extern/scan.pdf"}]}]}}),
        ),
        (
            "t-atol".into(),
            json!({"account": "atol-sim", "operation": "cash-registers", "params": {"limit": 5}}),
        ),
        (
            "t-diadoc".into(),
            json!({"account": "kontur-diadoc-sim", "operation": "document-protocol",
                   "params": {"boxId": "0f4bb5a6-6c1d-4c2c-9a57-7a6f7d1f0b31",
                              "messageId": "b1e9c0d2-2f4a-4f5e-8d43-6f3c1a9e7b20",
                              "documentId": "5d6a4c8e-3b7f-4e0a-9c1d-8f2e6b4a7c90"}}),
        ),
    ]
}

/// One 1C job, for the runs that remove a sync.
fn one_fresh_job() -> Vec<(String, Value)> {
    vec![(
        "t-one".into(),
        json!({"account": "fresh-sim-plain", "operation": "sales_book",
               "params": {"_sim": {"pending": 0, "size": 30_000, "filename": "one.bin"}}}),
    )]
}

/// A finished traced run.
struct Traced {
    _dir: tempfile::TempDir,
    config: DaemonConfig,
    trace: String,
    jobs: Vec<TracedJob>,
}

impl Traced {
    fn wal(&self) -> PathBuf {
        let mut wal = self.config.store_path().into_os_string();
        wal.push("-wal");
        PathBuf::from(wal)
    }

    /// The recorded run, ready to check.
    fn proof(&self) -> strace::Proof {
        strace::Proof::new(
            &strace::parse(&self.trace),
            &self.config.output(),
            &self.wal(),
            &std::env::current_dir().unwrap(),
            &self.jobs,
        )
    }
}

/// One `fsync` to take away from the daemon: the `nth` on `path` (relative
/// to the run's folder), by the library built from `skip_sync.c`.
struct Skip<'a> {
    library: &'a Path,
    path: &'a str,
    nth: u32,
}

/// Runs the real daemon under strace until every request's job finished,
/// then stops it with SIGTERM. `skip` removes one sync underneath it.
async fn traced_run(
    sim: &Sim,
    requests: impl FnOnce(&Path) -> Vec<(String, Value)>,
    skip: Option<Skip<'_>>,
) -> Traced {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new(dir.path(), sim.accounts_toml());
    let config_path = config.write();
    std::fs::create_dir_all(config.requests()).unwrap();
    let requests = requests(&config.attachments());
    for (name, request) in &requests {
        let mut request = request.clone();
        request["name"] = json!(name);
        drop_request(
            &config.requests(),
            &format!("{name}.json"),
            &serde_json::to_vec(&request).unwrap(),
        );
    }
    let trace_path = dir.path().join("strace.txt");
    let log_path = dir.path().join("daemon.log");
    let mut command = Command::new("strace");
    command
        .args(["-f", "-y", "-xx", "-s", "8192", "-o"])
        .arg(&trace_path)
        .arg(format!("--trace={TRACED}"));
    if let Some(skip) = &skip {
        command
            .arg("-E")
            .arg(format!("LD_PRELOAD={}", skip.library.display()))
            .arg("-E")
            .arg(format!(
                "DOCFETCH_SKIP_SYNC_OF={}",
                dir.path().join(skip.path).display()
            ))
            .arg("-E")
            .arg(format!("DOCFETCH_SKIP_SYNC_NTH={}", skip.nth));
    }
    command
        .arg(BIN)
        .arg("--config")
        .arg(&config_path)
        .arg("run");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut tracer = Daemon::spawn(command, log, "docfetch=info", &[]);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(
        Duration::from_secs(60),
        "the traced daemon to start",
        || {
            let up = log_text().contains("docfetch is running");
            async move { up.then_some(()) }
        },
    )
    .await;
    let store = Store::open(&config.store_url()).await.unwrap();
    let names: Vec<&String> = requests.iter().map(|(n, _)| n).collect();
    let finished = wait_until(
        Duration::from_secs(120),
        "every traced job to finish",
        || async {
            let jobs = store.list(&JobFilter::default()).await.ok()?;
            (jobs.len() == names.len() && jobs.iter().all(|j| j.state.is_finished()))
                .then_some(jobs)
        },
    )
    .await;
    // SIGTERM to the daemon itself (strace's child), not to strace.
    let children = std::fs::read_to_string(format!(
        "/proc/{pid}/task/{pid}/children",
        pid = tracer.pid()
    ))
    .unwrap();
    let daemon: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &daemon.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tracer.wait(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "the traced daemon stops cleanly: {status}\n{}",
        log_text()
    );
    let jobs = finished
        .iter()
        .map(|j| TracedJob {
            name: j.name.clone(),
            id: j.id.clone(),
            state: j.state.to_string(),
        })
        .collect();
    for job in &finished {
        assert_eq!(
            job.state,
            JobState::Done,
            "{}: {:?}",
            job.name,
            job.last_error
        );
    }
    store.close().await.unwrap();
    Traced {
        trace: std::fs::read_to_string(&trace_path).unwrap(),
        _dir: dir,
        config,
        jobs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_output_file_is_synced_before_its_rename_and_its_folder_before_the_commit_that_records_it()
 {
    if !has_tool("strace") {
        return cannot_run("the strace durability proof", "strace is not installed");
    }
    let sim = sim().await;
    let run = traced_run(&sim, every_provider, None).await;
    let recorded = run.proof();
    let checked = recorded.check();
    assert!(
        checked.broken.is_empty(),
        "the durability order is broken:\n{}",
        checked.broken.join("\n")
    );
    let files = files_under(&run.config.output());
    assert_eq!(checked.files, files.len());
    assert_eq!(checked.proofs.len(), files.len());
    // Every job left its file(s) and its receipt, and each was checked.
    for job in &run.jobs {
        let dir = run.config.output().join(&job.name);
        let names = crate::support::fs::names(&dir);
        assert!(
            names.len() >= 2 && names.iter().any(|n| n == "job.json"),
            "{}: {names:?}",
            job.name
        );
        let receipt: Value =
            serde_json::from_slice(&std::fs::read(dir.join("job.json")).unwrap()).unwrap();
        assert_eq!(receipt["state"], "done");
        for file in receipt["files"].as_array().unwrap() {
            let name = file["name"].as_str().unwrap();
            assert_eq!(file["sha256"], sha256_file(&dir.join(name)).as_str());
        }
    }
    println!(
        "strace proof: {} system calls parsed, {} renames, {} syncs, {} store commits, {} files of {} jobs:",
        checked.calls,
        checked.renames,
        checked.syncs,
        checked.commits,
        checked.files,
        run.jobs.len()
    );
    for proof in &checked.proofs {
        println!("  {}", proof.describe());
    }

    // Each sync the proof rests on, removed from the trace, breaks it. When
    // the daemon made a second sync that also covers the file (two files
    // renamed into one folder before its sync), the checker must find that
    // one instead, and removing it too breaks the proof.
    let mut removals = 0;
    let mut covered_twice = 0;
    for proof in &checked.proofs {
        let roles: Vec<(&str, CallsOf)> = vec![
            ("data", |p| vec![p.data_sync]),
            ("folder", |p| vec![p.dir_sync]),
            ("new folder's parent", |p| p.folder_syncs.clone()),
        ];
        for (what, calls_of) in roles {
            for (k, first) in calls_of(proof).into_iter().enumerate() {
                let mut gone = vec![first];
                loop {
                    removals += 1;
                    let again = recorded.without_syncs(&gone).check();
                    match again.broken.iter().any(|b| b.starts_with(&proof.file)) {
                        true => break,
                        false => {
                            let other = again
                                .proofs
                                .iter()
                                .find(|p| p.file == proof.file)
                                .and_then(|p| calls_of(p).get(k).copied())
                                .unwrap_or_else(|| {
                                    panic!("{}: no proof after a removal", proof.file)
                                });
                            assert!(
                                !gone.contains(&other) && gone.len() < 16,
                                "{}: the proof holds without its {what} sync (line {})",
                                proof.file,
                                first.1 + 1
                            );
                            covered_twice += usize::from(gone.len() == 1);
                            gone.push(other);
                        }
                    }
                }
            }
        }
    }
    println!(
        "strace proof: {removals} sync removals from the trace; every file's proof broke once its sync was gone ({covered_twice} were covered by a second sync the daemon also made)"
    );
    assert!(removals >= 2 * files.len());
}

/// The calls of one role (data, folder, new folder's parent) in a file's proof.
type CallsOf = fn(&strace::FileProof) -> Vec<(usize, usize)>;

/// Compiles `tests/support/skip_sync.c` into `dir`.
fn skip_sync_library(dir: &Path) -> Option<PathBuf> {
    let library = dir.join("skip_sync.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/skip_sync.c");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(source)
        .arg("-ldl")
        .status()
        .ok()?;
    built.success().then_some(library)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_run_with_any_one_fsync_taken_away_fails_the_proof() {
    if !has_tool("strace") {
        return cannot_run("the skipped-fsync runs", "strace is not installed");
    }
    let build = tempfile::tempdir().unwrap();
    let Some(library) = skip_sync_library(build.path()) else {
        return cannot_run(
            "the skipped-fsync runs",
            "cc cannot build tests/support/skip_sync.c",
        );
    };
    let sim = sim().await;
    // Where each sync lives, relative to the test's folder, and what the
    // proof must then say about which file.
    let cases: [(&str, u32, &str, &str); 5] = [
        ("output/t-one/.one.bin.part", 1, "t-one/one.bin", "its data"),
        (
            "output/t-one",
            1,
            "t-one/one.bin",
            "its folder was not fsynced",
        ),
        (
            "output/t-one/.job.json.part",
            1,
            "t-one/job.json",
            "its data",
        ),
        (
            "output/t-one",
            2,
            "t-one/job.json",
            "its folder was not fsynced",
        ),
        ("output", 1, "t-one/", "was made"),
    ];
    for (path, nth, file, rule) in cases {
        let skip = Skip {
            library: &library,
            path,
            nth,
        };
        let run = traced_run(&sim, |_| one_fresh_job(), Some(skip)).await;
        let broken = run.proof().check().broken;
        assert!(
            broken
                .iter()
                .any(|b| b.starts_with(file) && b.contains(rule)),
            "sync #{nth} of {path} taken away: expected '{file}: … {rule}', got {broken:?}"
        );
        println!("sync #{nth} of {path} taken away: {}", broken.join(" | "));
    }
}

/// Hand-written traces: each rule and each way strace prints a call, on a
/// job `j` whose file `f.bin` and receipt sit in a temporary `out/`.
mod checker {
    use std::path::{Path, PathBuf};

    use crate::support::strace::{Proof, TracedJob, parse};

    /// `\xNN` for every byte, as `strace -xx` prints strings and paths.
    fn x(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
    }

    struct Scene {
        root: tempfile::TempDir,
    }

    impl Scene {
        fn new() -> Scene {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("out/j")).unwrap();
            std::fs::write(root.path().join("out/j/f.bin"), b"hello").unwrap();
            std::fs::write(root.path().join("out/j/job.json"), b"{}").unwrap();
            Scene { root }
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.root.path().join(rel)
        }

        /// `N</path>`.
        fn fd(&self, n: u32, rel: &str) -> String {
            format!("{n}<{}>", x(self.p(rel).as_os_str().as_encoded_bytes()))
        }

        /// `"path"`.
        fn s(&self, rel: &str) -> String {
            format!("\"{}\"", x(self.p(rel).as_os_str().as_encoded_bytes()))
        }

        /// The two writes of one WAL frame that commits, holding `content`.
        fn commit(&self, frame: u64, content: &[u8]) -> [String; 2] {
            let offset = 32 + frame * (4096 + 24);
            let mut header = vec![0u8; 24];
            header[3] = 1;
            header[7] = 9; // database size: a commit frame
            let mut page = content.to_vec();
            page.resize(4096, 0);
            [
                format!(
                    "11 pwrite64({}, \"{}\", 24, {offset}) = 24",
                    self.fd(6, "s.db-wal"),
                    x(&header)
                ),
                format!(
                    "11 pwrite64({}, \"{}\"..., 4096, {}) = 4096",
                    self.fd(6, "s.db-wal"),
                    x(&page[..64]).to_string() + &x(&page[64..]),
                    offset + 24
                ),
            ]
        }

        /// A run done right: folder made and its parent synced, data
        /// written, synced, renamed, folder synced, the result committed,
        /// the receipt the same way (fd-relative), then the done event.
        fn good(&self) -> Vec<String> {
            let sha = crate::support::fs::sha256_hex(b"hello");
            let mut t = vec![
                format!("10 mkdir({}, 0750) = 0", self.s("out/j")),
                format!("10 fsync({}) = 0", self.fd(3, "out")),
                format!(
                    "10 openat(AT_FDCWD<{}>, {}, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0640) = {}",
                    x(self.root.path().as_os_str().as_encoded_bytes()),
                    self.s("out/j/.f.bin.part"),
                    self.fd(4, "out/j/.f.bin.part")
                ),
                format!(
                    "10 write({}, \"{}\", 5) = 5",
                    self.fd(4, "out/j/.f.bin.part"),
                    x(b"hello")
                ),
                format!("10 fsync({}) = 0", self.fd(4, "out/j/.f.bin.part")),
                format!(
                    "10 rename({}, {}) = 0",
                    self.s("out/j/.f.bin.part"),
                    self.s("out/j/f.bin")
                ),
                format!("10 fsync({}) = 0", self.fd(5, "out/j")),
            ];
            t.extend(self.commit(0, format!("{{\"sha256\":\"{sha}\"}}").as_bytes()));
            t.push(format!("11 fsync({}) = 0", self.fd(6, "s.db-wal")));
            t.extend([
                format!(
                    "10 openat({}, \"{}\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0640) = {}",
                    self.fd(8, "out/j"),
                    x(b".job.json.part"),
                    self.fd(7, "out/j/.job.json.part")
                ),
                format!(
                    "10 write({}, \"{}\", 2) = 2",
                    self.fd(7, "out/j/.job.json.part"),
                    x(b"{}")
                ),
                format!("10 fsync({}) = 0", self.fd(7, "out/j/.job.json.part")),
                format!(
                    "10 renameat2({}, \"{}\", {}, \"{}\", RENAME_NOREPLACE) = 0",
                    self.fd(8, "out/j"),
                    x(b".job.json.part"),
                    self.fd(8, "out/j"),
                    x(b"job.json")
                ),
                format!("10 fsync({}) = 0", self.fd(8, "out/j")),
            ]);
            t.extend(self.commit(1, b"ID-1\x01\x02\x03\x04\x05\x06donedone: f.bin (5 bytes)"));
            t.push(format!("11 fsync({}) = 0", self.fd(6, "s.db-wal")));
            t
        }

        fn broken(&self, trace: &[String]) -> Vec<String> {
            let text = trace.join("\n");
            let jobs = [TracedJob {
                name: "j".into(),
                id: "ID-1".into(),
                state: "done".into(),
            }];
            Proof::new(
                &parse(&text),
                &self.p("out"),
                &self.p("s.db-wal"),
                Path::new("/"),
                &jobs,
            )
            .check()
            .broken
        }
    }

    /// The index of the first line containing `needle`.
    fn at(trace: &[String], needle: &str) -> usize {
        trace.iter().position(|l| l.contains(needle)).unwrap()
    }

    #[test]
    fn a_run_in_the_right_order_passes_with_plain_and_fd_relative_calls() {
        let scene = Scene::new();
        assert_eq!(scene.broken(&scene.good()), Vec::<String>::new());
    }

    #[test]
    fn a_call_printed_in_two_halves_counts_from_its_entry_to_its_exit() {
        let scene = Scene::new();
        let mut t = scene.good();
        // The data's fsync starts, another thread runs, then it returns:
        // still before the rename.
        let sync = at(&t, &format!("{}>) = 0", x(b".f.bin.part")));
        let head = t[sync].replace(") = 0", " <unfinished ...>");
        t[sync] = head;
        t.insert(sync + 1, "12 write(2<\\x2f>, \"\\x61\", 1) = 1".into());
        t.insert(sync + 2, "10 <... fsync resumed>) = 0".into());
        assert_eq!(scene.broken(&t), Vec::<String>::new());
        // Resumed only after the rename started: too late.
        let mut late = scene.good();
        let sync = at(&late, &format!("{}>) = 0", x(b".f.bin.part")));
        late[sync] = late[sync].replace(") = 0", " <unfinished ...>");
        let rename = at(&late, "10 rename(");
        late[rename] = late[rename].replacen("10 ", "12 ", 1);
        late.insert(rename + 1, "10 <... fsync resumed>) = 0".into());
        let broken = scene.broken(&late);
        assert!(
            broken.iter().any(|b| b.starts_with("j/f.bin: its data")),
            "{broken:?}"
        );
    }

    #[test]
    fn an_injected_a_failed_or_an_unfinished_sync_counts_for_nothing() {
        let scene = Scene::new();
        let needle = format!("{}>) = 0", x(b".f.bin.part"));
        for (how, line) in [
            ("injected", |l: &str| l.replace(") = 0", ") = 0 (INJECTED)")),
            ("failed", |l: &str| {
                l.replace(") = 0", ") = -1 EIO (Input/output error)")
            }),
            ("killed", |l: &str| l.replace(") = 0", " <unfinished ...>")),
        ] as [(&str, fn(&str) -> String); 3]
        {
            let mut t = scene.good();
            let sync = at(&t, &needle);
            t[sync] = line(&t[sync]);
            let broken = scene.broken(&t);
            assert!(
                broken.iter().any(|b| b.starts_with("j/f.bin: its data")),
                "{how}: {broken:?}"
            );
        }
    }

    #[test]
    fn sync_file_range_is_not_a_sync_but_syncfs_is() {
        let scene = Scene::new();
        let mut t = scene.good();
        let sync = at(&t, &format!("{}>) = 0", x(b".f.bin.part")));
        t[sync] = t[sync]
            .replace("fsync(", "sync_file_range(")
            .replace(">) = 0", ">, 0, 0, SYNC_FILE_RANGE_WRITE) = 0");
        assert!(
            scene
                .broken(&t)
                .iter()
                .any(|b| b.starts_with("j/f.bin: its data"))
        );
        let mut t = scene.good();
        let sync = at(&t, &format!("{}>) = 0", x(b"/out/j")));
        t[sync] = t[sync].replace("fsync(", "syncfs(");
        assert_eq!(scene.broken(&t), Vec::<String>::new());
    }

    #[test]
    fn a_folder_synced_after_the_commit_frame_is_written_is_too_late_even_before_the_wal_sync() {
        let scene = Scene::new();
        let mut t = scene.good();
        // Move the folder's sync between the commit frame's page and the
        // WAL's fsync: the kernel may write that frame back first.
        let sync = at(&t, &format!("{}>) = 0", x(b"/out/j")));
        let line = t.remove(sync);
        let wal_sync = at(&t, &format!("{}>) = 0", x(b"s.db-wal")));
        t.insert(wal_sync, line);
        let broken = scene.broken(&t);
        assert!(
            broken
                .iter()
                .any(|b| b.starts_with("j/f.bin: its folder was not fsynced")),
            "{broken:?}"
        );
    }

    #[test]
    fn a_receipt_renamed_before_the_result_is_durable_in_the_store_is_caught() {
        let scene = Scene::new();
        let mut t = scene.good();
        // The result's WAL sync only after job.json's rename.
        let first_wal_sync = at(&t, &format!("{}>) = 0", x(b"s.db-wal")));
        let line = t.remove(first_wal_sync);
        let rename = at(&t, "renameat2(");
        t.insert(rename + 1, line);
        let broken = scene.broken(&t);
        assert!(
            broken
                .iter()
                .any(|b| b.starts_with("j/job.json: job.json was renamed into place")),
            "{broken:?}"
        );
    }

    #[test]
    fn a_file_written_under_its_final_name_or_never_recorded_is_caught() {
        let scene = Scene::new();
        let mut t = scene.good();
        let rename = at(&t, "10 rename(");
        t.remove(rename);
        assert!(
            scene
                .broken(&t)
                .iter()
                .any(|b| b.contains("j/f.bin: never renamed into place"))
        );
        let t: Vec<String> = scene
            .good()
            .into_iter()
            .filter(|l| !l.contains("pwrite64"))
            .collect();
        let broken = scene.broken(&t);
        assert!(
            broken
                .iter()
                .any(|b| b.contains("no commit of the store records job j done")),
            "{broken:?}"
        );
    }

    #[test]
    fn the_new_folder_needs_its_parent_synced_after_it_was_made() {
        let scene = Scene::new();
        let mut t = scene.good();
        let mkdir = at(&t, "mkdir(");
        let sync = t.remove(mkdir + 1);
        t.insert(mkdir, sync);
        let broken = scene.broken(&t);
        assert!(
            broken
                .iter()
                .any(|b| b.contains("j/f.bin: the folder") && b.contains("was made")),
            "{broken:?}"
        );
    }
}

/// The window between the two final commits of a job: its outcome is
/// committed, its `job.json` not yet written. strace kills the daemon
/// (SIGKILL) at its first write into `.job.json.part`, exactly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_outcome_commit_and_job_json_is_repaired_at_restart_and_nothing_said_done_before()
 {
    if !has_tool("strace") {
        return cannot_run("the receipt-window kill", "strace is not installed");
    }
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("hook-runs");
    // The account's hook notes whether job.json said done when it ran.
    let hook = format!(
        "on_done = [\"sh\", \"-c\", \"if grep -q '\\\"state\\\": \\\"done\\\"' \\\"$DOCFETCH_RECEIPT\\\"; then echo receipt-done; else echo no-receipt; fi >> {}\"]\n",
        marks.display()
    );
    let accounts = sim.accounts_toml().replace(
        "[accounts.fresh-sim-plain]\n",
        &format!("[accounts.fresh-sim-plain]\n{hook}"),
    );
    let config = DaemonConfig::new(dir.path(), accounts);
    let config_path = config.write();
    std::fs::create_dir_all(config.requests()).unwrap();
    let request = json!({"account": "fresh-sim-plain", "operation": "sales_book", "name": "t-kill",
                         "params": {"_sim": {"pending": 0, "size": 50_000, "filename": "kill.bin"}}});
    drop_request(
        &config.requests(),
        "t-kill.json",
        &serde_json::to_vec(&request).unwrap(),
    );
    let job_dir = config.output().join("t-kill");
    let log_path = dir.path().join("daemon.log");

    // The first life, killed in the window.
    let mut command = Command::new("strace");
    command
        .args(["-f", "-o", "/dev/null", "-P"])
        .arg(job_dir.join(".job.json.part"))
        .args([
            "--trace=write,pwrite64,writev",
            "--inject=write,pwrite64,writev:signal=KILL",
        ])
        .arg(BIN)
        .arg("--config")
        .arg(&config_path)
        .arg("run");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut tracer = Daemon::spawn(command, log, "docfetch=info", &[]);
    tracer.wait(Duration::from_secs(60)).await;
    let log_text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log_text.contains("job done"),
        "the daemon got past the window:\n{log_text}"
    );

    // Frozen: the outcome is in the store, nothing says done.
    let store = Store::open(&config.store_url()).await.unwrap();
    let job = store.find("t-kill").await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "the store does not say done yet"
    );
    assert_eq!(
        job.settled(),
        Some(JobState::Done),
        "the outcome was committed"
    );
    let result = job.result.clone().expect("the settled result");
    assert_eq!(result.files.len(), 1);
    assert_eq!(
        job.summary_json()["result"],
        Value::Null,
        "the API shows no result yet"
    );
    assert_eq!(job.summary_json()["state"], "running");
    let names = crate::support::fs::names(&job_dir);
    assert!(names.contains(&"kill.bin".to_string()), "{names:?}");
    assert!(!names.contains(&"job.json".to_string()), "{names:?}");
    assert!(
        names.contains(&".job.json.part".to_string()),
        "killed while writing it: {names:?}"
    );
    assert_eq!(
        sha256_file(&job_dir.join("kill.bin")),
        result.files[0].sha256
    );
    let cli = Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .args(["jobs", "--json"])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let listed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        listed.contains("t-kill") && listed.contains("\"running\"") && !listed.contains("\"done\""),
        "the CLI says done before job.json exists: {listed}"
    );
    assert!(!marks.exists(), "no hook ran before job.json existed");
    let (orders, downloads) = (
        sim.fresh.orders(),
        sim.fresh
            .counters
            .downloads
            .load(std::sync::atomic::Ordering::SeqCst),
    );
    assert_eq!((orders, downloads), (1, 1));

    // The restart writes the receipt and commits done; the service is not
    // asked again, and the hook runs once, with job.json there.
    let mut daemon = Daemon::start(&config_path, &log_path, "docfetch=info");
    let done = wait_until(Duration::from_secs(60), "the job to be done", || async {
        let job = store.find("t-kill").await.ok()??;
        (job.state == JobState::Done).then_some(job)
    })
    .await;
    let runs = wait_until(Duration::from_secs(60), "the hook to run", || {
        // A line is whole once it ends (the shell creates the file first).
        let runs = std::fs::read_to_string(&marks)
            .ok()
            .filter(|r| r.ends_with('\n'));
        async move { runs }
    })
    .await;
    assert_eq!(daemon.terminate().await.code(), Some(0));
    assert_eq!(
        runs, "receipt-done\n",
        "the hook ran after job.json said done"
    );
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        runs,
        "and only once"
    );
    let receipt: Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(receipt["state"], "done");
    assert_eq!(
        receipt["files"][0]["sha256"],
        result.files[0].sha256.as_str()
    );
    assert_eq!(
        done.result,
        Some(result),
        "the result is the one settled before the kill"
    );
    assert_eq!(done.finished_at, job.finished_at, "and so is its end time");
    assert_eq!(
        crate::support::fs::names(&job_dir),
        ["job.json", "kill.bin"],
        "the half-written receipt was swept"
    );
    assert_eq!(sim.fresh.orders(), 1, "not ordered again");
    assert_eq!(
        sim.fresh
            .counters
            .downloads
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not downloaded again"
    );
    let events = store.events(&done.id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "done").count(),
        1,
        "{kinds:?}"
    );
    store.close().await.unwrap();
}
