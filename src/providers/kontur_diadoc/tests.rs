//! Unit tests of the Kontur.Diadoc provider: protobuf answers, statuses,
//! both auth schemes, requests and endpoints.

use super::*;
use crate::config::keys::Environment;
use crate::providers::{DEFAULT_COOLDOWN, ErrorClass};

fn keys<'a>(toml_text: &str, env: &'a Environment) -> AccountKeys<'a> {
    let table: std::collections::BTreeMap<String, toml::Value> = toml::from_str(toml_text).unwrap();
    AccountKeys::new("dd", table, env)
}

fn account(toml_text: &str) -> Result<KonturDiadocAccount, ConfigError> {
    let env = Environment::default();
    let mut keys = keys(toml_text, &env);
    let account = KonturDiadocAccount::from_keys(&mut keys)?;
    keys.finish()?;
    Ok(account)
}

#[test]
fn a_hand_encoded_document_protocol_decodes_with_fields_one_and_two() {
    // Field 1 (PrintForm), wire type 2: tag 0x0a; field 2 (Signature): 0x12.
    let mut wire = vec![0x0a, 8];
    wire.extend_from_slice(b"%PDF-1.4");
    wire.extend_from_slice(&[0x12, 4, 0x30, 0x82, 0x01, 0x02]);
    let protocol = DocumentProtocol::decode(wire.as_slice()).unwrap();
    assert_eq!(protocol.print_form, b"%PDF-1.4");
    assert_eq!(protocol.signature, [0x30, 0x82, 0x01, 0x02]);
    // And the encoder writes the same bytes, so the simulator speaks the
    // same wire format as Diadoc.
    assert_eq!(protocol.encode_to_vec(), wire);
}

#[test]
fn a_real_shaped_protocol_round_trips_and_unknown_fields_are_skipped() {
    let pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n".repeat(40);
    let sig: Vec<u8> = (0..=255u8).cycle().take(1500).collect();
    let mut wire = DocumentProtocol {
        print_form: pdf.clone(),
        signature: sig.clone(),
    }
    .encode_to_vec();
    // Lengths above 127 take two varint bytes.
    assert_eq!(
        &wire[..3],
        &[
            0x0a,
            (pdf.len() & 0x7f) as u8 | 0x80,
            (pdf.len() >> 7) as u8
        ]
    );
    // A field a newer Diadoc might add (3, varint) does not break decoding.
    wire.extend_from_slice(&[0x18, 0x01]);
    let back = DocumentProtocol::decode(wire.as_slice()).unwrap();
    assert_eq!(back.print_form, pdf);
    assert_eq!(back.signature, sig);
    assert!(DocumentProtocol::decode(&b"<html>oops</html>"[..]).is_err());
}

#[test]
fn archive_answers_are_read_as_json_or_protobuf() {
    let json = br#"{"ZipFileNameOnShelf":"DocumentZip/1/d.zip"}"#;
    assert_eq!(
        zip_name_on_shelf(Some("application/json; charset=utf-8"), json).unwrap(),
        Some("DocumentZip/1/d.zip".into())
    );
    assert_eq!(
        zip_name_on_shelf(None, br#"{"ZipFileNameOnShelf":""}"#).unwrap(),
        None
    );
    assert_eq!(
        zip_name_on_shelf(None, br#"{"ZipFileNameOnShelf":null}"#).unwrap(),
        None
    );
    assert_eq!(zip_name_on_shelf(None, b"").unwrap(), None);
    let proto = DocumentZipGenerationResult {
        zip_file_name_on_shelf: Some("x/y.zip".into()),
    }
    .encode_to_vec();
    assert_eq!(proto[0], 0x0a, "field 1, length-delimited");
    assert_eq!(
        zip_name_on_shelf(Some("application/x-protobuf"), &proto).unwrap(),
        Some("x/y.zip".into())
    );
    assert!(zip_name_on_shelf(Some("application/json"), b"<html>").is_err());
}

#[test]
fn two_hundred_family_answers_with_retry_after_are_not_ready() {
    let ra = Some(Duration::from_secs(1));
    assert!(not_ready(StatusCode::OK, ra));
    assert!(not_ready(StatusCode::ACCEPTED, None));
    assert!(not_ready(StatusCode::NO_CONTENT, None));
    assert!(not_ready(StatusCode::NO_CONTENT, ra));
    assert!(!not_ready(StatusCode::OK, None));
    match pending(&Cursor::default(), ra, StatusCode::OK, "the protocol") {
        Step::Wait {
            hint, poll, note, ..
        } => {
            assert_eq!(hint, ra);
            assert!(poll);
            assert!(
                note.contains("HTTP 200") && note.contains("Retry-After"),
                "{note}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_error_status_is_classified_with_what_to_do() {
    let c = |code: u16, body: &str| {
        classify(
            StatusCode::from_u16(code).unwrap(),
            body,
            Some(Duration::from_secs(3)),
            "x",
            "box-1",
        )
    };
    for code in [400, 401, 402, 403, 404, 405, 409] {
        assert_eq!(c(code, "").class, ErrorClass::Permanent, "{code}");
    }
    let unpaid = c(402, "").message;
    assert!(
        unpaid.contains("subscription") && unpaid.contains("renew"),
        "{unpaid}"
    );
    assert!(unpaid.contains("box-1"), "{unpaid}");
    let denied = c(403, "").message;
    assert!(
        denied.contains("access") && denied.contains("grant"),
        "{denied}"
    );
    let conflict = c(
        409,
        "Generating print form for this type of document is not supported",
    )
    .message;
    assert!(conflict.contains("is not supported"), "{conflict}");
    let limited = c(429, "");
    assert_eq!(limited.class, ErrorClass::Transient);
    assert_eq!(limited.account_cooldown, Some(Duration::from_secs(3)));
    let limited = classify(StatusCode::TOO_MANY_REQUESTS, "", None, "x", "b");
    assert_eq!(limited.account_cooldown, Some(DEFAULT_COOLDOWN));
    for code in [500, 502, 503] {
        let e = c(code, "boom");
        assert_eq!(e.class, ErrorClass::Transient, "{code}");
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }
}

#[test]
fn the_classic_header_is_one_line_with_comma_separated_parameters() {
    let key = Secret::new("testClient-8ee1638deae84c86b8e2069955c2825a");
    let token = Secret::new("3IU0iPhu/Ui5WSq6+lrPw==");
    assert_eq!(
        diadoc_auth(&key, Some(&token)),
        "DiadocAuth ddauth_api_client_id=testClient-8ee1638deae84c86b8e2069955c2825a,ddauth_token=3IU0iPhu/Ui5WSq6+lrPw=="
    );
    assert_eq!(
        diadoc_auth(&key, None),
        "DiadocAuth ddauth_api_client_id=testClient-8ee1638deae84c86b8e2069955c2825a"
    );
    let value = sensitive(&diadoc_auth(&key, Some(&token))).unwrap();
    assert!(value.is_sensitive());
    assert!(!format!("{value:?}").contains("3IU0iPhu"));
}

#[test]
fn requests_need_the_three_ids_and_a_known_operation() {
    let ok = serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d"});
    for op in OPERATIONS {
        assert!(validate_request(op, &ok).is_ok(), "{op}");
    }
    let zip =
        serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d", "fullDocflow": true});
    assert!(validate_request("document-zip", &zip).is_ok());
    let err = validate_request("document-protocol", &zip).unwrap_err();
    assert!(err.to_string().contains("params.fullDocflow"), "{err}");
    let err = validate_request("protocol", &ok).unwrap_err();
    assert!(err.to_string().contains("document-protocol"), "{err}");
    for (params, field) in [
        (
            serde_json::json!({"messageId": "m", "documentId": "d"}),
            "params.boxId",
        ),
        (
            serde_json::json!({"boxId": "b", "messageId": 7, "documentId": "d"}),
            "params.messageId",
        ),
        (
            serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "  "}),
            "params.documentId",
        ),
        (
            serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d\n"}),
            "",
        ),
        (
            serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "x".repeat(101)}),
            "params.documentId",
        ),
        (serde_json::json!("text"), "params"),
    ] {
        let result = validate_request("print-form", &params);
        if field.is_empty() {
            // Surrounding whitespace (a trailing newline) is trimmed.
            assert!(result.is_ok(), "{params}");
        } else {
            let err = result.unwrap_err();
            assert!(err.to_string().contains(field), "{params}: {err}");
        }
    }
    let bad_flag = serde_json::json!({"boxId": "b", "messageId": "m", "documentId": "d", "fullDocflow": "yes"});
    assert!(validate_request("document-zip", &bad_flag).is_err());
    let target = Target::from_params(
        Operation::Zip,
        &serde_json::json!({"boxId": " b ", "messageId": "m", "documentId": "../d", "fullDocflow": "True"}),
    )
    .unwrap();
    assert_eq!(target.box_id, "b");
    assert!(target.full_docflow);
    assert_eq!(target.file_stem(), ".._d");
}

#[test]
fn both_auth_schemes_are_configured_with_their_own_keys() {
    let classic =
        account("client_id = \"key-1\"\nlogin = \"buh@example.ru\"\npassword = \"pw\"\n").unwrap();
    assert_eq!(classic.base_url.as_str(), "https://diadoc-api.kontur.ru/");
    assert_eq!(classic.concurrency, 4);
    assert!(matches!(classic.auth, Auth::Diadoc { ref login, .. } if login == "buh@example.ru"));
    assert!(!format!("{classic:?}").contains("pw\""), "{classic:?}");

    let oidc = account(
        "auth = \"oidc\"\nclient_id = \"svc\"\napi_key = \"k\"\ngrant = \"refresh_token\"\nrefresh_token = \"r\"\n",
    )
    .unwrap();
    match oidc.auth {
        Auth::Oidc(config) => {
            assert_eq!(config.scope, DEFAULT_SCOPE);
            assert_eq!(config.identity_url.as_str(), "https://identity.kontur.ru/");
        }
        other => panic!("{other:?}"),
    }
    let staging = account(
        "auth = \"oidc\"\nclient_id = \"svc\"\napi_key = \"k\"\nscope = \"Diadoc.PublicAPI.Staging\"\nconcurrency = 2\n",
    )
    .unwrap();
    assert_eq!(staging.concurrency, 2);
    assert!(matches!(staging.auth, Auth::Oidc(ref c) if c.scope == "Diadoc.PublicAPI.Staging"));

    let err = account("client_id = \"k\"\nlogin = \"l\"\n").unwrap_err();
    assert!(err.to_string().contains("accounts.dd.password"), "{err}");
    let err = account("client_id = \"k\"\nlogin = \"l\"\npassword = \"p\"\napi_key = \"x\"\n")
        .unwrap_err();
    assert!(
        err.to_string().contains("accounts.dd.api_key")
            && err.to_string().contains("belongs to auth = \"oidc\""),
        "{err}"
    );
    let err = account("client_id = \"a,b\"\nlogin = \"l\"\npassword = \"p\"\n").unwrap_err();
    assert!(
        err.to_string().contains("client_id") && !err.to_string().contains("a,b"),
        "{err}"
    );
    let err = account("auth = \"basic\"\n").unwrap_err();
    assert!(err.to_string().contains("accounts.dd.auth"), "{err}");
    let err = account("auth = \"oidc\"\napi_key = \"k\"\n").unwrap_err();
    assert!(err.to_string().contains("accounts.dd.client_id"), "{err}");
}

#[test]
fn endpoints_keep_the_base_path_and_encode_the_ids() {
    let provider = KonturDiadoc::new(
        "dd",
        account("base_url = \"http://127.0.0.1:9/diadoc/\"\nclient_id = \"k\"\nlogin = \"l\"\npassword = \"p\"\n")
            .unwrap(),
    );
    let target = Target {
        box_id: "b&x".into(),
        message_id: "m".into(),
        document_id: "d d".into(),
        full_docflow: true,
    };
    assert_eq!(
        provider
            .generate_url("GenerateDocumentZip", &target, true)
            .as_str(),
        "http://127.0.0.1:9/diadoc/GenerateDocumentZip?boxId=b%26x&messageId=m&documentId=d+d&fullDocflow=true"
    );
    assert_eq!(
        provider.endpoint(&["V3", "Authenticate"]).as_str(),
        "http://127.0.0.1:9/diadoc/V3/Authenticate"
    );
    assert_eq!(provider.logins(), 0);
}
