//! The drafts builder, its documents and files, the build and its result.

use super::*;

/// `value` with every `null` object member removed, recursively: a service
/// that echoes an optional field as `null` (the SDK models do) still
/// describes the same request as one that leaves it out.
pub(super) fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Ids are UUIDs; their case may differ between answers.
pub(super) fn same_id(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Among the builder's documents, one with the requested `builder-data`
/// that the cursor does not already hold (`recorded`): the document an
/// interrupted attempt created. Documents are created one at a time and the
/// next only after the previous one's id is committed, so an unrecorded
/// match is a document of ours that no file was attached to yet; if two
/// requested documents have the same `builder-data`, either is as good.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn find_document(
    items: &[Value],
    builder_id: &str,
    builder_data: &Value,
    recorded: &[&str],
) -> Option<String> {
    let wanted = without_nulls(builder_data);
    items.iter().find_map(|item| {
        let id = id_at(item, "/id")?;
        if recorded.iter().any(|r| same_id(r, &id)) {
            return None;
        }
        if let Some(owner) = id_at(item, "/drafts-builder-id")
            && !same_id(&owner, builder_id)
        {
            return None;
        }
        // `meta.builder-data` in the SDK's model; a flat `builder-data` is
        // read too.
        let data = item
            .pointer("/meta/builder-data")
            .or_else(|| item.get("builder-data"))?;
        (without_nulls(data) == wanted).then_some(id)
    })
}

/// Among the document's files, one of `content_id` that the cursor does not
/// already hold: the file an interrupted attempt attached. A content id
/// names one upload, so it cannot match another requested file.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn find_file(
    items: &[Value],
    document_id: &str,
    content_id: &str,
    recorded: &[&str],
) -> Option<String> {
    items.iter().find_map(|item| {
        let id = id_at(item, "/id")?;
        if recorded.iter().any(|r| same_id(r, &id)) {
            return None;
        }
        if let Some(owner) = id_at(item, "/drafts-builder-document-id")
            && !same_id(&owner, document_id)
        {
            return None;
        }
        // `content-id` in the Java SDK's model; the C# model shows only
        // `content-link`, so a link naming the content counts as well.
        let by_id = id_at(item, "/content-id").is_some_and(|c| same_id(&c, content_id));
        let by_link = item
            .pointer("/content-link/href")
            .and_then(Value::as_str)
            .is_some_and(|href| href.split(['/', '?']).any(|s| same_id(s, content_id)));
        (by_id || by_link).then_some(id)
    })
}

/// The key under which the creation of document `d` of a builder is
/// remembered as not sent yet.
pub(super) fn document_key(builder_id: &str, d: usize) -> String {
    format!("{builder_id}/doc/{d}")
}

/// The key for attaching file `f` to a document.
pub(super) fn file_key(document_id: &str, f: usize) -> String {
    format!("{document_id}/file/{f}")
}

impl KonturExtern {
    /// Phase 2: creates the DraftsBuilder.
    pub(super) async fn create_builder(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
    ) -> Result<String, ProviderError> {
        let what = "creating the drafts builder";
        let body = json!({
            "sender": plan.sender,
            "payer": plan.payer,
            "recipient": plan.recipient,
            "builder-type": plan.builder_type,
            "builder-data": plan.builder_data,
        });
        let value = self
            .call_json(
                ctx,
                what,
                Method::POST,
                self.endpoint(&["drafts", "builders"]),
                Some(&body),
            )
            .await?;
        required_id(&value, what)
    }

    /// Phase 3a: document `d` of the builder, found again when an earlier
    /// attempt may have created it, else created. Returns its id and
    /// whether it was found.
    pub(super) async fn document(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        cursor: &Cursor,
        document: &DocumentPlan,
        d: usize,
    ) -> Result<(String, bool), ProviderError> {
        if !self.take_unsent(&document_key(builder_id, d)) {
            let what = format!("looking for document {d} in drafts builder {builder_id}");
            let url = self.endpoint(&["drafts", "builders", builder_id, "documents"]);
            let items = self.list(ctx, &what, url, "documents").await?;
            let recorded: Vec<&str> = cursor
                .documents
                .iter()
                .filter_map(|s| s.document_id.as_deref())
                .collect();
            if let Some(id) = find_document(&items, builder_id, &document.builder_data, &recorded) {
                tracing::info!(builder = builder_id, document = %id, "document {d} was created by an interrupted attempt; using it instead of creating it again");
                return Ok((id, true));
            }
        }
        let id = self.create_document(ctx, builder_id, document, d).await?;
        Ok((id, false))
    }

    /// Phase 3a: creates document `d` in the builder.
    pub(super) async fn create_document(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        document: &DocumentPlan,
        d: usize,
    ) -> Result<String, ProviderError> {
        let what = format!("creating document {d} in drafts builder {builder_id}");
        let url = self.endpoint(&["drafts", "builders", builder_id, "documents"]);
        let body = json!({ "builder-data": document.builder_data });
        let value = self
            .call_json(ctx, &what, Method::POST, url, Some(&body))
            .await?;
        required_id(&value, &what)
    }

    /// Phase 3b: file `f` of document `d`, found again when an earlier
    /// attempt may have attached it, else attached. `recorded` are the
    /// document's file ids the cursor holds. Returns the file id and
    /// whether it was found.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn file(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        document_id: &str,
        content_id: &str,
        recorded: &[&str],
        file: &FilePlan,
        d: usize,
        f: usize,
    ) -> Result<(String, bool), ProviderError> {
        if !self.take_unsent(&file_key(document_id, f)) {
            let what = format!("looking for {:?} in document {document_id}", file.path);
            let url = self.endpoint(&[
                "drafts",
                "builders",
                builder_id,
                "documents",
                document_id,
                "files",
            ]);
            let items = self.list(ctx, &what, url, "files").await?;
            if let Some(id) = find_file(&items, document_id, content_id, recorded) {
                tracing::info!(document = document_id, file = %id, "{:?} was attached by an interrupted attempt; using it instead of attaching it again", file.path);
                return Ok((id, true));
            }
        }
        let id = self
            .attach_file(ctx, builder_id, document_id, content_id, file, d, f)
            .await?;
        Ok((id, false))
    }

    /// Phase 3b: attaches an uploaded content, with its signature, to its document.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attach_file(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        document_id: &str,
        content_id: &str,
        file: &FilePlan,
        d: usize,
        f: usize,
    ) -> Result<String, ProviderError> {
        let what = format!("attaching {:?} to document {document_id}", file.path);
        let mut body = json!({ "content-id": content_id });
        if let Some(signature_path) = &file.signature_path {
            let field = format!("params.documents[{d}].files[{f}].signature_path");
            let signature = read_signature(&ctx.attachments_dir, signature_path, &field).await?;
            body["base64-signature-content"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(signature));
        }
        let mut meta = json!({ "file-name": file.file_name });
        if let Some(builder_data) = &file.builder_data {
            meta["builder-data"] = builder_data.clone();
        }
        body["meta"] = meta;
        let url = self.endpoint(&[
            "drafts",
            "builders",
            builder_id,
            "documents",
            document_id,
            "files",
        ]);
        let value = self
            .call_json(ctx, &what, Method::POST, url, Some(&body))
            .await?;
        required_id(&value, &what)
    }

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
            let reasons = if warnings.is_empty() {
                "Extern named no document in error".to_string()
            } else {
                warnings.join("; ")
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
