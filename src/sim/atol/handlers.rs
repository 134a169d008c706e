//! The ATOL handlers: token issue (JSON body or query) and the register list
//! and item.

use super::*;

pub(super) type Sim = State<Arc<AtolSim>>;

/// The seed's POST form: a JSON body with `Content-type: application/json`.
pub(super) async fn gettoken_json(State(sim): Sim, headers: HeaderMap, body: Bytes) -> Response {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if !json_type {
        sim.counters.login_attempts.fetch_add(1, Ordering::SeqCst);
        return sim.problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem {
                kind: "https://tools.ietf.org/html/rfc7231#section-6.5.13",
                title: "Unsupported Media Type",
                detail: Some("Content-type: application/json; charset=utf-8 expected"),
                instance: Some("/api/auth/v1/gettoken"),
                error_code: None,
            },
        );
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            sim.counters.login_attempts.fetch_add(1, Ordering::SeqCst);
            // Table 6: a JSON path as the key.
            return sim
                .validation_error(&[("$".into(), format!("The JSON value is invalid: {e}"))]);
        }
    };
    sim.login(
        parsed.get("login").and_then(Value::as_str),
        parsed.get("pass").and_then(Value::as_str),
    )
}

/// The seed's GET form: `?login=…&pass=…`.
pub(super) async fn gettoken_query(
    State(sim): Sim,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    sim.login(
        query.get("login").map(String::as_str),
        query.get("pass").map(String::as_str),
    )
}

pub(super) async fn list(
    State(sim): Sim,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = sim.admit(&headers, "/api/kkt/v1/cash-registers") {
        return *response;
    }
    sim.page(&query)
}

pub(super) async fn one(
    State(sim): Sim,
    Path(serial): Path<String>,
    headers: HeaderMap,
) -> Response {
    let instance = format!("/api/kkt/v1/cash-registers/{serial}");
    if let Err(response) = sim.admit(&headers, &instance) {
        return *response;
    }
    sim.register(&serial)
}
