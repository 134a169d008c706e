//! What a Diadoc request asks for: the operation and the document's three
//! ids, checked at submit time through the shared [`Params`] reader.

use super::*;
use crate::providers::params::Params;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    Protocol,
    PrintForm,
    Zip,
}

impl Operation {
    pub(super) fn parse(operation: &str) -> Result<Operation, RequestError> {
        match operation {
            OP_PROTOCOL => Ok(Operation::Protocol),
            OP_PRINT_FORM => Ok(Operation::PrintForm),
            OP_ZIP => Ok(Operation::Zip),
            other => Err(RequestError::field(
                "operation",
                format!(
                    "unknown Diadoc operation {other:?}; expected one of: {}",
                    OPERATIONS.join(", ")
                ),
            )),
        }
    }
}

/// The document a request names.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    pub(super) box_id: String,
    pub(super) message_id: String,
    pub(super) document_id: String,
    /// `document-zip` only.
    pub(super) full_docflow: bool,
}

impl Target {
    pub(super) fn from_params(
        operation: Operation,
        params: &serde_json::Value,
    ) -> Result<Target, RequestError> {
        let params = Params::object(
            params,
            "expected an object with boxId, messageId and documentId",
        )?;
        let allowed: &[&str] = match operation {
            Operation::Zip => &["boxId", "messageId", "documentId", "fullDocflow"],
            _ => &["boxId", "messageId", "documentId"],
        };
        // A misspelt optional key (`fulldocflow`) would otherwise be ignored
        // silently and fetch something else than asked.
        params.only(
            allowed,
            format!("unknown parameter; expected {}", allowed.join(", ")),
        )?;
        let id = |key: &str| -> Result<String, RequestError> {
            match params.required(key, "is required")? {
                serde_json::Value::String(s) => {
                    let s = s.trim();
                    if s.is_empty() {
                        Err(Params::invalid(key, "must not be empty"))
                    } else if s.chars().count() > MAX_ID_LEN {
                        Err(Params::invalid(
                            key,
                            format!("is longer than {MAX_ID_LEN} characters; Diadoc ids are GUIDs"),
                        ))
                    } else if s.chars().any(char::is_control) {
                        Err(Params::invalid(key, "contains control characters"))
                    } else {
                        Ok(s.to_string())
                    }
                }
                other => Err(Params::invalid(
                    key,
                    format!("expected a string, found {other}"),
                )),
            }
        };
        // `fullDocflow` may come as a string from a TOML request.
        let full_docflow = params.boolean("fullDocflow", true)?.unwrap_or(false);
        Ok(Target {
            box_id: id("boxId")?,
            message_id: id("messageId")?,
            document_id: id("documentId")?,
            full_docflow,
        })
    }

    /// `DOCUMENTID` made fit for a file name: the id is the user's, and a
    /// `/` in it must not become a folder.
    pub(super) fn file_stem(&self) -> String {
        self.document_id.replace(['/', '\\'], "_")
    }
}

/// Checks a request before it is accepted: a known operation and its params.
pub fn validate_request(operation: &str, params: &serde_json::Value) -> Result<(), RequestError> {
    let operation = Operation::parse(operation)?;
    Target::from_params(operation, params).map(|_| ())
}
