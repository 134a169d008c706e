//! Building a drafts builder (a deferred task) and polling its task.

use super::*;

pub(super) async fn build(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if query.get("deferred").map(String::as_str) != Some("true") {
        // The seed: synchronous builds are gone; deferred=false is a 400.
        return bad_request("deferred must be true; synchronous builds are no longer supported");
    }
    let task_id = sim.next_id();
    let mut inner = sim.lock();
    let Some(builder) = inner.builders.get_mut(&builder_id) else {
        return not_found("drafts builder");
    };
    if builder.state == BuilderState::Building {
        sim.counters.conflicts.fetch_add(1, Ordering::SeqCst);
        return concurrent(builder.task.as_deref());
    }
    if let Some(refusal) = locked(builder) {
        return refusal;
    }
    builder.state = BuilderState::Building;
    builder.task = Some(task_id.clone());
    let busy = builder.knobs.busy || builder.knobs.busy_without_task;
    let named = !builder.knobs.busy_without_task;
    inner.tasks.insert(
        task_id.clone(),
        Task {
            builder_id: builder_id.clone(),
            polls: 0,
            answer: None,
        },
    );
    sim.counters.builds.fetch_add(1, Ordering::SeqCst);
    if busy {
        // Someone else started this build a moment ago.
        sim.counters.conflicts.fetch_add(1, Ordering::SeqCst);
        return concurrent(named.then_some(task_id.as_str()));
    }
    json_answer(
        StatusCode::ACCEPTED,
        json!({ "id": task_id, "task-state": "running", "task-type": "urn:task-type:build-drafts" }),
    )
}

pub(super) async fn task(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, builder_id, task_id)): Path<(String, String, String)>,
) -> Response {
    let n = sim.poll_seq.fetch_add(1, Ordering::SeqCst) + 1;
    sim.counters.polls.fetch_add(1, Ordering::SeqCst);
    if sim.config.fail_poll == Some(n as u32) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html")],
            Body::from("<html><body>500 Internal Server Error</body></html>"),
        )
            .into_response();
    }
    let mut inner = sim.lock();
    let Some(task) = inner.tasks.get_mut(&task_id) else {
        return not_found("task");
    };
    if task.builder_id != builder_id {
        return not_found("task");
    }
    if let Some(answer) = &task.answer {
        return json_answer(StatusCode::OK, answer.clone());
    }
    task.polls += 1;
    let polls = task.polls;
    let Some(builder) = inner.builders.get(&builder_id) else {
        return not_found("drafts builder");
    };
    if polls <= builder.knobs.polls.unwrap_or(sim.config.build_polls) {
        return json_answer(
            StatusCode::OK,
            json!({ "id": task_id, "task-state": "running", "task-type": "urn:task-type:build-drafts" }),
        );
    }
    let answer = match &builder.knobs.fail {
        Some(fail) => json!({
            "id": task_id,
            "task-state": "failed",
            "task-type": "urn:task-type:build-drafts",
            "error": {
                "id": fail.id.as_deref().unwrap_or("urn:error:externapi:buildFailed"),
                "status-code": fail.status.unwrap_or(500),
                "message": fail.message.as_deref().unwrap_or("The build failed"),
                "trace-id": format!("[T-{:08x}(-)] ", fastrand::u32(..)),
            },
        }),
        None => {
            let mut errors = Vec::new();
            let mut groups: Vec<String> = Vec::new();
            for document_id in &builder.documents {
                let Some(document) = inner.documents.get(document_id) else {
                    continue;
                };
                if let Some(message) = &document.knobs.error {
                    errors.push(json!({ "document-id": document_id, "error-message": message }));
                    for message in &document.knobs.more_errors {
                        errors
                            .push(json!({ "document-id": document_id, "error-message": message }));
                    }
                    continue;
                }
                // One draft per `label-for-grouping` (null is a label too).
                let label = document
                    .builder_data
                    .get("label-for-grouping")
                    .cloned()
                    .unwrap_or(Value::Null)
                    .to_string();
                if !groups.contains(&label) {
                    groups.push(label);
                }
            }
            let drafts: Vec<String> = groups.iter().map(|_| sim.next_id()).collect();
            json!({
                "id": task_id,
                "task-state": "succeed",
                "task-type": "urn:task-type:build-drafts",
                "task-result": {
                    "draft-ids": drafts,
                    "error-drafts-builder-documents": errors,
                },
            })
        }
    };
    if let Some(builder) = inner.builders.get_mut(&builder_id) {
        builder.state = BuilderState::Finished;
    }
    if let Some(task) = inner.tasks.get_mut(&task_id) {
        task.answer = Some(answer.clone());
    }
    json_answer(StatusCode::OK, answer)
}
