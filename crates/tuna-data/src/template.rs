//! Chat templates: the Jinja template of a model's `tokenizer_config.json`, rendered with minijinja
//! the way transformers' `apply_chat_template` renders it with Jinja2.
//!
//! Set up as TGI's `router/src/infer/chat_template.rs` does, plus what transformers adds
//! (`transformers/utils/chat_template_utils.py`, `_compile_jinja_template`):
//! - `trim_blocks` and `lstrip_blocks` on, and loop controls (`{% break %}`, `{% continue %}`);
//! - minijinja-contrib's `pycompat` callback for Python string/dict methods (`startswith`, `split`,
//!   `strip`, `items`, ...);
//! - `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter that is Python's
//!   `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`. minijinja's
//!   own `tojson` HTML-escapes `<`, `>`, `&`, `'` and writes compact JSON, which would change what the
//!   model sees in tool definitions.
//! - `{% generation %}` / `{% endgeneration %}` markers are removed (they only drive transformers'
//!   assistant masks; ours come from [`crate::mask`]).
//!
//! `messages[::-1]` (Qwen3) needs no rewrite: minijinja 2 slices with negative steps (TGI patched
//! it into `|reverse` for older minijinja versions); a unit test below pins that.
//!
//! Not supported: tools, documents and tool calls in messages (Tuna's datasets have no tool
//! messages; the checker rejects them), and `continue_final_message`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::conversation::Message;
use crate::error::{Error, Result};

/// The name the template is registered under in its environment. No file extension, so
/// minijinja does not turn on HTML auto-escaping (transformers renders without escaping).
const TEMPLATE_NAME: &str = "chat";

/// Keys of `tokenizer_config.json` that transformers passes to the template as variables
/// (`special_tokens_map`).
const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A compiled chat template with the special-token variables of its tokenizer config.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... → their text, passed to every render like transformers does.
    special_tokens: BTreeMap<String, Value>,
}

/// One message as the template sees it: the OpenAI `{role, content}` dict. `trained` is ours and
/// is not passed (templates never see OpenAI's `weight` either).
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl ChatTemplate {
    /// From a tokenizer_config.json's `chat_template` (string, or list of `{name, template}` → the
    /// one named "default", as transformers picks when no name is asked for).
    pub fn from_tokenizer_config(json: &serde_json::Value) -> Result<ChatTemplate> {
        let source = match json.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    Error::TokenizerConfig(
                        "`chat_template` is a list without an entry named \"default\" that has a `template` string".into(),
                    )
                })?
                .to_owned(),
            Some(_) => {
                return Err(Error::TokenizerConfig(
                    "`chat_template` must be a string or a list of {name, template}".into(),
                ));
            }
            None => {
                return Err(Error::TokenizerConfig(
                    "no `chat_template` (base models have none: fine-tune an instruct/chat model, or add a template)".into(),
                ));
            }
        };
        Self::new(source, special_tokens_of(json))
    }

    /// Compiles `source` with the given special-token variables (e.g. `eos_token`).
    pub fn new(source: String, special_tokens: BTreeMap<String, Value>) -> Result<ChatTemplate> {
        let source = strip_generation_tags(&source);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source)?;
        Ok(ChatTemplate {
            env,
            special_tokens,
        })
    }

    /// Renders `messages`. `add_generation_prompt` appends the assistant header that prompts a
    /// reply; `enable_thinking` is passed only when `Some` (templates test `is defined`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String> {
        let msgs: Vec<TemplateMessage<'_>> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect();
        let mut ctx = self.special_tokens.clone();
        ctx.insert("messages".into(), Value::from_serialize(&msgs));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        // transformers always passes these (None without tools), so `tools is defined` holds.
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        if let Some(t) = enable_thinking {
            ctx.insert("enable_thinking".into(), Value::from(t));
        }
        let template = self.env.get_template(TEMPLATE_NAME)?;
        Ok(template.render(ctx)?)
    }
}

/// transformers' `special_tokens_map`: each special-token key whose value is a string, or an
/// added-token object `{"content": ...}`; null or absent keys are not passed.
fn special_tokens_of(json: &serde_json::Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for key in SPECIAL_TOKEN_KEYS {
        let text = match json.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(obj @ serde_json::Value::Object(_)) => obj.get("content").and_then(|c| c.as_str()),
            _ => None,
        };
        if let Some(t) = text {
            out.insert(key.to_owned(), Value::from(t));
        }
    }
    if let Some(serde_json::Value::Array(list)) = json.get("additional_special_tokens") {
        let tokens: Vec<Value> = list
            .iter()
            .filter_map(|t| {
                t.as_str()
                    .or_else(|| t.get("content").and_then(|c| c.as_str()))
            })
            .map(Value::from)
            .collect();
        out.insert("additional_special_tokens".into(), Value::from(tokens));
    }
    out
}

/// Removes `{% generation %}` / `{% endgeneration %}` (with any `-` whitespace control), which
/// minijinja does not know; they only mark assistant text for transformers' masks.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(close) = rest[open..].find("%}") else {
            break;
        };
        let tag = &rest[open..open + close + 2];
        let inner =
            tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..open]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(tag);
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// `raise_exception(msg)`: templates use it to reject conversations they cannot render.
fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: the local time formatted with a C `strftime` format (Llama 3 templates
/// put today's date in the system prompt).
fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&fmt)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format {fmt:?}"),
        )
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// tojson: Python's json.dumps

/// transformers' filter: `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// arguments positional in that order or by keyword.
fn tojson(value: &Value, args: Rest<Value>) -> std::result::Result<String, minijinja::Error> {
    let mut positional: Vec<Value> = args.0;
    let kwargs = match positional.last() {
        Some(last) if last.is_kwargs() => {
            Some(Kwargs::try_from(positional.pop().unwrap_or_default())?)
        }
        _ => None,
    };
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > names.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut opt: [Value; 4] = Default::default();
    for (slot, v) in opt.iter_mut().zip(positional) {
        *slot = v;
    }
    if let Some(kw) = &kwargs {
        for (i, name) in names.iter().enumerate() {
            if kw.has(name) {
                opt[i] = kw.get::<Value>(name)?;
            }
        }
        kw.assert_all_used()?;
    }
    let [ensure_ascii, indent, separators, sort_keys] = opt;
    let indent = match indent.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        // Python: an int n indents by n spaces, a string indents by that string.
        ValueKind::Number => Some(" ".repeat(i64::try_from(indent.clone())?.max(0) as usize)),
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_owned()),
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: `indent` must be an int or a string",
            ));
        }
    };
    let (item_sep, key_sep) = match separators.kind() {
        ValueKind::Undefined | ValueKind::None => (
            if indent.is_some() { "," } else { ", " }.to_owned(),
            ": ".to_owned(),
        ),
        _ => {
            let parts: Vec<Value> = separators.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_owned(),
                    b.as_str().unwrap_or_default().to_owned(),
                ),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: `separators` must be a pair of strings",
                    ));
                }
            }
        }
    };
    let dumper = JsonDumper {
        ensure_ascii: ensure_ascii.is_true(),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_true(),
    };
    let mut out = String::new();
    dumper.dump(value, 0, &mut out)?;
    Ok(out)
}

/// Writes a minijinja value the way CPython's `json.dumps` writes the equivalent Python value.
struct JsonDumper {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper {
    fn dump(
        &self,
        v: &Value,
        level: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(v, out)?,
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, level, '[', ']', &items, |item, lvl, out| {
                    self.dump(item, lvl, out)
                })?;
            }
            ValueKind::Map => {
                let mut entries: Vec<(String, Value)> = Vec::new();
                for key in v.try_iter()? {
                    let item = v.get_item(&key)?;
                    entries.push((self.key_string(&key)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(out, level, '{', '}', &entries, |(k, item), lvl, out| {
                    self.string(k, out);
                    out.push_str(&self.key_sep);
                    self.dump(item, lvl, out)
                })?;
            }
            kind => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: object of kind {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    fn container<T>(
        &self,
        out: &mut String,
        level: usize,
        open: char,
        close: char,
        items: &[T],
        mut each: impl FnMut(&T, usize, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            if let Some(ind) = &self.indent {
                out.push('\n');
                out.push_str(&ind.repeat(level + 1));
            }
            each(item, level + 1, out)?;
        }
        if let Some(ind) = &self.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level));
        }
        out.push(close);
        Ok(())
    }

    /// Python converts non-string dict keys: `1` → `"1"`, `True` → `"true"`, `None` → `"null"`.
    fn key_string(&self, key: &Value) -> std::result::Result<String, minijinja::Error> {
        Ok(match key.kind() {
            ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
            ValueKind::None => "null".into(),
            ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
            ValueKind::Number => {
                let mut s = String::new();
                self.number(key, &mut s)?;
                s
            }
            kind => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
                ));
            }
        })
    }

    fn number(&self, v: &Value, out: &mut String) -> std::result::Result<(), minijinja::Error> {
        if v.is_integer() {
            // i128 covers every integer minijinja holds except u128 beyond i128; print those too.
            match i128::try_from(v.clone()) {
                Ok(i) => write!(out, "{i}").ok(),
                Err(_) => write!(out, "{v}").ok(),
            };
        } else {
            out.push_str(&python_float_repr(f64::try_from(v.clone())?));
        }
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.ensure_ascii && !c.is_ascii() => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)` (what `json.dumps` writes): the shortest round-trip digits, in
/// positional notation for exponents in [-4, 16) and as `d.ddde±XX` otherwise; always with a
/// `.0` or an exponent so the value reads back as a float. `inf`/`nan` as json.dumps spells them.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-7", "1e16".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let s = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::Role;

    fn render_src(src: &str) -> String {
        let t = ChatTemplate::new(src.to_owned(), BTreeMap::new()).expect("template compiles");
        t.render(&[Message::new(Role::User, "hi")], false, None)
            .expect("renders")
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        // Expected strings from CPython 3.11 `json.dumps` with transformers' defaults
        // (ensure_ascii=False, separators=None, sort_keys=False).
        assert_eq!(
            render_src(
                r#"{{ {"b": 1, "a": "é<>&'\"\\\n\t", "c": [1.5, none, true, 1e20, 0.0001, 0.00001, 100.0]}|tojson }}"#
            ),
            r#"{"b": 1, "a": "é<>&'\"\\\n\t", "c": [1.5, null, true, 1e+20, 0.0001, 1e-05, 100.0]}"#
        );
        assert_eq!(render_src(r#"{{ "中文 😀"|tojson }}"#), r#""中文 😀""#);
        assert_eq!(
            render_src(r#"{{ "中文 😀"|tojson(ensure_ascii=true) }}"#),
            r#""\u4e2d\u6587 \ud83d\ude00""#
        );
        assert_eq!(render_src(r#"{{ "é"|tojson(true) }}"#), r#""\u00e9""#);
        assert_eq!(
            render_src(r#"{{ {"b": [1, {}], "a": []}|tojson(indent=2, sort_keys=true) }}"#),
            "{\n  \"a\": [],\n  \"b\": [\n    1,\n    {}\n  ]\n}"
        );
        assert_eq!(
            render_src(r#"{{ {"a": [1, 2]}|tojson(separators=[",", ":"]) }}"#),
            r#"{"a":[1,2]}"#
        );
        assert_eq!(
            render_src(r#"{{ {1: 2, "x": "\x01"}|tojson }}"#),
            r#"{"1": 2, "x": "\u0001"}"#
        );
    }

    #[test]
    fn python_float_repr_cases() {
        // Pairs checked against CPython's repr().
        for (x, want) in [
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-0.0, "-0.0"),
        ] {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn python_isms_and_helpers() {
        // Negative-step slices (Qwen3's `messages[::-1]`), pycompat methods, namespace, loop controls.
        let src = "{% for m in [1, 2, 3][::-1] %}{{ m }}{% endfor %}|{{ ' a-b '.strip().split('-')|join(',') }}\
                   |{% set ns = namespace(x=1) %}{% set ns.x = 2 %}{{ ns.x }}\
                   |{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}\
                   |{{ 'abc'.startswith('ab') }}";
        // Booleans print as Python does ("True").
        assert_eq!(render_src(src), "321|a,b|2|1|True");
        // strftime_now renders a 4-digit year.
        let year = render_src("{{ strftime_now('%Y') }}");
        assert!(
            year.len() == 4 && year.chars().all(|c| c.is_ascii_digit()),
            "{year}"
        );
    }

    #[test]
    fn raise_exception_message_reaches_the_error() {
        let t = ChatTemplate::new(
            "{{ raise_exception('roles must alternate') }}".into(),
            BTreeMap::new(),
        )
        .expect("template compiles");
        let err = t.render(&[], false, None).expect_err("raises").to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        // Jinja2 with trim_blocks + lstrip_blocks: the block lines leave no whitespace behind.
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(render_src(src), "[hi]\n");
    }

    #[test]
    fn variables_like_transformers() {
        let src = "{{ tools is defined }} {{ tools is none }} {{ documents is none }} {{ enable_thinking is defined }}";
        assert_eq!(render_src(src), "True True True False");
    }

    #[test]
    fn generation_tags_are_stripped() {
        let src = "{% for m in messages %}{%- generation -%}{{ m.content }}{% endgeneration %}{% endfor %}";
        assert_eq!(render_src(src), "hi");
    }

    #[test]
    fn config_variants() {
        let list = serde_json::json!({
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}],
            "eos_token": {"content": "</s>", "lstrip": false},
            "bos_token": null,
        });
        let t = ChatTemplate::from_tokenizer_config(&list).expect("list form");
        assert_eq!(t.render(&[], false, None).expect("renders"), "D</s>");
        let none = serde_json::json!({"eos_token": "x"});
        assert!(ChatTemplate::from_tokenizer_config(&none).is_err());
        let no_default =
            serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
        assert!(ChatTemplate::from_tokenizer_config(&no_default).is_err());
    }
}
