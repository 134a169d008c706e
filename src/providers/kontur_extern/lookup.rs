//! The fallback for servers that refuse to create under a caller-chosen id:
//! `POST` creation, with the builder's documents or the document's files
//! listed first when an earlier attempt may have created the thing already.

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
    /// Phase 2: creates the DraftsBuilder with `POST`.
    pub(super) async fn create_builder(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
    ) -> Result<String, ProviderError> {
        let what = "creating the drafts builder";
        let body = builder_body(plan);
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

    /// Phase 3a: creates document `d` in the builder with `POST`.
    pub(super) async fn create_document(
        &self,
        ctx: &StepContext<'_>,
        builder_id: &str,
        document: &DocumentPlan,
        d: usize,
    ) -> Result<String, ProviderError> {
        let what = format!("creating document {d} in drafts builder {builder_id}");
        let url = self.endpoint(&["drafts", "builders", builder_id, "documents"]);
        let body = document_body(document);
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

    /// Phase 3b: attaches an uploaded content, with its signature, to its
    /// document with `POST`.
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
        let body = file_body(ctx, content_id, file, d, f).await?;
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
}
