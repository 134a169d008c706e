//! Diadoc's binary and JSON formats: `DocumentProtocol` and
//! `DocumentZipGenerationResult` from its proto files, and the archive
//! answer read as JSON or protobuf.

use super::*;

/// `DocumentProtocol` from Diadoc's proto files (`required` in proto2; the
/// fields are read as plain bytes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocumentProtocol {
    /// The protocol's PDF.
    #[prost(bytes = "vec", tag = "1")]
    pub print_form: Vec<u8>,
    /// The signature of the PDF (detached CMS).
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// `DocumentZipGenerationResult`: the archive's name on the shelf, empty
/// while it is being made.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocumentZipGenerationResult {
    #[prost(string, optional, tag = "1")]
    pub zip_file_name_on_shelf: Option<String>,
}

/// The JSON form of [`DocumentZipGenerationResult`].
#[derive(Debug, Deserialize)]
pub(super) struct ZipResultJson {
    #[serde(rename = "ZipFileNameOnShelf", alias = "zipFileNameOnShelf", default)]
    pub(super) zip_file_name_on_shelf: Option<String>,
}

/// Reads a `GenerateDocumentZip` answer: JSON (asked for) or protobuf (the
/// service's default). `Ok(None)`: not ready yet.
// Public (hidden) for the property tests in tests/fuzz.rs.
#[doc(hidden)]
pub fn zip_name_on_shelf(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Option<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let declared = content_type.map(str::to_ascii_lowercase);
    let json = match declared.as_deref() {
        Some(t) if t.contains("json") => true,
        // Said to be protobuf: not sniffed. Its first byte, field 1's tag
        // 0x0a, is a line feed, and a length of 9, 10, 12, 13 or 32 is
        // ASCII whitespace too, so a name starting with `{` would look
        // like JSON behind them.
        Some(t) if t.contains("protobuf") => false,
        // A protobuf of this message never starts with `{` (field 15, a
        // group); behind whitespace it may, as above, but without a
        // content type the sniffing is all there is.
        _ => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    };
    let name = if json {
        serde_json::from_slice::<ZipResultJson>(body)
            // serde quotes a string it did not expect in full (`invalid
            // type: string "…"`), and the text goes into the job's error.
            .map_err(|e| format!("not the expected JSON: {}", one_line(&e.to_string(), 200)))?
            .zip_file_name_on_shelf
    } else {
        DocumentZipGenerationResult::decode(body)
            .map_err(|e| format!("not a DocumentZipGenerationResult: {e}"))?
            .zip_file_name_on_shelf
    };
    Ok(name.filter(|n| !n.trim().is_empty()))
}
