//! docfetch orders slow, asynchronous documents from accounting and fiscal
//! services, waits for them and saves the finished files to disk.
//!
//! # Layout
//!
//! A request (a file dropped into the requests directory, `docfetch submit`,
//! or the HTTP API) becomes a [`job::Job`] row in the [`store`]. The
//! [`scheduler`] claims jobs whose next run time has come, leases them, and
//! asks the job's [`providers`] module for one step: order the document, poll
//! it, or download it. Every step returns what to do next (continue, wait
//! until, finished, failed) together with the provider's cursor, and the
//! scheduler persists both with a compare-and-set update, so a crash or a
//! restart resumes exactly where the job stopped.
//!
//! ```text
//!  requests/ ──inbox──▶ store (jobs, events) ◀──scheduler──▶ providers ──HTTP──▶ service
//!                            │                     │
//!                            └──── wake-ups ───────┘     download ──▶ output/NAME/…
//! ```
//!
//! Modules, leaves first. No file reaches itself again through the imports
//! of other modules (`scripts/check-module-graph` checks it); where two
//! folders use each other it is through different files: the providers read
//! their keys with [`config::keys`], and the settings hold a
//! [`schedule::spec`] while the running schedules read the settings.
//!
//! - [`units`], [`filename`]: durations and sizes as written in the config;
//!   file names from `Content-Disposition`, made safe.
//! - [`beneath`]: files below a configured folder, opened through its descriptor.
//! - [`http`]: the one place that builds HTTP clients; `Retry-After`, redaction.
//! - [`metrics`]: counters and histograms, recorded where things happen.
//! - [`job`]: job identity, states, request parsing, digests, retry policy.
//! - [`download`]: streamed, hashed, size-checked, fsynced, atomic file saves.
//! - [`durable`]: files made durable in batches (data syncs at once, renames, folder syncs).
//! - [`receipt`]: `job.json`, written last, meaning "this job is finished".
//! - [`providers`]: one module per service, all behind [`providers::Provider`].
//! - [`store`]: the durable queue (SQLite or PostgreSQL), compare-and-set
//!   transitions, and the read-only views the dashboard pages through.
//! - [`intake`]: a request checked against the configured accounts and
//!   hooks ([`intake::Rules`]) and turned into a new job.
//! - [`schedule`]: recurring jobs; [`schedule::spec`] is one parsed schedule.
//! - [`config`]: raw TOML/env settings turned into a validated
//!   [`config::Settings`]; [`config::keys`] reads keys and secrets.
//! - [`telemetry`]: the tracing subscriber (text or JSON), secrets kept out.
//! - [`scheduler`]: `step()` claims and runs due work; `run()` is the thin driver.
//! - [`inbox`]: the drop directory scanner; one bad file never stops a scan.
//! - [`hooks`]: the operator's commands and signed webhooks, run when jobs finish.
//! - [`commands`]: cancel and retry, shared by the CLI and the API.
//! - [`retention`]: finished jobs pruned after their configured age.
//! - [`api`]: the local HTTP API and `/metrics`, behind a token and a guard
//!   against web pages; [`api::shared`] is what the dashboard uses of it.
//! - [`dashboard`]: web pages on the API's listener: jobs, accounts, schedules.
//! - [`app`]: wiring and `run_until_stopped(shutdown)`.
//! - [`cli`]: the command line.
//! - [`sim`]: fake providers that follow the services' documents, for tests,
//!   the benchmark and `docfetch demo`.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod beneath;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod download;
pub mod durable;
pub mod filename;
pub mod hooks;
pub mod http;
pub mod inbox;
pub mod intake;
pub mod job;
pub mod metrics;
pub mod providers;
pub mod receipt;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod units;
