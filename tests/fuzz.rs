//! Property tests (proptest; `cargo fuzz` needs a nightly toolchain) for
//! every parser that reads untrusted text: request files, `Content-Disposition`
//! and file-name sanitizing, `Retry-After`, the config loader, durations and
//! sizes, schedule templates, the providers' request validation, each
//! provider's answer parsers (public, hidden, for these tests) and Diadoc's
//! protobuf answers, plus 1C:Fresh answers end to end through the hostile
//! stand-in.
//!
//! Properties: nothing panics; sanitized names are always safe; parse and
//! serialize round-trip where that means something; a provider's answer
//! means what its document says, in every shape it may come in; the text a
//! service puts into a job's error stays one short line.
//!
//! `DOCFETCH_FUZZ_CASES` (default 256) sets the cases per property and
//! `DOCFETCH_FUZZ_SEED` the seed (printed on every run) to replay a run:
//!
//! ```sh
//! DOCFETCH_FUZZ_CASES=100000 cargo test --release --test integration fuzz::
//! ```

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use docfetch::config::{Environment, Settings};
use docfetch::filename::{
    MAX_NAME_BYTES, RECEIPT_NAME, decode_header_name, from_content_disposition, sanitize,
};
use docfetch::job::request::{RequestFormat, parse};
use docfetch::job::{HookRef, JobRequest};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngSeed, TestRunner};
use serde_json::Value;

fn cases() -> u32 {
    std::env::var("DOCFETCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let seed = std::env::var("DOCFETCH_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("fuzz seed {seed} (replay with DOCFETCH_FUZZ_SEED={seed})");
        seed
    })
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(cases());
    config.rng_seed = RngSeed::Fixed(seed());
    // No regression files in the tree: a failure prints its minimal input
    // (turn it into a test) and the seed replays the run.
    config.failure_persistence = None;
    config
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Any JSON value, a few levels deep; `null`s only when `nulls`.
fn json_value(nulls: bool) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-zA-Z0-9 _./:-]{0,20}".prop_map(Value::from),
        Just(if nulls { Value::Null } else { Value::from(0) }),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object(nulls: bool) -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_ -]{0,12}", json_value(nulls), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A hook as a request gives it: a name, or a command (argv list).
fn hook_ref() -> impl Strategy<Value = HookRef> {
    prop_oneof![
        any::<String>().prop_map(HookRef::Named),
        prop::collection::vec(any::<String>(), 0..4).prop_map(HookRef::Command),
    ]
}

fn job_request(nulls: bool) -> impl Strategy<Value = JobRequest> {
    (
        any::<String>(),
        any::<String>(),
        json_object(nulls),
        proptest::option::of(any::<String>()),
        proptest::option::of(hook_ref()),
        proptest::option::of(hook_ref()),
        proptest::option::of(any::<String>()),
    )
        .prop_map(
            |(account, operation, params, name, on_done, on_failed, on_done_url)| JobRequest {
                account,
                operation,
                params,
                name,
                on_done,
                on_failed,
                on_done_url,
            },
        )
}

const GOOD_JSON: &str = r#"{ "account": "fresh-main",
  "operation": "tax_usn_calculator",
  "params": {"organization": {"inn": "783900281039", "kpp": ""}, "date": "2018-09-30T23:59:59"},
  "name": "usn-2018q3", "on_done": "import-usn", "on_failed": ["/bin/true"], "on_done_url": "https://example.org/x" }"#;

const GOOD_TOML: &str = "account = \"fresh-main\"\noperation = \"tax_usn_calculator\"\nname = \"usn\"\non_done = [\"/bin/true\"]\n[params]\ndate = \"2018-09-30T23:59:59\"\n[params.organization]\ninn = \"783900281039\"\nkpp = \"\"\n";

/// A known-good text with random bytes replaced, inserted or removed:
/// close enough to the grammar to reach deep into the parser.
fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8).prop_map(
        move |edits| {
            let mut bytes = base.as_bytes().to_vec();
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            bytes
        },
    )
}

/// `Content-Disposition` values built from the grammar's pieces, hostile
/// ones included.
fn disposition() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        Just("filename".to_string()),
        Just("filename*".to_string()),
        Just("FILENAME*".to_string()),
        Just("name".to_string()),
        "[a-z*]{0,9}",
    ];
    let value = prop_oneof![
        any::<String>()
            .prop_map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))),
        any::<String>(),
        "[^\"]{0,40}".prop_map(|s| format!("\"{s}\"")),
        (
            prop_oneof![
                Just("UTF-8"),
                Just("utf-8"),
                Just("iso-8859-1"),
                Just("koi8-r"),
                Just("")
            ],
            "[a-z]{0,2}",
            "(%[0-9A-Fa-f]{2}|%[0-9A-Za-z]{0,2}|[a-zA-Z0-9./\\\\])*",
        )
            .prop_map(|(c, l, v)| format!("{c}'{l}'{v}")),
        "(\\.\\./|/|\\\\|[a-zA-Z0-9]|%2F|%00){0,30}",
    ];
    (
        prop_oneof![
            Just("attachment".to_string()),
            Just("inline".to_string()),
            Just(String::new()),
            "[a-z]{0,8}",
        ],
        prop::collection::vec(
            (key, value, prop_oneof![Just(";"), Just("; "), Just(" ; ")]),
            0..5,
        ),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(kind, params, junk)| {
            let mut out = kind.as_bytes().to_vec();
            for (k, v, sep) in params {
                out.extend_from_slice(sep.as_bytes());
                out.extend_from_slice(k.as_bytes());
                out.push(b'=');
                out.extend_from_slice(v.as_bytes());
            }
            out.extend(junk);
            out
        })
}

/// Names a server might send: path pieces, dots, reserved names, control
/// characters, long runs of multi-byte characters.
fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(\\.\\./|\\.\\.\\\\|/|\\\\|\\.|\\x00|\\x1f| |[a-zA-Z0-9]|Ж|😀|:|\\*|\\?){0,60}",
        "(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9]|con|job|JOB)(\\.[a-z]{0,5}){0,2}",
        ("[a-zA-ZЖ ]{150,400}", "(\\.[a-z]{1,20})?", "[. ]{0,3}")
            .prop_map(|(stem, ext, tail)| format!("{stem}{ext}{tail}")),
        ("(Ж|😀|a){100,300}", "[ .]{0,3}", "(\\.[a-z]{1,5})?")
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// What every sanitized name must be: one safe path component.
fn assert_safe(name: &str, raw: &str) {
    assert!(!name.is_empty(), "{raw:?} gave an empty name");
    assert!(
        name.len() <= MAX_NAME_BYTES,
        "{raw:?} gave {} bytes",
        name.len()
    );
    assert!(
        !name.contains(['/', '\\', '\0']),
        "{raw:?} gave a path: {name:?}"
    );
    assert!(!name.chars().any(char::is_control), "{raw:?} -> {name:?}");
    assert!(name != "." && name != "..", "{raw:?} -> {name:?}");
    assert!(
        !name.starts_with('.'),
        "{raw:?} gave a hidden name {name:?}"
    );
    assert!(
        !name.eq_ignore_ascii_case(RECEIPT_NAME),
        "{raw:?} would replace the receipt"
    );
    let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    assert!(!reserved, "{raw:?} gave a device name {name:?}");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_parsing_never_panics_on_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let _ = parse(&bytes, RequestFormat::Json);
        let _ = parse(&bytes, RequestFormat::Toml);
    }

    #[test]
    fn request_parsing_never_panics_on_near_valid_requests(
        json in mutated(GOOD_JSON),
        toml in mutated(GOOD_TOML),
    ) {
        if let Err(e) = parse(&json, RequestFormat::Json) {
            prop_assert!(!e.to_string().is_empty());
        }
        if let Err(e) = parse(&toml, RequestFormat::Toml) {
            // TOML errors point at a line and column inside the text.
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn requests_round_trip_through_json(request in job_request(true)) {
        let bytes = serde_json::to_vec(&request).unwrap();
        prop_assert_eq!(parse(&bytes, RequestFormat::Json).unwrap(), request);
    }

    #[test]
    fn requests_round_trip_through_toml(request in job_request(false)) {
        // TOML has no null; everything else the request holds survives.
        let text = toml::to_string(&request);
        prop_assume!(text.is_ok());
        let text = text.unwrap();
        let parsed = parse(text.as_bytes(), RequestFormat::Toml);
        prop_assert!(parsed.is_ok(), "{text}\n{parsed:?}");
        prop_assert_eq!(parsed.unwrap(), request);
    }

    #[test]
    fn job_names_are_accepted_exactly_when_they_match_the_documented_pattern(
        name in prop_oneof![any::<String>(), "[A-Za-z0-9._-]{0,102}", "\\.{1,3}"],
    ) {
        let expected = (1..=100).contains(&name.len())
            && name != "." && name != ".."
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        prop_assert_eq!(docfetch::job::is_valid_name(&name), expected);
    }

    #[test]
    fn content_disposition_parsing_never_panics_and_its_names_sanitize_safely(
        value in prop_oneof![disposition(), prop::collection::vec(any::<u8>(), 0..300)],
    ) {
        let raw = from_content_disposition(&value);
        if let Some(raw) = &raw {
            prop_assert!(!raw.trim().is_empty());
        }
        let name = sanitize(raw.as_deref().unwrap_or(""), "op.bin");
        assert_safe(&name, &String::from_utf8_lossy(&value));
        let hinted = decode_header_name(&value);
        let name = sanitize(hinted.as_deref().unwrap_or(""), "op.bin");
        assert_safe(&name, &String::from_utf8_lossy(&value));
    }

    #[test]
    fn sanitized_names_are_always_safe(raw in hostile_name(), fallback in hostile_name()) {
        assert_safe(&sanitize(&raw, &fallback), &raw);
        assert_safe(&sanitize(&raw, ""), &raw);
    }

    #[test]
    fn utf8_names_round_trip_through_filename_star(name in any::<String>()) {
        prop_assume!(!name.trim().is_empty());
        let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
        let header = format!("attachment; filename=\"fallback.bin\"; filename*=UTF-8''{encoded}");
        prop_assert_eq!(from_content_disposition(header.as_bytes()), Some(name));
    }

    #[test]
    fn quoted_ascii_names_round_trip_through_filename(name in "[ -~]{1,80}") {
        prop_assume!(!name.trim().is_empty());
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        let header = format!("attachment; filename=\"{quoted}\"");
        prop_assert_eq!(from_content_disposition(header.as_bytes()), Some(name));
    }

    #[test]
    fn retry_after_never_panics_and_reads_seconds_and_dates(
        text in prop_oneof![any::<String>(), "[0-9 ]{0,30}", "[A-Za-z0-9 ,:-]{0,40}"],
        secs in any::<u32>(),
        epoch in 0u64..4_000_000_000,
        ahead in 0u64..10_000_000,
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch);
        let _ = docfetch::http::parse_retry_after(&text, now);
        prop_assert_eq!(
            docfetch::http::parse_retry_after(&format!(" {secs} "), now),
            Some(Duration::from_secs(u64::from(secs)))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        prop_assert_eq!(docfetch::http::parse_retry_after(&later, now), Some(Duration::from_secs(ahead)));
        let earlier = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(epoch.saturating_sub(ahead)));
        prop_assert_eq!(docfetch::http::parse_retry_after(&earlier, now), Some(Duration::ZERO));
    }

    #[test]
    fn durations_and_sizes_never_panic_and_round_trip(
        text in prop_oneof![any::<String>(), "[0-9.]{0,12}[a-zA-Z ]{0,6}([0-9.]{0,6}[a-z]{0,4}){0,3}"],
        secs in 0u64..100_000_000,
        millis in 0u64..1000,
    ) {
        let _ = docfetch::units::parse_duration(&text);
        let _ = docfetch::units::parse_size(&text);
        let whole = Duration::from_secs(secs);
        prop_assert_eq!(docfetch::units::parse_duration(&docfetch::units::format_duration(whole)), Ok(whole));
        let short = Duration::from_millis(millis);
        prop_assert_eq!(docfetch::units::parse_duration(&docfetch::units::format_duration(short)), Ok(short));
    }

    #[test]
    fn the_config_loader_never_panics_on_any_text(text in any::<String>()) {
        let _ = Settings::from_toml(&text, &Environment::default());
    }

    #[test]
    fn the_config_loader_never_panics_on_plausible_configs(
        table in prop::collection::btree_map(
            prop_oneof![
                Just("store".to_string()), Just("paths".to_string()), Just("scheduler".to_string()),
                Just("inbox".to_string()), Just("http".to_string()), Just("api".to_string()),
                Just("log".to_string()), Just("hooks".to_string()), Just("retention".to_string()),
                Just("accounts".to_string()), Just("schedules".to_string()), any::<String>(),
            ],
            prop::collection::btree_map(
                prop_oneof![
                    Just("workers".to_string()), Just("url".to_string()), Just("deadline".to_string()),
                    Just("max_file_size".to_string()), Just("timeout".to_string()),
                    Just("listen".to_string()), Just("level".to_string()), Just("provider".to_string()),
                    Just("fresh".to_string()), "[a-z_.]{1,12}", any::<String>(),
                ],
                json_value(false),
                0..5,
            ),
            0..6,
        ),
        overrides in prop::collection::vec(("DOCFETCH__[A-Z_]{1,12}__[A-Z_]{1,12}", any::<String>()), 0..3),
    ) {
        let value: Value = serde_json::to_value(&table).unwrap();
        let text = toml::to_string(&value);
        prop_assume!(text.is_ok());
        let env = Environment { vars: overrides.into_iter().collect() };
        if let Ok(settings) = Settings::from_toml(&text.unwrap(), &env) {
            prop_assert!(settings.scheduler.workers >= 1);
        }
    }

    #[test]
    fn schedule_templates_never_panic(text in prop_oneof![
        any::<String>(),
        "(\\{\\{|\\}\\}|[a-z_.]{0,12}| ?\\| ?|%[a-zA-Z%]|[ -~]){0,12}",
    ]) {
        if let Ok(template) = docfetch::schedule::template::Template::parse(&text) {
            let at = chrono::NaiveDate::from_ymd_opt(2026, 2, 28).unwrap().and_hms_opt(23, 59, 59).unwrap();
            let _ = template.render(at, "fuzz");
        }
    }

    #[test]
    fn provider_request_validation_never_panics(
        operation in prop_oneof![
            any::<String>(),
            Just("report".to_string()), Just("drafts-build".to_string()),
            Just("tax_usn_calculator".to_string()), "[a-z_:-]{0,24}",
        ],
        params in json_value(true),
    ) {
        use docfetch::providers::{atol, fresh, kontur_diadoc, kontur_extern, ofd};
        let _ = fresh::validate_request(&operation, &params);
        let _ = ofd::validate_request(&operation, &params);
        let _ = atol::validate_request(&operation, &params);
        let _ = kontur_extern::validate_request(&operation, &params);
        let _ = kontur_diadoc::validate_request(&operation, &params);
    }

    #[test]
    fn diadoc_protobuf_answers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        use prost::Message;
        let _ = docfetch::providers::kontur_diadoc::DocumentProtocol::decode(bytes.as_slice());
        let _ = docfetch::providers::kontur_diadoc::DocumentZipGenerationResult::decode(bytes.as_slice());
    }
}

// ---------------------------------------------------------------------------
// 1C:Fresh answers end to end
// ---------------------------------------------------------------------------

/// A status answer: a mutated seed answer, any JSON, or any bytes, under
/// any plausible status.
fn fresh_answer() -> impl Strategy<Value = (u16, Vec<u8>)> {
    let seed = r#"{"general":{"response":10200,"error":false,"message":""},"result":{"storage":"files","id":"ID"}}"#;
    let body = prop_oneof![
        mutated(seed),
        (
            prop_oneof![
                Just(10200i64), Just(10240), Just(10202), Just(10400), Just(10404),
                Just(10500), any::<i64>(),
            ],
            any::<String>(),
            prop_oneof![Just(Value::Null), json_value(true)],
        )
            .prop_map(|(code, message, id)| {
                serde_json::json!({"general": {"response": code, "message": message}, "result": {"storage": "files", "id": id}})
                    .to_string()
                    .into_bytes()
            }),
        json_value(true).prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..200),
    ];
    let status = prop_oneof![
        Just(200u16),
        Just(201),
        Just(202),
        Just(204),
        Just(302),
        Just(400),
        Just(401),
        Just(404),
        Just(406),
        Just(410),
        Just(429),
        Just(500),
        Just(503),
    ];
    (status, body)
}

/// Random status answers to 1C polls: every job ends (done, failed or timed
/// out at its deadline), nothing panics, errors stay short and printable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_1c_answers_always_end_their_job_with_a_readable_reason() {
    use crate::support::hostile::{Answer, Hostile, Payload};
    let count = (cases() / 8).clamp(8, 2000);
    let mut runner = TestRunner::new(config());
    let hostile = Hostile::start().await;
    let mut bodies = Vec::new();
    for i in 0..count {
        let (status, body) = fresh_answer().new_tree(&mut runner).unwrap().current();
        let id = format!("f{i}");
        let body = String::from_utf8_lossy(&body)
            .replace("\"ID\"", &format!("\"{id}\""))
            .into_bytes();
        hostile.on_poll(
            &id,
            Answer::status(status)
                .header("content-type", b"application/json")
                .header("location", b"/a/bs/1/hs/dt/nowhere")
                .body(Payload::Bytes(body.clone())),
        );
        hostile.on_file(
            &id,
            crate::support::hostile::Answer::file(b"attachment; filename=\"ok.bin\"", b"ok"),
        );
        bodies.push((id, status, body));
    }
    let app = crate::helpers::TestApp::spawn_with(
        docfetch::sim::SimConfig::default(),
        &hostile.account("hostile", "plain"),
        &[("DOCFETCH__SCHEDULER__DEADLINE", "4s")],
    )
    .await;
    for (id, _, _) in &bodies {
        app.submit(serde_json::json!({"account": "hostile", "operation": id, "name": id}))
            .await;
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for (id, status, body) in &bodies {
        let job = app.run_until_finished(id).await;
        *outcomes.entry(job.state.to_string()).or_insert(0) += 1;
        if let Some(error) = &job.last_error {
            assert!(
                error.chars().count() <= 600 && !error.contains('\n'),
                "{id} (HTTP {status}, {:?}): {error}",
                String::from_utf8_lossy(body)
            );
        }
    }
    println!("{count} random 1C answers: {outcomes:?}");
}

/// Found while reading `sanitize` for these properties
/// (not a safety problem, so not part of that property): a name cut to 200
/// bytes may end in a space or a dot again, which `sanitize` trims before
/// cutting because Windows shares refuse such names. Re-sanitizing changes
/// the name, too.
#[test]
fn long_names_cut_to_200_bytes_never_end_in_a_space_or_a_dot() {
    for raw in [
        format!("{} b", "a".repeat(199)),
        format!("{}.b", "a".repeat(199)),
    ] {
        let name = sanitize(&raw, "op.bin");
        assert!(!name.ends_with([' ', '.']), "{raw:?} -> {name:?}");
        assert_eq!(sanitize(&name, "op.bin"), name, "sanitize is idempotent");
    }
}

/// Regression: found by `sanitized_names_are_always_safe` with 20,000
/// cases (fixed in 9b40509). Leading dots were trimmed before the spaces
/// around them, so a dot behind a space survived: `. .x` became `.x`, and
/// `. .job.json.part` the receipt's temporary name, which `receipt::write`
/// sweeps as a stale part.
#[test]
fn names_never_start_with_a_dot_even_after_spaces() {
    for raw in [". .x", " . .hidden", ". .job.json.part", "a/ . .?"] {
        let name = sanitize(raw, "op.bin");
        assert!(!name.starts_with('.'), "{raw:?} -> {name:?}");
    }
}

// ---------------------------------------------------------------------------
// The providers' answer parsers, one by one
// ---------------------------------------------------------------------------
//
// Each parser gets random bytes, random JSON, and mutations of a valid
// answer shaped by the provider's own document (`/work/shared/seeds/`),
// and where the answer has a meaning that can be checked, that meaning.

use docfetch::providers::{atol, fresh, kontur_diadoc, kontur_extern, ofd};

/// Seed 000's ordering answer (a `jobs` id).
const FRESH_SEED: &str = r#"{"general":{"response":10200,"error":false,"message":""},"result":{"storage":"jobs","id":"47e7efd6-ddb6-11e7-819b-0050568925e0"}}"#;

/// Seed 001, section 2: the list wrapped in `Data`.
const OFD_WRAPPED_SEED: &str = r#"{"Status":"Success","Data":{"OfdAgreementId":"56ddf007-76d7-4157-8e85-2d9fe0704cb4","OfdAgreementLimit":500000,"ConsumedLimit":0,
  "List":[{"Id":"a0e5354a-709c-41de-ba48-63e7b7e05ee7","CDateUtc":"2021-10-25T08:13:41","ReportType":"CloseShiftReport",
  "DateFrom":"2021-10-25T00:00:00","DateTo":"2021-10-25T11:12:34","Status":"Processing","Name":"Отчёт по сменам",
  "FileFormat":"Xlsx","AssumptiveCompleteTime":"2021-10-25T08:14:41",
  "DownloadUrl":"/api/customer/reports/a0e5354a-709c-41de-ba48-63e7b7e05ee7?OfdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4"}],
  "TotalCount":1},"Elapsed":"00:00:25.3858651"}"#;

/// Seed 001, section 3.2: the bare list, with its unquoted e-mail and its
/// `" TotalCount "` key.
const OFD_BARE_SEED: &str = r#"{
  "OfdAgreementLimit": 500000,
  "ConsumedLimit": 0,
  "List": [
    {
      "Id": "1577b8bc-a384-4f1d-ad00-b0c2440601ef",
      "CDateUtc": "2018-07-12T12:28:06",
      "ReportType": "CloseShiftReport",
      "DateFrom": "2018-07-12T00:00:00",
      "DateTo": "2018-08-12T23:59:59",
      "Status": "Done",
      "AccountEmail": ofdtester1@ofd.ru
    }
    ],
    " TotalCount ": 9
}"#;

/// An Extern error document as seed 002 names its members (409, a
/// concurrent task; the shape the unit tests read).
const EXTERN_ERROR_SEED: &str = r#"{"id":"urn:error:externapi:concurrentApiTaskActive","status-code":409,"message":"There is an active concurrent operation","trace-id":"[T-587660f5(-)]","context":{"concurrent-task":{"id":"5b35fae5-e429-43c5-befe-6a4aa3cfceda","task-type":"urn:task-type:send"}}}"#;

/// A finished build task as seed 002 describes it (`task-state` `succeed`,
/// `draft-ids` and `error-drafts-builder-documents`; the seed has no sample).
const EXTERN_TASK_SEED: &str = r#"{"id":"4b5b5b3c-1f1e-4c49-8a3e-2f0a9d2b7c11","task-type":"urn:task-type:build","task-state":"succeed","task-result":{"draft-ids":["a1b2c3d4-0000-4000-8000-000000000001"],"error-drafts-builder-documents":[{"document-id":"6f9619ff-8b86-d011-b42d-00cf4fc964ff","error-message":"Файл не прошёл проверку"}]}}"#;

/// Seed 003's list page (its missing comma between `_links` members fixed).
const ATOL_PAGE_SEED: &str = r#"{"_links":{"next":{"href":"https://online.atol.ru/api/kkt/v1/cash-registers?offset=101&limit=1","rel":"get-cash-registers","action":"GET"},
  "prev":{"href":"https://online.atol.ru/api/kkt/v1/cash-registers?offset=99&limit=1","rel":"get-cash-registers","action":"GET"}},
  "_embedded":[{"_links":{"self":{"href":"https://online.atol.ru/api/kkt/v1/cash-registers/00107703864827","rel":"get-cash-register","action":"GET"}},
  "data":{"serialNumber":"00107703864827","serialNumber":"00107702504819","registrationNumber":"000000003027865","signedDocuments":213350,
  "fiscalStoragePercentageUse":85.34,"isShiftOpened":true,"networkErrorCode":0}}],
  "total":345,"limit":1,"offset":100}"#;

/// Seed 003's validation problem (table 6).
const ATOL_PROBLEM_SEED: &str = r#"{"type":"https://tools.ietf.org/html/rfc7231#section-6.5.1","title":"Ошибка валидации","status":400,"traceId":"|a1b2.","errors":{"limit":["The field limit must be between 1 and 100."],"$.pass":["Required"]}}"#;

/// Seed 003's `gettoken` answer.
const ATOL_TOKEN_SEED: &str =
    r#"{"token":"8e2bc6b5d8d4","issued":"2020-03-31T17:25:06.0289998+03:00","expiresIn":1440}"#;

/// Diadoc's `GenerateDocumentZip` answer in JSON (not in seed 004, which
/// covers the protocol; the shape the unit tests read).
const DIADOC_ZIP_SEED: &str = r#"{"ZipFileNameOnShelf":"DocumentZip/1/d.zip"}"#;

/// A body for a parser: the seed mutated, any JSON, any bytes.
fn answer_bytes(seed: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        mutated(seed),
        json_value(true).prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// What a hostile or verbose service may put in a text field: line breaks,
/// tabs, and far more than a line.
fn service_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Zя ]{0,30}(\n|\r\n|\r|\t|\u{2028}|\u{85})[a-zA-Zя ]{0,30}",
        // Repeated rather than drawn character by character: as long, and
        // fast enough for thousands of cases.
        ("[a-zя \n]{10,30}", 30usize..150).prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// A short text that reads the same flattened: no leading, trailing or
/// repeated whitespace and no line break.
fn plain_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9Ёёя.:/_-]{1,20}( [a-zA-Z0-9Ёёя.:/_-]{1,20}){0,4}"
}

/// One line of at most `max` characters: what every error text must be.
fn assert_one_line(text: &str, max: usize, input: &dyn std::fmt::Debug) {
    assert!(
        !text.contains([
            '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}'
        ]),
        "more than one line from {input:?}: {text:?}"
    );
    let chars = text.chars().count();
    assert!(
        chars <= max,
        "{chars} characters (> {max}) from {input:?}: {}…",
        text.chars().take(200).collect::<String>()
    );
}

/// Reports for an OFD list: a few of the fields the seed prints.
fn ofd_reports() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(
        (
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            prop_oneof![
                Just("Todo"),
                Just("Processing"),
                Just("Done"),
                Just("Error"),
                Just("Deleted")
            ],
            proptest::option::of(plain_text()),
            (
                2000i32..2100,
                1u32..13,
                1u32..29,
                0u32..24,
                0u32..60,
                0u32..60,
            ),
        )
            .prop_map(|(id, status, name, (y, mo, d, h, mi, s))| {
                let at = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
                let mut report = serde_json::json!({
                    "Id": id, "Status": status, "ReportType": "CloseShiftReport",
                    "CDateUtc": at, "DateFrom": at, "DateTo": at,
                    "AssumptiveCompleteTime": at,
                    "DownloadUrl": format!("/api/customer/reports/{id}"),
                });
                if let Some(name) = name {
                    report["Name"] = Value::from(name);
                }
                report
            }),
        0..6,
    )
}

/// A bare word as the OFD seed prints `ofdtester1@ofd.ru`: no quotes, and
/// not a JSON literal or number.
fn bare_word() -> impl Strategy<Value = String> {
    "[a-zA-Z@][a-zA-Z0-9@._+:/-]{0,20}".prop_filter("a JSON literal", |w| {
        !matches!(w.as_str(), "true" | "false" | "null")
    })
}

/// A `read_page` answer with a long or odd text where the parser quotes
/// what it found.
fn atol_odd_page() -> impl Strategy<Value = Value> {
    (service_text(), json_value(true), 0u8..4).prop_map(|(text, other, at)| match at {
        0 => serde_json::json!({"total": text}),
        1 => serde_json::json!({"_embedded": text}),
        2 => serde_json::json!({"_embedded": [{"data": text}]}),
        _ => serde_json::json!({"_embedded": other, "total": other, "_links": {"next": other}}),
    })
}

proptest! {
    #![proptest_config(config())]

    // --- 1C:Fresh: `fresh::interpret` ---

    #[test]
    fn fresh_answers_never_panic_and_errors_stay_one_short_line(
        body in prop_oneof![
            answer_bytes(FRESH_SEED),
            (
                prop_oneof![
                    Just(10200i64), Just(10240), Just(10202), Just(10400), Just(10404),
                    Just(10500), any::<i64>(),
                ],
                service_text(),
                prop_oneof![Just(Value::Null), json_value(true), service_text().prop_map(Value::from)],
            )
                .prop_map(|(code, message, id)| {
                    serde_json::json!({"general": {"response": code, "message": message}, "result": {"storage": "files", "id": id}})
                        .to_string()
                        .into_bytes()
                }),
        ],
    ) {
        if let Err(e) = fresh::interpret(&body, "polling") {
            assert_one_line(&e.message, 600, &String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn fresh_return_codes_read_the_same_as_numbers_and_as_text(
        code in prop_oneof![
            Just(10200i64), Just(10240), Just(10202), Just(10400), Just(10404), Just(10500),
        ],
        id in plain_text(),
        message in plain_text(),
    ) {
        let answer = |response: Value| {
            serde_json::json!({"general": {"response": response, "error": false, "message": message},
                               "result": {"storage": "files", "id": id}})
            .to_string()
        };
        let as_number = fresh::interpret(answer(Value::from(code)).as_bytes(), "polling");
        let as_text = fresh::interpret(answer(Value::from(format!(" {code} "))).as_bytes(), "polling");
        prop_assert_eq!(&as_number, &as_text);
        match (code, as_number) {
            (10200, Ok(fresh::Answer::Ready { id: got, warning: None })) => prop_assert_eq!(got, id),
            (10240, Ok(fresh::Answer::Ready { id: got, warning: Some(w) })) => {
                prop_assert_eq!(got, id);
                prop_assert_eq!(w, message);
            }
            (10202, Ok(fresh::Answer::Pending)) => {}
            (10400 | 10404 | 10500, Err(e)) => {
                // The service's reason reaches the user, with its code.
                prop_assert!(e.message.contains(&message) && e.message.contains(&code.to_string()), "{}", e.message);
            }
            (code, other) => prop_assert!(false, "{code} read as {other:?}"),
        }
    }

    // --- OFD.ru: `ofd::parse_list`, `parse_lenient`, `When::parse` ---

    #[test]
    fn ofd_lists_never_panic_and_errors_stay_one_short_line(
        body in prop_oneof![
            answer_bytes(OFD_WRAPPED_SEED),
            answer_bytes(OFD_BARE_SEED),
            service_text().prop_map(String::into_bytes),
        ],
    ) {
        match ofd::parse_list(&body) {
            Ok(list) => prop_assert!(list.reports.iter().all(|r| !r.id.trim().is_empty())),
            Err(e) => assert_one_line(&e, 300, &String::from_utf8_lossy(&body)),
        }
        let _ = ofd::parse_lenient(&body);
    }

    #[test]
    fn ofd_lists_read_the_same_wrapped_and_bare(
        reports in ofd_reports(),
        agreement in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        email in bare_word(),
    ) {
        let list = Value::Array(reports.clone());
        let wrapped = serde_json::json!({
            "Status": "Success",
            "Data": {"OfdAgreementId": agreement, "OfdAgreementLimit": 500000, "ConsumedLimit": 0,
                     "List": list, "TotalCount": reports.len()},
            "Elapsed": "00:00:25.3858651",
        })
        .to_string();
        // The bare shape as seed 001 prints it: `" TotalCount "` with
        // spaces and an unquoted e-mail, pretty-printed.
        let bare = serde_json::to_string_pretty(&serde_json::json!({
            "OfdAgreementId": agreement, "OfdAgreementLimit": 500000, "ConsumedLimit": 0,
            "List": list, " TotalCount ": reports.len(), "AccountEmail": "@@EMAIL@@",
        }))
        .unwrap()
        .replace("\"@@EMAIL@@\"", &email);
        let from_wrapped = ofd::parse_list(wrapped.as_bytes());
        let from_bare = ofd::parse_list(bare.as_bytes());
        prop_assert!(from_wrapped.is_ok(), "{wrapped}\n{from_wrapped:?}");
        prop_assert_eq!(&from_wrapped, &from_bare, "{}", bare);
        let list = from_wrapped.unwrap();
        prop_assert_eq!(list.agreement_id.as_deref(), Some(agreement.as_str()));
        let ids: Vec<&str> = list.reports.iter().map(|r| r.id.as_str()).collect();
        let expected: Vec<&str> = reports.iter().filter_map(|r| r["Id"].as_str()).collect();
        prop_assert_eq!(ids, expected);
    }

    #[test]
    fn ofd_bare_words_are_read_as_the_strings_they_spell(
        members in prop::collection::btree_map(
            "[a-zA-Z_][a-zA-Z0-9_ ]{0,12}",
            prop_oneof![
                json_value(true).prop_map(|v| (v.to_string(), v)),
                bare_word().prop_map(|w| (w.clone(), Value::from(w))),
                prop::collection::vec(bare_word(), 1..4).prop_map(|words| {
                    (format!("[{}]", words.join(", ")), Value::from(words))
                }),
            ],
            0..6,
        ),
        newlines in any::<bool>(),
    ) {
        let separator = if newlines { ",\n  " } else { ", " };
        let text = format!(
            "{{{}}}",
            members
                .iter()
                .map(|(k, (written, _))| format!("{}: {written}", Value::from(k.as_str())))
                .collect::<Vec<_>>()
                .join(separator)
        );
        let expected: serde_json::Map<String, Value> =
            members.into_iter().map(|(k, (_, v))| (k, v)).collect();
        prop_assert_eq!(ofd::parse_lenient(text.as_bytes()), Some(Value::Object(expected)), "{}", text);
    }

    #[test]
    fn ofd_dates_never_panic_and_read_back_what_was_written(
        text in prop_oneof![any::<String>(), "[0-9T:+.Z -]{0,30}"],
        secs in 0i64..4_102_444_800,
        millis in 0u32..1000,
        offset_minutes in -14 * 60i32..=14 * 60,
    ) {
        use chrono::Timelike;
        let _ = ofd::When::parse(&text);
        let utc = chrono::DateTime::from_timestamp(secs, millis * 1_000_000).unwrap();
        let local = utc.naive_utc();
        for written in [
            local.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
            format!(" {} ", local.format("%Y-%m-%d %H:%M:%S%.f")),
        ] {
            prop_assert_eq!(ofd::When::parse(&written), Some(ofd::When::Local(local)), "{}", written);
        }
        let whole = local.with_nanosecond(0).unwrap();
        prop_assert_eq!(
            ofd::When::parse(&whole.format("%Y-%m-%dT%H:%M:%S").to_string()),
            Some(ofd::When::Local(whole))
        );
        let zone = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
        let zoned = utc.with_timezone(&zone);
        for written in [
            zoned.to_rfc3339(),
            zoned.format("%Y-%m-%dT%H:%M:%S%.3f%z").to_string(),
        ] {
            match ofd::When::parse(&written) {
                Some(ofd::When::Zoned(t)) => {
                    prop_assert_eq!(t, zoned, "{}", written);
                    prop_assert_eq!(t.offset(), zoned.offset(), "{}", written);
                }
                other => prop_assert!(false, "{written} read as {other:?}"),
            }
        }
    }

    // --- Kontur.Extern: `ApiError::parse`, `Task::parse`,
    // `read_build_result`, `list_items`, `find_document`, `find_file` ---

    #[test]
    fn extern_error_documents_never_panic_and_describe_one_short_line(
        body in prop_oneof![
            answer_bytes(EXTERN_ERROR_SEED),
            (service_text(), service_text(), service_text(), json_value(true)).prop_map(
                |(id, message, trace, context)| {
                    serde_json::json!({"id": id, "message": message, "trace-id": trace, "context": context})
                        .to_string()
                        .into_bytes()
                }
            ),
        ],
    ) {
        if let Some(error) = kontur_extern::ApiError::parse(&body) {
            let text = error.describe();
            prop_assert!(!text.is_empty());
            assert_one_line(&text, 1000, &String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn extern_error_documents_keep_their_id_message_and_trace(
        id in plain_text(),
        message in plain_text(),
        trace in plain_text(),
        older in any::<bool>(),
    ) {
        // Older answers call the trace `track-id`.
        let trace_key = if older { "track-id" } else { "trace-id" };
        let body = serde_json::json!({"id": format!(" {id}\n"), "status-code": 409, "message": message, trace_key: trace});
        let error = kontur_extern::ApiError::parse(body.to_string().as_bytes());
        prop_assert_eq!(
            error.map(|e| e.describe()),
            Some(format!("{id}: {message} (trace-id {trace})"))
        );
    }

    #[test]
    fn extern_tasks_never_panic_and_read_their_state(
        value in prop_oneof![
            answer_bytes(EXTERN_TASK_SEED).prop_map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null)),
            json_value(true),
        ],
        state in "running|succeed|failed|[a-zA-Z]{0,10}",
        padded in "[ \t]{0,2}",
    ) {
        let task = kontur_extern::Task::parse(&value);
        prop_assert_eq!(task.state.trim(), task.state.as_str());
        let _ = kontur_extern::read_build_result(&value);
        let _ = kontur_extern::read_build_result(&task.result);
        if let Some(error) = &task.error {
            assert_one_line(&error.describe(), 1000, &value);
        }
        // The state is read whatever its case and padding.
        let written = if state.len() % 2 == 0 { state.to_uppercase() } else { state.clone() };
        let mut seed: Value = serde_json::from_str(EXTERN_TASK_SEED).unwrap();
        seed["task-state"] = Value::from(format!("{padded}{written}{padded}"));
        prop_assert_eq!(kontur_extern::Task::parse(&seed).state, state.to_lowercase());
    }

    #[test]
    fn extern_build_results_read_the_same_as_an_array_and_as_a_map(
        errors in prop::collection::btree_map("[0-9a-f-]{1,36}", any::<String>(), 0..6),
        drafts in prop::collection::vec(prop_oneof![
            "[0-9a-f-]{1,36}".prop_map(Value::from),
            json_value(true),
        ], 0..5),
    ) {
        let as_array: Vec<Value> = errors
            .iter()
            .map(|(id, message)| serde_json::json!({"document-id": id, "error-message": message}))
            .collect();
        let (drafts_a, from_array) = kontur_extern::read_build_result(&serde_json::json!({
            "draft-ids": drafts, "error-drafts-builder-documents": as_array,
        }));
        let (drafts_m, from_map) = kontur_extern::read_build_result(&serde_json::json!({
            "draft-ids": drafts, "error-drafts-builder-documents": errors,
        }));
        // Only the strings are draft ids, in their order.
        let strings: Vec<String> = drafts.iter().filter_map(|d| d.as_str().map(str::to_string)).collect();
        prop_assert_eq!(&drafts_a, &strings);
        prop_assert_eq!(&drafts_m, &strings);
        let pairs = |list: Vec<kontur_extern::DocumentError>| {
            let mut pairs: Vec<(String, String)> = list.into_iter().map(|e| (e.document_id, e.message)).collect();
            pairs.sort();
            pairs
        };
        let expected: Vec<(String, String)> = errors.into_iter().collect();
        prop_assert_eq!(pairs(from_array), expected.clone());
        prop_assert_eq!(pairs(from_map), expected);
    }

    #[test]
    fn extern_lists_read_the_same_bare_and_wrapped_and_never_adopt_a_recorded_id(
        value in prop_oneof![json_value(true), answer_bytes(EXTERN_TASK_SEED).prop_map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))],
        items in prop::collection::vec(
            (
                any::<bool>(),
                prop_oneof![Just("b1"), Just("B1"), Just("b2")],
                prop_oneof![Just(serde_json::json!({"type": "scanned"})), Just(serde_json::json!({"type": "scanned", "x": null})), json_object(true)],
                "c1|C1|c2|[a-z0-9]{0,4}",
                any::<bool>(),
            )
                .prop_map(|(upper, owner, data, content, flat)| {
                    let id = if upper { "ID" } else { "id" };
                    let mut item = serde_json::json!({"id": id, "drafts-builder-id": owner,
                        "drafts-builder-document-id": owner, "content-id": content});
                    if flat {
                        item["builder-data"] = data;
                    } else {
                        item["meta"] = serde_json::json!({"builder-data": data});
                    }
                    item
                }),
            0..8,
        )
        .prop_map(|mut items| {
            // Unique ids, in either case, so an id names one item.
            for (i, item) in items.iter_mut().enumerate() {
                let id = format!("{}{i}", item["id"].as_str().unwrap_or("id"));
                item["id"] = Value::from(format!(" {id} "));
            }
            items
        }),
        key in prop_oneof![Just("documents"), Just("files")],
        recorded in prop::collection::vec("(id|ID|Id)[0-7]", 0..4),
    ) {
        // Any answer: no panic, and whatever is found is an item's id.
        if let Some(found) = kontur_extern::list_items(&value, key) {
            let data = serde_json::json!({"type": "scanned"});
            for id in kontur_extern::find_document(found, "b1", &data, &[]).into_iter()
                .chain(kontur_extern::find_file(found, "b1", "c1", &[]))
            {
                prop_assert!(found.iter().any(|i| i["id"].as_str().is_some_and(|s| s.trim() == id)));
            }
        }
        // The same items bare, under their key, under `items`, or as an
        // object's only array.
        let bare = Value::Array(items.clone());
        let shapes = [
            bare.clone(),
            serde_json::json!({key: items.clone(), "total-count": items.len()}),
            serde_json::json!({"items": items.clone()}),
            serde_json::json!({"data": items.clone(), "skip": 0}),
        ];
        for shape in &shapes {
            prop_assert_eq!(kontur_extern::list_items(shape, key), Some(items.as_slice()), "{}", shape);
        }
        let recorded: Vec<&str> = recorded.iter().map(String::as_str).collect();
        let wanted = serde_json::json!({"type": "scanned"});
        if let Some(id) = kontur_extern::find_document(&items, "b1", &wanted, &recorded) {
            prop_assert!(!recorded.iter().any(|r| r.eq_ignore_ascii_case(&id)), "{id} is recorded");
            let item = items.iter().find(|i| i["id"].as_str().unwrap().trim() == id).unwrap();
            prop_assert!(item["drafts-builder-id"].as_str().unwrap().eq_ignore_ascii_case("b1"));
            let data = item.pointer("/meta/builder-data").or_else(|| item.get("builder-data")).unwrap();
            prop_assert_eq!(data["type"].as_str(), Some("scanned"), "{}", item);
        } else {
            // Nothing found: no unrecorded item of builder b1 has exactly
            // `{"type": "scanned"}` (nulls aside).
            for item in &items {
                let id = item["id"].as_str().unwrap().trim();
                let data = item.pointer("/meta/builder-data").or_else(|| item.get("builder-data")).unwrap();
                let same = data.as_object().is_some_and(|m| {
                    m.iter().filter(|(_, v)| !v.is_null()).count() == 1 && m.get("type") == Some(&Value::from("scanned"))
                });
                prop_assert!(
                    !(same && item["drafts-builder-id"].as_str().unwrap().eq_ignore_ascii_case("b1")
                        && !recorded.iter().any(|r| r.eq_ignore_ascii_case(id))),
                    "{} was not adopted", item
                );
            }
        }
        if let Some(id) = kontur_extern::find_file(&items, "b1", "c1", &recorded) {
            prop_assert!(!recorded.iter().any(|r| r.eq_ignore_ascii_case(&id)), "{id} is recorded");
            let item = items.iter().find(|i| i["id"].as_str().unwrap().trim() == id).unwrap();
            prop_assert!(item["drafts-builder-document-id"].as_str().unwrap().eq_ignore_ascii_case("b1"), "{}", item);
            prop_assert!(item["content-id"].as_str().unwrap().eq_ignore_ascii_case("c1"), "{}", item);
        }
    }

    // --- ATOL Online: `atol::parse_json`, `read_page`, `read_token`,
    // `Problem::parse` ---

    #[test]
    fn atol_json_never_panics_and_keeps_the_first_of_repeated_keys(
        bytes in answer_bytes(ATOL_PAGE_SEED),
        value in json_value(true),
        key in "[a-zA-Z]{1,8}",
        first in json_value(true),
        second in json_value(true),
    ) {
        let _ = atol::parse_json(&bytes);
        // Plain JSON reads as serde_json reads it, with no repeat.
        let (read, dups) = atol::parse_json(value.to_string().as_bytes()).unwrap();
        prop_assert_eq!(read, value);
        prop_assert!(dups.is_empty());
        // A repeated key keeps its first value and is reported at its path.
        let key_json = Value::from(key.as_str());
        let text = format!(r#"{{"data":{{{key_json}:{first},{key_json}:{second}}}}}"#);
        let (read, dups) = atol::parse_json(text.as_bytes()).unwrap();
        prop_assert_eq!(&read["data"][&key], &first);
        prop_assert_eq!(dups.len(), 1);
        prop_assert_eq!(&dups[0].path, &format!("data.{key}"));
    }

    #[test]
    fn atol_pages_never_panic_and_errors_stay_one_short_line(
        value in prop_oneof![
            answer_bytes(ATOL_PAGE_SEED).prop_map(|b| atol::parse_json(&b).map(|(v, _)| v).unwrap_or(Value::Null)),
            json_value(true),
            atol_odd_page(),
        ],
    ) {
        if let Err(e) = atol::read_page(&value) {
            assert_one_line(&e, 400, &value);
        }
    }

    #[test]
    fn atol_pages_read_their_registers_in_every_shape(
        registers in prop::collection::vec(json_object(true), 0..5),
        total in proptest::option::of(0u64..1_000_000),
        total_as_text in any::<bool>(),
        array in any::<bool>(),
        next in proptest::option::of("[a-z0-9/?=&]{1,30}"),
    ) {
        let items: Vec<Value> = registers
            .iter()
            .map(|data| serde_json::json!({"_links": {"self": {"href": "x"}}, "data": data}))
            .collect();
        let mut page = if array {
            serde_json::json!({"_embedded": items})
        } else {
            serde_json::json!({"_embedded": {"cashRegisters": items}})
        };
        if let Some(total) = total {
            page["total"] = if total_as_text { Value::from(format!(" {total} ")) } else { Value::from(total) };
        }
        if let Some(next) = &next {
            page["_links"] = serde_json::json!({"next": {"href": next}});
        }
        let read = atol::read_page(&page);
        prop_assert!(read.is_ok(), "{page}\n{read:?}");
        let read = read.unwrap();
        prop_assert_eq!(read.items, registers);
        prop_assert_eq!(read.total, total);
        prop_assert_eq!(read.next, next);
    }

    #[test]
    fn atol_tokens_never_panic_and_never_outlive_their_announced_life(
        value in prop_oneof![
            answer_bytes(ATOL_TOKEN_SEED).prop_map(|b| atol::parse_json(&b).map(|(v, _)| v).unwrap_or(Value::Null)),
            json_value(true),
        ],
        token in plain_text(),
        issued in prop_oneof![
            Just("2020-03-31T17:25:06.0289998+03:00".to_string()),
            any::<String>(),
            (0i64..4_102_444_800).prop_map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339()),
        ],
        minutes in prop_oneof![0.0f64..10_000.0, any::<f64>()],
        now in 0i64..4_102_444_800,
    ) {
        let now = chrono::DateTime::from_timestamp(now, 0).unwrap();
        let _ = atol::read_token(&value, now);
        let answer = serde_json::json!({"token": format!(" {token} "), "issued": issued, "expiresIn": minutes});
        let read = atol::read_token(&answer, now);
        prop_assert!(read.is_ok(), "{answer}");
        let (secret, lifetime) = read.unwrap();
        prop_assert_eq!(secret.expose(), token.as_str());
        if minutes.is_finite() && minutes >= 0.0 {
            prop_assert!(lifetime.as_secs_f64() <= minutes.min(5_256_000.0) * 60.0 + 1e-6, "{lifetime:?} from {answer}");
        }
        prop_assert!(lifetime <= Duration::from_secs(5_256_000 * 60));
    }

    #[test]
    fn atol_problems_never_panic_and_describe_one_short_line(
        body in prop_oneof![
            answer_bytes(ATOL_PROBLEM_SEED),
            (
                proptest::option::of(service_text()),
                proptest::option::of(service_text()),
                prop::collection::btree_map(service_text(), prop::collection::vec(service_text(), 0..15), 0..12),
                proptest::option::of(service_text()),
            )
                .prop_map(|(title, detail, errors, code)| {
                    serde_json::json!({"type": "about:blank", "title": title, "detail": detail,
                                       "errors": errors, "errorCode": code, "traceId": "t", "status": 400})
                    .to_string()
                    .into_bytes()
                }),
        ],
    ) {
        if let Some(problem) = atol::Problem::parse(&body) {
            assert_one_line(&problem.describe(), 2000, &String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn atol_problem_titles_and_details_reach_the_message(
        // A title, a detail, or both (never neither: no assumption to reject).
        (title, detail) in prop_oneof![
            (plain_text(), proptest::option::of(plain_text())).prop_map(|(t, d)| (Some(t), d)),
            plain_text().prop_map(|d| (None, Some(d))),
        ],
        code in proptest::option::of("[A-Za-z]{1,20}"),
        spaced in any::<bool>(),
    ) {
        let pad = |t: &Option<String>| t.as_ref().map(|t| if spaced { format!("  {}\n", t.replace(' ', "\n  ")) } else { t.clone() });
        let body = serde_json::json!({"type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
            "title": pad(&title), "detail": pad(&detail), "status": 400, "errorCode": code});
        let problem = atol::Problem::parse(body.to_string().as_bytes());
        prop_assert!(problem.is_some(), "{body}");
        let problem = problem.unwrap();
        if !spaced {
            prop_assert_eq!(&problem.title, &title);
            prop_assert_eq!(&problem.detail, &detail);
        }
        let text = problem.describe();
        for piece in title.iter().chain(&detail).chain(&code) {
            prop_assert!(text.contains(piece.as_str()), "{piece:?} is not in {text:?}");
        }
    }

    // --- Kontur.Diadoc: the `GenerateDocumentZip` answer ---

    #[test]
    fn diadoc_zip_answers_never_panic_and_errors_stay_one_short_line(
        body in prop_oneof![
            answer_bytes(DIADOC_ZIP_SEED),
            service_text().prop_map(|t| Value::from(t).to_string().into_bytes()),
            json_value(true).prop_map(|v| serde_json::json!({"ZipFileNameOnShelf": v}).to_string().into_bytes()),
        ],
        content_type in proptest::option::of(prop_oneof![
            Just("application/json; charset=utf-8".to_string()),
            Just("application/x-protobuf".to_string()),
            any::<String>(),
        ]),
    ) {
        if let Err(e) = kontur_diadoc::zip_name_on_shelf(content_type.as_deref(), &body) {
            assert_one_line(&e, 300, &String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn diadoc_zip_names_read_the_same_from_json_and_protobuf(
        // Blank names; names that look like JSON (`{…}`: a .NET GUID in
        // braces), whose protobuf length byte may be ASCII whitespace.
        name in prop_oneof![any::<String>(), plain_text(), "[ \t]{0,3}", "\\{[a-z0-9.}-]{8,12}"],
        camel in any::<bool>(),
    ) {
        use prost::Message;
        let key = if camel { "zipFileNameOnShelf" } else { "ZipFileNameOnShelf" };
        let json = serde_json::json!({key: name}).to_string();
        let proto = kontur_diadoc::DocumentZipGenerationResult { zip_file_name_on_shelf: Some(name.clone()) }.encode_to_vec();
        let expected = Some(name.clone()).filter(|n| !n.trim().is_empty());
        prop_assert_eq!(kontur_diadoc::zip_name_on_shelf(Some("application/json"), json.as_bytes()), Ok(expected.clone()));
        prop_assert_eq!(kontur_diadoc::zip_name_on_shelf(None, json.as_bytes()), Ok(expected.clone()));
        prop_assert_eq!(kontur_diadoc::zip_name_on_shelf(Some("application/x-protobuf"), &proto), Ok(expected));
    }
}

// ---------------------------------------------------------------------------
// Regressions found by the parser properties (RELIABILITY.md, Findings 8, 9)
// ---------------------------------------------------------------------------

/// A service's own words went into the job's error as they came: several
/// lines, or megabytes, kept in the store, the receipt and the logs.
#[test]
fn service_texts_reach_the_error_as_one_short_line() {
    let long = format!("строка 1\nстрока 2\r\n{}", "я".repeat(100_000));
    let fresh = serde_json::json!({"general": {"response": 10400, "message": long}}).to_string();
    let e = fresh::interpret(fresh.as_bytes(), "ordering").unwrap_err();
    assert_one_line(&e.message, 600, &"1C 10400");
    assert!(e.message.contains("строка 1 строка 2"), "{}", e.message);

    let extern_error =
        serde_json::json!({"id": "urn:error:x\ny", "message": long, "trace-id": long});
    let text = kontur_extern::ApiError::parse(extern_error.to_string().as_bytes())
        .unwrap()
        .describe();
    assert_one_line(&text, 1000, &"Extern error document");
    assert!(
        text.starts_with("urn:error:x y: строка 1 строка 2"),
        "{text}"
    );

    let messages: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
    let errors: serde_json::Map<String, Value> = (0..10)
        .map(|f| (format!("field{f}"), Value::from(messages.clone())))
        .collect();
    let problem = serde_json::json!({"title": "Ошибка валидации", "status": 400, "errors": errors, "traceId": "t1"});
    let text = atol::Problem::parse(problem.to_string().as_bytes())
        .unwrap()
        .describe();
    assert_one_line(&text, 2000, &"ATOL problem, 10 fields × 100 messages");
    assert!(
        text.starts_with("Ошибка валидации; field0: message 0, message 1"),
        "{text}"
    );
    assert!(text.ends_with(" (traceId t1)"), "{text}");

    for page in [
        serde_json::json!({"total": long}),
        serde_json::json!({"_embedded": long}),
        serde_json::json!({"_embedded": [{"data": long}]}),
    ] {
        let e = atol::read_page(&page).unwrap_err();
        assert_one_line(&e, 400, &"ATOL page");
    }

    // serde quotes a string it did not expect in full.
    let e = kontur_diadoc::zip_name_on_shelf(
        Some("application/json"),
        Value::from(long).to_string().as_bytes(),
    )
    .unwrap_err();
    assert_one_line(&e, 300, &"Diadoc JSON string");
}

/// A protobuf `DocumentZipGenerationResult` whose name starts with `{` and
/// is 9, 10, 12, 13 or 32 bytes long starts with bytes that are all ASCII
/// whitespace (the tag 0x0a and the length) before that `{`: it was read as
/// JSON, and failed, even under `Content-Type: application/x-protobuf`.
#[test]
fn protobuf_names_in_braces_are_read_as_protobuf() {
    use prost::Message;
    for name in ["{abc}.zip", "{abcd}.zip", "{4f2a9c}.zip"] {
        let proto = kontur_diadoc::DocumentZipGenerationResult {
            zip_file_name_on_shelf: Some(name.to_string()),
        }
        .encode_to_vec();
        assert_eq!(
            kontur_diadoc::zip_name_on_shelf(Some("application/x-protobuf"), &proto),
            Ok(Some(name.to_string())),
            "{name:?} ({} bytes)",
            name.len()
        );
    }
}
