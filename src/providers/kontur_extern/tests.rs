//! Unit tests: request parsing, answer reading, classification, the cursor.

use super::drafts::brief_reasons;
use super::*;
use crate::config::keys::Environment;
use crate::providers::ErrorClass;

fn request() -> Value {
    json!({
        "builder-type": "urn:drafts-builder-type:fns534-inventory",
        "sender": {"inn": "7810000000"},
        "payer": {"inn": "7810000000"},
        "recipient": {"ifns-code": "0087"},
        "builder-data": {"id-file-osn": "NO_NDS_0007"},
        "documents": [
            {"builder-data": {"type": "scanned", "scanned-document-name": "Акт.pdf"},
             "files": [{"path": "a/act.pdf", "signature_path": "a/act.pdf.sig",
                        "meta": {"builder-data": {"scanned-file-order": "1"}}}]},
            {"name": "Счёт", "builder-data": {"type": "scanned"},
             "files": [{"path": "bill.pdf", "meta": {"file-name": "Счёт.pdf"}}]}
        ]
    })
}

fn field_of(result: Result<(), RequestError>) -> String {
    match result {
        Err(RequestError::Field { field, message }) => format!("{field}: {message}"),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn a_complete_request_is_accepted_and_read_in_full() {
    let plan = parse_plan(OPERATION, &request()).unwrap();
    assert_eq!(plan.documents.len(), 2);
    let first = &plan.documents[0].files[0];
    assert_eq!(
        first.file_name, "act.pdf",
        "defaults to the path's file name"
    );
    assert_eq!(first.signature_path.as_deref(), Some("a/act.pdf.sig"));
    assert_eq!(plan.documents[1].files[0].file_name, "Счёт.pdf");
    assert_eq!(plan.documents[0].label(), "Акт.pdf");
    assert_eq!(plan.documents[1].label(), "Счёт");
}

#[test]
fn requests_are_refused_with_the_field_that_is_wrong() {
    assert!(field_of(validate_request("drafts", &request())).starts_with("operation"));
    let mut r = request();
    r.as_object_mut().unwrap().remove("payer");
    assert!(field_of(validate_request(OPERATION, &r)).starts_with("params.payer: is required"));
    let mut r = request();
    r["sender"] = json!("7810000000");
    assert!(
        field_of(validate_request(OPERATION, &r)).starts_with("params.sender: expected an object")
    );
    let mut r = request();
    r["documents"] = json!([]);
    assert!(field_of(validate_request(OPERATION, &r)).contains("at least one document"));
    let mut r = request();
    r["documents"][1]["files"][0]["signature-path"] = json!("x.sig");
    assert!(
        field_of(validate_request(OPERATION, &r))
            .starts_with("params.documents[1].files[0].signature-path: unknown key")
    );
    let mut r = request();
    r["documents"][0]["files"][0]["meta"]["builder-data"] = json!(3);
    assert!(
        field_of(validate_request(OPERATION, &r))
            .starts_with("params.documents[0].files[0].meta.builder-data")
    );
}

#[test]
fn attachment_paths_must_stay_inside_the_attachments_folder() {
    for (path, why) in [
        ("../secret", ".."),
        ("a/../../secret", ".."),
        ("a/../b", ".."),
        ("/etc/passwd", "absolute"),
        ("", "empty"),
        ("./", "names no file"),
    ] {
        let mut r = request();
        r["documents"][1]["files"][0]["path"] = json!(path);
        let text = field_of(validate_request(OPERATION, &r));
        assert!(
            text.starts_with("params.documents[1].files[0].path: ") && text.contains(why),
            "{path:?}: {text}"
        );
    }
    let mut r = request();
    r["documents"][0]["files"][0]["signature_path"] = json!("../key.sig");
    assert!(
        field_of(validate_request(OPERATION, &r))
            .starts_with("params.documents[0].files[0].signature_path")
    );
    assert!(check_relative("./dir/file.pdf").is_ok());
    assert!(
        check_relative("файл..pdf").is_ok(),
        "dots inside a name are fine"
    );
}

#[tokio::test]
async fn a_symlink_out_of_the_attachments_folder_is_refused_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("attachments");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(dir.path().join("secret"), b"s").unwrap();
    std::fs::write(root.join("sub/ok.pdf"), b"ok").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
    std::os::unix::fs::symlink("../../secret", root.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("parent")).unwrap();
    std::os::unix::fs::symlink("sub/ok.pdf", root.join("in")).unwrap();
    for path in ["out", "sub/up", "parent/secret"] {
        let err = open_attachment(&root, path, "f").await.err().unwrap();
        assert_eq!(err.class, ErrorClass::Permanent, "{path}");
        assert!(err.message.contains("outside"), "{path}: {}", err.message);
    }
    let inside = open_attachment(&root, "in", "f").await.ok().unwrap();
    assert_eq!(inside.size, 2, "links inside are fine");
    assert!(open_attachment(&root, "sub/ok.pdf", "f").await.is_ok());
    let missing = open_attachment(&root, "nope.pdf", "f").await.err().unwrap();
    assert!(
        missing.message.contains("does not exist"),
        "{}",
        missing.message
    );
    let folder = open_attachment(&root, "sub", "f").await.err().unwrap();
    assert!(folder.message.contains("not a regular file"));
}

#[tokio::test]
async fn an_upload_reads_the_file_it_opened_even_when_a_link_is_swapped_in_after() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("attachments");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.path().join("secret"), b"SECRET-SECRET").unwrap();
    std::fs::write(root.join("scan.pdf"), b"%PDF-1.7 body").unwrap();
    let opened = open_attachment(&root, "scan.pdf", "f").await.ok().unwrap();
    // Between the check and the upload, the file is replaced by a link
    // to a secret outside: the parts still come from the opened file.
    std::fs::remove_file(root.join("scan.pdf")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("scan.pdf")).unwrap();
    let mut sent = Vec::new();
    let mut chunks = std::pin::pin!(part_chunks(&opened.file, 0, opened.size));
    while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
        sent.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(sent, b"%PDF-1.7 body");
    let mut tail = Vec::new();
    let mut chunks = std::pin::pin!(part_chunks(&opened.file, 9, 4));
    while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
        tail.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(tail, b"body", "a later part starts where it says");
    let again = open_attachment(&root, "scan.pdf", "f").await.err().unwrap();
    assert!(again.message.contains("outside"), "{}", again.message);
}

#[test]
fn extern_error_documents_are_read_into_the_message() {
    let body = br#"{"id":"urn:error:externapi:concurrentApiTaskActive","status-code":409,
        "track-id":"m4n3","message":"There is an active concurrent operation",
        "trace-id":"[T-587660f5(-)] ",
        "context":{"concurrent-task":{"id":"5b35fae5-e429-43c5-befe-6a4aa3cfceda","task-type":"urn:task-type:send"}}}"#;
    let error = ApiError::parse(body).unwrap();
    assert_eq!(
        error.describe(),
        "urn:error:externapi:concurrentApiTaskActive: There is an active concurrent operation (trace-id [T-587660f5(-)])"
    );
    assert_eq!(
        error.concurrent_task().as_deref(),
        Some("5b35fae5-e429-43c5-befe-6a4aa3cfceda")
    );
    assert!(ApiError::parse(b"<html>502</html>").is_none());
    assert!(ApiError::parse(b"{}").is_none());
}

#[test]
fn each_status_is_classified_in_one_place() {
    let doc = |status: u16| {
        format!(
            r#"{{"id":"urn:error:x","status-code":{status},"message":"Нет доступа","trace-id":"T-1"}}"#
        )
    };
    for status in [400u16, 403, 404, 409, 422] {
        let e = failure(
            "creating",
            StatusCode::from_u16(status).unwrap(),
            None,
            doc(status).as_bytes(),
        );
        assert_eq!(e.class, ErrorClass::Permanent, "{status}");
        assert!(
            e.message.contains("urn:error:x")
                && e.message.contains("Нет доступа")
                && e.message.contains("T-1"),
            "{}",
            e.message
        );
    }
    for status in [500u16, 502, 503, 408] {
        let e = failure(
            "creating",
            StatusCode::from_u16(status).unwrap(),
            None,
            b"<html>oops</html>",
        );
        assert_eq!(e.class, ErrorClass::Transient, "{status}");
        assert!(e.message.contains("oops"));
    }
    let e = failure(
        "creating",
        StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(3)),
        b"",
    );
    assert_eq!(e.class, ErrorClass::Transient);
    assert_eq!(e.account_cooldown, Some(Duration::from_secs(3)));
    assert!(json_of(b"<html>", "x").is_err_and(|e| e.class == ErrorClass::Transient));
}

#[test]
fn build_results_are_read_in_both_shapes() {
    let (drafts, errors) = read_build_result(&json!({
        "draft-ids": ["d1", "d2"],
        "error-drafts-builder-documents": [{"document-id": "doc1", "error-message": "bad"}]
    }));
    assert_eq!(drafts, vec!["d1", "d2"]);
    assert_eq!(
        errors,
        vec![DocumentError {
            document_id: "doc1".into(),
            message: "bad".into()
        }]
    );
    let (drafts, errors) = read_build_result(&json!({
        "draft-ids": [], "error-drafts-builder-documents": {"doc2": "worse"}
    }));
    assert!(drafts.is_empty());
    assert_eq!(errors[0].document_id, "doc2");
    assert_eq!(read_build_result(&Value::Null), (vec![], vec![]));
}

#[test]
fn document_and_file_lists_are_read_bare_or_wrapped() {
    let documents = json!([
        {"id": " 6F9619FF-8B86-D011-B42D-00CF4FC964FF ", "drafts-builder-id": "b1",
         "meta": {"builder-type": "urn:drafts-builder-type:fns534-inventory",
                  "builder-data": {"type": "scanned", "claim-item-number": "1.01", "label-for-grouping": null}}},
        {"id": "d2", "drafts-builder-id": "b1",
         "meta": {"builder-data": {"type": "scanned", "claim-item-number": "1.01"}}},
        {"id": "d3", "drafts-builder-id": "B1", "builder-data": {"type": "formalized"}},
        {"id": "d4", "drafts-builder-id": "other", "meta": {"builder-data": {"type": "warrant"}}},
        {"meta": {"builder-data": {"type": "warrant"}}}
    ]);
    let wrapped = json!({"documents": documents.clone(), "total-count": 5});
    let enveloped = json!({"data": documents.clone(), "skip": 0});
    for (shape, answer) in [
        ("bare", &documents),
        ("wrapped", &wrapped),
        ("enveloped", &enveloped),
    ] {
        let items = list_items(answer, "documents").unwrap_or_else(|| panic!("{shape}"));
        assert_eq!(items.len(), 5, "{shape}");
        let scanned = json!({"claim-item-number": "1.01", "type": "scanned"});
        assert_eq!(
            find_document(items, "b1", &scanned, &[]).as_deref(),
            Some("6F9619FF-8B86-D011-B42D-00CF4FC964FF"),
            "{shape}: ids are trimmed, nulls are the same as absent"
        );
        assert_eq!(
            find_document(
                items,
                "b1",
                &scanned,
                &["6f9619ff-8b86-d011-b42d-00cf4fc964ff"]
            )
            .as_deref(),
            Some("d2"),
            "{shape}: a document the cursor holds is never taken again"
        );
        assert_eq!(
            find_document(
                items,
                "b1",
                &scanned,
                &["6F9619FF-8B86-D011-B42D-00CF4FC964FF", "d2"]
            ),
            None
        );
        assert_eq!(
            find_document(items, "b1", &json!({"type": "formalized"}), &[]).as_deref(),
            Some("d3"),
            "{shape}: a flat builder-data, builder ids in another case"
        );
        assert_eq!(
            find_document(items, "b1", &json!({"type": "warrant"}), &[]),
            None,
            "{shape}: another builder's document or one without an id is not ours"
        );
        assert_eq!(
            find_document(items, "b1", &json!({"type": "scanned"}), &[]),
            None,
            "{shape}: builder-data must be the same, not just overlap"
        );
    }

    let files = json!([
        {"id": "f1", "drafts-builder-id": "b1", "drafts-builder-document-id": "D1",
         "content-id": "C1", "meta": {"file-name": "a.pdf"}},
        {"id": "f2", "drafts-builder-document-id": "d1",
         "content-link": {"href": "https://extern/v1/acc/contents/c2", "rel": "content"}},
        {"id": "f3", "drafts-builder-document-id": "d9", "content-id": "c3"}
    ]);
    let wrapped = json!({"files": files.clone()});
    for (shape, answer) in [("bare", &files), ("wrapped", &wrapped)] {
        let items = list_items(answer, "files").unwrap_or_else(|| panic!("{shape}"));
        assert_eq!(
            find_file(items, "d1", "c1", &[]).as_deref(),
            Some("f1"),
            "{shape}"
        );
        assert_eq!(find_file(items, "d1", "c1", &["F1"]), None, "{shape}");
        assert_eq!(
            find_file(items, "d1", "c2", &[]).as_deref(),
            Some("f2"),
            "{shape}: a content link that names the content"
        );
        assert_eq!(
            find_file(items, "d1", "c3", &[]),
            None,
            "{shape}: another document's file"
        );
    }

    assert_eq!(list_items(&json!([]), "files").map(<[Value]>::len), Some(0));
    for garbage in [
        json!({}),
        json!({"a": [], "b": []}),
        json!("[]"),
        Value::Null,
    ] {
        assert!(list_items(&garbage, "files").is_none(), "{garbage}");
    }
}

#[test]
fn the_set_of_unsent_creations_is_consumed_once_and_stays_bounded() {
    let account = keys(
        "client_id = \"c\"\napi_key = \"k\"\naccount_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\n",
    )
    .unwrap();
    let p = KonturExtern::new("ke", account);
    p.mark_unsent(document_key("b1", 0));
    assert!(p.take_unsent("b1/doc/0"));
    assert!(!p.take_unsent("b1/doc/0"), "a second send must look first");
    assert!(!p.take_unsent(&file_key("d1", 0)), "never marked");
    for n in 0..UNSENT_LIMIT {
        p.mark_unsent(file_key("d", n));
    }
    assert_eq!(p.unsent().len(), UNSENT_LIMIT);
    p.mark_unsent(file_key("d", UNSENT_LIMIT));
    assert_eq!(p.unsent().len(), 1, "emptied past the limit");
    assert!(!p.take_unsent(&file_key("d", 0)), "forgotten: costs a look");
    assert!(p.take_unsent(&file_key("d", UNSENT_LIMIT)));
}

#[test]
fn the_cursor_is_shaped_like_the_request_and_survives_a_round_trip() {
    let plan = parse_plan(OPERATION, &request()).unwrap();
    let mut cursor = Cursor::load(&Value::Null, &plan).unwrap();
    assert_eq!(cursor.next_upload(), Some((0, 0)));
    cursor.documents[0].files[0] = FileCursor {
        content_id: Some("c1".into()),
        size: 10,
        uploaded: 10,
        file_id: None,
        chosen_id: Some("7d3c2b1a-0000-4000-8000-000000000001".into()),
    };
    assert_eq!(cursor.next_upload(), Some((1, 0)));
    let stored = cursor.to_value();
    assert_eq!(stored["documents"][0]["files"][0]["content-id"], "c1");
    assert_eq!(
        stored["documents"][0]["files"][0]["chosen-file-id"],
        "7d3c2b1a-0000-4000-8000-000000000001"
    );
    assert_eq!(Cursor::load(&stored, &plan).unwrap(), cursor);
    let mut bigger = stored.clone();
    bigger["documents"].as_array_mut().unwrap().push(json!({}));
    bigger["documents"].as_array_mut().unwrap().push(json!({}));
    assert!(Cursor::load(&bigger, &plan).is_err());
}

#[test]
fn many_steps_in_a_row_pause_before_the_scheduler_guard() {
    let mut cursor = Cursor::default();
    for _ in 0..BURST - 1 {
        match progress(cursor.clone(), "x".into()) {
            Step::Continue(v) => cursor = serde_json::from_value(v).unwrap(),
            other => panic!("{other:?}"),
        }
    }
    match progress(cursor, "x".into()) {
        Step::Wait { cursor, poll, .. } => {
            assert!(!poll);
            assert!(cursor.get("burst").is_none(), "the count starts again");
        }
        other => panic!("{other:?}"),
    }
}

fn keys(table: &str) -> Result<KonturExternAccount, ConfigError> {
    let table: toml::Table = toml::from_str(table).unwrap();
    let env = Environment::default();
    let mut keys = AccountKeys::new("ke", table.into_iter().collect(), &env);
    let account = KonturExternAccount::from_keys(&mut keys)?;
    keys.finish()?;
    Ok(account)
}

#[test]
fn accounts_need_a_uuid_and_respect_the_client_limit() {
    let base = "client_id = \"c\"\napi_key = \"k\"\n";
    let account = keys(&format!(
        "{base}account_id = \"6F9619FF-8B86-D011-B42D-00CF4FC964FF\"\n"
    ))
    .unwrap();
    assert_eq!(account.account_id, "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
    assert_eq!(account.concurrency, 8);
    assert_eq!(account.upload_part_size, MAX_PART_SIZE);
    assert_eq!(account.base_url.as_str(), "https://extern-api.kontur.ru/");
    let err = keys(&format!("{base}account_id = \"my-account\"\n")).unwrap_err();
    assert!(err.to_string().contains("account_id"), "{err}");
    let err = keys(&format!(
        "{base}account_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\nconcurrency = 21\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("20"), "{err}");
    let err = keys("account_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\napi_key = \"k\"\n")
        .unwrap_err();
    assert!(err.to_string().contains("client_id"), "{err}");
}

#[test]
fn endpoints_put_the_account_first() {
    let account = keys(
        "client_id = \"c\"\napi_key = \"k\"\naccount_id = \"6f9619ff-8b86-d011-b42d-00cf4fc964ff\"\nbase_url = \"https://h/extern/\"\n",
    )
    .unwrap();
    let p = KonturExtern::new("ke", account);
    assert_eq!(
        p.endpoint(&["drafts", "builders", "b1", "tasks", "t/1"])
            .as_str(),
        "https://h/extern/v1/6f9619ff-8b86-d011-b42d-00cf4fc964ff/drafts/builders/b1/tasks/t%2F1"
    );
}

#[test]
fn a_failed_builds_reasons_name_each_document_once_on_one_short_line() {
    let long = "слишком длинное сообщение\n".repeat(30);
    let summary = vec![
        (
            "documents[0] (A)".to_string(),
            vec![long.as_str(), "second"],
        ),
        ("documents[1] (B)".to_string(), vec!["bad format"]),
    ];
    let text = brief_reasons(&summary);
    assert!(!text.contains('\n'), "{text}");
    assert!(text.starts_with("documents[0] (A): слишком"), "{text}");
    assert!(
        text.contains("… (+1 more); documents[1] (B): bad format"),
        "{text}"
    );
    assert!(!text.contains("second"), "{text}");

    let many: Vec<(String, Vec<&str>)> = (0..13)
        .map(|i| (format!("documents[{i}]"), vec!["x"]))
        .collect();
    let text = brief_reasons(&many);
    assert_eq!(text.matches(": x").count(), 10, "{text}");
    assert!(text.ends_with("and 3 more documents"), "{text}");
}

#[test]
fn ids_are_chosen_in_the_order_things_are_created() {
    let mut cursor = Cursor {
        documents: vec![
            DocumentCursor {
                files: vec![FileCursor::default(), FileCursor::default()],
                ..Default::default()
            },
            DocumentCursor {
                files: vec![FileCursor::default()],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut order = Vec::new();
    while let Some(slot) = cursor.next_choice() {
        *slot = Some("chosen".into());
        let stored = cursor.to_value();
        // What the chosen id stands for is created next; then it exists.
        if cursor.builder_id.is_none() {
            order.push("builder".to_string());
            cursor.builder_id = cursor.chosen_builder_id.take();
            continue;
        }
        let (d, doc) = cursor
            .documents
            .iter_mut()
            .enumerate()
            .find(|(_, doc)| {
                doc.document_id.is_none() || doc.files.iter().any(|f| f.file_id.is_none())
            })
            .expect("something left");
        if doc.document_id.is_none() {
            order.push(format!("document {d}"));
            doc.document_id = doc.chosen_id.take();
        } else if let Some((f, file)) = doc
            .files
            .iter_mut()
            .enumerate()
            .find(|(_, f)| f.file_id.is_none())
        {
            order.push(format!("file {d}/{f}"));
            file.file_id = file.chosen_id.take();
        }
        assert!(stored.to_string().contains("chosen"), "{stored}");
    }
    assert_eq!(
        order,
        [
            "builder",
            "document 0",
            "file 0/0",
            "file 0/1",
            "document 1",
            "file 1/0"
        ]
    );
}
