//! Evidence that cannot be skipped quietly. A test whose tool or service is
//! missing (a PostgreSQL server, a tmpfs mount) says so and passes on a
//! developer's machine; under `CI=true` the same absence fails the test, so
//! a green CI run always means the check ran.

/// Whether this run is CI's (`CI=true`, as CI sets it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Skips the calling test with `why` — or fails it under CI.
#[track_caller]
pub fn skip(why: &str) {
    assert!(
        !under_ci(),
        "{why}; under CI=true a missing tool fails the test instead of skipping it"
    );
    println!("SKIPPED: {why}");
}
