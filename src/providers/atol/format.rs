//! ATOL's file formats: reading its JSON (the first value of a repeated
//! key wins), and writing `cash-registers.json` in table 3's order and the
//! CSV for a person with a Russian Excel.

use std::cell::RefCell;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::*;

/// `networkErrorCode` meanings, as table 3 gives them.
pub(super) const NETWORK_ERRORS: [&str; 9] = [
    "Нет ошибок",
    "Отсутствует физический канал связи",
    "Ошибка сетевых настроек или нет соединения с сервером ОФД",
    "Разрыв соединения при передаче документа на сервер",
    "Некорректный заголовок сессионного пакета",
    "Превышен таймаут ожидания квитанции",
    "Разрыв соединения при приеме квитанции",
    "Превышен таймаут передачи документа на сервер",
    "ОФД-процесс не инициализирован",
];

/// The CSV columns: the `data` fields of table 3 in its order, with the
/// meaning of `networkErrorCode` right after it.
pub(super) const CSV_COLUMNS: [&str; 19] = [
    "serialNumber",
    "registrationNumber",
    "deviceNumber",
    "fiscalizationDate",
    "fiscalStorageExpiration",
    "signedDocuments",
    "fiscalStoragePercentageUse",
    "fiscalStorageINN",
    "fiscalStorageSerialNumber",
    "fiscalStoragePaymentAddress",
    "groupCode",
    "timestamp",
    "isShiftOpened",
    "shiftNumber",
    "shiftReceipt",
    "unsentDocs",
    "firstUnsetDocTimestamp",
    "networkErrorCode",
    "networkErrorMeaning",
];

/// Columns whose digit-only values Excel would mangle as numbers.
pub(super) const IDENTIFIER_COLUMNS: [&str; 5] = [
    "serialNumber",
    "registrationNumber",
    "deviceNumber",
    "fiscalStorageINN",
    "fiscalStorageSerialNumber",
];

/// `cash-registers.json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListDocument<'a> {
    pub(super) fetched_at: &'a str,
    pub(super) total: u64,
    #[serde(serialize_with = "ordered_registers")]
    pub(super) cash_registers: &'a [Value],
}

fn ordered_registers<S: serde::Serializer>(
    registers: &&[Value],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(registers.iter().map(InTableOrder))
}

/// A register's `data` written with its members in table 3's order (then
/// any others alphabetically), so the JSON file reads like the document;
/// serde_json's own map would sort them all alphabetically.
pub(super) struct InTableOrder<'a>(pub(super) &'a Value);

impl Serialize for InTableOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(members) = self.0 else {
            return self.0.serialize(serializer);
        };
        let known = CSV_COLUMNS
            .iter()
            .filter_map(|key| members.get_key_value(*key));
        let others = members
            .iter()
            .filter(|(key, _)| !CSV_COLUMNS.contains(&key.as_str()));
        serializer.collect_map(known.chain(others))
    }
}

pub(super) fn pretty<T: Serialize>(value: &T) -> Result<Vec<u8>, ProviderError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ProviderError::permanent(format!("cannot encode the JSON file: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// A key that appeared more than once in one JSON object.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct Dup {
    /// `data.serialNumber`, `_embedded[3].data.serialNumber`.
    pub path: String,
    pub kept: String,
    pub dropped: String,
}

impl Dup {
    pub(super) fn describe(&self) -> String {
        format!(
            "the service's answer repeats the key {} ({}, then {}); the first value was kept",
            self.path, self.kept, self.dropped
        )
    }
}

/// Parses JSON keeping the *first* value of a repeated key (serde_json
/// alone keeps the last) and reporting every repetition. The seed's
/// single-register sample repeats `serialNumber`; its first value matches
/// the URL and `_links.self`, the second is copied from another sample.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn parse_json(bytes: &[u8]) -> Result<(Value, Vec<Dup>), serde_json::Error> {
    let duplicates = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = FirstWins {
        path: "",
        duplicates: &duplicates,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok((value, duplicates.into_inner()))
}

/// The seed and visitor behind [`parse_json`].
#[derive(Clone, Copy)]
pub(super) struct FirstWins<'a> {
    path: &'a str,
    duplicates: &'a RefCell<Vec<Dup>>,
}

impl<'de> DeserializeSeed<'de> for FirstWins<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstWins<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let seed = FirstWins {
                path: &path,
                duplicates: self.duplicates,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let value = map.next_value_seed(FirstWins {
                path: &path,
                duplicates: self.duplicates,
            })?;
            match object.get(&key) {
                Some(kept) => self.duplicates.borrow_mut().push(Dup {
                    kept: clip(&kept.to_string()),
                    dropped: clip(&value.to_string()),
                    path,
                }),
                None => {
                    object.insert(key, value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// The CSV file: a BOM, the header, one row per register, CRLF line ends.
pub(super) fn csv_document(registers: &[Value]) -> Vec<u8> {
    let mut out = String::from("\u{feff}");
    let header: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_quote(c)).collect();
    out.push_str(&header.join(";"));
    out.push_str("\r\n");
    for data in registers {
        let row: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|column| csv_quote(&csv_cell(column, data)))
            .collect();
        out.push_str(&row.join(";"));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// One cell's text, before quoting.
pub(super) fn csv_cell(column: &str, data: &Value) -> String {
    if column == "networkErrorMeaning" {
        return match data.get("networkErrorCode") {
            None | Some(Value::Null) => String::new(),
            Some(code) => match count(code) {
                Some(n) => usize::try_from(n)
                    .ok()
                    .and_then(|n| NETWORK_ERRORS.get(n))
                    .map(|meaning| meaning.to_string())
                    .unwrap_or_else(|| format!("неизвестный код {n}")),
                None => format!("неизвестный код {code}"),
            },
        };
    }
    let value = match column {
        // Table 3 writes `Timestamp`, the samples `timestamp`.
        "timestamp" => data.get("timestamp").or_else(|| data.get("Timestamp")),
        _ => data.get(column),
    };
    match value {
        // "Given only when it is not 0."
        None | Some(Value::Null) if column == "unsentDocs" => "0".into(),
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => {
            if IDENTIFIER_COLUMNS.contains(&column)
                && !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit())
            {
                format!("=\"{text}\"")
            } else if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{text}")
            } else {
                text.clone()
            }
        }
        Some(Value::Number(n)) if column == "fiscalStoragePercentageUse" => {
            n.to_string().replace('.', ",")
        }
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
    }
}

/// RFC 4180 quoting with `;` as the separator.
pub(super) fn csv_quote(field: &str) -> String {
    if field.contains([';', '"', '\r', '\n']) || field.starts_with(' ') || field.ends_with(' ') {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}
