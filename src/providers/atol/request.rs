//! What an ATOL request asks for: the operation and its params, checked
//! at submit time through the shared [`Params`] reader.

use serde_json::Value;

use super::{DEFAULT_LIMIT, LIST, MAX_LIMIT, ONE};
use crate::job::request::RequestError;
use crate::providers::params::Params;

/// What a request asks for, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Operation {
    /// The whole list, `limit` registers per page.
    List { limit: u32 },
    /// One register.
    One { serial: String },
}

/// Checks a request before it is accepted.
pub fn validate_request(operation: &str, params: &Value) -> Result<(), RequestError> {
    parse_request(operation, params).map(|_| ())
}

pub(super) fn parse_request(operation: &str, params: &Value) -> Result<Operation, RequestError> {
    if operation != LIST && operation != ONE {
        return Err(RequestError::field(
            "operation",
            format!(
                "{operation:?} is not an ATOL operation: expected \"cash-registers\" or \"cash-register\""
            ),
        ));
    }
    let params = Params::object(
        params,
        "expected a JSON object (such as {\"serialNumber\": \"00107703864827\"})",
    )?;
    // Strict about names: a misspelt `serialnumber` should be an error at
    // submit time, not a surprise in the output.
    let allowed = if operation == LIST {
        "limit"
    } else {
        "serialNumber"
    };
    params.only(
        &[allowed],
        format!("unknown parameter: {operation:?} takes only `{allowed}`"),
    )?;
    if operation == LIST {
        let limit = params
            .integer_in("limit", 1..=u64::from(MAX_LIMIT), "registers per page")?
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_LIMIT);
        return Ok(Operation::List { limit });
    }
    let serial = match params.required(
        "serialNumber",
        "required: the cash register's serial number (заводской номер ККТ), such as \"00107703864827\"",
    )? {
        Value::String(serial) => serial,
        Value::Number(n) => {
            return Err(Params::invalid(
                "serialNumber",
                format!(
                    "expected a string: as a number ({n}) a serial number loses its leading zeros; write it in quotes"
                ),
            ));
        }
        other => {
            return Err(Params::invalid(
                "serialNumber",
                format!("expected a string of letters and digits, found {other}"),
            ));
        }
    };
    if serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Params::invalid(
            "serialNumber",
            format!(
                "expected 1 to 64 latin letters and digits (such as \"00107703864827\"), found {serial:?}"
            ),
        ));
    }
    Ok(Operation::One {
        serial: serial.clone(),
    })
}
