//! Request files: parsing (`*.json` or `*.toml`) and the exact reason when
//! that fails. Validation against the configured accounts and providers is
//! [`crate::intake`].
//!
//! The same code serves the drop directory and `docfetch submit`, so a
//! request is accepted or rejected identically whichever way it arrives.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::HookRef;
use super::digest::sha256_hex;

/// A request as written by a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The `[accounts.NAME]` to use.
    pub account: String,
    /// What to fetch; its meaning belongs to the provider (for 1C:Fresh the data id).
    pub operation: String,
    /// Provider-specific parameters (for 1C:Fresh the settings JSON, sent as-is).
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
    /// The job's unique name; defaults to the request file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// The configured hook (`[hooks.NAME]`) to run when the job is done. A
    /// command (argv list) is refused unless `hooks.allow_request_commands`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_done: Option<HookRef>,
    /// The configured hook to run when the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failed: Option<HookRef>,
    /// A URL that receives `job.json` by POST when the job is done; refused
    /// unless `hooks.allow_request_commands` (name a configured hook instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_done_url: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Why a request was refused. The text is written next to a rejected file,
/// so it says what is wrong, where, and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is {size} bytes; requests are limited to {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the request is not valid UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("the request is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("unsupported request file extension {0:?}: use .json or .toml")]
    Extension(String),
    #[error("field `{field}`: {message}")]
    Field { field: String, message: String },
    #[error(
        "a job named {name:?} already exists (state {state}); names are unique and a request never runs twice"
    )]
    Duplicate { name: String, state: String },
}

impl RequestError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError::Field {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The format of a request file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    Json,
    Toml,
}

impl RequestFormat {
    pub fn from_path(path: &Path) -> Result<Self, RequestError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Ok(RequestFormat::Json),
            Some(e) if e.eq_ignore_ascii_case("toml") => Ok(RequestFormat::Toml),
            other => Err(RequestError::Extension(other.unwrap_or("").to_string())),
        }
    }
}

/// Parses a request from raw bytes.
pub fn parse(bytes: &[u8], format: RequestFormat) -> Result<JobRequest, RequestError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RequestError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        RequestFormat::Json => {
            // serde_json bounds nesting (128 levels) itself, so a hostile
            // deeply nested file is an error, not a stack overflow.
            serde_json::from_str(text).map_err(|e| RequestError::Syntax {
                format: "JSON",
                message: e.to_string(),
            })
        }
        RequestFormat::Toml => {
            let request: Result<JobRequest, _> = toml::from_str(text);
            request.map_err(|e| RequestError::Syntax {
                format: "TOML",
                message: toml_error_message(text, &e),
            })
        }
    }
}

/// TOML errors carry a byte span; turn it into a line and column.
fn toml_error_message(text: &str, e: &toml::de::Error) -> String {
    let detail = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{detail} at line {line} column {column}")
        }
        None => detail,
    }
}

/// SHA-256 of the request bytes, lower-case hex.
pub fn fingerprint(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_say_where() {
        let err = parse(
            b"{\"account\": \"a\",\n \"operation\": }",
            RequestFormat::Json,
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 2 column"), "{err}");
        let err = parse(b"account = \"a\"\noperation = \n", RequestFormat::Toml).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse(
            b"{\"account\": \"a\", \"operation\": \"b\", \"nmae\": \"c\"}",
            RequestFormat::Json,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `nmae`"), "{err}");
        let err = parse(b"\xff\xfe", RequestFormat::Json).unwrap_err();
        assert_eq!(err, RequestError::NotUtf8 { offset: 0 });
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!("{{\"account\":\"fresh-main\",\"operation\":\"x\",\"params\":{deep}}}");
        let err = parse(text.as_bytes(), RequestFormat::Json).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
