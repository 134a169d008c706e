//! Unit tests of answer classification, hand-offs and endpoints.

use super::api::*;
use super::*;
use crate::providers::ErrorClass;

#[test]
fn the_seed_answers_are_read_exactly() {
    let ordered = br#"{"general":{"response":10200,"error":false,"message":""},"result":{"storage":"jobs","id":"47e7efd6-ddb6-11e7-819b-0050568925e0"}}"#;
    assert_eq!(
        interpret(ordered, "x"),
        Ok(Answer::Ready {
            id: "47e7efd6-ddb6-11e7-819b-0050568925e0".into(),
            warning: None
        })
    );
    let pending =
        b"{\n\"general\": {\n\"response\": 10202,\n\"error\": false,\n\"message\": \"\"\n}\n}";
    assert_eq!(interpret(pending, "x"), Ok(Answer::Pending));
    let warned = br#"{"general":{"response":10240,"error":false,"message":"period not closed"},"result":{"storage":"files","id":"f"}}"#;
    assert_eq!(
        interpret(warned, "x"),
        Ok(Answer::Ready {
            id: "f".into(),
            warning: Some("period not closed".into())
        })
    );
}

#[test]
fn each_return_code_is_classified() {
    let code = |c: i64, msg: &str| {
        interpret(
            format!(r#"{{"general":{{"response":{c},"error":true,"message":"{msg}"}}}}"#)
                .as_bytes(),
            "ordering",
        )
    };
    let not_found = code(10404, "").unwrap_err();
    assert_eq!(not_found.class, ErrorClass::Permanent);
    assert!(not_found.message.contains("10404"));
    let bad = code(10400, "ИНН указан неверно").unwrap_err();
    assert_eq!(bad.class, ErrorClass::Permanent);
    assert!(
        bad.message.contains("ИНН указан неверно"),
        "{}",
        bad.message
    );
    assert_eq!(
        code(10500, "boom").unwrap_err().class,
        ErrorClass::Transient
    );
    assert_eq!(code(12345, "").unwrap_err().class, ErrorClass::Transient);
    let no_id = interpret(br#"{"general":{"response":10200}}"#, "x").unwrap_err();
    assert_eq!(no_id.class, ErrorClass::Transient);
    let html = interpret(b"<html>502 Bad Gateway</html>", "x").unwrap_err();
    assert_eq!(html.class, ErrorClass::Transient);
    assert!(html.message.contains("502 Bad Gateway"));
}

#[test]
fn the_whole_set_cookie_value_is_echoed() {
    let mut headers = HeaderMap::new();
    headers.append(SET_COOKIE, "other=1".parse().unwrap());
    headers.append(
        SET_COOKIE,
        "ibsession=b94d4f36-606e-4543-bc38-bade7918926a;Path=/a/bs/10098/;Version=1"
            .parse()
            .unwrap(),
    );
    assert_eq!(
        session_cookie(&headers).as_deref(),
        Some("ibsession=b94d4f36-606e-4543-bc38-bade7918926a;Path=/a/bs/10098/;Version=1")
    );
}

fn fresh(base: &str) -> Fresh {
    Fresh::new(FreshAccount {
        base_url: Url::parse(base).unwrap(),
        username: "api".into(),
        password: Secret::new("pw"),
        flow: Flow::IbSession,
        concurrency: 8,
    })
}

#[test]
fn handoffs_with_an_explicit_default_port_stay_on_the_host() {
    let p = fresh("https://stage.1cfresh.com/a/bs/10098/hs/dt/storage");
    let base = Url::parse("https://stage.1cfresh.com/a/bs/10098/hs/dt/storage/async/x").unwrap();
    let url = p
        .handoff_url(
            &base,
            "https://stage.1cfresh.com:443/a/bs/10098/hs/dt/upload/01d3e0",
            "x",
        )
        .unwrap();
    assert_eq!(
        url.as_str(),
        "https://stage.1cfresh.com/a/bs/10098/hs/dt/upload/01d3e0/"
    );
    let err = p
        .handoff_url(
            &base,
            "https://evil.example:443/a/bs/10098/hs/dt/upload/01d3e0",
            "x",
        )
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        p.handoff_url(&base, "https://stage.1cfresh.com:8443/x", "x")
            .is_err()
    );
    assert!(
        p.handoff_url(&base, "http://stage.1cfresh.com/x", "x")
            .is_err()
    );
}

#[test]
fn endpoints_encode_the_data_id_as_one_segment() {
    let p = fresh("https://h/a/bs/1/hs/dt/storage/");
    assert_eq!(
        p.endpoint("async", "tax_usn_calculator").as_str(),
        "https://h/a/bs/1/hs/dt/storage/async/tax_usn_calculator"
    );
    assert_eq!(
        p.endpoint("jobs", "a/b").as_str(),
        "https://h/a/bs/1/hs/dt/storage/jobs/a%2Fb"
    );
}

#[test]
fn operations_must_be_data_ids() {
    assert!(validate_request("tax_usn_calculator", &serde_json::json!({})).is_ok());
    assert!(validate_request("../x", &serde_json::json!({})).is_err());
    assert!(validate_request("a b", &serde_json::json!({})).is_err());
    assert!(validate_request("ok", &serde_json::json!("text")).is_err());
}
