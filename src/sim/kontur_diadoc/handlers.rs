//! The Diadoc handlers: authentication, document tracking, the protocol,
//! print-form and zip generation, and shelf downloads.

use super::*;

/// Splits `DiadocAuth a=1,b=2` into its parameters (values may hold `=`).
pub(super) fn diadoc_auth_params(value: &str) -> Option<HashMap<String, String>> {
    let rest = value.strip_prefix("DiadocAuth")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    rest.split(',')
        .map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A refusal, boxed: `Response` is large for an error variant.
pub(super) fn refusal(status: StatusCode, body: &'static str) -> Box<Response> {
    Box::new(text(status, body))
}

/// A `DocumentZipGenerationResult` in the format `Accept` asks for.
pub(super) fn zip_result(headers: &HeaderMap, name: Option<&str>) -> (&'static str, Vec<u8>) {
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if json {
        let body = serde_json::json!({"ZipFileNameOnShelf": name.unwrap_or("")});
        (
            "application/json; charset=utf-8",
            body.to_string().into_bytes(),
        )
    } else {
        let message = DocumentZipGenerationResult {
            zip_file_name_on_shelf: name.map(str::to_string),
        };
        ("application/x-protobuf", message.encode_to_vec())
    }
}

pub(super) type Sim = State<Arc<KonturDiadocSim>>;

/// Counts requests and concurrent requests, and adds the configured latency.
pub(super) async fn track(
    State(sim): Sim,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    sim.counters.requests.fetch_add(1, Ordering::SeqCst);
    let now = sim.counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    sim.counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if !sim.config.latency.is_zero() {
        tokio::time::sleep(sim.config.latency).await;
    }
    let response = next.run(request).await;
    sim.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

#[derive(serde::Deserialize)]
pub(super) struct LoginPassword {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
}

pub(super) async fn authenticate(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if query.get("type").map(String::as_str) != Some("password") {
        return text(
            StatusCode::BAD_REQUEST,
            "type must be one of password, sid, certificate, trust",
        );
    }
    let client = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(diadoc_auth_params)
        .and_then(|p| p.get("ddauth_api_client_id").cloned());
    if client.as_deref() != Some(sim.config.client_id.as_str()) {
        sim.counters.auth_refused.fetch_add(1, Ordering::SeqCst);
        return text(
            StatusCode::UNAUTHORIZED,
            "ddauth_api_client_id is missing or not registered",
        );
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Some(credentials) = json
        .then(|| serde_json::from_slice::<LoginPassword>(&body).ok())
        .flatten()
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a JSON {\"login\",\"password\"} body",
        );
    };
    if credentials.login != sim.config.login || credentials.password != sim.config.password {
        sim.counters.auth_refused.fetch_add(1, Ordering::SeqCst);
        return text(StatusCode::UNAUTHORIZED, "Invalid login or password");
    }
    let token = sim.issue_token();
    sim.counters.auths.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        token,
    )
        .into_response()
}

pub(super) async fn generate_protocol(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let document_id = match sim.generate(
        Kind::Protocol,
        &headers,
        &query,
        &sim.counters.protocol_requests,
    ) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let body = KonturDiadocSim::protocol_of(&document_id).encode_to_vec();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
        .into_response()
}

pub(super) async fn generate_print_form(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let document_id = match sim.generate(
        Kind::PrintForm,
        &headers,
        &query,
        &sim.counters.print_form_requests,
    ) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let body = KonturDiadocSim::print_form_of(&document_id);
    let name = format!("Печатная форма {document_id}.pdf");
    let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/pdf")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"print-form.pdf\"; filename*=UTF-8''{encoded}"),
        )
        .body(Body::from(body))
        .unwrap_or_default()
}

pub(super) async fn generate_zip(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let document_id = match sim.generate(Kind::Zip, &headers, &query, &sim.counters.zip_requests) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let full = query
        .get("fullDocflow")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let key = (
        Kind::Zip,
        format!(
            "{}\n{}\n{document_id}",
            query.get("boxId").map(|v| v.trim()).unwrap_or(""),
            query.get("messageId").map(|v| v.trim()).unwrap_or("")
        ),
    );
    let n = sim.seq.fetch_add(1, Ordering::SeqCst);
    let mut inner = sim.lock();
    let state = inner.documents.entry(key.clone()).or_default();
    let name = match &state.shelf_name {
        Some(name) => name.clone(),
        None => {
            let name = format!("DocumentZip/{n:08}/{document_id}.zip");
            state.shelf_name = Some(name.clone());
            let expire = document_id == EXPIRED && !state.expired_once;
            state.expired_once |= expire;
            inner.shelf.insert(
                name.clone(),
                ShelfFile {
                    bytes: Bytes::from(KonturDiadocSim::archive_of(&document_id, full)),
                    expire,
                    key,
                },
            );
            name
        }
    };
    drop(inner);
    let (content_type, body) = zip_result(&headers, Some(&name));
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(super) async fn shelf_download(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    sim.counters.shelf_downloads.fetch_add(1, Ordering::SeqCst);
    if !sim.authorized(&headers) {
        sim.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let Some(name) = query.get("nameOnShelf").filter(|n| !n.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "nameOnShelf is required");
    };
    let mut inner = sim.lock();
    let expire = inner.shelf.get(name).map(|f| f.expire);
    match expire {
        None => text(StatusCode::NOT_FOUND, "File not found on the shelf"),
        Some(true) => {
            if let Some(file) = inner.shelf.remove(name)
                && let Some(state) = inner.documents.get_mut(&file.key)
            {
                state.shelf_name = None;
            }
            text(StatusCode::NOT_FOUND, "File not found on the shelf")
        }
        Some(false) => {
            let bytes = inner
                .shelf
                .get(name)
                .map(|f| f.bytes.clone())
                .unwrap_or_default();
            drop(inner);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                bytes,
            )
                .into_response()
        }
    }
}
