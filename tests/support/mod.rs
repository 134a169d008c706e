//! Test support shared by the reliability tests: the real binary driven as
//! a process, a fault-injecting TCP proxy, a hostile 1C:Fresh stand-in and
//! file-system helpers.

pub mod daemon;
pub mod evidence;
pub mod fs;
pub mod hostile;
pub mod proxy;
pub mod rig;
pub mod strace;
pub mod webdriver;

/// Reports a check that cannot run here (a tool or a privilege is
/// missing): a printed skip on a developer's machine, a failure under
/// `CI=true`, where every tool is installed by `.ci/run` and a quiet skip
/// would hide a missing proof.
#[track_caller]
pub fn cannot_run(test: &str, why: &str) {
    evidence::skip(&format!("{test} cannot run: {why}"));
}

/// Whether `tool` answers `--version` (or `-V`).
pub fn has_tool(tool: &str) -> bool {
    ["--version", "-V"].iter().any(|flag| {
        std::process::Command::new(tool)
            .arg(flag)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}
