//! Chat templates rendered the way transformers renders them.
//!
//! transformers compiles chat templates with jinja2's `ImmutableSandboxedEnvironment`
//! (`trim_blocks=True`, `lstrip_blocks=True`, loop controls on, trailing newline dropped)
//! and adds `raise_exception`, `strftime_now` and its own `tojson` (Python's `json.dumps`
//! with `ensure_ascii=False`). This module sets minijinja up the same way, and adds the
//! Python string and dict methods that real templates call (`strip`, `startswith`,
//! `items`, …), which jinja2 gets for free from Python.
//!
//! Templates and message contents are untrusted: the helpers here index only through
//! `get` (the lint below keeps it so), and every render runs under the CPU, memory and
//! output bounds of [`super::chat_limits`].
#![deny(clippy::indexing_slicing)]

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

use super::chat_limits as limits;
use std::time::{SystemTime, UNIX_EPOCH};

/// Name under which the one template is stored in its environment.
const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template with its environment.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` in a transformers-compatible environment.
    pub(crate) fn new(source: &str) -> Result<Self, Error> {
        limits::check_source(source)?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(python_method);
        limits::install(&mut env);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())?;
        Ok(Self { env })
    }

    /// Renders the template with `ctx` (messages, `add_generation_prompt`, special tokens…),
    /// within the bounds of [`limits`]: the compiled code runs with its string operators
    /// checked and all of its output counted (see [`limits::rewrite`]).
    pub(crate) fn render(&self, ctx: Value) -> Result<String, Error> {
        self.render_counting(ctx).map(|(out, _)| out)
    }

    /// [`Self::render`], also returning the fuel it spent.
    pub(crate) fn render_counting(&self, ctx: Value) -> Result<(String, u64), Error> {
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let compiled = minijinja::machinery::get_compiled_template(&template);
        let code = limits::rewrite(&compiled.instructions);
        let blocks = compiled
            .blocks
            .iter()
            .map(|(name, block)| (*name, limits::rewrite(block)))
            .collect();
        let mut out = String::new();
        let fuel = {
            let mut output = minijinja::machinery::make_string_output(&mut out);
            let vm = minijinja::machinery::Vm::new(&self.env);
            let (_, state) = vm
                .eval(
                    &code,
                    ctx,
                    &blocks,
                    &mut output,
                    compiled.initial_auto_escape,
                )
                .map_err(limits::explain)?;
            state.fuel_levels().map_or(0, |(used, _)| used)
        };
        Ok((out, fuel))
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time formatted with the common strftime codes.
#[allow(clippy::disallowed_methods)] // chat templates may ask for today's date (`strftime_now`)
fn strftime_now(format: String) -> Result<String, Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(secs, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats a UNIX time (UTC) with `%Y %y %m %d %e %B %b %A %a %H %M %S %j %p %I %%`.
pub(crate) fn strftime(unix_secs: u64, format: &str) -> Result<String, Error> {
    let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, (rem / 60) % 60, rem % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year) + 1;
    let month_name = usize::try_from(month)
        .ok()
        .and_then(|m| MONTHS.get(m.checked_sub(1)?))
        .copied()
        .unwrap_or("");
    let weekday_name = WEEKDAYS.get(weekday).copied().unwrap_or("");
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(month_name.get(..3).unwrap_or(month_name)),
            Some('A') => out.push_str(weekday_name),
            Some('a') => out.push_str(weekday_name.get(..3).unwrap_or(weekday_name)),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported format code %{}",
                        other.unwrap_or(' ')
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Days from 1970-01-01 to January 1st of `year`.
fn days_from_civil(year: i64) -> i64 {
    let y = year - 1; // March-based year containing January 1st
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = 306; // January 1st is day 306 of the March-based year
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=…, separators=…,
/// sort_keys=…)`, not HTML-escaped.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    limits::check_json_indent(indent)?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&json, &style, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// Writes `v` as Python's `json.dumps` does (non-ASCII kept, `/` not escaped).
pub(crate) fn write_json_python(v: &serde_json::Value) -> String {
    let style = JsonStyle {
        indent: None,
        item_sep: ", ".to_owned(),
        key_sep: ": ".to_owned(),
        sort_keys: false,
    };
    let mut out = String::new();
    write_json(v, &style, 0, &mut out);
    out
}

fn write_json(v: &serde_json::Value, style: &JsonStyle, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => out.push_str(&n.to_string()),
        J::String(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        J::Array(items) if items.is_empty() => out.push_str("[]"),
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json(item, style, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if map.is_empty() => out.push_str("{}"),
        J::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push_str(&style.key_sep);
                write_json(item, style, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn string_arg(args: &[Value], i: usize, method: &str) -> Result<Option<String>, Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{method}(): argument {} must be a string", i + 1),
            )
        }),
    }
}

/// Python methods on strings, dicts and lists that minijinja does not have.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => string_method(state, value.as_str().unwrap_or_default(), method, args),
        ValueKind::Map => map_method(value, method, args),
        _ => Err(Error::new(
            ErrorKind::UnknownMethod,
            format!("no method {method}() on a {}", value.kind()),
        )),
    }
}

fn strip_set(s: &str, chars: Option<&str>, left: bool, right: bool) -> String {
    let pred = |c: char| match chars {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    let mut out = s;
    if left {
        out = out.trim_start_matches(pred);
    }
    if right {
        out = out.trim_end_matches(pred);
    }
    out.to_owned()
}

fn string_method(state: &State, s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let arg0 = string_arg(args, 0, method)?;
    let value = match method {
        "strip" => Value::from(strip_set(s, arg0.as_deref(), true, true)),
        "lstrip" => Value::from(strip_set(s, arg0.as_deref(), true, false)),
        "rstrip" => Value::from(strip_set(s, arg0.as_deref(), false, true)),
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "capitalize" => {
            let mut chars = s.chars();
            let out = match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            };
            Value::from(out)
        }
        "title" => {
            let mut out = String::with_capacity(s.len());
            let mut prev_alpha = false;
            for c in s.chars() {
                if prev_alpha {
                    out.extend(c.to_lowercase());
                } else {
                    out.extend(c.to_uppercase());
                }
                prev_alpha = c.is_alphabetic();
            }
            Value::from(out)
        }
        "startswith" | "endswith" => {
            let needle = arg0.ok_or_else(|| {
                Error::new(
                    ErrorKind::MissingArgument,
                    format!("{method}() needs a prefix"),
                )
            })?;
            Value::from(if method == "startswith" {
                s.starts_with(needle.as_str())
            } else {
                s.ends_with(needle.as_str())
            })
        }
        "split" => {
            let parts: Vec<Value> = match arg0 {
                Some(sep) if !sep.is_empty() => s.split(sep.as_str()).map(Value::from).collect(),
                Some(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "split(): empty separator",
                    ));
                }
                None => s.split_whitespace().map(Value::from).collect(),
            };
            Value::from(parts)
        }
        "replace" => {
            let to = string_arg(args, 1, method)?.unwrap_or_default();
            let from = arg0.unwrap_or_default();
            limits::check_replace(state, s, &from, &to)?;
            Value::from(s.replace(from.as_str(), &to))
        }
        "find" => {
            let needle = arg0.unwrap_or_default();
            let found = s
                .find(needle.as_str())
                .and_then(|b| s.get(..b))
                .map(|head| head.chars().count() as i64);
            Value::from(found.unwrap_or(-1))
        }
        "count" => Value::from(s.matches(arg0.unwrap_or_default().as_str()).count()),
        "isdigit" => Value::from(!s.is_empty() && s.chars().all(|c| c.is_ascii_digit())),
        "isspace" => Value::from(!s.is_empty() && s.chars().all(char::is_whitespace)),
        _ => {
            return Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("no method {method}() on a string"),
            ));
        }
    };
    Ok(value)
}

fn map_method(value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match method {
        "items" => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                pairs.push(Value::from(vec![key, item]));
            }
            Ok(Value::from(pairs))
        }
        "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
        "values" => {
            let mut out = Vec::new();
            for key in value.try_iter()? {
                out.push(value.get_item(&key)?);
            }
            Ok(Value::from(out))
        }
        "get" => {
            let key = args.first().cloned().unwrap_or_default();
            let item = value.get_item(&key)?;
            if item.is_undefined() {
                Ok(args.get(1).cloned().unwrap_or(Value::from(())))
            } else {
                Ok(item)
            }
        }
        _ => Err(Error::new(
            ErrorKind::UnknownMethod,
            format!("no method {method}() on a dict"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_a_known_date() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime(t, "%Y-%m-%d %H:%M:%S").unwrap(),
            "2024-02-29 13:05:09"
        );
        assert_eq!(strftime(t, "%d %b %Y").unwrap(), "29 Feb 2024");
        assert_eq!(strftime(t, "%A %B %j").unwrap(), "Thursday February 060");
        assert!(strftime(t, "%Q").is_err());
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        let ctx = minijinja::context! { x => serde_json::json!({"a": [1, "é<"], "b": {}}) };
        let out = t.render(ctx).unwrap();
        assert_eq!(
            out,
            "{\"a\": [1, \"é<\"], \"b\": {}}|{\n  \"a\": [\n    1,\n    \"é<\"\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn python_string_methods_and_exceptions() {
        let t = ChatTemplate::new(
            "{{ ' hi '.strip() }}|{{ 'a,b'.split(',') | length }}|{{ 'Abc'.startswith('A') }}|{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}",
        )
        .unwrap();
        let out = t
            .render(minijinja::context! { d => serde_json::json!({"k": 1}) })
            .unwrap();
        assert_eq!(out, "hi|2|True|k=1"); // booleans print as Python does
        let bad = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let err = bad.render(minijinja::context! {}).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"));
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let t = ChatTemplate::new(
            "{% for m in ms %}\n  {% if true %}\n{{ m }}\n  {% endif %}\n{% endfor %}\n",
        )
        .unwrap();
        assert_eq!(
            t.render(minijinja::context! { ms => vec!["a", "b"] })
                .unwrap(),
            "a\nb\n"
        );
    }
}
