//! Drafts builders, their documents and files: created by `POST` or, under
//! the caller's id, by `PUT`; listed as bare JSON arrays.

use super::*;

pub(super) fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| Box::new(bad_request("the body is not a JSON object")))
}

pub(super) fn knobs<T: for<'de> Deserialize<'de> + Default>(builder_data: &Value) -> T {
    builder_data
        .get("_sim")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
        .unwrap_or_default()
}

/// Answers an [`ErrorKnob`].
pub(super) fn knob_error(knob: &ErrorKnob) -> Response {
    let status = StatusCode::from_u16(knob.status.unwrap_or(500))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(raw) = &knob.raw {
        return (status, [(header::CONTENT_TYPE, "text/html")], raw.clone()).into_response();
    }
    error_doc(
        status,
        knob.id.as_deref().unwrap_or("urn:error:sim"),
        knob.message.as_deref().unwrap_or("simulated error"),
        None,
    )
}

/// A builder as a create or update request describes it.
pub(super) struct BuilderRequest {
    builder_type: String,
    builder_data: Value,
    knobs: BuilderKnobs,
    request: Value,
}

/// Reads and checks a builder request (the `create_error` knob included).
pub(super) fn builder_request(
    sim: &KonturExternSim,
    body: &Bytes,
) -> Result<BuilderRequest, Box<Response>> {
    let request = parse_body(body)?;
    let builder_data = request.get("builder-data").cloned().unwrap_or(Value::Null);
    let knobs: BuilderKnobs = knobs(&builder_data);
    if let Some(knob) = &knobs.create_error {
        let mut inner = sim.lock();
        let answered = inner
            .create_errors
            .entry(String::from_utf8_lossy(body).into_owned())
            .or_default();
        if knob.times.is_none_or(|times| *answered < times) {
            *answered += 1;
            return Err(Box::new(knob_error(knob)));
        }
    }
    match request.get("builder-type").and_then(Value::as_str) {
        Some(t) if t.starts_with("urn:drafts-builder-type:") => {}
        _ => {
            return Err(Box::new(bad_request(
                "builder-type must be a urn:drafts-builder-type:… value",
            )));
        }
    }
    for key in ["sender", "payer", "recipient"] {
        if !request.get(key).is_some_and(Value::is_object) {
            return Err(Box::new(bad_request(&format!("{key} is required"))));
        }
    }
    let builder_type = request
        .get("builder-type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(BuilderRequest {
        builder_type,
        builder_data,
        knobs,
        request,
    })
}

/// The answer for a builder: `DraftsBuilder`.
pub(super) fn builder_answer(status: StatusCode, id: &str, request: BuilderRequest) -> Response {
    let mut meta = request.request;
    if let Some(map) = meta.as_object_mut() {
        map.remove("builder-data");
    }
    json_answer(
        status,
        json!({ "id": id, "status": "new", "meta": meta, "builder-data": request.builder_data }),
    )
}

pub(super) async fn create_builder(
    State(sim): State<Arc<KonturExternSim>>,
    body: Bytes,
) -> Response {
    let request = match builder_request(&sim, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let id = sim.next_id();
    sim.lock().builders.insert(
        id.clone(),
        Builder {
            builder_type: request.builder_type.clone(),
            knobs: request.knobs.clone(),
            state: BuilderState::New,
            documents: Vec::new(),
            task: None,
        },
    );
    sim.counters.builders.fetch_add(1, Ordering::SeqCst);
    builder_answer(StatusCode::CREATED, &id, request)
}

/// An id chosen by the caller must be a UUID.
pub(super) fn caller_id(id: &str, what: &str) -> Result<(), Box<Response>> {
    match uuid::Uuid::parse_str(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(Box::new(bad_request(&format!("{what} id must be a UUID")))),
    }
}

/// `PUT …/builders/{id}`: updates the builder, or creates it under `id`.
pub(super) async fn put_builder(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = caller_id(&builder_id, "drafts builder") {
        return *r;
    }
    let request = match builder_request(&sim, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    // The lock is let go before any await.
    let updated = {
        let mut inner = sim.lock();
        match inner.builders.get_mut(&builder_id) {
            Some(builder) => {
                if let Some(refusal) = locked(builder) {
                    return refusal;
                }
                builder.builder_type = request.builder_type.clone();
                builder.knobs = request.knobs.clone();
                true
            }
            None if sim.config.refuse_put_create => {
                sim.counters.put_refused.fetch_add(1, Ordering::SeqCst);
                return not_found("drafts builder");
            }
            None => {
                inner.builders.insert(
                    builder_id.clone(),
                    Builder {
                        builder_type: request.builder_type.clone(),
                        knobs: request.knobs.clone(),
                        state: BuilderState::New,
                        documents: Vec::new(),
                        task: None,
                    },
                );
                false
            }
        }
    };
    if updated {
        sim.counters.put_updated.fetch_add(1, Ordering::SeqCst);
        return builder_answer(StatusCode::OK, &builder_id, request);
    }
    sim.counters.builders.fetch_add(1, Ordering::SeqCst);
    sim.counters.put_created.fetch_add(1, Ordering::SeqCst);
    sim.after_creation(Created::Builder).await;
    builder_answer(StatusCode::CREATED, &builder_id, request)
}

pub(super) fn builder_state_name(state: BuilderState) -> &'static str {
    match state {
        BuilderState::New => "new",
        BuilderState::Building => "building",
        BuilderState::Finished => "finished",
    }
}

pub(super) async fn get_builder(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
) -> Response {
    let inner = sim.lock();
    match inner.builders.get(&builder_id) {
        Some(b) => json_answer(
            StatusCode::OK,
            json!({ "id": builder_id, "status": builder_state_name(b.state) }),
        ),
        None => not_found("drafts builder"),
    }
}

/// A builder that is no longer `new` refuses changes.
pub(super) fn locked(builder: &Builder) -> Option<Response> {
    match builder.state {
        BuilderState::New => None,
        BuilderState::Building => Some(concurrent(builder.task.as_deref())),
        BuilderState::Finished => Some(error_doc(
            StatusCode::CONFLICT,
            "urn:error:externapi:draftsBuilderIsBuilt",
            "The drafts builder has been built and can no longer change",
            None,
        )),
    }
}

pub(super) fn concurrent(task: Option<&str>) -> Response {
    let context = task.map(
        |id| json!({ "concurrent-task": { "id": id, "task-type": "urn:task-type:build-drafts" } }),
    );
    error_doc(
        StatusCode::CONFLICT,
        "urn:error:externapi:concurrentApiTaskActive",
        "There is an active concurrent operation",
        context,
    )
}

pub(super) async fn create_document(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let id = sim.next_id();
    match upsert_document(&sim, &builder_id, &id, &body, false) {
        Upsert::Created(r) | Upsert::Answered(r) => r,
    }
}

/// `PUT …/documents/{id}`: updates the document, or creates it under `id`.
pub(super) async fn put_document(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id, document_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = caller_id(&document_id, "document") {
        return *r;
    }
    match upsert_document(&sim, &builder_id, &document_id, &body, true) {
        Upsert::Created(r) => {
            sim.after_creation(Created::Document).await;
            r
        }
        Upsert::Answered(r) => r,
    }
}

/// What a create-or-update did: created something (a `PUT` that did may
/// be held back, see `stall_after_creating`), or answered otherwise.
pub(super) enum Upsert {
    Created(Response),
    Answered(Response),
}

/// Creates document `id` in the builder, or (`put`) updates it when it
/// exists.
pub(super) fn upsert_document(
    sim: &KonturExternSim,
    builder_id: &str,
    id: &str,
    body: &Bytes,
    put: bool,
) -> Upsert {
    let request = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return Upsert::Answered(*r),
    };
    let builder_data = request.get("builder-data").cloned().unwrap_or(json!({}));
    let mut inner = sim.lock();
    let Some(builder) = inner.builders.get(builder_id) else {
        return Upsert::Answered(not_found("drafts builder"));
    };
    if let Some(refusal) = locked(builder) {
        return Upsert::Answered(refusal);
    }
    let builder_type = builder.builder_type.clone();
    if let Some(document) = inner.documents.get_mut(id) {
        if !put || document.builder_id != builder_id {
            return Upsert::Answered(bad_request("the document id is taken by another document"));
        }
        document.knobs = knobs(&builder_data);
        document.builder_data = builder_data.clone();
        sim.counters.put_updated.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(json_answer(
            StatusCode::OK,
            document_item(id, builder_id, &builder_type, &builder_data),
        ));
    }
    if put && sim.config.refuse_put_create {
        sim.counters.put_refused.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(not_found("document"));
    }
    if let Some(builder) = inner.builders.get_mut(builder_id) {
        builder.documents.push(id.to_string());
    }
    inner.documents.insert(
        id.to_string(),
        Document {
            builder_id: builder_id.to_string(),
            knobs: knobs(&builder_data),
            builder_data: builder_data.clone(),
        },
    );
    sim.counters.documents.fetch_add(1, Ordering::SeqCst);
    if put {
        sim.counters.put_created.fetch_add(1, Ordering::SeqCst);
    }
    Upsert::Created(json_answer(
        StatusCode::CREATED,
        document_item(id, builder_id, &builder_type, &builder_data),
    ))
}

/// A document as `DraftsBuilderDocument` shows it.
pub(super) fn document_item(
    id: &str,
    builder_id: &str,
    builder_type: &str,
    builder_data: &Value,
) -> Value {
    json!({
        "id": id,
        "drafts-builder-id": builder_id,
        "meta": { "builder-type": builder_type, "builder-data": builder_data },
    })
}

/// A file as `DraftsBuilderDocumentFile` shows it. The links point at the
/// (deprecated) content and signature of the file itself.
pub(super) fn file_item(base: &str, account: &str, file: &SimFile) -> Value {
    let href = format!(
        "{base}/v1/{account}/drafts/builders/{}/documents/{}/files/{}",
        file.builder_id, file.document_id, file.id
    );
    json!({
        "id": file.id,
        "drafts-builder-id": file.builder_id,
        "drafts-builder-document-id": file.document_id,
        "content-id": file.content_id,
        "content-link": { "href": format!("{href}/content"), "rel": "content" },
        "signature-content-link": file.signature.as_ref().map(|_| json!({ "href": format!("{href}/signature"), "rel": "signature" })),
        "meta": file.meta,
    })
}

pub(super) async fn list_documents(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
) -> Response {
    sim.counters.document_lists.fetch_add(1, Ordering::SeqCst);
    let inner = sim.lock();
    let Some(builder) = inner.builders.get(&builder_id) else {
        return not_found("drafts builder");
    };
    let items: Vec<Value> = builder
        .documents
        .iter()
        .filter_map(|id| {
            let document = inner.documents.get(id)?;
            Some(document_item(
                id,
                &builder_id,
                &builder.builder_type,
                &document.builder_data,
            ))
        })
        .collect();
    json_answer(StatusCode::OK, Value::Array(items))
}

pub(super) async fn list_files(
    State(sim): State<Arc<KonturExternSim>>,
    Path((account, builder_id, document_id)): Path<(String, String, String)>,
) -> Response {
    sim.counters.file_lists.fetch_add(1, Ordering::SeqCst);
    let base = sim.base_url();
    let inner = sim.lock();
    if !inner.builders.contains_key(&builder_id) {
        return not_found("drafts builder");
    }
    if inner
        .documents
        .get(&document_id)
        .is_none_or(|d| d.builder_id != builder_id)
    {
        return not_found("document");
    }
    let items: Vec<Value> = inner
        .files
        .iter()
        .filter(|f| f.document_id == document_id)
        .map(|f| file_item(&base, &account, f))
        .collect();
    json_answer(StatusCode::OK, Value::Array(items))
}

pub(super) async fn create_file(
    State(sim): State<Arc<KonturExternSim>>,
    Path((account, builder_id, document_id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let id = sim.next_id();
    match upsert_file(&sim, &account, &builder_id, &document_id, &id, &body, false) {
        Upsert::Created(r) | Upsert::Answered(r) => r,
    }
}

/// `PUT …/files/{id}`: replaces the file, or creates it under `id`.
pub(super) async fn put_file(
    State(sim): State<Arc<KonturExternSim>>,
    Path((account, builder_id, document_id, file_id)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = caller_id(&file_id, "file") {
        return *r;
    }
    match upsert_file(
        &sim,
        &account,
        &builder_id,
        &document_id,
        &file_id,
        &body,
        true,
    ) {
        Upsert::Created(r) => {
            sim.after_creation(Created::File).await;
            r
        }
        Upsert::Answered(r) => r,
    }
}

/// Creates file `id` in the document, or (`put`) replaces it when it
/// exists.
pub(super) fn upsert_file(
    sim: &KonturExternSim,
    account: &str,
    builder_id: &str,
    document_id: &str,
    id: &str,
    body: &Bytes,
    put: bool,
) -> Upsert {
    let request = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return Upsert::Answered(*r),
    };
    let Some(content_id) = request.get("content-id").and_then(Value::as_str) else {
        return Upsert::Answered(bad_request("content-id is required"));
    };
    let Some(file_name) = request
        .pointer("/meta/file-name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Upsert::Answered(bad_request("meta.file-name is required"));
    };
    let signature = match request.get("base64-signature-content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                return Upsert::Answered(bad_request("base64-signature-content is not base64"));
            }
        },
        Some(_) => {
            return Upsert::Answered(bad_request("base64-signature-content must be a string"));
        }
    };
    let base = sim.base_url();
    let mut inner = sim.lock();
    match inner.builders.get(builder_id) {
        None => return Upsert::Answered(not_found("drafts builder")),
        Some(builder) => {
            if let Some(refusal) = locked(builder) {
                return Upsert::Answered(refusal);
            }
        }
    }
    if inner
        .documents
        .get(document_id)
        .is_none_or(|d| d.builder_id != builder_id)
    {
        return Upsert::Answered(not_found("document"));
    }
    let Some(sha256) = inner.contents.get(content_id).map(|c| c.sha256.clone()) else {
        return Upsert::Answered(bad_request(&format!("content {content_id} not found")));
    };
    let Some(sha256) = sha256 else {
        return Upsert::Answered(bad_request(&format!(
            "content {content_id} is not completely uploaded"
        )));
    };
    let file = SimFile {
        id: id.to_string(),
        builder_id: builder_id.to_string(),
        document_id: document_id.to_string(),
        content_id: content_id.to_string(),
        file_name: file_name.to_string(),
        meta: request.get("meta").cloned().unwrap_or(Value::Null),
        content_sha256: sha256,
        signature,
    };
    let answer = file_item(&base, account, &file);
    if let Some(existing) = inner.files.iter_mut().find(|f| f.id == id) {
        if !put || existing.document_id != document_id {
            return Upsert::Answered(bad_request("the file id is taken by another file"));
        }
        *existing = file;
        sim.counters.put_updated.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(json_answer(StatusCode::OK, answer));
    }
    if put && sim.config.refuse_put_create {
        sim.counters.put_refused.fetch_add(1, Ordering::SeqCst);
        return Upsert::Answered(not_found("file"));
    }
    inner.files.push(file);
    sim.counters.files.fetch_add(1, Ordering::SeqCst);
    if put {
        sim.counters.put_created.fetch_add(1, Ordering::SeqCst);
    }
    Upsert::Created(json_answer(StatusCode::CREATED, answer))
}
