//! Reading an upload: bounded line splitting (a 100 MB line never sits in memory), then
//! per-row validation of the three accepted JSONL formats into a canonical conversation.
//!
//! Formats: alpaca (`instruction`, optional `input`, `output`), prompt/completion
//! (`prompt`, `completion`), and OpenAI chat (`messages`: `[{role, content}]`, roles
//! `system`/`user`/`assistant`, at least one user turn, ending with the assistant). Any row
//! may carry `contributor`.

use std::io::BufRead;

use serde::Serialize;
use serde_json::{Map, Value};

use super::text::SpamRule;

/// Row-level limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest line in bytes.
    pub max_line_bytes: usize,
    /// Longest single text field in characters.
    pub max_text_chars: usize,
    /// Most messages in one conversation.
    pub max_messages: usize,
    pub spam: SpamRule,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 1 << 20,
            max_text_chars: 32 * 1024,
            max_messages: 64,
            spam: SpamRule::default(),
        }
    }
}

/// Why a row was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// 1-based line number in the upload.
    pub line: u64,
    /// The field at fault (`""` for the whole line).
    pub field: String,
    pub reason: String,
}

/// A valid row: its contributor (if the row names one) and its conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: u64,
    pub contributor: Option<String>,
    /// (role, content) with content in NFC, spacing as given.
    pub messages: Vec<(String, String)>,
    /// What the personal-data and secrets scanner found (see [`super::scan`]).
    pub findings: Vec<RowFinding>,
}

/// One scanner finding in a row: the field as uploaded and the span in characters within
/// that field, plus where it sits in the canonical message (for redaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFinding {
    pub field: String,
    pub kind: super::scan::Kind,
    /// Span in characters within the field.
    pub start: usize,
    pub end: usize,
    /// Message index and span in characters within its content.
    pub message: usize,
    pub message_start: usize,
    pub message_end: usize,
}

/// Scans every message; `fields` maps (field name, message index, character offset of the
/// field in the message content).
fn scan_fields(
    messages: &[(String, String)],
    fields: &[(String, usize, usize)],
) -> Vec<RowFinding> {
    let mut out = Vec::new();
    for (mi, (_, content)) in messages.iter().enumerate() {
        for f in super::scan::scan(content) {
            let Some((name, _, offset)) = fields
                .iter()
                .filter(|(_, m, off)| *m == mi && *off <= f.start)
                .max_by_key(|(_, _, off)| *off)
            else {
                continue;
            };
            out.push(RowFinding {
                field: name.clone(),
                kind: f.kind,
                start: f.start - offset,
                end: f.end - offset,
                message: mi,
                message_start: f.start,
                message_end: f.end,
            });
        }
    }
    out
}

/// One line of input, capped at `max + 1` bytes; `len` is its true length.
pub struct Line {
    pub number: u64,
    pub bytes: Vec<u8>,
    pub len: u64,
}

/// Splits a reader into lines without buffering more than `max + 1` bytes of any line,
/// feeding every byte to `hasher` (the upload digest).
pub struct Lines<R> {
    reader: R,
    max: usize,
    number: u64,
    done: bool,
    pub hasher: blake3::Hasher,
    pub total_bytes: u64,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            number: 0,
            done: false,
            hasher: blake3::Hasher::new(),
            total_bytes: 0,
        }
    }

    /// The next line, or `None` at the end.
    pub fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        if self.done {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        let mut len = 0u64;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                self.done = true;
                if len == 0 {
                    return Ok(None);
                }
                break;
            }
            let (chunk, line_end, newline) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (
                    buf.get(..i).unwrap_or(buf),
                    buf.get(..=i).unwrap_or(buf),
                    true,
                ),
                None => (buf, buf, false),
            };
            let consumed = line_end.len();
            let room = (self.max + 1).saturating_sub(bytes.len());
            bytes.extend(chunk.iter().take(room));
            len += chunk.len() as u64;
            self.hasher.update(line_end);
            self.total_bytes += consumed as u64;
            self.reader.consume(consumed);
            if newline {
                break;
            }
        }
        self.number += 1;
        if bytes.last() == Some(&b'\r') && len as usize == bytes.len() {
            bytes.pop();
            len -= 1;
        }
        Ok(Some(Line {
            number: self.number,
            bytes,
            len,
        }))
    }
}

fn err(line: u64, field: &str, reason: impl Into<String>) -> RowError {
    RowError {
        line,
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A valid contributor id: 1–128 characters of `A-Za-z0-9._:@-`.
pub fn valid_contributor(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

struct Ctx<'a> {
    line: u64,
    limits: &'a Limits,
}

impl Ctx<'_> {
    fn text(
        &self,
        obj: &Map<String, Value>,
        field: &str,
        required: bool,
    ) -> Result<Option<String>, RowError> {
        match obj.get(field) {
            None if required => Err(err(self.line, field, "missing")),
            None => Ok(None),
            Some(v) => self.check_text(v, field, required).map(Some),
        }
    }

    fn check_text(&self, v: &Value, field: &str, non_empty: bool) -> Result<String, RowError> {
        let Value::String(s) = v else {
            return Err(err(
                self.line,
                field,
                format!("expected a string, got {}", type_name(v)),
            ));
        };
        if s.contains('\0') {
            return Err(err(self.line, field, "contains a NUL character"));
        }
        if non_empty && s.trim().is_empty() {
            return Err(err(self.line, field, "empty"));
        }
        let chars = s.chars().count();
        if chars > self.limits.max_text_chars {
            return Err(err(
                self.line,
                field,
                format!(
                    "{chars} characters, over the limit of {}",
                    self.limits.max_text_chars
                ),
            ));
        }
        if let Some(reason) = self.limits.spam.check(s) {
            return Err(err(self.line, field, reason));
        }
        Ok(unicode_normalization::UnicodeNormalization::nfc(s.as_str()).collect())
    }
}

/// Validates one line into a [`Row`]. Blank lines give `Ok(None)`.
pub fn parse_line(line: &Line, limits: &Limits) -> Result<Option<Row>, RowError> {
    let n = line.number;
    if line.len > limits.max_line_bytes as u64 {
        return Err(err(
            n,
            "",
            format!(
                "line is {} bytes, over the limit of {} bytes",
                line.len, limits.max_line_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(&line.bytes)
        .map_err(|e| err(n, "", format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    if text.contains('\0') {
        return Err(err(n, "", "contains a NUL byte"));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| err(n, "", format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(err(
            n,
            "",
            format!("expected a JSON object, got {}", type_name(&value)),
        ));
    };
    let ctx = Ctx { line: n, limits };
    let contributor = match obj.get("contributor") {
        None => None,
        Some(Value::String(c)) if valid_contributor(c) => Some(c.clone()),
        Some(Value::String(_)) => {
            return Err(err(
                n,
                "contributor",
                "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
            ));
        }
        Some(v) => {
            return Err(err(
                n,
                "contributor",
                format!("expected a string, got {}", type_name(v)),
            ));
        }
    };
    let mut fields: Vec<(String, usize, usize)> = Vec::new();
    let messages = if let Some(v) = obj.get("messages") {
        let m = parse_messages(&ctx, v)?;
        fields.extend((0..m.len()).map(|i| (format!("messages[{i}].content"), i, 0)));
        m
    } else if obj.contains_key("instruction") || obj.contains_key("output") {
        let instruction = ctx.text(&obj, "instruction", true)?.unwrap_or_default();
        let input = match obj.get("input") {
            None | Some(Value::Null) => None,
            Some(v) => Some(ctx.check_text(v, "input", false)?),
        };
        let output = ctx.text(&obj, "output", true)?.unwrap_or_default();
        fields.push(("instruction".into(), 0, 0));
        fields.push(("output".into(), 1, 0));
        let user = match input {
            Some(i) if !i.trim().is_empty() => {
                fields.push(("input".into(), 0, instruction.chars().count() + 2));
                format!("{instruction}\n\n{i}")
            }
            _ => instruction,
        };
        vec![
            ("user".to_string(), user),
            ("assistant".to_string(), output),
        ]
    } else if obj.contains_key("prompt") || obj.contains_key("completion") {
        let prompt = ctx.text(&obj, "prompt", true)?.unwrap_or_default();
        let completion = ctx.text(&obj, "completion", true)?.unwrap_or_default();
        fields.push(("prompt".into(), 0, 0));
        fields.push(("completion".into(), 1, 0));
        vec![
            ("user".to_string(), prompt),
            ("assistant".to_string(), completion),
        ]
    } else {
        return Err(err(
            n,
            "",
            "unknown format: expected `messages` (chat), `instruction` + `output` (alpaca) \
             or `prompt` + `completion`",
        ));
    };
    let findings = scan_fields(&messages, &fields);
    Ok(Some(Row {
        line: n,
        contributor,
        messages,
        findings,
    }))
}

fn parse_messages(ctx: &Ctx<'_>, v: &Value) -> Result<Vec<(String, String)>, RowError> {
    let n = ctx.line;
    let Value::Array(items) = v else {
        return Err(err(
            n,
            "messages",
            format!("expected an array, got {}", type_name(v)),
        ));
    };
    if items.is_empty() {
        return Err(err(n, "messages", "empty"));
    }
    if items.len() > ctx.limits.max_messages {
        return Err(err(
            n,
            "messages",
            format!(
                "{} messages, over the limit of {}",
                items.len(),
                ctx.limits.max_messages
            ),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Value::Object(obj) = m else {
            return Err(err(
                n,
                &format!("messages[{i}]"),
                format!("expected an object, got {}", type_name(m)),
            ));
        };
        let role_field = format!("messages[{i}].role");
        let role = match obj.get("role") {
            None => return Err(err(n, &role_field, "missing")),
            Some(Value::String(r)) if ["system", "user", "assistant"].contains(&r.as_str()) => {
                r.clone()
            }
            Some(Value::String(r)) => {
                return Err(err(
                    n,
                    &role_field,
                    format!("`{r}` is not one of system, user, assistant"),
                ));
            }
            Some(v) => {
                return Err(err(
                    n,
                    &role_field,
                    format!("expected a string, got {}", type_name(v)),
                ));
            }
        };
        let content_field = format!("messages[{i}].content");
        let content = match obj.get("content") {
            None => return Err(err(n, &content_field, "missing")),
            Some(v) => ctx.check_text(v, &content_field, true)?,
        };
        out.push((role, content));
    }
    if !out.iter().any(|(r, _)| r == "user") {
        return Err(err(n, "messages", "no `user` message"));
    }
    if out.last().map(|(r, _)| r.as_str()) != Some("assistant") {
        return Err(err(
            n,
            "messages",
            "the last message must be from the `assistant`",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &[u8]) -> Result<Option<Row>, RowError> {
        let line = Line {
            number: 7,
            bytes: s.to_vec(),
            len: s.len() as u64,
        };
        parse_line(&line, &Limits::default())
    }

    #[test]
    fn three_formats_become_one_conversation_shape() {
        let a = one(br#"{"instruction":"Add","input":"2+2","output":"4"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(a.messages[0], ("user".into(), "Add\n\n2+2".into()));
        let p = one(br#"{"prompt":"hi","completion":"hello","contributor":"bob"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(p.contributor.as_deref(), Some("bob"));
        let m = one(br#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(m.messages.len(), 3);
        assert_eq!(one(b"   ").unwrap(), None);
    }

    #[test]
    fn every_bad_row_kind_names_line_field_and_reason() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"{not json", "", "invalid JSON"),
            (b"[1,2]", "", "expected a JSON object"),
            (b"{\"prompt\":\"x\"}", "completion", "missing"),
            (
                b"{\"prompt\":5,\"completion\":\"y\"}",
                "prompt",
                "expected a string, got a number",
            ),
            (
                b"{\"prompt\":\"  \",\"completion\":\"y\"}",
                "prompt",
                "empty",
            ),
            (
                b"{\"prompt\":\"a\\u0000b\",\"completion\":\"y\"}",
                "prompt",
                "NUL",
            ),
            (
                b"{\"prompt\":\"a\xff\",\"completion\":\"y\"}",
                "",
                "invalid UTF-8",
            ),
            (b"{\"foo\":1}", "", "unknown format"),
            (
                b"{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}",
                "messages[0].role",
                "not one of",
            ),
            (
                b"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                "messages",
                "last message",
            ),
            (b"{\"messages\":[]}", "messages", "empty"),
            (
                b"{\"prompt\":\"x\",\"completion\":\"y\",\"contributor\":7}",
                "contributor",
                "expected a string",
            ),
            (
                b"{\"prompt\":\"x\",\"completion\":\"y\",\"contributor\":\"a b\"}",
                "contributor",
                "1-128",
            ),
        ];
        for (input, field, reason) in cases {
            let e = one(input).unwrap_err();
            assert_eq!(e.line, 7);
            assert_eq!(&e.field, field, "{}", String::from_utf8_lossy(input));
            assert!(
                e.reason.contains(reason),
                "{} -> {}",
                String::from_utf8_lossy(input),
                e.reason
            );
        }
        let long = format!(
            "{{\"prompt\":\"{}\",\"completion\":\"y\"}}",
            "ab ".repeat(11_000)
        );
        let e = one(long.as_bytes()).unwrap_err();
        assert!(e.reason.contains("over the limit of 32768"), "{}", e.reason);
        let spam = format!(
            "{{\"prompt\":\"x\",\"completion\":\"{}\"}}",
            "buy now ".repeat(40)
        );
        let e = one(spam.as_bytes()).unwrap_err();
        assert_eq!(e.field, "completion");
        assert!(e.reason.contains("repetition spam"));
    }

    #[test]
    fn lines_cap_memory_but_count_every_byte() {
        let mut input = Vec::new();
        input.extend_from_slice(b"short\r\n");
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\nlast");
        let mut lines = Lines::new(std::io::BufReader::with_capacity(64, &input[..]), 100);
        let a = lines.next_line().unwrap().unwrap();
        assert_eq!((a.number, a.bytes.as_slice(), a.len), (1, &b"short"[..], 5));
        let b = lines.next_line().unwrap().unwrap();
        assert_eq!((b.bytes.len(), b.len), (101, 5000));
        let c = lines.next_line().unwrap().unwrap();
        assert_eq!(c.bytes, b"last");
        assert!(lines.next_line().unwrap().is_none());
        assert_eq!(lines.total_bytes, input.len() as u64);
        assert_eq!(lines.hasher.finalize(), blake3::hash(&input));
    }
}
