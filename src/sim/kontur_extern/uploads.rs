//! The content service: uploads in parts by `Content-Range`, assembled
//! by range and checked for size.

use super::*;

/// `bytes A-B/TOTAL` or `bytes A-B/*`.
pub(super) fn content_range(headers: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (a <= b && total.is_none_or(|t| b < t)).then_some((a, b, total))
}

/// Checks a part against its `Content-Range`.
pub(super) fn check_part(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(u64, Option<u64>), Box<Response>> {
    let Some((a, b, total)) = content_range(headers) else {
        return Err(Box::new(bad_request(
            "Content-Range is missing or malformed; expected \"bytes FROM-TO/TOTAL\"",
        )));
    };
    if body.len() as u64 != b - a + 1 {
        return Err(Box::new(bad_request(&format!(
            "Content-Range says {} bytes, the body has {}",
            b - a + 1,
            body.len()
        ))));
    }
    if body.len() as u64 > MAX_PART {
        return Err(Box::new(error_doc(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:error:externapi:contentPartTooLarge",
            "A content part may be at most 64 MB",
            None,
        )));
    }
    Ok((a, total))
}

impl Content {
    /// Adds a part; computes the hash once the content is whole.
    pub(super) fn add(&mut self, start: u64, bytes: Bytes) -> bool {
        self.parts.insert(start, bytes);
        if self.sha256.is_some() {
            return true;
        }
        let mut covered = 0u64;
        for (start, part) in &self.parts {
            if *start > covered {
                return false;
            }
            covered = covered.max(start + part.len() as u64);
        }
        if covered != self.total {
            return false;
        }
        let mut hasher = Sha256::new();
        let mut pos = 0u64;
        for (start, part) in &self.parts {
            let end = start + part.len() as u64;
            if end > pos {
                let skip = (pos - start) as usize;
                hasher.update(&part[skip..]);
                pos = end;
            }
        }
        self.sha256 = Some(crate::job::digest::hex(&hasher.finalize()));
        // Only the hash is kept; tests compare hashes.
        self.parts.clear();
        true
    }
}

pub(super) async fn upload_first(
    State(sim): State<Arc<KonturExternSim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (start, total) = match check_part(&headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(total) = total else {
        return bad_request("the first part must give the content's total size");
    };
    let id = sim.next_id();
    let mut content = Content {
        total,
        ..Default::default()
    };
    sim.counters.parts.fetch_add(1, Ordering::SeqCst);
    if content.add(start, body) {
        sim.counters.contents.fetch_add(1, Ordering::SeqCst);
    }
    sim.lock().contents.insert(id.clone(), content);
    json_answer(StatusCode::CREATED, json!({ "id": id }))
}

pub(super) async fn upload_next(
    State(sim): State<Arc<KonturExternSim>>,
    Path((_, content_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (start, total) = match check_part(&headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut inner = sim.lock();
    let Some(content) = inner.contents.get_mut(&content_id) else {
        return not_found("content");
    };
    if total.is_some_and(|t| t != content.total) {
        return bad_request("Content-Range total differs from the first part's");
    }
    if start + body.len() as u64 > content.total {
        return bad_request("the part ends beyond the content's size");
    }
    let was_complete = content.sha256.is_some();
    sim.counters.parts.fetch_add(1, Ordering::SeqCst);
    let complete = content.add(start, body);
    if complete && !was_complete {
        sim.counters.contents.fetch_add(1, Ordering::SeqCst);
    }
    json_answer(
        StatusCode::OK,
        json!({ "content": { "id": content_id }, "is-completed": complete }),
    )
}
