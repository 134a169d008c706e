//! Attachments on disk: opened strictly beneath `paths.attachments`,
//! uploaded part by part to the content service.

use super::*;

/// An attachment opened for reading beneath `paths.attachments`.
pub(super) struct Attachment {
    pub(super) file: Arc<std::fs::File>,
    /// From `fstat` of the opened file.
    pub(super) size: u64,
}

/// Opens an attachment path strictly beneath `paths.attachments`: links
/// inside the folder are followed, anything leading outside is refused,
/// and only a regular file is accepted (a FIFO does not block the open).
pub(super) async fn open_attachment(
    root: &Path,
    path: &str,
    field: &str,
) -> Result<Attachment, ProviderError> {
    check_relative(path).map_err(|m| ProviderError::permanent(format!("{field}: {m}")))?;
    /// Where opening went wrong: the configured folder, or the file.
    pub(super) enum Failed {
        Root(std::io::Error),
        File(std::io::Error),
    }
    let (root, relative) = (root.to_path_buf(), path.to_string());
    let opened = tokio::task::spawn_blocking(move || {
        let folder = crate::beneath::Folder::open_root(&root, false).map_err(Failed::Root)?;
        let file = folder.open_beneath(&relative).map_err(Failed::File)?;
        let size = file.metadata().map_err(Failed::File)?.len();
        Ok(Attachment {
            file: Arc::new(file),
            size,
        })
    })
    .await
    .map_err(|e| ProviderError::transient(format!("{field}: cannot open {path:?}: {e}")))?;
    opened.map_err(|failed| match failed {
        Failed::Root(e) => ProviderError::permanent(format!(
            "{field}: paths.attachments cannot be opened ({e}); {path:?} cannot be read"
        )),
        Failed::File(e) if e.kind() == std::io::ErrorKind::NotFound => ProviderError::permanent(
            format!("{field}: {path:?} does not exist in paths.attachments"),
        ),
        Failed::File(e) => {
            use crate::beneath::RefusedKind;
            match crate::beneath::refused(&e).map(|r| r.kind) {
                Some(RefusedKind::Escapes) => ProviderError::permanent(format!(
                    "{field}: {path:?} leads outside paths.attachments (through a symbolic link); refused"
                )),
                Some(RefusedKind::Link) => ProviderError::permanent(format!(
                    "{field}: {path:?} passes through a symbolic link, which this system cannot follow safely; refused"
                )),
                Some(RefusedKind::WrongType) => ProviderError::permanent(format!(
                    "{field}: {path:?} is not a regular file"
                )),
                None => ProviderError::transient(format!(
                    "{field}: cannot open {path:?} in paths.attachments: {e}"
                )),
            }
        }
    })
}

/// Bytes read from an attachment at a time while a part is uploaded.
pub(super) const UPLOAD_CHUNK: u64 = 256 * 1024;

/// A part of an opened file as a streamed request body (one part is never
/// held in memory whole). Reads are positional, so two bodies of the same
/// file (a retried request while the first is still being torn down) never
/// disturb each other.
pub(super) fn part_body(file: &Arc<std::fs::File>, from: u64, len: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(part_chunks(file, from, len))
}

/// The bytes `from..from + len` of `file`, in chunks read on a blocking thread.
pub(super) fn part_chunks(
    file: &Arc<std::fs::File>,
    from: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let state = (file.clone(), from, from + len);
    futures_util::stream::try_unfold(state, |(file, at, end)| async move {
        if at >= end {
            return Ok(None);
        }
        let want = (end - at).min(UPLOAD_CHUNK) as usize;
        let reader = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let got = reader.read_at(&mut buf, at)?;
            buf.truncate(got);
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        if chunk.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file became shorter while it was being uploaded",
            ));
        }
        let next = at + chunk.len() as u64;
        Ok(Some((bytes::Bytes::from(chunk), (file, next, end))))
    })
}

impl KonturExtern {
    /// Phase 1: sends the next part of file `d`/`f`.
    pub(super) async fn upload_part(
        &self,
        ctx: &StepContext<'_>,
        plan: &Plan,
        cursor: &mut Cursor,
        d: usize,
        f: usize,
    ) -> Result<String, ProviderError> {
        let spec = plan
            .documents
            .get(d)
            .and_then(|doc| doc.files.get(f))
            .ok_or_else(|| ProviderError::permanent("the job's saved progress is out of step"))?;
        let state = cursor
            .documents
            .get_mut(d)
            .and_then(|doc| doc.files.get_mut(f))
            .ok_or_else(|| ProviderError::permanent("the job's saved progress is out of step"))?;
        let field = format!("params.documents[{d}].files[{f}].path");
        let attachment = open_attachment(&ctx.attachments_dir, &spec.path, &field).await?;
        let size = attachment.size;
        if size == 0 {
            return Err(ProviderError::permanent(format!(
                "{field}: {:?} is empty; Kontur.Extern takes no empty files",
                spec.path
            )));
        }
        if state.content_id.is_some() && state.size != size {
            return Err(ProviderError::permanent(format!(
                "{field}: {:?} changed size while it was being uploaded ({} bytes, now {size}); submit the job again once the file is final",
                spec.path, state.size
            )));
        }
        let from = if state.content_id.is_some() {
            state.uploaded
        } else {
            0
        };
        let len = self.account.upload_part_size.min(size - from);
        let to = from + len - 1;
        let range = format!("bytes {from}-{to}/{size}");
        let what = format!("uploading {:?} (bytes {from}-{to} of {size})", spec.path);
        // The first part creates the content; the rest are added to it.
        let (method, url) = match &state.content_id {
            None => (Method::POST, self.endpoint(&["contents"])),
            Some(id) => (Method::PUT, self.endpoint(&["contents", id])),
        };
        let timeout = ctx.timeout + Duration::from_secs(len / MIN_UPLOAD_RATE);
        let answer = self
            .call(ctx, &what, |token| {
                let body = part_body(&attachment.file, from, len);
                Ok(ctx
                    .http
                    .request(method.clone(), url.clone())
                    .bearer_auth(token.expose())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, range.as_str())
                    .header(CONTENT_LENGTH, len)
                    .body(body)
                    .timeout(timeout))
            })
            .await?;
        if !answer.status.is_success() {
            return Err(failure(
                &what,
                answer.status,
                answer.retry_after,
                &answer.body,
            ));
        }
        let value = json_of(&answer.body, &what)?;
        // `POST` answers the content (`{"id": …}`); `PUT` answers
        // `{"content": {"id": …}, "is-completed": …}`.
        let id = id_at(&value, "/id").or_else(|| id_at(&value, "/content/id"));
        let last = to + 1 == size;
        if last && value.get("is-completed") == Some(&Value::Bool(false)) {
            return Err(ProviderError::transient(format!(
                "{what}: the service did not confirm the upload complete after its last part"
            )));
        }
        if state.content_id.is_none() {
            let id = id.ok_or_else(|| {
                ProviderError::transient(format!(
                    "{what}: the answer carries no content id: {}",
                    excerpt(&answer.body)
                ))
            })?;
            state.content_id = Some(id);
            state.size = size;
        }
        state.uploaded = to + 1;
        Ok(if last {
            format!("{:?} uploaded ({size} bytes)", spec.path)
        } else {
            format!("{:?}: {} of {size} bytes uploaded", spec.path, to + 1)
        })
    }
}

/// Resolves every attachment and signature path still to be read, and
/// refuses the job at once when one leads outside `paths.attachments`: so
/// nothing at all is uploaded for a request with one bad path. Files
/// already uploaded (and signatures already sent) are not looked at again.
pub(super) async fn check_all_attachments(
    ctx: &StepContext<'_>,
    plan: &Plan,
    cursor: &Cursor,
) -> Result<(), ProviderError> {
    for (d, document) in plan.documents.iter().enumerate() {
        for (f, file) in document.files.iter().enumerate() {
            let state = cursor.documents.get(d).and_then(|doc| doc.files.get(f));
            let field = format!("params.documents[{d}].files[{f}]");
            if !state.is_some_and(FileCursor::uploaded_fully) {
                open_attachment(&ctx.attachments_dir, &file.path, &format!("{field}.path")).await?;
            }
            if let Some(signature) = &file.signature_path
                && state.is_none_or(|s| s.file_id.is_none())
            {
                open_attachment(
                    &ctx.attachments_dir,
                    signature,
                    &format!("{field}.signature_path"),
                )
                .await?;
            }
        }
    }
    Ok(())
}

pub(super) async fn read_signature(
    root: &Path,
    path: &str,
    field: &str,
) -> Result<Vec<u8>, ProviderError> {
    let attachment = open_attachment(root, path, field).await?;
    let bytes = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        // One byte more than allowed tells an oversized file from a full one.
        (&*attachment.file)
            .take(MAX_SIGNATURE + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|read| read)
    .map_err(|e| ProviderError::transient(format!("{field}: cannot read {path:?}: {e}")))?;
    if bytes.len() as u64 > MAX_SIGNATURE {
        return Err(ProviderError::permanent(format!(
            "{field}: {path:?} is larger than {MAX_SIGNATURE} bytes, too large for a signature"
        )));
    }
    if bytes.is_empty() {
        return Err(ProviderError::permanent(format!(
            "{field}: {path:?} is empty"
        )));
    }
    Ok(bytes)
}
