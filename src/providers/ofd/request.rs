//! What an OFD.ru request asks for: the body of the report order (table 3
//! of the seed), checked at submit time through the shared [`Params`]
//! reader as far as the seed says what is valid.

use super::*;
use crate::providers::params::Params;

/// Checks a request before it is accepted: `operation = "report"` and
/// `params` the body of the order (table 3 of the seed), as far as the seed
/// says what is valid.
pub fn validate_request(operation: &str, params: &Value) -> Result<(), RequestError> {
    if operation != "report" {
        return Err(RequestError::field(
            "operation",
            format!("{operation:?} is not an OFD.ru operation: expected \"report\""),
        ));
    }
    let object = Params::object(
        params,
        "expected a JSON object: the body of the OFD.ru report order (ReportType, DateFrom, DateTo, KktList, …)",
    )?
    .map();
    let get = |key: &str| field(params, key).filter(|v| !v.is_null());

    report_kind(params)?;

    let from = required_date(params, "DateFrom")?;
    let to = required_date(params, "DateTo")?;
    if from.is_after(&to) {
        return Err(Params::invalid(
            "DateFrom",
            format!(
                "DateFrom ({}) is after DateTo ({}); OFD.ru would refuse the order with DateFromGreaterThanDateTo",
                text_of(get("DateFrom")),
                text_of(get("DateTo"))
            ),
        ));
    }

    for key in ["KktList", "GroupsList"] {
        if let Some(value) = get(key)
            && !value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string))
        {
            return Err(Params::invalid(
                key,
                format!("expected an array of id strings, found {value}"),
            ));
        }
    }
    for key in ["SelectAllKkts", "UseXlsxFile"] {
        if let Some(value) = get(key)
            && !value.is_boolean()
        {
            return Err(Params::invalid(
                key,
                format!("expected true or false, found {value}"),
            ));
        }
    }
    if let Some(value) = get("Name")
        && !value.is_string()
    {
        return Err(Params::invalid(
            "Name",
            format!("expected a string, found {value}"),
        ));
    }
    // The seed's table says "a string, addresses separated by ;" while its
    // answers show an array; both are accepted and sent as given.
    if let Some(value) = get("EmailsToNotify")
        && !(value.is_string()
            || value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)))
    {
        return Err(Params::invalid(
            "EmailsToNotify",
            format!("expected addresses separated by \";\", found {value}"),
        ));
    }

    agreement_id(object)
}

/// `CustomReportId` or `ReportType`: one of them (3.1, table 3).
fn report_kind(params: &Value) -> Result<(), RequestError> {
    let get = |key: &str| field(params, key).filter(|v| !v.is_null());
    let custom = match get("CustomReportId") {
        None => false,
        Some(Value::String(s)) if uuid::Uuid::parse_str(s.trim()).is_ok() => true,
        Some(other) => {
            return Err(Params::invalid(
                "CustomReportId",
                format!("expected the UUID of a custom report template, found {other}"),
            ));
        }
    };
    // With a custom template the seed leaves ReportType to the template.
    if !custom {
        match get("ReportType") {
            None => {
                return Err(Params::invalid(
                    "ReportType",
                    format!(
                        "required unless params.CustomReportId names a custom template; expected one of {}",
                        REPORT_TYPES.join(", ")
                    ),
                ));
            }
            Some(Value::String(t)) if REPORT_TYPES.contains(&t.as_str()) => {}
            Some(Value::String(t)) => {
                let hint = REPORT_TYPES
                    .iter()
                    .find(|known| known.eq_ignore_ascii_case(t.trim()))
                    .map(|known| format!(" (did you mean {known:?}?)"))
                    .unwrap_or_default();
                return Err(Params::invalid(
                    "ReportType",
                    format!(
                        "{t:?} is not an OFD.ru report type{hint}; expected one of {}",
                        REPORT_TYPES.join(", ")
                    ),
                ));
            }
            Some(other) => {
                return Err(Params::invalid(
                    "ReportType",
                    format!("expected a string such as \"ReceiptReport\", found {other}"),
                ));
            }
        }
    }

    Ok(())
}

/// `OfdAgreementId`, in either of the seed's spellings.
fn agreement_id(object: &serde_json::Map<String, Value>) -> Result<(), RequestError> {
    // The seed spells it `ofdAgreementId` in table 3 and `OfdAgreementId`
    // in its example; either is accepted, but not two different values.
    let spellings: Vec<&Value> = object
        .iter()
        .filter(|(k, v)| k.trim().eq_ignore_ascii_case("OfdAgreementId") && !v.is_null())
        .map(|(_, v)| v)
        .collect();
    for value in &spellings {
        if value
            .as_str()
            .is_none_or(|s| uuid::Uuid::parse_str(s.trim()).is_err())
        {
            return Err(Params::invalid(
                "OfdAgreementId",
                format!("expected the UUID of an OFD.ru agreement, found {value}"),
            ));
        }
    }
    if spellings.windows(2).any(|pair| pair[0] != pair[1]) {
        return Err(Params::invalid(
            "OfdAgreementId",
            "given twice (OfdAgreementId and ofdAgreementId) with different values",
        ));
    }
    Ok(())
}

pub(super) fn text_of(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

pub(super) fn required_date(params: &Value, key: &str) -> Result<When, RequestError> {
    match field(params, key).filter(|v| !v.is_null()) {
        None => Err(Params::invalid(
key,
            "required: an ISO 8601 date and time such as \"2021-11-01T00:00:00.000+03:00\"",
        )),
        Some(Value::String(s)) => When::parse(s).ok_or_else(|| {
            Params::invalid(
key,
                format!(
                    "{s:?} is not an ISO 8601 date and time; expected e.g. \"2021-11-01T00:00:00.000+03:00\" or \"2021-11-01T00:00:00\""
                ),
            )
        }),
        Some(other) => Err(Params::invalid(
key,
            format!("expected an ISO 8601 date and time string, found {other}"),
        )),
    }
}

/// A date of a request: with an offset (the seed's order example) or
/// without (its answers).
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    Zoned(DateTime<FixedOffset>),
    Local(NaiveDateTime),
}

impl When {
    // Public (hidden) for the property tests in tests/fuzz.rs.
    #[doc(hidden)]
    pub fn parse(text: &str) -> Option<When> {
        let text = text.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Some(When::Zoned(t));
        }
        if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z") {
            return Some(When::Zoned(t));
        }
        for format in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S%.f",
        ] {
            if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
                return Some(When::Local(t));
            }
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(When::Local)
    }

    /// The date as written, without its offset: the seed's order answer
    /// turns `2021-11-01T00:00:00.000+03:00` into `2021-11-01T00:00:00`.
    pub(super) fn wall_clock(&self) -> NaiveDateTime {
        match self {
            When::Zoned(t) => t.naive_local(),
            When::Local(t) => *t,
        }
    }

    /// Two dates with offsets compare as instants; otherwise as written
    /// (OFD.ru reads a date without an offset in the cabinet's time zone,
    /// which docfetch does not know).
    pub(super) fn is_after(&self, other: &When) -> bool {
        match (self, other) {
            (When::Zoned(a), When::Zoned(b)) => a > b,
            _ => self.wall_clock() > other.wall_clock(),
        }
    }
}
