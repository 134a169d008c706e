//! Unit tests of the OFD.ru provider: requests, answers, verdicts, URLs
//! and cursors as the seed gives them.

use super::*;
use crate::providers::ErrorClass;
use serde_json::json;

fn who() -> Who<'static> {
    Who {
        account: "ofd-main",
        job: "nov-2021",
    }
}

fn valid() -> Value {
    json!({
        "ReportType": "ReceiptReport",
        "DateFrom": "2021-11-01T00:00:00.000+03:00",
        "DateTo": "2021-11-02T23:59:59.000+03:00",
        "KktList": ["7961d10e-f36a-4cce-a8db-add93309bb9e"],
        "SelectAllKkts": false,
        "UseXlsxFile": true,
    })
}

fn field_error(params: Value) -> String {
    match validate_request("report", &params) {
        Err(RequestError::Field { field, message }) => format!("{field}: {message}"),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn the_seeds_order_example_is_a_valid_request() {
    let seed = json!({
        "OfdAgreementId": "d64249c5-61b8-4ed9-b729-9bd7cde127db",
        "CustomReportId": null,
        "Name": "Сверка",
        "DateFrom": "2021-11-01T00:00:00.000+03:00",
        "DateTo": "2021-11-02T23:59:59.000+03:00",
        "EmailsToNotify": "",
        "FfdType": 0,
        "GroupsList": [],
        "KktList": ["7961d10e-f36a-4cce-a8db-add93309bb9e"],
        "ReportType": "ReceiptReport",
        "SelectAllKkts": false,
        "UseXlsxFile": true
    });
    assert_eq!(validate_request("report", &seed), Ok(()));
    assert_eq!(validate_request("report", &valid()), Ok(()));
    let custom = json!({"CustomReportId": "00000000-0000-0000-0000-000000000001", "DateFrom": "2021-11-01", "DateTo": "2021-11-01"});
    assert_eq!(validate_request("report", &custom), Ok(()));
}

#[test]
fn invalid_requests_say_which_field_is_wrong() {
    assert!(validate_request("list", &valid()).is_err());
    assert!(field_error(json!([1])).starts_with("params:"));
    let e = field_error(json!({"DateFrom": "2021-11-01", "DateTo": "2021-11-02"}));
    assert!(e.starts_with("params.ReportType: required"), "{e}");
    let mut p = valid();
    p["ReportType"] = json!("receiptreport");
    let e = field_error(p);
    assert!(e.contains("did you mean \"ReceiptReport\""), "{e}");
    let mut p = valid();
    p["ReportType"] = json!("SalesBook");
    assert!(field_error(p).contains("not an OFD.ru report type"));
    let mut p = valid();
    p["DateFrom"] = json!("2021-11-03T00:00:00");
    let e = field_error(p);
    assert!(e.contains("DateFromGreaterThanDateTo"), "{e}");
    let mut p = valid();
    p.as_object_mut().unwrap().remove("DateTo");
    assert!(field_error(p).starts_with("params.DateTo: required"));
    let mut p = valid();
    p["DateTo"] = json!("2nd of November");
    assert!(field_error(p).contains("not an ISO 8601"));
    let mut p = valid();
    p["KktList"] = json!("7961d10e");
    assert!(field_error(p).starts_with("params.KktList"));
    let mut p = valid();
    p["SelectAllKkts"] = json!("yes");
    assert!(field_error(p).starts_with("params.SelectAllKkts"));
    let mut p = valid();
    p["ofdAgreementId"] = json!("not-a-uuid");
    assert!(field_error(p).starts_with("params.OfdAgreementId"));
    let mut p = valid();
    p["CustomReportId"] = json!(5);
    assert!(field_error(p).starts_with("params.CustomReportId"));
}

#[test]
fn dates_with_offsets_compare_as_instants_and_others_as_written() {
    let w = |s: &str| When::parse(s).unwrap();
    // 23:00 in Moscow is 20:00 UTC: before 21:00 UTC.
    assert!(!w("2021-11-01T23:00:00+03:00").is_after(&w("2021-11-01T21:00:00Z")));
    assert!(w("2021-11-02T00:00:00").is_after(&w("2021-11-01T23:59:59.000+03:00")));
    assert!(!w("2021-11-01").is_after(&w("2021-11-01T00:00:00")));
    assert_eq!(
        w("2021-11-01T00:00:00.000+03:00").wall_clock(),
        w("2021-11-01T00:00:00").wall_clock()
    );
}

/// Section 3.2's example, character for character (the list element
/// shown once; the seed's `...` stands for more of them).
const SEED_BARE_LIST: &str = r#"{
  "OfdAgreementLimit": 500000,
  "ConsumedLimit": 0,
  "List": [
{
  "Id": "1577b8bc-a384-4f1d-ad00-b0c2440601ef",
  "CDateUtc": "2018-07-12T12:28:06",
  "ReportType": "CloseShiftReport",
  "DateFrom": "2018-07-12T00:00:00",
  "DateTo": "2018-08-12T23:59:59",
  "ExpiredDate": "2018-07-19T12:28:06",
  "KktCount": 8,
  "ReportSize": 8,
  "Status": "Done",
  "AccountEmail": ofdtester1@ofd.ru
}
],
" TotalCount ": 9
}"#;

#[test]
fn the_seeds_bare_list_with_an_unquoted_email_is_read() {
    assert!(serde_json::from_str::<Value>(SEED_BARE_LIST).is_err());
    let list = parse_list(SEED_BARE_LIST.as_bytes()).unwrap();
    assert_eq!(list.reports.len(), 1);
    let r = &list.reports[0];
    assert_eq!(r.id, "1577b8bc-a384-4f1d-ad00-b0c2440601ef");
    assert_eq!(status_of(r), Status::Done);
    assert_eq!(r.name, None);
    let value = parse_lenient(SEED_BARE_LIST.as_bytes()).unwrap();
    assert_eq!(value["List"][0]["AccountEmail"], "ofdtester1@ofd.ru");
    assert_eq!(field(&value, "TotalCount"), Some(&json!(9)));
}

#[test]
fn bare_words_are_quoted_only_where_values_go() {
    let fixed = quote_bare_values(
        r#"{"a": x@y.z, "b": [one, 2, true, "s: t"], "c": -1.5e3, "d": 2021-10-25 }"#,
    );
    let v: Value = serde_json::from_str(&fixed).unwrap();
    assert_eq!(
        v,
        json!({"a": "x@y.z", "b": ["one", 2, true, "s: t"], "c": -1.5e3, "d": "2021-10-25"})
    );
    let escaped = quote_bare_values(r#"{"q": "say \"hi\": now", "w": ok}"#);
    assert_eq!(serde_json::from_str::<Value>(&escaped).unwrap()["w"], "ok");
}

#[test]
fn the_seeds_wrapped_list_is_read_with_its_agreement() {
    let seed = r#"{"Status":"Success","Data":{"OfdAgreementId":"56ddf007-76d7-4157-8e85-2d9fe0704cb4","OfdAgreementLimit":500000,"ConsumedLimit":0,
      "List":[{"Id":"a0e5354a-709c-41de-ba48-63e7b7e05ee7","CDateUtc":"2021-10-25T08:13:41","ReportType":"CloseShiftReport",
      "DateFrom":"2021-10-25T00:00:00","DateTo":"2021-10-25T11:12:34","Status":"Processing","Name":"Отчёт по сменам",
      "FileFormat":"Xlsx","AssumptiveCompleteTime":"2021-10-25T08:14:41",
      "DownloadUrl":"/api/customer/reports/a0e5354a-709c-41de-ba48-63e7b7e05ee7?OfdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4",
      "DeleteUrl":"/api/customer/reports/a0e5354a-709c-41de-ba48-63e7b7e05ee7?ofdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4",
      "CancelUrl":"/api/customer/reports/a0e5354a-709c-41de-ba48-63e7b7e05ee7/cancel?ofdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4"}],
      "TotalCount":1},"Elapsed":"00:00:25.3858651"}"#;
    let list = parse_list(seed.as_bytes()).unwrap();
    assert_eq!(
        list.agreement_id.as_deref(),
        Some("56ddf007-76d7-4157-8e85-2d9fe0704cb4")
    );
    let r = &list.reports[0];
    assert_eq!(status_of(r), Status::Pending("Processing".into()));
    assert_eq!(r.name.as_deref(), Some("Отчёт по сменам"));
    assert_eq!(
        r.eta.map(format_utc).as_deref(),
        Some("2021-10-25T08:14:41")
    );
    assert!(
        r.cancel_url
            .as_deref()
            .unwrap()
            .ends_with("/cancel?ofdAgreementId=56ddf007-76d7-4157-8e85-2d9fe0704cb4")
    );
    assert!(parse_list(b"<html>502</html>").is_err());
    assert!(parse_list(br#"{"Status":"Success"}"#).is_err());
}

fn verdict(status: u16, errors: &[&str]) -> Verdict {
    let body = json!({"Errors": errors, "Status": "Failed", "Elapsed": "00:00:00.0100000"});
    judge(
        who(),
        "ordering",
        StatusCode::from_u16(status).unwrap(),
        body.to_string().as_bytes(),
    )
}

fn class(v: Verdict) -> ErrorClass {
    match v {
        Verdict::Fail(e) => e.class,
        Verdict::NotReady(m) => panic!("not an error: {m}"),
    }
}

#[test]
fn each_error_name_of_the_seed_is_classified() {
    for name in [
        "DateFromGreaterThanDateTo",
        "OfdAgreementNotFound",
        "AccessDenied",
        "ReportSizeError",
        "ReportNotFound",
        "LimitExhausted",
    ] {
        assert_eq!(
            class(verdict(400, &[name])),
            ErrorClass::Permanent,
            "{name}"
        );
    }
    assert_eq!(
        class(verdict(500, &["InternalError"])),
        ErrorClass::Transient
    );
    // A name decides over the status.
    assert_eq!(
        class(verdict(400, &["InternalError"])),
        ErrorClass::Transient
    );
    assert!(matches!(
        verdict(400, &["ReportNotDone"]),
        Verdict::NotReady(_)
    ));
    let Verdict::Fail(limit) = verdict(400, &["LimitExhausted"]) else {
        panic!()
    };
    for needed in [
        "deleting old reports",
        "delete_after_download = true",
        "ofd-main",
        "docfetch retry nov-2021",
    ] {
        assert!(
            limit.message.contains(needed),
            "{needed}: {}",
            limit.message
        );
    }
    // Unknown names fall back to the status.
    assert_eq!(
        class(verdict(400, &["Что-то новое"])),
        ErrorClass::Permanent
    );
    assert_eq!(
        class(verdict(503, &["Что-то новое"])),
        ErrorClass::Transient
    );
    let html = judge(
        who(),
        "x",
        StatusCode::BAD_GATEWAY,
        b"<html><body>502 Bad Gateway</body></html>",
    );
    assert_eq!(class(html), ErrorClass::Transient);
}

fn ofd(base: &str) -> Ofd {
    Ofd::new(OfdAccount {
        base_url: Url::parse(base).unwrap(),
        login: "l".into(),
        password: Secret::new("p"),
        inn: None,
        kpp: None,
        agreement_id: None,
        delete_after_download: false,
        concurrency: 4,
    })
}

#[test]
fn relative_urls_keep_the_base_path_and_never_leave_the_host() {
    let p = ofd("http://127.0.0.1:9/ofd");
    let url = p
        .resolve("/api/customer/reports/a0e5?OfdAgreementId=56dd", "x")
        .unwrap();
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:9/ofd/api/customer/reports/a0e5?OfdAgreementId=56dd"
    );
    let p = ofd("https://ofd.ru");
    assert_eq!(
        p.resolve("/api/customer/reports/a/cancel?ofdAgreementId=b", "x")
            .unwrap()
            .as_str(),
        "https://ofd.ru/api/customer/reports/a/cancel?ofdAgreementId=b"
    );
    assert_eq!(
        p.resolve("https://ofd.ru/api/customer/reports/a", "x")
            .unwrap()
            .as_str(),
        "https://ofd.ru/api/customer/reports/a"
    );
    let e = p.resolve("https://evil.example/steal", "x").unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent);
    // Same host, but plain http: the token would cross the network in clear.
    let e = p
        .resolve("http://ofd.ru/api/customer/reports/a", "x")
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent);
    assert_eq!(
        p.endpoint(
            "api/customer/reports",
            &[("Inn", "7841465198"), ("SkipPageFilter", "true")]
        )
        .as_str(),
        "https://ofd.ru/api/customer/reports?Inn=7841465198&SkipPageFilter=true"
    );
    assert_eq!(
        p.report_url("a b", Some("cancel"), "ofdAgreementId", Some("c"))
            .as_str(),
        "https://ofd.ru/api/customer/reports/a%20b/cancel?ofdAgreementId=c"
    );
}

#[test]
fn the_token_is_added_only_to_the_sent_url_and_redacted_in_logs() {
    let url =
        Url::parse("https://ofd.ru/api/customer/reports/a?OfdAgreementId=b&AuthToken=old").unwrap();
    let sent = with_token(&url, &Secret::new("ed38f9e155ce4a7ab3b784606fcd40a1"));
    assert_eq!(
        sent.as_str(),
        "https://ofd.ru/api/customer/reports/a?OfdAgreementId=b&AuthToken=ed38f9e155ce4a7ab3b784606fcd40a1"
    );
    assert!(!crate::http::redact_url(&sent).contains("ed38f9e1"));
}

#[test]
fn the_order_carries_our_name_and_the_agreement_unless_given() {
    let name = report_name("nov-2021", Some("Сверка"));
    assert!(
        name.starts_with("Сверка [docfetch:nov-2021:") && name.ends_with(']'),
        "{name}"
    );
    assert_ne!(
        name,
        report_name("nov-2021", Some("Сверка")),
        "each attempt has its own tag"
    );
    assert!(report_name("j", None).starts_with("docfetch:j:"));
    let body = order_body(
        &json!({"name": "x", "ReportType": "KKTReport"}),
        "N",
        Some("A"),
    );
    assert_eq!(
        body,
        json!({"Name": "N", "ReportType": "KKTReport", "OfdAgreementId": "A"})
    );
    let body = order_body(&json!({"ofdAgreementId": "mine"}), "N", Some("A"));
    assert_eq!(body, json!({"Name": "N", "ofdAgreementId": "mine"}));
}

#[test]
fn cursors_hold_ids_and_urls_but_nothing_secret() {
    let cursor = Cursor {
        phase: Phase::Waiting,
        name: Some("docfetch:j:1".into()),
        report: Some(ReportRef {
            id: "r".into(),
            download_url: Some("/api/customer/reports/r?OfdAgreementId=a".into()),
            delete_url: None,
            cancel_url: None,
            file_format: Some("Xlsx".into()),
        }),
        ..Cursor::default()
    };
    let value = to_value(&cursor);
    assert_eq!(value["phase"], "waiting");
    assert_eq!(serde_json::from_value::<Cursor>(value).unwrap(), cursor);
    assert_eq!(
        serde_json::from_value::<Cursor>(json!({})).unwrap().phase,
        Phase::New
    );
}

#[test]
fn waits_follow_the_assumptive_complete_time_within_bounds() {
    let now = NaiveDateTime::parse_from_str("2021-11-15T10:14:44", "%Y-%m-%dT%H:%M:%S").unwrap();
    let at = |s: &str| Some(NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap());
    assert_eq!(
        wait_until(at("2021-11-15T10:15:44"), now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(wait_until(at("2021-11-15T10:14:44"), now), None);
    assert_eq!(wait_until(at("2021-11-15T10:00:00"), now), None);
    assert_eq!(wait_until(at("2021-11-16T10:00:00"), now), Some(MAX_HINT));
    assert_eq!(wait_until(None, now), None);
}

#[test]
fn a_name_less_list_is_searched_by_type_and_period_taking_only_a_single_match() {
    let report = |id: &str, created: &str| {
        Report::from_value(&json!({
            "Id": id, "CDateUtc": created, "ReportType": "ReceiptReport",
            "DateFrom": "2021-11-01T00:00:00", "DateTo": "2021-11-02T23:59:59", "Status": "Todo"
        }))
        .unwrap()
    };
    let since = When::parse("2021-11-15T10:14:40").map(|w| w.wall_clock());
    let mut list = ReportList {
        agreement_id: None,
        reports: vec![
            report("old", "2021-11-10T10:00:00"),
            report("ours", "2021-11-15T10:14:44"),
        ],
    };
    assert_eq!(
        find_ordered(&list, "docfetch:j:1", &valid(), since).map(|r| r.id.as_str()),
        Some("ours")
    );
    list.reports.push(report("twin", "2021-11-15T10:14:45"));
    assert_eq!(
        find_ordered(&list, "docfetch:j:1", &valid(), since),
        None,
        "two candidates: no guess"
    );
    let mut named = report("named", "2021-11-15T10:14:44");
    named.name = Some("docfetch:j:1".into());
    list.reports.push(named);
    assert_eq!(
        find_ordered(&list, "docfetch:j:1", &valid(), since).map(|r| r.id.as_str()),
        Some("named")
    );
}

#[test]
fn fallback_file_names_use_the_report_name_and_format() {
    let r = ReportRef {
        id: "r".into(),
        download_url: None,
        delete_url: None,
        cancel_url: None,
        file_format: Some("Xlsx".into()),
    };
    assert_eq!(
        fallback_file_name(&json!({"ReportType": "ReceiptReport"}), &r),
        "ReceiptReport.xlsx"
    );
    assert_eq!(
        fallback_file_name(
            &json!({"Name": "Сверка", "ReportType": "ReceiptReport"}),
            &r
        ),
        "Сверка.xlsx"
    );
    let bare = ReportRef {
        file_format: None,
        ..r
    };
    assert_eq!(fallback_file_name(&json!({}), &bare), "report.bin");
    assert_eq!(
        fallback_file_name(&json!({"UseXlsxFile": true}), &bare),
        "report.xlsx"
    );
}
