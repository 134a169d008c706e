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
//! - [`config`]: raw TOML/env settings turned into a validated [`config::Settings`].
//! - [`job`]: job identity, request validation, states and the retry policy.
//! - [`store`]: the durable queue (SQLite), with compare-and-set transitions.
//! - [`scheduler`]: `step()` claims and runs due work; `run()` is the thin driver.
//! - [`inbox`]: the drop directory scanner; one bad file never stops a scan.
//! - [`beneath`]: files below a configured folder, opened through its descriptor.
//! - [`download`]: streamed, hashed, size-checked, fsynced, atomic file saves.
//! - [`receipt`]: `job.json`, written last, meaning "this job is finished".
//! - [`providers`]: one module per service, all behind [`providers::Provider`].
//! - [`sim`]: fake providers that follow the services' documents, for tests,
//!   the benchmark and `docfetch demo`.
//! - [`hooks`]: the operator's commands and signed webhooks, run when jobs finish.
//! - [`commands`]: cancel and retry, shared by the CLI and the API.
//! - [`api`]: the local HTTP API, behind a token and a guard against web pages.
//! - [`dashboard`]: web pages on the API's listener: jobs, accounts, schedules.
//! - [`app`]: wiring and `run_until_stopped(shutdown)`.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod beneath;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod download;
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
