//! Reading JSONL datasets: line chunks streamed from any reader, a borrowed JSON value parsed from
//! one line, and [`read_conversations`] for training.
//!
//! The reader never holds more than one chunk (plus the partial line carried into the next one) in
//! memory, whatever the file's size: a line longer than the chunk is counted and skipped, not kept.
//! Lines are split on `\n` only; a trailing `\r` (CRLF files) is stripped by the checker. A file
//! that ends without a newline still yields its last line.
//!
//! Not supported: JSON spread over several lines (pretty-printed JSON or one big array); the
//! checker recognises both and says how to convert them.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::{self, Read};
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::check::{self, CheckOptions, DataFormat, Row};
use crate::conversation::{Conversation, PreferenceExample};
use crate::error::{Error, Result};

/// Reads a chat dataset for training and returns its conversations in file order (blank lines
/// skipped).
///
/// Fails on the first invalid line with an error naming the file, the 1-based line, the stable
/// error code and what is wrong; `tuna data check FILE` lists every problem at once. Warnings
/// (duplicates, ignored fields, ...) do not fail. Token limits are not applied here: truncating
/// or dropping long examples is the trainer's job, because only it knows the sequence length.
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>> {
    Ok(read_rows(path, DataFormat::Chat)?
        .into_iter()
        .filter_map(|row| match row {
            Row::Chat(c) => Some(c),
            Row::Preference(_) => None,
        })
        .collect())
}

/// Reads a preference dataset (OpenAI's preference format, for DPO) for training: its pairs in
/// file order. Fails like [`read_conversations`].
pub fn read_preference_pairs(path: &Path) -> Result<Vec<PreferenceExample>> {
    Ok(read_rows(path, DataFormat::Preference)?
        .into_iter()
        .filter_map(|row| match row {
            Row::Preference(p) => Some(p),
            Row::Chat(_) => None,
        })
        .collect())
}

/// Every valid line of `path` read as `format`, or the first error.
fn read_rows(path: &Path, format: DataFormat) -> Result<Vec<Row>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let opts = CheckOptions {
        format: Some(format),
        ..CheckOptions::default()
    };
    let mut rows = Vec::new();
    let report =
        check::run_check(file, &opts, None, Some(&mut rows), true).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(first) = report.errors.first() {
        return Err(Error::InvalidDataset {
            path: path.to_path_buf(),
            line: first.line,
            code: first.code.as_str(),
            message: first.message.clone(),
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Line chunks

/// Where one line sits in a [`Chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineSpan {
    /// `chunk.data[start..end]`, without its `\n`.
    Text { start: usize, end: usize },
    /// A line longer than a whole chunk: only its length in bytes was counted, its bytes were dropped.
    TooLong { len: u64 },
}

/// Consecutive complete lines of the input; line `i` of `lines` is line `first_line + i` of the file.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub data: Vec<u8>,
    /// 1-based.
    pub first_line: u64,
    pub lines: Vec<LineSpan>,
}

impl Chunk {
    pub fn bytes(&self, span: LineSpan) -> Option<&[u8]> {
        match span {
            LineSpan::Text { start, end } => Some(&self.data[start..end]),
            LineSpan::TooLong { .. } => None,
        }
    }
}

/// Splits a reader into chunks of whole lines, about `target` bytes each.
///
/// `target` is at least `max_line + 1`, so a line within the limit always fits in one chunk; a line
/// that fills a whole chunk without ending is over the limit and is skipped to its newline.
pub(crate) struct LineChunks<R> {
    reader: R,
    /// The unfinished last line of the previous chunk.
    carry: Vec<u8>,
    /// Buffers handed back by the caller, reused so that steady state allocates nothing.
    spare: Vec<Vec<u8>>,
    next_line: u64,
    eof: bool,
    target: usize,
    /// The first bytes of the input, to recognise binary files even when line 1 is too long to keep.
    head: Vec<u8>,
}

/// How much of the input's start [`LineChunks::head`] keeps: enough for the magic numbers of
/// binary formats and for the first line of a file that is not JSONL.
pub const HEAD_BYTES: usize = 4096;

impl<R: Read> LineChunks<R> {
    pub fn new(reader: R, chunk_bytes: usize, max_line: usize) -> Self {
        let target = chunk_bytes.max(max_line.saturating_add(1)).max(2);
        Self {
            reader,
            carry: Vec::new(),
            spare: Vec::new(),
            next_line: 1,
            eof: false,
            target,
            head: Vec::new(),
        }
    }

    /// Up to the first [`HEAD_BYTES`] of the input, once the first chunk has been read.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Gives a chunk's buffer back for reuse.
    pub fn recycle(&mut self, mut data: Vec<u8>) {
        if self.spare.len() < 2 {
            data.clear();
            self.spare.push(data);
        }
    }

    /// The next chunk, or `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        let mut data = self.spare.pop().unwrap_or_default();
        data.clear();
        data.reserve(self.target);
        data.extend_from_slice(&self.carry);
        self.carry.clear();
        while data.len() < self.target && !self.eof {
            let want = (self.target - data.len()) as u64;
            let got = (&mut self.reader).take(want).read_to_end(&mut data)? as u64;
            if got < want {
                self.eof = true;
            }
        }

        if self.next_line == 1 && self.head.is_empty() {
            self.head = data[..data.len().min(HEAD_BYTES)].to_vec();
        }
        let first_line = self.next_line;
        let mut lines = Vec::new();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &data) {
            lines.push(LineSpan::Text { start, end: nl });
            start = nl + 1;
        }
        if start < data.len() {
            if self.eof {
                // The last line of a file that does not end with a newline.
                lines.push(LineSpan::Text {
                    start,
                    end: data.len(),
                });
            } else if start == 0 {
                // A full chunk without a newline: the line is over the limit. Count the rest of it
                // without keeping it, so memory stays bounded by the chunk size.
                let len = data.len() as u64 + self.skip_rest_of_line()?;
                data.clear();
                lines.push(LineSpan::TooLong { len });
            } else {
                self.carry.extend_from_slice(&data[start..]);
                data.truncate(start);
            }
        }
        if lines.is_empty() {
            self.recycle(data);
            return Ok(None);
        }
        self.next_line += lines.len() as u64;
        Ok(Some(Chunk {
            data,
            first_line,
            lines,
        }))
    }

    /// Reads up to and including the next `\n`; returns how many bytes came before it. What
    /// follows the newline in the last read becomes the carry of the next chunk.
    fn skip_rest_of_line(&mut self) -> io::Result<u64> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut skipped = 0u64;
        loop {
            let n = match self.reader.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(skipped);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Some(p) = memchr::memchr(b'\n', &buf[..n]) {
                self.carry.extend_from_slice(&buf[p + 1..n]);
                return Ok(skipped + p as u64);
            }
            skipped += n as u64;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A borrowed JSON value

/// One parsed JSON value whose strings borrow from the line when they hold no escapes.
///
/// The checker parses every line into this tree in one pass, then walks it to report every
/// problem; a typed `serde` struct would stop at the first mismatch and lose the rest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    /// Keys in file order; duplicates are kept (the checker reports them).
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses one whole line (trailing characters are an error).
    pub fn parse(text: &'a str) -> serde_json::Result<Json<'a>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = Json::deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    /// "a string", "an object", ... for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::UInt(_) | Json::Int(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Arr(_) => "a list",
            Json::Obj(_) => "an object",
        }
    }

    /// The value of `key` in an object (the first one when it is duplicated).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Compact JSON of at most about `limit` characters, cut with `…`: how a bad value is quoted
    /// in a message without copying a whole 100 kB answer into the report.
    pub fn preview(&self, limit: usize) -> String {
        let mut out = String::new();
        let _ = self.write_preview(&mut out, limit);
        if out.len() > limit {
            let mut cut = limit;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
        }
        out
    }

    fn write_preview(&self, out: &mut String, limit: usize) -> fmt::Result {
        if out.len() > limit {
            return Ok(());
        }
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => write!(out, "{b}")?,
            Json::UInt(n) => write!(out, "{n}")?,
            Json::Int(n) => write!(out, "{n}")?,
            Json::Float(x) => write!(out, "{x:?}")?,
            Json::Str(s) => write_quoted(out, s, limit),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if out.len() > limit {
                        break;
                    }
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_preview(out, limit)?;
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if out.len() > limit {
                        break;
                    }
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_quoted(out, k, limit);
                    out.push_str(": ");
                    v.write_preview(out, limit)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }
}

/// A JSON string literal of `s`, stopping once `out` passes `limit` (the caller cuts it).
pub(crate) fn write_quoted(out: &mut String, s: &str, limit: usize) {
    let room = limit.saturating_sub(out.len()) + 1;
    let mut end = s.len().min(room);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(&s[..end]).unwrap_or_default());
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Json<'de>, E> {
        Ok(Json::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Json<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
        while let Some(Key(k)) = map.next_key()? {
            fields.push((k, map.next_value()?));
        }
        Ok(Json::Obj(fields))
    }
}

/// An object key that borrows from the line when it can (`Cow<str>` alone always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        input: &[u8],
        chunk: usize,
        max_line: usize,
    ) -> Vec<(u64, Option<Vec<u8>>, Option<u64>)> {
        let mut lc = LineChunks::new(input, chunk, max_line);
        let mut out = Vec::new();
        while let Some(c) = lc.next_chunk().unwrap() {
            for (i, span) in c.lines.iter().enumerate() {
                let too_long = match span {
                    LineSpan::TooLong { len } => Some(*len),
                    LineSpan::Text { .. } => None,
                };
                out.push((
                    c.first_line + i as u64,
                    c.bytes(*span).map(<[u8]>::to_vec),
                    too_long,
                ));
            }
            lc.recycle(c.data);
        }
        out
    }

    #[test]
    fn lines_are_the_same_for_every_chunk_size() {
        let input = b"ab\n\ncdef\r\nlast-without-newline";
        let want: Vec<(u64, Option<Vec<u8>>, Option<u64>)> = vec![
            (1, Some(b"ab".to_vec()), None),
            (2, Some(b"".to_vec()), None),
            (3, Some(b"cdef\r".to_vec()), None),
            (4, Some(b"last-without-newline".to_vec()), None),
        ];
        for chunk in [1, 2, 3, 5, 8, 64, 1 << 20] {
            assert_eq!(chunks(input, chunk, 20), want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_final_newline_adds_no_line_and_empty_input_has_none() {
        assert_eq!(chunks(b"a\n", 4, 4).len(), 1);
        assert!(chunks(b"", 4, 4).is_empty());
        assert_eq!(chunks(b"\n", 4, 4), vec![(1, Some(vec![]), None)]);
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_counted_and_skipped() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\nnext\n");
        input.extend(std::iter::repeat_n(b'y', 70_000)); // last line, no newline
        let got = chunks(&input, 8, 10);
        assert_eq!(
            got,
            vec![
                (1, Some(b"ok".to_vec()), None),
                (2, None, Some(100_000)),
                (3, Some(b"next".to_vec()), None),
                (4, None, Some(70_000)),
            ]
        );
    }

    #[test]
    fn parse_borrows_plain_strings_and_keeps_duplicate_keys() {
        let v = Json::parse(r#"{"a": "plain", "b": "esc\naped", "a": [1, -2, 0.5, null, true]}"#)
            .unwrap();
        let Json::Obj(fields) = &v else {
            panic!("not an object: {v:?}")
        };
        assert_eq!(fields.len(), 3);
        assert!(matches!(&fields[0].1, Json::Str(Cow::Borrowed("plain"))));
        assert!(matches!(&fields[1].1, Json::Str(Cow::Owned(s)) if s == "esc\naped"));
        assert_eq!(
            fields[2].1,
            Json::Arr(vec![
                Json::UInt(1),
                Json::Int(-2),
                Json::Float(0.5),
                Json::Null,
                Json::Bool(true)
            ])
        );
        assert!(Json::parse(r#"{"a": 1} x"#).is_err());
    }

    #[test]
    fn preview_is_cut_at_the_limit() {
        let long = format!(r#"{{"k": "{}"}}"#, "é".repeat(100));
        let v = Json::parse(&long).unwrap();
        let p = v.preview(20);
        assert!(p.starts_with(r#"{"k": "éé"#), "{p}");
        assert!(p.ends_with('…'));
        assert!(p.chars().count() <= 21, "{p}");
        assert_eq!(
            Json::parse("[1, \"a\"]").unwrap().preview(60),
            r#"[1, "a"]"#
        );
    }
}
