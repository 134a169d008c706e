//! File names from providers: `Content-Disposition` parsing (RFC 6266 with
//! RFC 8187/5987 `filename*`) and sanitizing, so that whatever a server sends,
//! the file lands inside `output/NAME/` under a name a person can open.
//!
//! Cyrillic names are normal for these services; they are kept as UTF-8.

use percent_encoding::percent_decode;

/// Longest file name kept, in bytes (file systems allow 255; the `.part`
/// prefix and suffix need room too).
pub const MAX_NAME_BYTES: usize = 200;

/// The name docfetch itself writes last in each output folder.
pub const RECEIPT_NAME: &str = "job.json";

/// Extracts the file name from a `Content-Disposition` header value:
/// `filename*` (UTF-8 or ISO-8859-1, percent-encoded) first, then `filename`.
/// Returns the raw, unsanitized name.
pub fn from_content_disposition(value: &[u8]) -> Option<String> {
    // Header bytes are not always ASCII: some servers put raw UTF-8 in
    // `filename="…"`. Decode as UTF-8, falling back to Latin-1.
    let text = match std::str::from_utf8(value) {
        Ok(s) => s.to_string(),
        Err(_) => value.iter().map(|&b| b as char).collect(),
    };
    let params = split_params(&text);
    let mut plain = None;
    for (key, val) in &params {
        if key.eq_ignore_ascii_case("filename*")
            && let Some(name) = decode_ext_value(val)
            && !name.trim().is_empty()
        {
            return Some(name);
        }
        if key.eq_ignore_ascii_case("filename") && plain.is_none() {
            plain = Some(val.clone());
        }
    }
    plain.filter(|n| !n.trim().is_empty())
}

/// Splits `attachment; a=b; c="d;e"` into unquoted key/value pairs.
fn split_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    // Skip the disposition type.
    for c in chars.by_ref() {
        if c == ';' {
            break;
        }
    }
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            chars.next();
            if c == '=' || c == ';' {
                if c == ';' {
                    key.clear();
                    continue;
                }
                break;
            }
            key.push(c);
        }
        let key = key.trim().to_string();
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    other => value.push(other),
                }
            }
            for c in chars.by_ref() {
                if c == ';' {
                    break;
                }
            }
        } else {
            for c in chars.by_ref() {
                if c == ';' {
                    break;
                }
                value.push(c);
            }
            value = value.trim().to_string();
        }
        out.push((key, value));
        if chars.peek().is_none() {
            break;
        }
    }
    out
}

/// Decodes an RFC 8187 ext-value: `charset'lang'percent-encoded`.
fn decode_ext_value(value: &str) -> Option<String> {
    let mut parts = value.splitn(3, '\'');
    let charset = parts.next()?.trim();
    let _language = parts.next()?;
    let encoded = parts.next()?;
    if !is_valid_percent_encoding(encoded) {
        return None;
    }
    let bytes: Vec<u8> = percent_decode(encoded.as_bytes()).collect();
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.iter().map(|&b| b as char).collect())
    } else {
        None
    }
}

fn is_valid_percent_encoding(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if i + 2 >= bytes.len() {
                return false;
            }
            if !(bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// Percent-decodes a header such as 1C's `x-file-name` when it is encoded,
/// and returns it unchanged when it is not.
pub fn decode_header_name(value: &[u8]) -> Option<String> {
    let text = match std::str::from_utf8(value) {
        Ok(s) => s.to_string(),
        Err(_) => value.iter().map(|&b| b as char).collect(),
    };
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.contains('%')
        && is_valid_percent_encoding(text)
        && let Ok(decoded) = String::from_utf8(percent_decode(text.as_bytes()).collect())
    {
        return Some(decoded);
    }
    Some(text.to_string())
}

/// Turns any name a server sent into a safe file name for `output/NAME/`:
/// the last path component only (`/` and `\` both separate), no control
/// characters or NUL, no leading dots, no characters Windows forbids (the
/// folder may be shared), not a reserved device name, not the receipt's
/// name, at most [`MAX_NAME_BYTES`] bytes with the extension kept. Falls back
/// to `fallback` when nothing usable is left.
pub fn sanitize(raw: &str, fallback: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            other => other,
        })
        .collect();
    // Leading dots (hidden files, `..`) and spaces in any mix, and trailing
    // dots and spaces (Windows drops them), are not part of a safe name.
    let cleaned = cleaned
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    if cleaned.is_empty() {
        return if fallback.is_empty() {
            "download.bin".to_string()
        } else {
            sanitize(fallback, "download.bin")
        };
    }
    let mut name = truncate_keeping_extension(cleaned, MAX_NAME_BYTES);
    let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
    let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved || name.eq_ignore_ascii_case(RECEIPT_NAME) {
        name = truncate_keeping_extension(&format!("_{name}"), MAX_NAME_BYTES);
    }
    name
}

fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= 16 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    let mut cut = max.saturating_sub(ext.len());
    while cut > 0 && !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    // The cut may leave a trailing space or dot, which sanitizing removes
    // everywhere else; remove it here too so the result is stable.
    let stem =
        stem[..cut.min(stem.len())].trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    format!("{stem}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_header_gives_its_file_name() {
        let v = br#"attachment; filename="tax_usn_calculator.json""#;
        assert_eq!(
            from_content_disposition(v).as_deref(),
            Some("tax_usn_calculator.json")
        );
    }

    #[test]
    fn filename_star_wins_and_is_utf8_decoded() {
        let v = b"attachment; filename=\"report.xlsx\"; filename*=UTF-8''%D0%9E%D1%82%D1%87%D1%91%D1%82%20%D0%A3%D0%A1%D0%9D.xlsx";
        assert_eq!(
            from_content_disposition(v).as_deref(),
            Some("Отчёт УСН.xlsx")
        );
        let latin = b"attachment; filename*=iso-8859-1'en'caf%E9.txt";
        assert_eq!(from_content_disposition(latin).as_deref(), Some("café.txt"));
    }

    #[test]
    fn bad_percent_encoding_falls_back_to_the_plain_name() {
        let v = b"attachment; filename*=UTF-8''%ZZbad%2; filename=\"plain.txt\"";
        assert_eq!(from_content_disposition(v).as_deref(), Some("plain.txt"));
        let v = b"attachment; filename*=UTF-8''%FF%FE.txt";
        assert_eq!(from_content_disposition(v), None);
    }

    #[test]
    fn raw_utf8_and_quoted_semicolons_are_understood() {
        let v = "attachment; filename=\"Выписка; май.pdf\"".as_bytes();
        assert_eq!(
            from_content_disposition(v).as_deref(),
            Some("Выписка; май.pdf")
        );
        let v = br#"attachment; filename="a\"b.txt""#;
        assert_eq!(from_content_disposition(v).as_deref(), Some("a\"b.txt"));
        assert_eq!(from_content_disposition(b"attachment"), None);
        assert_eq!(from_content_disposition(b"inline; filename=\"\""), None);
    }

    #[test]
    fn hostile_names_are_made_safe() {
        let cases = [
            ("../../etc/passwd", "passwd"),
            ("/etc/shadow", "shadow"),
            ("..\\..\\windows\\system.ini", "system.ini"),
            ("a\0b\x07c.txt", "abc.txt"),
            ("..", "op.bin"),
            ("...hidden", "hidden"),
            (". .A", "A"),
            (" . . .x.txt", "x.txt"),
            (".bashrc", "bashrc"),
            ("", "op.bin"),
            ("   ", "op.bin"),
            ("/", "op.bin"),
            ("CON.txt", "_CON.txt"),
            ("com1", "_com1"),
            ("job.json", "_job.json"),
            ("JOB.JSON", "_JOB.JSON"),
            ("what?.txt", "what_.txt"),
            ("Отчёт за 3 квартал.json", "Отчёт за 3 квартал.json"),
        ];
        for (raw, expected) in cases {
            assert_eq!(sanitize(raw, "op.bin"), expected, "for {raw:?}");
        }
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary_keeping_the_extension() {
        let long = format!("{}.xlsx", "Ж".repeat(5000));
        let name = sanitize(&long, "x.bin");
        assert!(name.len() <= MAX_NAME_BYTES, "{}", name.len());
        assert!(name.ends_with(".xlsx"));
        assert!(name.starts_with('Ж'));
    }

    #[test]
    fn x_file_name_may_be_percent_encoded() {
        assert_eq!(
            decode_header_name(b"%D0%90.json").as_deref(),
            Some("А.json")
        );
        assert_eq!(
            decode_header_name(b"plain 100%.json").as_deref(),
            Some("plain 100%.json")
        );
        assert_eq!(decode_header_name(b"  "), None);
    }
}
