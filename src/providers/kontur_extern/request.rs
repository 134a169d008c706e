//! The `drafts-build` request: its params, read and checked when the job is accepted.

use super::*;

/// A `drafts-build` request, parsed from `params`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) builder_type: String,
    pub(super) sender: Value,
    pub(super) payer: Value,
    pub(super) recipient: Value,
    pub(super) builder_data: Value,
    pub(super) documents: Vec<DocumentPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct DocumentPlan {
    /// docfetch's own label for messages (never sent).
    pub(super) name: Option<String>,
    pub(super) builder_data: Value,
    pub(super) files: Vec<FilePlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct FilePlan {
    /// Relative to `paths.attachments`.
    pub(super) path: String,
    pub(super) signature_path: Option<String>,
    /// `meta.file-name`; the path's last component unless given.
    pub(super) file_name: String,
    /// `meta.builder-data`.
    pub(super) builder_data: Option<Value>,
}

impl DocumentPlan {
    /// How a document is named in warnings and `build-result.json`: its
    /// `name`, the builder's `scanned-document-name`, or its first file name.
    pub(super) fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| {
                self.builder_data
                    .get("scanned-document-name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .or_else(|| self.files.first().map(|f| f.file_name.clone()))
            .unwrap_or_default()
    }
}

pub(super) const TOP_KEYS: &[&str] = &[
    "builder-type",
    "sender",
    "payer",
    "recipient",
    "builder-data",
    "documents",
];
pub(super) const DOCUMENT_KEYS: &[&str] = &["name", "builder-data", "files"];
pub(super) const FILE_KEYS: &[&str] = &["path", "signature_path", "meta"];
pub(super) const META_KEYS: &[&str] = &["file-name", "builder-data"];

/// Checks a request before it is accepted: the operation, every required
/// parameter with its type, and the attachment paths' syntax.
pub fn validate_request(operation: &str, params: &Value) -> Result<(), RequestError> {
    parse_plan(operation, params).map(|_| ())
}

pub(super) fn parse_plan(operation: &str, params: &Value) -> Result<Plan, RequestError> {
    if operation != OPERATION {
        return Err(RequestError::field(
            "operation",
            format!("{operation:?} is not a Kontur.Extern operation; expected {OPERATION:?}"),
        ));
    }
    let top = object(params, "params")?;
    // Unknown keys are refused rather than dropped: a misspelt
    // `signature-path` would otherwise send a file without its signature.
    known_keys(top, TOP_KEYS, "params")?;
    let builder_type = match top.get("builder-type") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(RequestError::field(
                "params.builder-type",
                "must not be empty",
            ));
        }
        Some(_) => {
            return Err(RequestError::field(
                "params.builder-type",
                "expected a string such as \"urn:drafts-builder-type:fns534-inventory\"",
            ));
        }
        None => {
            return Err(RequestError::field(
                "params.builder-type",
                "is required (the DraftsBuilder type, such as \"urn:drafts-builder-type:fns534-inventory\")",
            ));
        }
    };
    let sender = required_object(top, "sender", "params")?;
    let payer = required_object(top, "payer", "params")?;
    let recipient = required_object(top, "recipient", "params")?;
    let builder_data = required_object(top, "builder-data", "params")?;
    let documents = match top.get("documents") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(RequestError::field(
                "params.documents",
                "needs at least one document",
            ));
        }
        Some(_) => {
            return Err(RequestError::field(
                "params.documents",
                "expected an array of documents",
            ));
        }
        None => {
            return Err(RequestError::field(
                "params.documents",
                "is required (an array of documents, each with builder-data and files)",
            ));
        }
    };
    let documents = documents
        .iter()
        .enumerate()
        .map(|(d, document)| parse_document(document, &format!("params.documents[{d}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        builder_type,
        sender,
        payer,
        recipient,
        builder_data,
        documents,
    })
}

pub(super) fn parse_document(value: &Value, field: &str) -> Result<DocumentPlan, RequestError> {
    let document = object(value, field)?;
    known_keys(document, DOCUMENT_KEYS, field)?;
    let name = optional_string(document, "name", field)?;
    let builder_data = required_object(document, "builder-data", field)?;
    let files = match document.get("files") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(RequestError::field(
                format!("{field}.files"),
                "needs at least one file",
            ));
        }
        Some(_) => {
            return Err(RequestError::field(
                format!("{field}.files"),
                "expected an array of files",
            ));
        }
        None => {
            return Err(RequestError::field(
                format!("{field}.files"),
                "is required (an array of {\"path\": …} relative to paths.attachments)",
            ));
        }
    };
    let files = files
        .iter()
        .enumerate()
        .map(|(f, file)| parse_file(file, &format!("{field}.files[{f}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DocumentPlan {
        name,
        builder_data,
        files,
    })
}

pub(super) fn parse_file(value: &Value, field: &str) -> Result<FilePlan, RequestError> {
    let file = object(value, field)?;
    known_keys(file, FILE_KEYS, field)?;
    let path = match file.get("path") {
        Some(Value::String(path)) => path.clone(),
        Some(_) => {
            return Err(RequestError::field(
                format!("{field}.path"),
                "expected a string: a file path relative to paths.attachments",
            ));
        }
        None => {
            return Err(RequestError::field(
                format!("{field}.path"),
                "is required (a file path relative to paths.attachments)",
            ));
        }
    };
    check_relative(&path).map_err(|m| RequestError::field(format!("{field}.path"), m))?;
    let signature_path = optional_string(file, "signature_path", field)?;
    if let Some(signature) = &signature_path {
        check_relative(signature)
            .map_err(|m| RequestError::field(format!("{field}.signature_path"), m))?;
    }
    let mut file_name = None;
    let mut builder_data = None;
    if let Some(meta) = file.get("meta") {
        let meta_field = format!("{field}.meta");
        let meta = object(meta, &meta_field)?;
        known_keys(meta, META_KEYS, &meta_field)?;
        file_name = optional_string(meta, "file-name", &meta_field)?;
        if file_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(RequestError::field(
                format!("{meta_field}.file-name"),
                "must not be empty",
            ));
        }
        builder_data = match meta.get("builder-data") {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                return Err(RequestError::field(
                    format!("{meta_field}.builder-data"),
                    "expected an object",
                ));
            }
        };
    }
    let file_name = file_name.unwrap_or_else(|| {
        Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.clone())
    });
    Ok(FilePlan {
        path,
        signature_path,
        file_name,
        builder_data,
    })
}

/// The syntactic rule for attachment paths: relative, without `..`, naming
/// something below `paths.attachments`.
pub(super) fn check_relative(path: &str) -> Result<(), String> {
    if path.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if path.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    if path.len() > 4096 {
        return Err("is longer than 4096 bytes".into());
    }
    let p = Path::new(path);
    if p.is_absolute() || path.starts_with('/') || path.starts_with('\\') {
        return Err(format!(
            "{path:?} is absolute; expected a path relative to paths.attachments"
        ));
    }
    let mut named = false;
    for component in p.components() {
        match component {
            Component::ParentDir => {
                return Err(format!(
                    "{path:?} contains \"..\"; files must stay inside paths.attachments"
                ));
            }
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{path:?} is absolute; expected a path relative to paths.attachments"
                ));
            }
        }
    }
    if !named {
        return Err(format!("{path:?} names no file"));
    }
    Ok(())
}

pub(super) fn object<'a>(
    value: &'a Value,
    field: &str,
) -> Result<&'a Map<String, Value>, RequestError> {
    value
        .as_object()
        .ok_or_else(|| RequestError::field(field, "expected a JSON object"))
}

pub(super) fn known_keys(
    map: &Map<String, Value>,
    allowed: &[&str],
    field: &str,
) -> Result<(), RequestError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(RequestError::field(
            format!("{field}.{key}"),
            format!("unknown key; expected one of: {}", allowed.join(", ")),
        )),
    }
}

pub(super) fn required_object(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Value, RequestError> {
    match map.get(key) {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(RequestError::field(
            format!("{field}.{key}"),
            "expected an object",
        )),
        None => Err(RequestError::field(
            format!("{field}.{key}"),
            "is required (an object)",
        )),
    }
}

pub(super) fn optional_string(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, RequestError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RequestError::field(
            format!("{field}.{key}"),
            "expected a string",
        )),
    }
}
