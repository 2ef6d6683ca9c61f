//! What a request body may hold so that everything accepted reads back as sent,
//! on every storage backend and through every reader.
//!
//! [`check_body`] scans the body's JSON text (already known to be valid JSON)
//! and refuses, naming the field by its JSON path:
//! - a number whose value would change when stored: serde_json keeps integers
//!   that fit in 64 bits exactly and every other number as an IEEE 754 double,
//!   written back in its shortest form, so `18446744073709551617` or
//!   `0.10000000000000000001` would read back as another value, while
//!   `20000000000000000000` reads back as `2e19`, the same value (CONTRACT §7,
//!   "Stored JSON");
//! - nesting deeper than [`MAX_DEPTH`]: stored events wrap producer JSON in a
//!   few more levels, and JSON readers stop at 128, so a deeper value could be
//!   written but never read back;
//! - a key given twice in one object: RFC 8259 §4 leaves what that means to
//!   the reader (most keep the last, some the first, some refuse), so what
//!   was sent has no one value to read back;
//! - U+0000 (`\u0000`) anywhere but in a `step:output` `chunk`: PostgreSQL text
//!   and JSON values cannot hold it, so one rule for both backends refuses it
//!   in names, ids, messages and producer JSON, while output chunks (build logs
//!   may contain NUL bytes) are stored losslessly.

use crate::requests::ValidationError;

/// The deepest nesting of arrays and objects a request body may have.
pub const MAX_DEPTH: usize = 64;

/// One step of a JSON path.
#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
enum Frame {
    /// An object: the key being read, whether a key comes next, and the keys
    /// it has had so far.
    Object {
        key: Option<String>,
        expect_key: bool,
        seen: std::collections::HashSet<String>,
    },
    Array {
        index: usize,
    },
}

/// Whether serde_json's refusal of a text is about half a surrogate pair
/// (valid JSON that no Rust string holds): [`check_body`] then names it.
pub fn is_surrogate_error(message: &str) -> bool {
    message.contains("surrogate") || message.contains("end of hex escape")
}

/// Checks a request body (valid JSON text) against the rules of this module.
pub fn check_body(text: &[u8]) -> Result<(), ValidationError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' | b'[' => {
                if stack.len() >= MAX_DEPTH {
                    return Err(ValidationError::new(
                        field(&stack),
                        format!("is nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
                stack.push(if text[i] == b'{' {
                    Frame::Object { key: None, expect_key: true, seen: std::collections::HashSet::new() }
                } else {
                    Frame::Array { index: 0 }
                });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Array { index }) => *index += 1,
                    Some(Frame::Object { expect_key, key, .. }) => {
                        *expect_key = true;
                        *key = None;
                    }
                    None => {}
                }
                i += 1;
            }
            b':' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = false;
                }
                i += 1;
            }
            b'"' => {
                let end = string_end(text, i);
                let raw = &text[i..end];
                let has_nul = contains_nul_escape(raw);
                let is_key = matches!(stack.last(), Some(Frame::Object { expect_key: true, .. }));
                if let Some(escape) = lone_surrogate(raw) {
                    let what = if is_key { "a key" } else { "the text" };
                    return Err(ValidationError::new(
                        field(&stack),
                        format!(
                            "{what} holds {escape}, half of a UTF-16 surrogate pair (a character cut in two?): \
                             text must be whole Unicode characters"
                        ),
                    ));
                }
                if is_key {
                    let key: String = serde_json::from_slice(raw).unwrap_or_default();
                    if has_nul {
                        return Err(ValidationError::new(field(&stack), "keys must not contain U+0000 (NUL)"));
                    }
                    let repeated = match stack.last_mut() {
                        Some(Frame::Object { seen, .. }) => !seen.insert(key.clone()),
                        _ => false,
                    };
                    if repeated {
                        return Err(ValidationError::new(
                            field(&stack),
                            format!(
                                "has the key {} more than once; send each key once",
                                serde_json::to_string(&key).unwrap_or_default()
                            ),
                        ));
                    }
                    if let Some(Frame::Object { key: slot, .. }) = stack.last_mut() {
                        *slot = Some(key);
                    }
                } else if has_nul && !nul_allowed(&stack) {
                    return Err(ValidationError::new(
                        field(&stack),
                        "must not contain U+0000 (NUL); only step output chunks may",
                    ));
                }
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len() && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let number = std::str::from_utf8(&text[start..i]).unwrap_or("");
                if !reads_back_exactly(number) {
                    return Err(ValidationError::new(
                        field(&stack),
                        format!(
                            "the number {number} cannot be stored exactly (integers must fit in 64 bits, \
                             other numbers in a double); send it as a string"
                        ),
                    ));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index just past the string that opens at `start` (a `"`).
fn string_end(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

/// Whether a JSON string literal holds `\u0000` (a raw NUL byte is not valid JSON).
fn contains_nul_escape(raw: &[u8]) -> bool {
    let mut i = 0;
    while i + 1 < raw.len() {
        if raw[i] == b'\\' {
            if raw[i + 1] == b'u' && raw.get(i + 2..i + 6).is_some_and(|hex| hex == b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// The first `\uXXXX` escape of a JSON string literal that is half of a
/// UTF-16 surrogate pair without its other half (RFC 8259 §8.2: such a
/// string is valid JSON but no Unicode text: no reader can hold or return it
/// as sent).
fn lone_surrogate(raw: &[u8]) -> Option<String> {
    let hex_at = |i: usize| {
        raw.get(i..i + 6)
            .filter(|escape| escape.starts_with(b"\\u"))
            .and_then(|escape| std::str::from_utf8(&escape[2..]).ok())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    let mut i = 0;
    while i + 1 < raw.len() {
        if raw[i] != b'\\' {
            i += 1;
            continue;
        }
        match hex_at(i) {
            Some(0xD800..=0xDBFF) if matches!(hex_at(i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => return std::str::from_utf8(&raw[i..i + 6]).ok().map(str::to_owned),
            _ => i += 2,
        }
    }
    None
}

/// U+0000 is kept in output chunks: `chunk` of a body, or of a batch item.
fn nul_allowed(stack: &[Frame]) -> bool {
    let path = segments(stack);
    match path.as_slice() {
        [Segment::Key(k)] => k == "chunk",
        [Segment::Key(events), Segment::Index(_), Segment::Key(k)] => events == "events" && k == "chunk",
        _ => false,
    }
}

fn segments(stack: &[Frame]) -> Vec<Segment> {
    stack
        .iter()
        .filter_map(|frame| match frame {
            Frame::Object { key: Some(key), expect_key: false, .. } => Some(Segment::Key(key.clone())),
            Frame::Object { .. } => None,
            Frame::Array { index } => Some(Segment::Index(*index)),
        })
        .collect()
}

/// The JSON path of the value being read, as `events[3].payload.n`, or `body`.
fn field(stack: &[Frame]) -> String {
    let mut path = String::new();
    for segment in segments(stack) {
        match segment {
            Segment::Key(key) if is_identifier(&key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
            }
            // Any other key, quoted: `metadata[""]`, `payload["a.b"]`.
            Segment::Key(key) => {
                path.push('[');
                path.push_str(&serde_json::to_string(&key).unwrap_or_default());
                path.push(']');
            }
            Segment::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    if path.is_empty() {
        "body".to_owned()
    } else {
        path
    }
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Whether serde_json reads `number` (a JSON number literal) into a value that
/// writes back as the same decimal value.
pub fn reads_back_exactly(number: &str) -> bool {
    if number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok() {
        return true;
    }
    let Ok(value) = number.parse::<f64>() else { return false };
    if !value.is_finite() {
        return false;
    }
    let written = serde_json::to_string(&value).unwrap_or_default();
    decimal(number) == decimal(&written)
}

/// A number literal as (negative, significant digits, exponent of the last digit),
/// so that `1e2`, `100` and `100.0` compare equal.
fn decimal(literal: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut exponent = exponent - frac.len() as i64;
    let trimmed = digits.trim_start_matches('0').len();
    digits = digits[digits.len() - trimmed..].to_owned();
    while digits.ends_with('0') {
        digits.pop();
        exponent += 1;
    }
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, digits, exponent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        check_body(body.as_bytes()).err().map(|e| e.field)
    }

    #[test]
    fn half_a_surrogate_pair_is_refused_with_its_path_and_a_whole_pair_is_accepted() {
        assert_eq!(field_of(r#"{"chunk":"build ok \ud83d"}"#), Some("chunk".into()));
        assert_eq!(field_of(r#"{"chunk":"\udc00 after"}"#), Some("chunk".into()));
        assert_eq!(
            field_of(r#"{"events":[{"payload":{"a":["x","\ud800\u0041"]}}]}"#),
            Some("events[0].payload.a[1]".into())
        );
        assert_eq!(field_of(r#"{"metadata":{"\udbff":1}}"#), Some("metadata".into()));
        assert_eq!(field_of(r#"{"chunk":"\ud83d\ude00 \\ud83d \u00e9"}"#), None);
        let err = check_body(br#"{"chunk":"\ud83d"}"#).err().map(|e| e.message).unwrap_or_default();
        assert!(err.starts_with(r"the text holds \ud83d, half of a UTF-16 surrogate pair"), "{err}");
        // What serde_json says of them, which the HTTP extractor looks for.
        for body in [r#"{"a":"\ud83d"}"#, r#"{"a":"\udc00"}"#, r#"{"a":"\ud800\u0041"}"#] {
            let text = serde_json::from_str::<serde_json::Value>(body).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(is_surrogate_error(&text), "{body}: {text}");
        }
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_with_their_path() {
        assert_eq!(field_of(r#"{"metadata":{"n":18446744073709551617}}"#), Some("metadata.n".into()));
        assert_eq!(
            field_of(r#"{"events":[{"payload":{"a":[1,-99999999999999999999]}}]}"#),
            Some("events[0].payload.a[1]".into())
        );
        assert_eq!(field_of(r#"{"metadata":{"n":18446744073709551615,"m":-9223372036854775808}}"#), None);
    }

    #[test]
    fn an_integer_beyond_64_bits_that_a_double_writes_back_as_sent_is_accepted() {
        // 2e19 is a double, written back as `2e19`: the same value.
        assert_eq!(field_of(r#"{"metadata":{"n":20000000000000000000,"m":-1000000000000000000000}}"#), None);
        let back: serde_json::Value = serde_json::from_str("20000000000000000000").unwrap_or_default();
        assert!(reads_back_exactly(&back.to_string()), "{back}");
        // 2^64 is a double too, but written back as 18446744073709552000.
        assert_eq!(field_of(r#"{"metadata":{"n":18446744073709551616}}"#), Some("metadata.n".into()));
    }

    #[test]
    fn decimals_that_a_double_would_change_are_refused() {
        assert_eq!(field_of(r#"{"result":0.10000000000000000001}"#), Some("result".into()));
        assert_eq!(field_of(r#"{"result":3.141592653589793238}"#), Some("result".into()));
        for ok in ["0.1", "1e2", "100.0", "-0.0", "2.5e-300", "1.7976931348623157e308", "0", "-0"] {
            assert_eq!(field_of(&format!(r#"{{"result":{ok}}}"#)), None, "{ok}");
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let deep = |n: usize| format!(r#"{{"metadata":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(field_of(&deep(MAX_DEPTH - 1)).is_none());
        assert!(field_of(&deep(MAX_DEPTH)).is_some());
        assert!(field_of(&deep(125)).is_some());
    }

    #[test]
    fn nul_is_kept_in_chunks_and_refused_elsewhere() {
        assert_eq!(field_of(r#"{"chunk":"a\u0000b"}"#), None);
        assert_eq!(field_of(r#"{"events":[{"kind":"output","chunk":"\u0000"}]}"#), None);
        assert_eq!(field_of(r#"{"name":"a\u0000"}"#), Some("name".into()));
        assert_eq!(field_of(r#"{"metadata":{"x":["ok","\u0000"]}}"#), Some("metadata.x[1]".into()));
        assert_eq!(field_of(r#"{"metadata":{"k\u0000":1}}"#), Some("metadata".into()));
        assert_eq!(field_of(r#"{"payload":{"chunk":"\u0000"}}"#), Some("payload.chunk".into()));
        assert_eq!(field_of(r#"{"payload":{"a.b":{"":"\u0000"}}}"#), Some(r#"payload["a.b"][""]"#.into()));
        // An escaped backslash followed by u0000 is text, not NUL.
        assert_eq!(field_of(r#"{"name":"a\\u0000"}"#), None);
    }

    #[test]
    fn a_key_repeated_in_one_object_is_refused_however_it_is_spelled() {
        assert_eq!(field_of(r#"{"progress":10,"progress":90}"#), Some("body".into()));
        assert_eq!(field_of(r#"{"payload":{"a":1,"b":{},"a":2}}"#), Some("payload".into()));
        assert_eq!(field_of(r#"{"metadata":{"a":1,"\u0061":2}}"#), Some("metadata".into()));
        assert_eq!(field_of(r#"{"events":[{"p":{"k":1}},{"p":{"k":1,"k":1}}]}"#), Some("events[1].p".into()));
        // The same key in sibling or nested objects is not a repeat.
        assert_eq!(field_of(r#"{"events":[{"a":1},{"a":2}],"a":{"a":{"a":3}}}"#), None);
    }

    #[test]
    fn a_number_beyond_a_double_is_refused_with_its_path() {
        assert_eq!(field_of(r#"{"result":{"n":1e400}}"#), Some("result.n".into()));
        assert_eq!(field_of(r#"{"progress":-1e400}"#), Some("progress".into()));
    }
}
