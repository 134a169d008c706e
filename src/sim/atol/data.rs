//! The cash-register data the simulator serves and the JSON it answers in
//! (problem documents, HAL links, timestamps).

use super::*;

/// The members of an RFC 7807 answer.
pub(super) struct Problem<'a> {
    pub(super) kind: &'a str,
    pub(super) title: &'a str,
    pub(super) detail: Option<&'a str>,
    pub(super) instance: Option<&'a str>,
    pub(super) error_code: Option<&'a str>,
}

/// The serial number of register `index`: the seed's `00107703864827` first.
pub fn serial_number(index: usize) -> String {
    format!("00107703{:06}", 864_827 + index)
}

/// The `data` of register `index`, in table 3's order. Deterministic:
/// fiscal storages of 13, 15 and 36 months, fill levels spread over
/// 0–100 %, `networkErrorCode` cycling through 0–8, every fourth register
/// without unsent documents (so without `unsentDocs`, as the seed says),
/// and every fifth with an address holding `;` and quotes.
pub fn register_data(index: usize) -> Vec<(&'static str, Value)> {
    let i = index as i64;
    let day = 86_400;
    // 2019-07-22T14:03:00Z, the seed's fiscalization date.
    let fiscalized = 1_563_804_180 + i * 3 * day;
    let months = [13, 15, 36][index % 3];
    let expires = fiscalized + months * 30 * day;
    let percent = ((8_534 + index * 1_237) % 10_001) as f64 / 100.0;
    let address = if index % 5 == 4 {
        format!("г. Москва, ул. Тверская, д. {}; касса \"Север\"", index + 1)
    } else {
        "test.qa.ru".to_string()
    };
    let unsent = index % 4 != 3;
    let mut fields = vec![
        ("serialNumber", json!(serial_number(index))),
        (
            "registrationNumber",
            json!(format!("{:015}", 3_027_865 + index * 13)),
        ),
        ("deviceNumber", json!(format!("KKT{:06}", 24_219 + index))),
        ("fiscalizationDate", json!(utc(fiscalized))),
        ("fiscalStorageExpiration", json!(utc(expires))),
        ("signedDocuments", json!(213_350 + index * 101)),
        ("fiscalStoragePercentageUse", json!(percent)),
        ("fiscalStorageINN", json!("3026455760")),
        (
            "fiscalStorageSerialNumber",
            json!(format!("99990789020{:05}", 4_339 + index)),
        ),
        ("fiscalStoragePaymentAddress", json!(address)),
        ("groupCode", json!("test-qa-ru_14605")),
        ("timestamp", json!("2019-12-05T10:45:30+00:00")),
        ("isShiftOpened", json!(index.is_multiple_of(2))),
        ("shiftNumber", json!(126 + index)),
        ("shiftReceipt", json!(2_278 + index * 7)),
    ];
    if unsent {
        fields.push(("unsentDocs", json!(1_510 + index)));
        fields.push(("firstUnsetDocTimestamp", json!("2019-12-05T08:46:00+00:00")));
    }
    fields.push(("networkErrorCode", json!(index % 9)));
    fields
}

/// [`register_data`] as a JSON object (key order lost), for comparisons.
pub fn register_value(index: usize) -> Value {
    Value::Object(
        register_data(index)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// The data object's text in table 3's order, optionally repeating
/// `serialNumber` right after the first one.
pub(super) fn data_text(index: usize, repeated_serial: Option<&str>) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (key, value) in register_data(index) {
        pairs.push((key, value.to_string()));
        if key == "serialNumber"
            && let Some(other) = repeated_serial
        {
            pairs.push((key, string(other)));
        }
    }
    object(&pairs)
}

pub(super) fn utc(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// Now in Moscow time with seven fractional digits, like the seed's
/// `2020-03-31T17:25:06.0289998+03:00` (chrono has no `%.7f`).
pub(super) fn issued_now() -> String {
    let now = chrono::Utc::now();
    match chrono::FixedOffset::east_opt(3 * 3600) {
        Some(moscow) => {
            let t = now.with_timezone(&moscow);
            format!(
                "{}.{:07}{}",
                t.format("%Y-%m-%dT%H:%M:%S"),
                (t.nanosecond() % 1_000_000_000) / 100,
                t.format("%:z")
            )
        }
        None => now.to_rfc3339(),
    }
}

/// A JSON object written by hand so its members keep the seed's order (and
/// so a key may repeat, as in the seed's sample). Values are JSON texts.
pub(super) fn object(pairs: &[(&str, String)]) -> String {
    let members: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}:{value}", string(key)))
        .collect();
    format!("{{{}}}", members.join(","))
}

pub(super) fn string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

pub(super) fn link(href: &str, rel: &str) -> String {
    object(&[
        ("href", string(href)),
        ("rel", string(rel)),
        ("action", string("GET")),
    ])
}

pub(super) fn json_response(status: StatusCode, content_type: &str, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap_or_default()
}
