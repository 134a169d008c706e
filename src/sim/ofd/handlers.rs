//! The OFD.ru handlers: login, the reports list, ordering, downloading,
//! deleting and cancelling a report, and the answers they share.

use super::*;

/// The query string, keys compared case-insensitively (ASP.NET binding is).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(raw: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn now_utc() -> NaiveDateTime {
    Utc::now().naive_utc()
}

pub(super) fn utc(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// `now + d`, rounded up to a whole second (the seed prints no fractions).
pub(super) fn ceil_second(t: NaiveDateTime) -> NaiveDateTime {
    let whole = t.with_nanosecond(0).unwrap_or(t);
    if whole < t {
        whole + TimeDelta::seconds(1)
    } else {
        whole
    }
}

pub(super) fn elapsed() -> &'static str {
    "00:00:00.0123456"
}

/// A date as the service reads it: the wall-clock time as written (the
/// seed's answer turns `…T00:00:00.000+03:00` into `…T00:00:00`).
pub(super) fn wall(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(
            t.naive_local()
                .with_nanosecond(0)
                .unwrap_or(t.naive_local()),
        );
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.with_nanosecond(0).unwrap_or(t));
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

/// A body field, by name case-insensitively (`ofdAgreementId` and
/// `OfdAgreementId` both appear in the seed).
pub(super) fn body_field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.as_object()?
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case(key) && !v.is_null())
        .map(|(_, v)| v)
}

pub(super) fn json_response(status: StatusCode, text: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(text))
        .unwrap_or_default()
}

pub(super) fn success(data: Value) -> Response {
    let body = json!({"Status": "Success", "Data": data, "Elapsed": elapsed()});
    json_response(StatusCode::OK, body.to_string())
}

/// The seed's failure answer.
pub(super) fn failed(status: StatusCode, errors: &[&str]) -> Response {
    let body = json!({"Errors": errors, "Status": "Failed", "Elapsed": elapsed()});
    json_response(status, body.to_string())
}

/// A named error with its usual status.
pub(super) fn named_error(name: &str, status: Option<u16>) -> Response {
    let status = status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(match name {
            "InternalError" => StatusCode::INTERNAL_SERVER_ERROR,
            "ReportNotFound" => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        });
    failed(status, &[name])
}

pub(super) fn html(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from(format!(
            "<html><body><h1>{status}</h1></body></html>"
        )))
        .unwrap_or_default()
}

pub(super) type Sim = State<Arc<OfdSim>>;

pub(super) async fn login(State(sim): Sim, method: Method, uri: Uri, body: Bytes) -> Response {
    sim.record(&method, &uri);
    sim.counters.logins.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let given = |key: &str| body_field(&body, key).and_then(Value::as_str);
    if given("Login") != Some(sim.config.login.as_str())
        || given("Password") != Some(sim.config.password.as_str())
    {
        // "код ответа по протоколу HTTP будет равен 403 … JSON-структура будет пустой".
        return json_response(StatusCode::FORBIDDEN, "{}".into());
    }
    let token = sim.digest("token")[..32].to_string();
    let lifetime = TimeDelta::from_std(sim.config.token_lifetime).unwrap_or(TimeDelta::hours(1));
    let expires = ceil_second(now_utc() + lifetime);
    {
        let mut inner = sim.inner.lock();
        inner.tokens.insert(token.clone(), expires);
        inner.issued.push(token.clone());
    }
    let answer = json!({"AuthToken": token, "ExpirationDateUtc": utc(expires)});
    json_response(StatusCode::OK, answer.to_string())
}

pub(super) async fn list(
    State(sim): Sim,
    method: Method,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Response {
    sim.record(&method, &uri);
    let query = Query::parse(raw.as_deref());
    if let Err(r) = sim.authorize(&query) {
        return *r;
    }
    if let Some(inn) = query.get("Inn") {
        return lookup(&sim, inn, query.get("Kpp").unwrap_or(""));
    }
    sim.counters.lists.fetch_add(1, Ordering::SeqCst);
    if sim
        .fail_lists
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return html(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let agreement = match query.get("OfdAgreementId") {
        Some(id) => match sim.agreement_by_id(id) {
            Some(a) => Some(a.id.clone()),
            None => return named_error("OfdAgreementNotFound", None),
        },
        None => None,
    };
    let now = now_utc();
    let mut inner = sim.inner.lock();
    // A report with a list error knob spoils the whole list while it lasts.
    if let Some(report) = inner
        .reports
        .iter_mut()
        .find(|r| r.knobs.list_error.is_some() && r.list_errors < r.knobs.list_errors)
    {
        report.list_errors += 1;
        let name = report.knobs.list_error.clone().unwrap_or_default();
        return named_error(&name, None);
    }
    let mut shown: Vec<&mut SimReport> = inner
        .reports
        .iter_mut()
        .filter(|r| agreement.as_ref().is_none_or(|a| &r.agreement == a))
        .collect();
    let total = shown.len();
    let consumed = shown.iter().filter(|r| r.status != "Deleted").count();
    // Newest first, as a cabinet lists them.
    shown.reverse();
    if query.get("SkipPageFilter") != Some("true") {
        shown.truncate(sim.config.page_size);
    }
    for report in shown.iter_mut() {
        sim.advance(report, now);
    }
    match sim.config.list_shape {
        ListShape::Wrapped => {
            let mut data = json!({
                "OfdAgreementLimit": sim.config.agreement_limit,
                "ConsumedLimit": consumed,
                "List": shown.iter().map(|r| r.full()).collect::<Vec<_>>(),
                "TotalCount": total,
            });
            if let Some(id) = &agreement {
                data["OfdAgreementId"] = json!(id);
            }
            success(data)
        }
        ListShape::Bare => {
            let body = json!({
                "OfdAgreementLimit": sim.config.agreement_limit,
                "ConsumedLimit": consumed,
                "List": shown.iter().map(|r| r.short()).collect::<Vec<_>>(),
                " TotalCount ": total,
            });
            let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
            if sim.config.unquoted_email {
                text = text.replace(
                    &format!("\"AccountEmail\": \"{ACCOUNT_EMAIL}\""),
                    &format!("\"AccountEmail\": {ACCOUNT_EMAIL}"),
                );
            }
            json_response(StatusCode::OK, text)
        }
    }
}

/// 1.2: the agreement of a legal entity, with its reports.
pub(super) fn lookup(sim: &OfdSim, inn: &str, kpp: &str) -> Response {
    sim.counters
        .agreement_lookups
        .fetch_add(1, Ordering::SeqCst);
    let Some(agreement) = sim
        .config
        .agreements
        .iter()
        .find(|a| a.inn == inn.trim() && a.kpp == kpp.trim())
    else {
        return named_error("OfdAgreementNotFound", None);
    };
    let inner = sim.inner.lock();
    let reports: Vec<Value> = inner
        .reports
        .iter()
        .rev()
        .filter(|r| r.agreement == agreement.id)
        .map(SimReport::full)
        .collect();
    let consumed = inner
        .reports
        .iter()
        .filter(|r| r.agreement == agreement.id && r.status != "Deleted")
        .count();
    success(json!({
        "OfdAgreementId": agreement.id,
        "OfdAgreementLimit": sim.config.agreement_limit,
        "ConsumedLimit": consumed,
        "TotalCount": reports.len(),
        "List": reports,
    }))
}

pub(super) async fn order(
    State(sim): Sim,
    method: Method,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    sim.record(&method, &uri);
    if let Err(r) = sim.authorize(&Query::parse(raw.as_deref())) {
        return *r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return failed(StatusCode::BAD_REQUEST, &["Тело запроса не является JSON"]);
    };
    sim.inner.lock().order_bodies.push(body.clone());
    let knobs: Knobs = body
        .get("_sim")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
        .unwrap_or_default();
    if let Some(name) = &knobs.order_error {
        return named_error(name, knobs.order_status);
    }
    // "Идентификатор ЛКК требуется в запросах, если к ЛКК клиента привязано
    // несколько юридических лиц."
    let agreement = match body_field(&body, "OfdAgreementId").and_then(Value::as_str) {
        Some(id) => match sim.agreement_by_id(id) {
            Some(a) => a.id.clone(),
            None => return named_error("OfdAgreementNotFound", None),
        },
        None if sim.config.agreements.len() == 1 => sim.config.agreements[0].id.clone(),
        None => return named_error("OfdAgreementNotFound", None),
    };
    let custom = body_field(&body, "CustomReportId").is_some();
    let report_type = body_field(&body, "ReportType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let type_name = match REPORT_TYPES.iter().find(|(t, _)| *t == report_type) {
        Some((_, name)) => name.to_string(),
        None if custom => "Пользовательский отчет".to_string(),
        None => {
            return failed(
                StatusCode::BAD_REQUEST,
                &[&format!(
                    "ReportType: неизвестный тип отчета {report_type:?}"
                )],
            );
        }
    };
    let date = |key: &str| {
        body_field(&body, key)
            .and_then(Value::as_str)
            .and_then(wall)
    };
    let (Some(date_from), Some(date_to)) = (date("DateFrom"), date("DateTo")) else {
        return failed(
            StatusCode::BAD_REQUEST,
            &["DateFrom и DateTo обязательны (дата и время в формате ISO)"],
        );
    };
    if date_from > date_to {
        return named_error("DateFromGreaterThanDateTo", None);
    }
    let now = now_utc();
    let eta_delay = knobs
        .eta_ms
        .map(Duration::from_millis)
        .unwrap_or(sim.config.assumptive_delay);
    let report = {
        let mut inner = sim.inner.lock();
        let live = inner
            .reports
            .iter()
            .filter(|r| r.agreement == agreement && r.status != "Deleted")
            .count() as u64;
        if live >= sim.config.agreement_limit {
            return named_error("LimitExhausted", None);
        }
        let emails = match body_field(&body, "EmailsToNotify") {
            Some(Value::String(s)) => s.split(';').map(|e| e.trim().to_string()).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect(),
            _ => vec![String::new()],
        };
        let report = SimReport {
            id: sim.next_id(),
            agreement,
            name: body_field(&body, "Name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| type_name.clone()),
            report_type,
            type_name,
            date_from,
            date_to,
            created: now.with_nanosecond(0).unwrap_or(now),
            created_at: Instant::now(),
            eta: ceil_second(now + TimeDelta::from_std(eta_delay).unwrap_or_default()),
            kkt_count: body_field(&body, "KktList")
                .and_then(Value::as_array)
                .map_or(1, |k| k.len().max(1)),
            emails,
            status: "Todo".into(),
            views: 0,
            knobs: knobs.clone(),
            list_errors: 0,
            download_errors: 0,
            not_done_downloads: 0,
            file: None,
        };
        inner.reports.push(report.clone());
        report
    };
    sim.counters.orders.fetch_add(1, Ordering::SeqCst);
    if knobs.fail_after_create {
        return html(StatusCode::BAD_GATEWAY);
    }
    success(report.full())
}

pub(super) async fn download(
    State(sim): Sim,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    sim.record(&method, &uri);
    if let Err(r) = sim.authorize(&Query::parse(raw.as_deref())) {
        return *r;
    }
    let mut inner = sim.inner.lock();
    let Some(report) = inner.reports.iter_mut().find(|r| r.id == id) else {
        // "ReportNotDone — Отчет не сгенерирован или не существует".
        return named_error("ReportNotDone", None);
    };
    if report.status != "Done" {
        return named_error("ReportNotDone", None);
    }
    if let Some(name) = report.knobs.download_error.clone()
        && report
            .knobs
            .download_errors
            .is_none_or(|n| report.download_errors < n)
    {
        report.download_errors += 1;
        return named_error(&name, None);
    }
    if report.not_done_downloads < report.knobs.not_done_downloads {
        report.not_done_downloads += 1;
        return named_error("ReportNotDone", None);
    }
    let file = match &report.file {
        Some(file) => file.clone(),
        None => {
            let file = sim.make_file(report);
            report.file = Some(file.clone());
            file
        }
    };
    let no_disposition = report.knobs.no_disposition;
    let (name, bytes) = file;
    inner.served.push((
        name.clone(),
        crate::job::digest::hex(&Sha256::digest(&bytes)),
    ));
    drop(inner);
    sim.counters.downloads.fetch_add(1, Ordering::SeqCst);
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        )
        .header(header::CONTENT_LENGTH, bytes.len().to_string());
    if !no_disposition {
        builder = builder.header(header::CONTENT_DISPOSITION, content_disposition(&name));
    }
    builder.body(Body::from(bytes)).unwrap_or_default()
}

pub(super) async fn delete(
    State(sim): Sim,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    sim.record(&method, &uri);
    if let Err(r) = sim.authorize(&Query::parse(raw.as_deref())) {
        return *r;
    }
    sim.counters.deletes.fetch_add(1, Ordering::SeqCst);
    let mut inner = sim.inner.lock();
    let Some(report) = inner.reports.iter_mut().find(|r| r.id == id) else {
        return named_error("ReportNotFound", None);
    };
    if let Some(name) = &report.knobs.delete_error {
        return named_error(name, None);
    }
    report.status = "Deleted".into();
    // Section 4 answers with the bare report.
    json_response(StatusCode::OK, report.short().to_string())
}

pub(super) async fn cancel(
    State(sim): Sim,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    sim.record(&method, &uri);
    if let Err(r) = sim.authorize(&Query::parse(raw.as_deref())) {
        return *r;
    }
    sim.counters.cancels.fetch_add(1, Ordering::SeqCst);
    let mut inner = sim.inner.lock();
    let Some(report) = inner.reports.iter_mut().find(|r| r.id == id) else {
        return named_error("ReportNotFound", None);
    };
    // Only a report not generated yet can be cancelled; others stay as they are.
    if report.pending() {
        report.status = "Deleted".into();
    }
    success(report.full())
}

pub(super) fn content_disposition(name: &str) -> String {
    if name.is_ascii() {
        format!("attachment; filename=\"{name}\"")
    } else {
        let encoded =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        format!("attachment; filename=\"report.xlsx\"; filename*=UTF-8''{encoded}")
    }
}
