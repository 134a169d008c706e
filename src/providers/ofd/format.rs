//! Reading OFD.ru's answers: fields found case-insensitively, the repair
//! of the seed's not-quite-JSON (bare values), and the report list.

use super::*;

/// A field of an OFD answer, found by name case-insensitively and with
/// surrounding spaces ignored: the seed's list prints `" TotalCount "`, and
/// ASP.NET services often answer in camelCase.
pub(super) fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A non-empty text field (numbers are taken as their text).
pub(super) fn text(value: &Value, key: &str) -> Option<String> {
    match field(value, key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The seed's dates: `YYYY-MM-DDTHH:MM:SS`, UTC where the name says so.
pub(super) fn utc_time(value: &Value, key: &str) -> Option<NaiveDateTime> {
    let raw = text(value, key)?;
    match When::parse(&raw)? {
        When::Zoned(t) => Some(t.naive_utc()),
        When::Local(t) => Some(t),
    }
}

pub(super) fn format_utc(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Parses JSON, forgiving bare words as values: the seed's list example
/// prints `"AccountEmail": ofdtester1@ofd.ru`, and a service that follows
/// its own document may well send that.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn parse_lenient(body: &[u8]) -> Option<Value> {
    if let Ok(value) = serde_json::from_slice(body) {
        return Some(value);
    }
    let text = std::str::from_utf8(body).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(&quote_bare_values(text)).ok()
}

/// Wraps bare words in value positions (after `:` or inside arrays) in
/// quotes; everything else, strings included, is copied unchanged.
pub(super) fn quote_bare_values(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut containers: Vec<char> = Vec::new();
    let mut expect_value = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => {
                out.push(c);
                i += 1;
                while i < chars.len() {
                    let s = chars[i];
                    out.push(s);
                    i += 1;
                    if s == '\\' {
                        if let Some(&escaped) = chars.get(i) {
                            out.push(escaped);
                            i += 1;
                        }
                    } else if s == '"' {
                        break;
                    }
                }
                expect_value = false;
                continue;
            }
            '{' => {
                containers.push('{');
                expect_value = false;
            }
            '[' => {
                containers.push('[');
                expect_value = true;
            }
            '}' | ']' => {
                containers.pop();
                expect_value = false;
            }
            ':' => expect_value = true,
            ',' => expect_value = containers.last() == Some(&'['),
            c if c.is_whitespace() => {}
            _ if expect_value => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ',' | '}' | ']' | '\n' | '\r') {
                    i += 1;
                }
                let raw: String = chars[start..i].iter().collect();
                let token = raw.trim_end();
                if is_json_scalar(token) {
                    out.push_str(token);
                } else {
                    out.push_str(&Value::String(token.to_string()).to_string());
                }
                out.push_str(&raw[token.len()..]);
                expect_value = false;
                continue;
            }
            _ => expect_value = false,
        }
        out.push(c);
        i += 1;
    }
    out
}

pub(super) fn is_json_scalar(token: &str) -> bool {
    matches!(token, "true" | "false" | "null")
        || serde_json::from_str::<serde_json::Number>(token).is_ok()
}

/// A report as the order answer or the list describes it.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub id: String,
    pub(super) name: Option<String>,
    pub(super) status: Option<String>,
    pub(super) report_type: Option<String>,
    pub(super) date_from: Option<NaiveDateTime>,
    pub(super) date_to: Option<NaiveDateTime>,
    pub(super) created: Option<NaiveDateTime>,
    /// `AssumptiveCompleteTime` (UTC).
    pub(super) eta: Option<NaiveDateTime>,
    pub(super) download_url: Option<String>,
    pub(super) delete_url: Option<String>,
    pub(super) cancel_url: Option<String>,
    pub(super) file_format: Option<String>,
}

impl Report {
    pub(super) fn from_value(value: &Value) -> Option<Report> {
        let wall = |key: &str| {
            text(value, key)
                .and_then(|t| When::parse(&t))
                .map(|w| w.wall_clock())
        };
        Some(Report {
            id: text(value, "Id")?,
            name: text(value, "Name"),
            status: text(value, "Status"),
            report_type: text(value, "ReportType"),
            date_from: wall("DateFrom"),
            date_to: wall("DateTo"),
            created: utc_time(value, "CDateUtc"),
            eta: utc_time(value, "AssumptiveCompleteTime"),
            download_url: text(value, "DownloadUrl"),
            delete_url: text(value, "DeleteUrl"),
            cancel_url: text(value, "CancelUrl"),
            file_format: text(value, "FileFormat"),
        })
    }
}

/// A report list, in either shape the seed prints.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportList {
    pub agreement_id: Option<String>,
    pub reports: Vec<Report>,
}

/// Reads a list answer: wrapped (`{"Status":"Success","Data":{"List":…}}`,
/// sections 1.2 and 2) or bare (`{"OfdAgreementLimit":…,"List":…}`, 3.2).
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn parse_list(body: &[u8]) -> Result<ReportList, String> {
    let value =
        parse_lenient(body).ok_or_else(|| format!("the answer is not JSON: {}", excerpt(body)))?;
    let data = field(&value, "Data")
        .filter(|d| d.is_object())
        .unwrap_or(&value);
    let items = match (data, field(data, "List")) {
        (_, Some(Value::Array(items))) => items,
        (Value::Array(items), None) => items,
        _ => return Err(format!("the answer has no report List: {}", excerpt(body))),
    };
    Ok(ReportList {
        agreement_id: text(data, "OfdAgreementId"),
        reports: items.iter().filter_map(Report::from_value).collect(),
    })
}
