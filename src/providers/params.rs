//! The one reader of a request's `params`: values taken key by key, each
//! error naming its key (`params.start_date: expected a date YYYY-MM-DD`),
//! the way [`AccountKeys`](crate::config::keys::AccountKeys) reads an
//! account's config. Each provider says what its keys mean; this says how
//! a missing, mistyped or misspelt key is reported, once for all of them.
//! The typed readers are strict: a `null` is a wrong type, not an absent
//! key; [`Params::get`] is there for the services that send `null` for
//! "not given".

use serde_json::{Map, Value};

use crate::job::request::RequestError;

/// A request's `params` object, read key by key.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    /// The params as an object, or an error on `params` saying what was
    /// expected there (`shape`, such as "expected a JSON object …").
    pub fn object(params: &'a Value, shape: &str) -> Result<Params<'a>, RequestError> {
        params
            .as_object()
            .map(|map| Params { map })
            .ok_or_else(|| RequestError::field("params", shape))
    }

    /// The key's full name in errors (`params.KEY`).
    pub fn name(key: &str) -> String {
        format!("params.{key}")
    }

    /// An error about `key`.
    pub fn invalid(key: &str, message: impl Into<String>) -> RequestError {
        RequestError::field(Params::name(key), message)
    }

    /// The whole object.
    pub fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    /// The value of `key` as given (`null` included).
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// The value of `key`, a `null` counting as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Refuses any key not in `allowed`: a misspelt optional key would
    /// otherwise be ignored silently and fetch something else than asked.
    /// `message` says what to write instead.
    pub fn only(&self, allowed: &[&str], message: impl Into<String>) -> Result<(), RequestError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(Params::invalid(unknown, message)),
            None => Ok(()),
        }
    }

    /// The value of `key`, or `message` as the error when it is absent.
    pub fn required(&self, key: &str, message: &str) -> Result<&'a Value, RequestError> {
        self.raw(key).ok_or_else(|| Params::invalid(key, message))
    }

    /// An optional string.
    pub fn string(&self, key: &str) -> Result<Option<&'a str>, RequestError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Params::invalid(
                key,
                format!("expected a string, found {other}"),
            )),
        }
    }

    /// An optional `true` or `false`; with `lenient`, the strings `"true"`
    /// and `"false"` (any case) count too.
    pub fn boolean(&self, key: &str, lenient: bool) -> Result<Option<bool>, RequestError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if lenient && s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if lenient && s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(Params::invalid(
                key,
                format!("expected true or false, found {other}"),
            )),
        }
    }

    /// An optional whole number within `range`; `meaning` says what it counts, for the error.
    pub fn integer_in(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        meaning: &str,
    ) -> Result<Option<u64>, RequestError> {
        match self.raw(key) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .filter(|n| range.contains(n))
                .map(Some)
                .ok_or_else(|| {
                    Params::invalid(
                        key,
                        format!(
                            "expected a whole number from {} to {} ({meaning}), found {value}",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    }

    /// An optional date `YYYY-MM-DD`.
    pub fn date(&self, key: &str) -> Result<Option<chrono::NaiveDate>, RequestError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        value
            .as_str()
            .and_then(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            .map(Some)
            .ok_or_else(|| {
                Params::invalid(key, format!("expected a date YYYY-MM-DD, found {value}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(error: RequestError) -> String {
        error.to_string()
    }

    #[test]
    fn every_error_names_its_key() {
        let value = json!({"a": 1, "b": "x", "d": "2024-13-01", "n": null});
        let p = Params::object(&value, "expected an object").unwrap();
        assert_eq!(
            message(p.string("a").unwrap_err()),
            "field `params.a`: expected a string, found 1"
        );
        assert_eq!(
            message(p.boolean("b", false).unwrap_err()),
            "field `params.b`: expected true or false, found \"x\""
        );
        assert_eq!(
            message(p.date("d").unwrap_err()),
            "field `params.d`: expected a date YYYY-MM-DD, found \"2024-13-01\""
        );
        assert_eq!(
            message(p.integer_in("a", 2..=3, "pages").unwrap_err()),
            "field `params.a`: expected a whole number from 2 to 3 (pages), found 1"
        );
        assert_eq!(
            message(p.only(&["a", "b", "d"], "unknown").unwrap_err()),
            "field `params.n`: unknown"
        );
        assert_eq!(
            message(p.required("z", "required: a z").unwrap_err()),
            "field `params.z`: required: a z"
        );
        assert_eq!(
            message(Params::object(&json!([1]), "expected an object").unwrap_err()),
            "field `params`: expected an object"
        );
    }

    #[test]
    fn null_is_absent_only_through_get() {
        let value = json!({"n": null, "t": "TRUE", "k": 3});
        let p = Params::object(&value, "").unwrap();
        assert!(p.string("n").is_err());
        assert!(p.boolean("n", false).is_err());
        assert!(p.date("n").is_err());
        assert_eq!(p.get("n"), None);
        assert!(p.raw("n").is_some());
        assert_eq!(p.boolean("t", true).unwrap(), Some(true));
        assert!(p.boolean("t", false).is_err());
        assert_eq!(p.integer_in("k", 1..=3, "x").unwrap(), Some(3));
        assert_eq!(
            p.date("missing").unwrap(),
            None,
            "an absent date is not an error"
        );
    }
}
