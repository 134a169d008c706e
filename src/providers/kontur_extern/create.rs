//! Creating the builder, its documents and their files once, under ids
//! docfetch chooses itself.
//!
//! The seed's `PUT UpdateDraftsBuilder`, `PUT UpdateDraftsBuilderDocument`
//! and `PUT UpdateDraftsBuilderDocumentFile` create the object when none
//! with the given id exists. So the id of the next thing to create is a
//! fresh UUID written into the cursor (`chosen-…-id`) by a step that is
//! committed *before* the `PUT` is sent; the next step sends it. A `PUT`
//! repeated after a crash, a reset or a timeout finds the object the lost
//! attempt made and updates it with the same content: nothing is made
//! twice, and no builder is left orphaned.
//!
//! A server that refuses the `PUT` of a new id ([`refuses_put_create`])
//! made nothing; the provider then creates with `POST` and the list
//! look-up of [`super::lookup`], and remembers for the account (in memory,
//! until the daemon restarts) not to choose ids any more. A chosen id
//! already committed is still sent with `PUT` first: an earlier attempt
//! may have created it, and updating a known id works everywhere.

use super::*;

/// How a `PUT` under a chosen id went.
pub(super) enum Put {
    /// The object exists under this id (created now or by a lost attempt).
    Made(String),
    /// The server does not create with `PUT`; nothing was made.
    Refused,
}

/// A new id for something to create.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The body of a builder's creation (`POST`) or update (`PUT`).
pub(super) fn builder_body(plan: &Plan) -> Value {
    json!({
        "sender": plan.sender,
        "payer": plan.payer,
        "recipient": plan.recipient,
        "builder-type": plan.builder_type,
        "builder-data": plan.builder_data,
    })
}

/// The body of a document's creation or update.
pub(super) fn document_body(document: &DocumentPlan) -> Value {
    json!({ "builder-data": document.builder_data })
}

/// The body of a file's creation or update: the content, its signature
/// (read from disk) and its meta.
pub(super) async fn file_body(
    ctx: &StepContext<'_>,
    content_id: &str,
    file: &FilePlan,
    d: usize,
    f: usize,
) -> Result<Value, ProviderError> {
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
    Ok(body)
}

impl KonturExtern {
    /// Whether this account's server refused to create with `PUT`.
    fn put_refused(&self) -> bool {
        self.put_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Chooses the id of the next thing to create, once every file is
    /// uploaded, unless one is chosen already or the server refuses
    /// `PUT`-create. Called by every step that leads up to a creation, so
    /// the id is committed with that step's cursor, before the `PUT`.
    pub(super) fn choose_next(&self, cursor: &mut Cursor) {
        if self.put_refused() || cursor.next_upload().is_some() {
            return;
        }
        if let Some(slot) = cursor.next_choice()
            && slot.is_none()
        {
            *slot = Some(new_id());
        }
    }

    /// `PUT`s `body` to `url`, the address of an object under a chosen id.
    async fn put(
        &self,
        ctx: &StepContext<'_>,
        what: &str,
        url: Url,
        chosen: &str,
        body: &Value,
    ) -> Result<Put, ProviderError> {
        let answer = self
            .send_json(ctx, what, Method::PUT, url, Some(body))
            .await?;
        if answer.status.is_success() {
            let value = json_of(&answer.body, what)?;
            // The object lives under the id the service names; that is
            // ours unless the service ignored it.
            let id = match id_at(&value, "/id") {
                Some(id) if !same_id(&id, chosen) => {
                    tracing::warn!(chosen, answered = %id, "{what}: Kontur.Extern answered another id than the one chosen; using its id");
                    id
                }
                _ => chosen.to_string(),
            };
            return Ok(Put::Made(id));
        }
        if refuses_put_create(answer.status) {
            if !self
                .put_refused
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!(
                    status = answer.status.as_u16(),
                    "{what}: Kontur.Extern does not create with PUT here; creating with POST for this account from now on"
                );
            }
            return Ok(Put::Refused);
        }
        Err(failure(
            what,
            answer.status,
            answer.retry_after,
            &answer.body,
        ))
    }

    /// Phase 2: the builder — its id chosen and committed, then `PUT`; or
    /// `POST` where that is refused.
    pub(super) async fn builder_step(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        mut cursor: Cursor,
    ) -> Result<Step, ProviderError> {
        let mut made = None;
        if let Some(chosen) = cursor.chosen_builder_id.clone() {
            let what = format!("creating drafts builder {chosen}");
            let url = self.endpoint(&["drafts", "builders", &chosen]);
            if let Put::Made(id) = self
                .put(ctx, &what, url, &chosen, &builder_body(plan))
                .await?
            {
                made = Some(id);
            }
        } else if !self.put_refused() {
            self.choose_next(&mut cursor);
            return Ok(progress(
                cursor,
                "files uploaded; the drafts builder's id chosen".into(),
            ));
        }
        let id = match made {
            Some(id) => id,
            None => self.create_builder(ctx, plan).await?,
        };
        let note = format!("files uploaded; drafts builder {id} created");
        self.mark_unsent(document_key(&id, 0));
        cursor.builder_id = Some(id);
        cursor.chosen_builder_id = None;
        self.choose_next(&mut cursor);
        Ok(progress(cursor, note))
    }

    /// Phase 3a: document `d` — `PUT` under its chosen id, or `POST` (after
    /// a look in the builder's documents) where that is refused.
    pub(super) async fn document_step(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        mut cursor: Cursor,
        builder_id: &str,
        d: usize,
    ) -> Result<Step, ProviderError> {
        let (document, state) = plan
            .documents
            .get(d)
            .zip(cursor.documents.get(d))
            .ok_or_else(|| ProviderError::permanent("the job's saved progress is out of step"))?;
        let mut made = None;
        if let Some(chosen) = state.chosen_id.clone() {
            let what = format!("creating document {d} ({chosen}) in drafts builder {builder_id}");
            let url = self.endpoint(&["drafts", "builders", builder_id, "documents", &chosen]);
            if let Put::Made(id) = self
                .put(ctx, &what, url, &chosen, &document_body(document))
                .await?
            {
                made = Some(id);
            }
        } else if !self.put_refused() {
            self.choose_next(&mut cursor);
            return Ok(progress(cursor, format!("the id of document {d} chosen")));
        }
        let (note, id) = match made {
            Some(id) => (format!("document {d} created as {id}"), id),
            None => {
                let (id, found) = self.document(ctx, builder_id, &cursor, document, d).await?;
                let note = if found {
                    format!(
                        "document {d} found again as {id}; an interrupted attempt had created it"
                    )
                } else {
                    format!("document {d} created as {id}")
                };
                (note, id)
            }
        };
        if d + 1 < plan.documents.len() {
            self.mark_unsent(document_key(builder_id, d + 1));
        }
        self.mark_unsent(file_key(&id, 0));
        if let Some(state) = cursor.documents.get_mut(d) {
            state.document_id = Some(id);
            state.chosen_id = None;
        }
        self.choose_next(&mut cursor);
        Ok(progress(cursor, note))
    }

    /// Phase 3b: file `f` of document `d` — `PUT` under its chosen id, or
    /// `POST` (after a look in the document's files) where that is refused.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn file_step(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        mut cursor: Cursor,
        builder_id: &str,
        document_id: &str,
        d: usize,
        f: usize,
    ) -> Result<Step, ProviderError> {
        let out_of_step = || ProviderError::permanent("the job's saved progress is out of step");
        let (document, state) = plan
            .documents
            .get(d)
            .zip(cursor.documents.get(d))
            .ok_or_else(out_of_step)?;
        let (file, file_state) = document
            .files
            .get(f)
            .zip(state.files.get(f))
            .ok_or_else(out_of_step)?;
        let Some(content_id) = file_state.content_id.clone() else {
            return Err(ProviderError::permanent(
                "the job's saved progress lost a content id",
            ));
        };
        let mut made = None;
        if let Some(chosen) = file_state.chosen_id.clone() {
            let what = format!(
                "attaching {:?} to document {document_id} as file {chosen}",
                file.path
            );
            let url = self.endpoint(&[
                "drafts",
                "builders",
                builder_id,
                "documents",
                document_id,
                "files",
                &chosen,
            ]);
            let body = file_body(ctx, &content_id, file, d, f).await?;
            if let Put::Made(id) = self.put(ctx, &what, url, &chosen, &body).await? {
                made = Some(id);
            }
        } else if !self.put_refused() {
            self.choose_next(&mut cursor);
            return Ok(progress(
                cursor,
                format!("the file id of {:?} chosen", file.path),
            ));
        }
        let (id, note) = match made {
            Some(id) => {
                let note = format!("{:?} attached to document {d} as file {id}", file.path);
                (id, note)
            }
            None => {
                let recorded: Vec<&str> = state
                    .files
                    .iter()
                    .filter_map(|s| s.file_id.as_deref())
                    .collect();
                let (id, found) = self
                    .file(
                        ctx,
                        builder_id,
                        document_id,
                        &content_id,
                        &recorded,
                        file,
                        d,
                        f,
                    )
                    .await?;
                let note = if found {
                    format!(
                        "{:?} found attached to document {d} as file {id}; an interrupted attempt had attached it",
                        file.path
                    )
                } else {
                    format!("{:?} attached to document {d} as file {id}", file.path)
                };
                (id, note)
            }
        };
        if f + 1 < document.files.len() {
            self.mark_unsent(file_key(document_id, f + 1));
        }
        if let Some(file_state) = cursor.documents.get_mut(d).and_then(|s| s.files.get_mut(f)) {
            file_state.file_id = Some(id);
            file_state.chosen_id = None;
        }
        self.choose_next(&mut cursor);
        Ok(progress(cursor, note))
    }
}
