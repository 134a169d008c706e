//! The build and its result.

use super::*;

impl KonturExtern {
    /// Phase 4: starts the build, or adopts the one already running.
    /// Returns the task id, whether it was adopted, and whether it is over.
    pub(super) async fn build(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
    ) -> Result<(String, bool, bool), ProviderError> {
        let what = format!("starting the build of drafts builder {builder_id}");
        let mut url = self.endpoint(&["drafts", "builders", builder_id, "build"]);
        url.query_pairs_mut().append_pair("deferred", "true");
        let answer = self
            .call(ctx, &what, |token| {
                Ok(ctx
                    .http
                    .post(url.clone())
                    .bearer_auth(token.expose())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(CONTENT_LENGTH, 0)
                    .timeout(ctx.timeout))
            })
            .await?;
        if answer.status.is_success() {
            // The seed promises 202; any 2xx carrying a task will do.
            let value = json_of(&answer.body, &what)?;
            let task = Task::parse(&value);
            let id = task.id.clone().ok_or_else(|| {
                ProviderError::transient(format!(
                    "{what}: the answer carries no task id: {}",
                    excerpt(&answer.body)
                ))
            })?;
            tracing::info!(builder = builder_id, task = %id, "drafts build started");
            let finished = matches!(task.state.as_str(), "succeed" | "failed");
            return Ok((id, false, finished));
        }
        if answer.status == StatusCode::CONFLICT
            && let Some(error) = ApiError::parse(&answer.body)
            && error.id.eq_ignore_ascii_case(CONCURRENT_TASK_ERROR)
        {
            // A build is running already: ours, started before a crash or a
            // lost answer. Follow it rather than start a second one.
            return match error.concurrent_task() {
                Some(id) => {
                    tracing::info!(builder = builder_id, task = %id, "a build was already running; adopting its task");
                    Ok((id, true, false))
                }
                // The error "may" name the task (the docs' wording); without
                // it there is nothing to follow and no second build to start.
                None => Err(ProviderError::permanent(format!(
                    "{what}: a build is already running, but Kontur.Extern did not say which task ({}); its result cannot be followed",
                    error.describe()
                ))),
            };
        }
        Err(failure(
            &what,
            answer.status,
            answer.retry_after,
            &answer.body,
        ))
    }

    /// Phase 5: asks whether the build is over; saves its result when it is.
    pub(super) async fn poll(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        cursor: &Cursor,
        builder_id: &str,
        task_id: &str,
    ) -> Result<Step, ProviderError> {
        let what = format!("polling build task {task_id}");
        let url = self.endpoint(&["drafts", "builders", builder_id, "tasks", task_id]);
        let value = self.call_json(ctx, &what, Method::GET, url, None).await?;
        let task = Task::parse(&value);
        match task.state.as_str() {
            "running" => Ok(Step::Wait {
                cursor: cursor.to_value(),
                hint: None,
                poll: true,
                note: format!("build task {task_id} is still running"),
            }),
            "succeed" => {
                self.finish(ctx, plan, cursor, builder_id, task_id, &task.result)
                    .await
            }
            "failed" => {
                let detail = task
                    .error
                    .map(|e| e.describe())
                    .unwrap_or_else(|| "no error was given".into());
                Err(ProviderError::permanent(format!(
                    "the build of drafts builder {builder_id} failed (task {task_id}): {detail}"
                )))
            }
            other => Err(ProviderError::transient(format!(
                "{what}: unexpected task-state {other:?}: {}",
                excerpt(&answer_text(&value))
            ))),
        }
    }

    /// Writes `build-result.json` and decides done, done with warnings, or failed.
    pub(super) async fn finish(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        cursor: &Cursor,
        builder_id: &str,
        task_id: &str,
        result: &Value,
    ) -> Result<Step, ProviderError> {
        let (drafts, errors) = read_build_result(result);
        let mut warnings = Vec::new();
        let mut error_entries = Vec::new();
        // Per document (by label, in Extern's order): its messages, for
        // the short summary a build without drafts fails with.
        let mut summary: Vec<(String, Vec<&str>)> = Vec::new();
        for error in &errors {
            let index = cursor
                .documents
                .iter()
                .position(|d| d.document_id.as_deref() == Some(error.document_id.as_str()));
            let label = match index {
                Some(i) => {
                    let name = plan.documents.get(i).map(|d| d.label()).unwrap_or_default();
                    if name.is_empty() {
                        format!("documents[{i}]")
                    } else {
                        format!("documents[{i}] ({name})")
                    }
                }
                None => format!("document {}", error.document_id),
            };
            warnings.push(format!("{label}: {}", error.message));
            match summary.iter_mut().find(|(l, _)| *l == label) {
                Some((_, messages)) => {
                    if !messages.contains(&error.message.as_str()) {
                        messages.push(&error.message);
                    }
                }
                None => summary.push((label.clone(), vec![&error.message])),
            }
            let mut entry = json!({
                "document-id": error.document_id,
                "error-message": error.message,
            });
            if let Some(i) = index {
                entry["document-index"] = json!(i);
                entry["document-name"] = json!(plan.documents.get(i).map(|d| d.label()));
            }
            error_entries.push(entry);
        }
        let report = json!({
            "builder-id": builder_id,
            "task-id": task_id,
            "task-state": "succeed",
            "draft-ids": drafts,
            "error-drafts-builder-documents": error_entries,
        });
        let saved = save_json(&ctx.output_dir, RESULT_FILE, &report).await?;
        if drafts.is_empty() {
            let reasons = if summary.is_empty() {
                "Extern named no document in error".to_string()
            } else {
                brief_reasons(&summary)
            };
            return Err(ProviderError::permanent(format!(
                "the build of drafts builder {builder_id} produced no draft (task {task_id}): {reasons}; details in {RESULT_FILE}"
            )));
        }
        Ok(Step::Done {
            cursor: cursor.to_value(),
            result: JobResult {
                files: vec![saved],
                warnings,
            },
        })
    }
}

/// Documents listed in a failed build's error; the rest are counted.
const BRIEF_DOCUMENTS: usize = 10;

/// A message's share of a failed build's error, in characters.
const BRIEF_MESSAGE: usize = 160;

/// Each document Extern could not build, once, with its first message on
/// one short line and how many more it had: the job's error stays
/// readable however much Extern wrote, and `build-result.json` keeps all.
pub(super) fn brief_reasons(summary: &[(String, Vec<&str>)]) -> String {
    let mut parts: Vec<String> = summary
        .iter()
        .take(BRIEF_DOCUMENTS)
        .map(|(label, messages)| {
            let first = one_line(messages.first().copied().unwrap_or_default(), BRIEF_MESSAGE);
            match messages.len() {
                0 | 1 => format!("{label}: {first}"),
                n => format!("{label}: {first} (+{} more)", n - 1),
            }
        })
        .collect();
    if summary.len() > BRIEF_DOCUMENTS {
        parts.push(format!(
            "and {} more documents",
            summary.len() - BRIEF_DOCUMENTS
        ));
    }
    parts.join("; ")
}

/// Saves a JSON document atomically and describes it for the receipt.
pub(super) async fn save_json(
    dir: &crate::beneath::Subfolder,
    name: &str,
    value: &Value,
) -> Result<SavedFile, ProviderError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ProviderError::permanent(format!("cannot encode {name}: {e}")))?;
    bytes.push(b'\n');
    crate::download::write_atomic(dir, name, &bytes)
        .await
        .map_err(|e| ProviderError::disk(format!("cannot write {name}: {e}"), &e))?;
    Ok(SavedFile {
        name: name.to_string(),
        size: bytes.len() as u64,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}
