//! Unit tests of the ATOL provider: URLs, answers, errors and files as the
//! seed gives them.

use super::*;
use crate::providers::ErrorClass;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::json;

fn atol(base: &str) -> Atol {
    Atol::new(AtolAccount {
        base_url: Url::parse(base).unwrap(),
        login: "neletest".into(),
        password: Secret::new("v2ApscRjr"),
        concurrency: 4,
    })
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn the_seeds_issued_time_with_seven_fractional_digits_is_read() {
    let issued = "2020-03-31T17:25:06.0289998+03:00";
    // Ten hours later, as in the seed's example: 14 hours are left.
    let now = at("2020-04-01T03:25:06.0289998+03:00");
    assert_eq!(
        token_lifetime(Some(issued), Some(1440.0), now),
        Duration::from_secs(14 * 3600)
    );
    let (token, lifetime) = read_token(
        &json!({"token": "abc", "issued": issued, "expiresIn": 1440}),
        at("2020-03-31T14:25:06.0289998Z"),
    )
    .unwrap();
    assert_eq!(token.expose(), "abc");
    assert_eq!(lifetime, Duration::from_secs(24 * 3600));
}

#[test]
fn token_lifetimes_survive_odd_clocks_and_odd_answers() {
    let now = at("2020-03-31T14:25:06Z");
    // Unreadable `issued`: counted from now.
    assert_eq!(
        token_lifetime(Some("yesterday"), Some(60.0), now),
        Duration::from_secs(3600)
    );
    assert_eq!(
        token_lifetime(None, Some(60.0), now),
        Duration::from_secs(3600)
    );
    // Our clock behind the service's: never more than announced.
    assert_eq!(
        token_lifetime(Some("2020-03-31T20:00:00+03:00"), Some(60.0), now),
        Duration::from_secs(3600)
    );
    // Already over by our clock: used briefly, not re-requested at once.
    assert_eq!(
        token_lifetime(Some("2020-03-01T00:00:00+03:00"), Some(1440.0), now),
        SKEWED_LIFETIME
    );
    // Missing or nonsense `expiresIn`: the seed's 24 hours.
    assert_eq!(token_lifetime(None, None, now), SEED_LIFETIME);
    assert_eq!(token_lifetime(None, Some(-5.0), now), SEED_LIFETIME);
    assert!(token_lifetime(None, Some(f64::MAX), now) > SEED_LIFETIME);
    // `expiresIn` as text.
    let (_, lifetime) = read_token(&json!({"token": "t", "expiresIn": "30"}), now).unwrap();
    assert_eq!(lifetime, Duration::from_secs(1800));
    assert!(read_token(&json!({"token": "", "expiresIn": 30}), now).is_err());
    assert!(read_token(&json!({"issued": "x"}), now).is_err());
}

#[test]
fn the_seeds_repeated_serial_number_keeps_the_first_value() {
    // The seed's single-register sample, verbatim in its data part.
    let sample = r#"{
      "_links": {
        "self": {"href": "https://online.atol.ru/api/kkt/v1/cash-registers/00107702504819", "rel": "get-cash-register", "action": "GET"},
        "get-cash-register": {"href": "https://online.atol.ru/api/kkt/v1/cash-registers/00107702504819", "rel": "get-cash-register", "action": "GET"}
      },
      "data": {
        "serialNumber": "00107702504819",
        "serialNumber": "00107703864827",
        "registrationNumber": "000000003027865",
        "deviceNumber": "KKT024219",
        "fiscalizationDate": "2019-07-22T14:03:00+00:00",
        "fiscalStorageExpiration": "2020-11-02T21:00:00+00:00",
        "signedDocuments": 213350,
        "fiscalStoragePercentageUse": 85.34,
        "fiscalStorageINN": "3026455760",
        "fiscalStorageSerialNumber": "9999078902004339",
        "fiscalStoragePaymentAddress": "test.qa.ru",
        "groupCode": "test-qa-ru_14605",
        "timestamp": "2019-12-05T10:45:30+00:00",
        "isShiftOpened": true,
        "shiftNumber": 126,
        "shiftReceipt": 2278,
        "unsentDocs": 1510,
        "firstUnsetDocTimestamp": "2019-12-05T08:46:00+00:00",
        "networkErrorCode": 0
      }
    }"#;
    let (value, dups) = parse_json(sample.as_bytes()).unwrap();
    let data = item_data(&value).unwrap();
    assert_eq!(data["serialNumber"], "00107702504819");
    assert_eq!(data["fiscalStoragePercentageUse"], 85.34);
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0].path, "data.serialNumber");
    let warning = dups[0].describe();
    assert!(
        warning.contains("\"00107702504819\", then \"00107703864827\""),
        "{warning}"
    );
    // Repeats deeper down and in arrays are found too; plain JSON is unchanged.
    let (value, dups) = parse_json(br#"{"a":[{"b":1,"b":2}],"c":{"d":null}}"#).unwrap();
    assert_eq!(value, json!({"a": [{"b": 1}], "c": {"d": null}}));
    assert_eq!(dups[0].path, "a[0].b");
    assert!(parse_json(b"{\"a\":1} trailing").is_err());
    assert!(parse_json(b"<html>").is_err());
}

#[test]
fn embedded_may_be_the_samples_array_or_table_3s_object() {
    let item = json!({"_links": {}, "data": {"serialNumber": "1"}});
    let as_array = json!({"_embedded": [item], "total": 1});
    let as_object = json!({"_embedded": {"cashRegisters": [item]}, "total": "1"});
    for page in [as_array, as_object] {
        let page = read_page(&page).unwrap();
        assert_eq!(page.items, vec![json!({"serialNumber": "1"})]);
        assert_eq!(page.total, Some(1));
        assert_eq!(page.next, None);
    }
    assert!(read_page(&json!({"total": 0})).unwrap().items.is_empty());
    assert!(
        read_page(&json!({"_embedded": {}}))
            .unwrap()
            .items
            .is_empty()
    );
    assert!(read_page(&json!({"_embedded": {"a": [], "b": []}})).is_err());
    assert!(read_page(&json!({"_embedded": "x"})).is_err());
    assert!(read_page(&json!({"_embedded": [{"_links": {}}]})).is_err());
    assert!(read_page(&json!({"_embedded": [], "total": -1})).is_err());
    assert!(read_page(&json!({"_links": {"next": {"rel": "x"}}})).is_err());
    // Items that are the data themselves lose their links.
    let bare = read_page(&json!({"_embedded": [{"serialNumber": "2", "_links": {}}]})).unwrap();
    assert_eq!(bare.items, vec![json!({"serialNumber": "2"})]);
}

#[test]
fn next_links_give_only_their_offset_and_never_their_host() {
    let base = Url::parse("https://online.atol.ru").unwrap();
    let seed = "https://online.atol.ru/api/kkt/v1/cash-registers?offset=101&limit=1";
    assert_eq!(
        next_offset(seed, &base, 100, 1).unwrap(),
        NextPage {
            offset: 101,
            foreign_origin: None
        }
    );
    let proxied = Url::parse("http://127.0.0.1:8080/atol").unwrap();
    let elsewhere = next_offset(seed, &proxied, 100, 1).unwrap();
    assert_eq!(elsewhere.offset, 101);
    assert_eq!(
        elsewhere.foreign_origin.as_deref(),
        Some("https://online.atol.ru")
    );
    // An explicit default port is the same origin; another port is not.
    assert!(
        next_offset("https://online.atol.ru:443/x?offset=5", &base, 0, 5)
            .unwrap()
            .foreign_origin
            .is_none()
    );
    assert!(
        next_offset("https://online.atol.ru:8443/x?offset=5", &base, 0, 5)
            .unwrap()
            .foreign_origin
            .is_some()
    );
    // Relative links, links without an offset, links going backwards.
    assert_eq!(
        next_offset("/api/kkt/v1/cash-registers?limit=5&offset=10", &base, 5, 5)
            .unwrap()
            .offset,
        10
    );
    assert_eq!(next_offset("?limit=5", &base, 5, 5).unwrap().offset, 10);
    assert!(next_offset("?offset=5", &base, 5, 5).is_err());
    assert!(next_offset("?offset=0", &base, 5, 0).is_err());
}

#[test]
fn urls_follow_the_seed() {
    let p = atol("http://127.0.0.1:9/atol/");
    assert_eq!(
        p.list_url(100, 1).as_str(),
        "http://127.0.0.1:9/atol/api/kkt/v1/cash-registers?limit=1&offset=100"
    );
    assert_eq!(
        p.endpoint(&["api", "kkt", "v1", "cash-registers", "00107702504819"])
            .as_str(),
        "http://127.0.0.1:9/atol/api/kkt/v1/cash-registers/00107702504819"
    );
    assert_eq!(
        atol("https://online.atol.ru")
            .endpoint(&["api", "auth", "v1", "gettoken"])
            .as_str(),
        "https://online.atol.ru/api/auth/v1/gettoken"
    );
}

#[test]
fn problem_details_of_table_6_become_readable_errors() {
    let validation = r#"{"type":"https://tools.ietf.org/html/rfc7231#section-6.5.1","title":"Ошибка валидации","status":400,"traceId":"|a1b2.","errors":{"limit":["The field limit must be between 1 and 100."],"$.pass":["Required"]}}"#.as_bytes();
    let problem = Problem::parse(validation).unwrap();
    assert_eq!(
        problem.describe(),
        "Ошибка валидации; $.pass: Required; limit: The field limit must be between 1 and 100. (traceId |a1b2.)"
    );
    let wrong = r#"{"type":"https://tools.ietf.org/html/rfc7235#section-3.1","title":"Неверный логин или пароль","status":401,"detail":"Неверный логин или пароль","instance":"/api/auth/v1/gettoken","traceId":"t1","errorCode":"WrongLoginOrPassword"}"#.as_bytes();
    let problem = Problem::parse(wrong).unwrap();
    assert_eq!(problem.error_code.as_deref(), Some("WrongLoginOrPassword"));
    assert_eq!(
        problem.describe(),
        "Неверный логин или пароль [errorCode WrongLoginOrPassword] (traceId t1)"
    );
    // Table 5's `errors` as a string, a detail that differs from the title.
    let odd = br#"{"title":"T","detail":"D","errors":"bad","status":"400"}"#;
    assert_eq!(Problem::parse(odd).unwrap().describe(), "T: D; bad");
    // The seed's 403 sample has a trailing comma: not JSON, so the
    // status alone decides and the body is quoted as it is.
    let forbidden = b"{\"type\":\"x\",\"title\":\"Forbidden\",\"status\":403,\"traceId\":\"t\",}";
    assert_eq!(Problem::parse(forbidden), None);
    assert_eq!(Problem::parse(b"<html>oops</html>"), None);
    assert_eq!(Problem::parse(br#"{"token":"x"}"#), None);
    let long = format!(r#"{{"title":"{}"}}"#, "я".repeat(1000));
    assert!(
        Problem::parse(long.as_bytes())
            .unwrap()
            .describe()
            .chars()
            .count()
            < 310
    );
}

#[test]
fn statuses_are_classified_in_one_place() {
    let p = atol("https://online.atol.ru");
    let class = |status: u16, body: &[u8]| {
        p.refusal(
            StatusCode::from_u16(status).unwrap(),
            Some(Duration::from_secs(3)),
            body,
            "reading",
            "no such register",
            None,
        )
    };
    let bad = class(
        400,
        r#"{"title":"Ошибка валидации","status":400,"traceId":"tr","errors":{"limit":["too big"]}}"#.as_bytes(),
    );
    assert_eq!(bad.class, ErrorClass::Permanent);
    assert!(bad.message.contains("limit: too big"), "{}", bad.message);
    assert!(bad.message.contains("traceId tr"), "{}", bad.message);
    let forbidden = class(403, b"{\"title\":\"Forbidden\",\"status\":403,}");
    assert_eq!(forbidden.class, ErrorClass::Permanent);
    assert!(
        forbidden.message.contains("does not allow"),
        "{}",
        forbidden.message
    );
    let missing = class(404, br#"{"title":"Not Found","status":404,"traceId":"x"}"#);
    assert_eq!(missing.class, ErrorClass::Permanent);
    assert!(
        missing
            .message
            .contains("no such register (HTTP 404 Not Found)"),
        "{}",
        missing.message
    );
    let slow = class(429, b"");
    assert_eq!(slow.class, ErrorClass::Transient);
    assert_eq!(slow.account_cooldown, Some(Duration::from_secs(3)));
    for status in [500, 502, 503, 408] {
        let e = class(
            status,
            r#"{"title":"Ошибка сервера","status":500,"traceId":"x"}"#.as_bytes(),
        );
        assert_eq!(e.class, ErrorClass::Transient, "{status}");
        assert!(e.message.contains("Ошибка сервера"), "{}", e.message);
    }
    let html = class(502, b"<html><body>Bad gateway</body></html>");
    assert_eq!(html.class, ErrorClass::Transient);
    assert!(html.message.contains("Bad gateway"), "{}", html.message);
    assert_eq!(class(409, b"").class, ErrorClass::Permanent);
}

#[test]
fn secrets_echoed_by_the_service_are_scrubbed() {
    let p = atol("https://online.atol.ru");
    let token = Secret::new("tok-123");
    let e = p.refusal(
        StatusCode::BAD_REQUEST,
        None,
        br#"{"title":"bad pass v2ApscRjr","detail":"token tok-123","status":400}"#,
        "x",
        "",
        Some(&token),
    );
    assert!(!e.message.contains("v2ApscRjr"), "{}", e.message);
    assert!(!e.message.contains("tok-123"), "{}", e.message);
}

fn csv_rows(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let text = text.strip_prefix('\u{feff}').expect("a BOM");
    assert!(text.ends_with("\r\n"));
    text.split_terminator("\r\n").map(str::to_string).collect()
}

#[test]
fn the_csv_is_quoted_for_excel_and_explains_network_errors() {
    let data = json!({
        "serialNumber": "00107703864827",
        "registrationNumber": "000000003027865",
        "deviceNumber": "KKT024219",
        "fiscalStoragePercentageUse": 85.34,
        "fiscalStorageINN": "3026455760",
        "fiscalStorageSerialNumber": "9999078902004339",
        "fiscalStoragePaymentAddress": "г. Москва; касса \"Север\"",
        "groupCode": "=HYPERLINK(\"x\")",
        "Timestamp": "2019-12-05T10:45:30+00:00",
        "isShiftOpened": true,
        "shiftNumber": 126,
        "networkErrorCode": 2
    });
    let rows = csv_rows(&csv_document(&[data]));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], CSV_COLUMNS.join(";"));
    assert_eq!(
        rows[1],
        "\"=\"\"00107703864827\"\"\";\"=\"\"000000003027865\"\"\";KKT024219;;;;85,34;\
         \"=\"\"3026455760\"\"\";\"=\"\"9999078902004339\"\"\";\
         \"г. Москва; касса \"\"Север\"\"\";\"'=HYPERLINK(\"\"x\"\")\";\
         2019-12-05T10:45:30+00:00;true;126;;0;;2;\
         Ошибка сетевых настроек или нет соединения с сервером ОФД"
    );
}

#[test]
fn json_files_list_a_registers_fields_in_table_3s_order() {
    let data = json!({"zeta": 1, "networkErrorCode": 0, "groupCode": "g", "serialNumber": "1"});
    let text = String::from_utf8(pretty(&InTableOrder(&data)).unwrap()).unwrap();
    let order: Vec<usize> = ["serialNumber", "groupCode", "networkErrorCode", "zeta"]
        .iter()
        .map(|key| text.find(&format!("\"{key}\"")).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, data, "nothing lost or changed");
}

#[test]
fn every_network_error_code_has_its_meaning() {
    let meaning = |code: Value| csv_cell("networkErrorMeaning", &json!({"networkErrorCode": code}));
    assert_eq!(meaning(json!(0)), "Нет ошибок");
    assert_eq!(meaning(json!(8)), "ОФД-процесс не инициализирован");
    assert_eq!(meaning(json!("5")), "Превышен таймаут ожидания квитанции");
    assert_eq!(meaning(json!(9)), "неизвестный код 9");
    assert_eq!(meaning(json!(-1)), "неизвестный код -1");
    assert_eq!(csv_cell("networkErrorMeaning", &json!({})), "");
    assert_eq!(csv_quote(" padded"), "\" padded\"");
    assert_eq!(csv_quote("two\nlines"), "\"two\nlines\"");
    assert_eq!(csv_quote("plain"), "plain");
}

#[test]
fn requests_are_checked_before_they_are_accepted() {
    let ok = |op: &str, params: Value| parse_request(op, &params);
    assert_eq!(
        ok("cash-registers", json!({})),
        Ok(Operation::List { limit: 100 })
    );
    assert_eq!(
        ok("cash-registers", json!({"limit": 5})),
        Ok(Operation::List { limit: 5 })
    );
    assert_eq!(
        ok("cash-register", json!({"serialNumber": "00107703864827"})),
        Ok(Operation::One {
            serial: "00107703864827".into()
        })
    );
    for (op, params) in [
        ("receipts", json!({})),
        ("cash-registers", json!([])),
        ("cash-registers", json!({"limit": 0})),
        ("cash-registers", json!({"limit": 101})),
        ("cash-registers", json!({"limit": "5"})),
        ("cash-registers", json!({"limit": 5.5})),
        ("cash-registers", json!({"offset": 5})),
        ("cash-register", json!({})),
        ("cash-register", json!({"serialNumber": ""})),
        ("cash-register", json!({"serialNumber": "../x"})),
        ("cash-register", json!({"serialNumber": "00 1"})),
        ("cash-register", json!({"serialNumber": 107703864827u64})),
        ("cash-register", json!({"serialNumber": "1", "limit": 5})),
        ("cash-register", json!({"serialnumber": "1"})),
    ] {
        assert!(
            validate_request(op, &params).is_err(),
            "{op} {params} should be refused"
        );
    }
    let numeric = validate_request("cash-register", &json!({"serialNumber": 1077}))
        .unwrap_err()
        .to_string();
    assert!(numeric.contains("leading zeros"), "{numeric}");
}

#[test]
fn cursors_never_hold_more_than_the_walk_needs() {
    let cursor = Cursor {
        offset: 10,
        total: Some(23),
        registers: vec![json!({"serialNumber": "1"})],
        ..Cursor::default()
    };
    let value = to_value(&cursor);
    assert_eq!(
        serde_json::from_value::<Cursor>(value.clone()).unwrap(),
        cursor
    );
    assert_eq!(
        serde_json::from_value::<Cursor>(json!({})).unwrap(),
        Cursor::default()
    );
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert!(!keys.iter().any(|k| k.contains("token")), "{keys:?}");
}
