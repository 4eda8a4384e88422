//! Bounds on rendering an untrusted chat template (issue 12).
//!
//! A chat template comes from a model's files (GGUF `tokenizer.chat_template`,
//! `tokenizer_config.json`), so a hostile one must fail fast with an error that names the
//! limit, never loop for hours or allocate GiBs:
//!
//! - **CPU**: minijinja's fuel ([`FUEL`] instructions per render), `range` capped at
//!   [`MAX_RANGE`] items, macro and loop recursion at [`RECURSION_LIMIT`] (the parser
//!   already refuses nesting deeper than 150).
//! - **Memory**: minijinja's `~`, `+` and `*` operators build strings and lists without a
//!   bound (`{% set ns.s = ns.s ~ ns.s %}` doubles per step; fuel cannot see it). The
//!   compiled template's `StringConcat`, `Add` and `Mul` instructions are therefore
//!   replaced, one for one, by calls to the checked operators below, which refuse a
//!   string over [`MAX_STRING_BYTES`], a list over [`MAX_SEQ_ITEMS`] and more than
//!   [`MAX_BUILT_BYTES`] built in one render, then delegate to minijinja's own operator
//!   (so results are identical). The growing filters (`join`, `replace`, `indent`,
//!   `format`) are checked the same way before they run.
//! - **Output**: every piece of output, literal template text included, goes through one
//!   formatter that stops at [`MAX_OUTPUT_BYTES`] (each `EmitRaw` becomes a constant and
//!   an `Emit`, so literal text takes that path too).
//!
//! What is not bounded: copies made by linear filters (`upper`, `string`, …) that a
//! template keeps in many variables at once; each is at most [`MAX_STRING_BYTES`] and
//! fuel bounds how many a render can make.
#![deny(clippy::indexing_slicing)]

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::{Object, Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Expression, Output, State};

/// Largest template source accepted (the largest real chat templates are ~20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Instructions one render may execute. The demo (ChatML) template spends 19 per message
/// (`tests::the_demo_template_spends_little_fuel_per_message`), so this allows
/// conversations of tens of thousands of messages.
pub const FUEL: u64 = 2_000_000;
/// Depth of macro calls and recursive loops (minijinja counts a macro call as ~10).
pub const RECURSION_LIMIT: usize = 200;
/// Items one `range(...)` may produce (jinja2's sandbox allows 100 000; templates use
/// `range` for a handful of indices).
pub const MAX_RANGE: usize = 10_000;
/// Largest string one operator or filter may build.
pub const MAX_STRING_BYTES: usize = 4 << 20;
/// Largest list one `+` or `*` may build.
pub const MAX_SEQ_ITEMS: usize = 100_000;
/// Bytes the checked operators and filters may build in one render, all together.
pub const MAX_BUILT_BYTES: usize = 64 << 20;
/// Largest rendered output.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// Name of the per-render byte counters in minijinja's temps.
const BUDGET: &str = "__tributary_budget";

fn limit_error(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// Bytes built and written so far in one render (shared with the macros it calls).
#[derive(Debug, Default)]
struct Budget {
    built: AtomicUsize,
    output: AtomicUsize,
}

impl Object for Budget {}

fn budget(state: &State) -> std::sync::Arc<Budget> {
    state.get_or_set_temp_object(BUDGET, Budget::default)
}

/// Counts `bytes` more built bytes; refuses past [`MAX_BUILT_BYTES`].
fn charge(state: &State, bytes: usize) -> Result<(), Error> {
    let used = budget(state).built.fetch_add(bytes, Ordering::Relaxed);
    if used.saturating_add(bytes) > MAX_BUILT_BYTES {
        return Err(limit_error(format!(
            "the chat template built more than {MAX_BUILT_BYTES} bytes of strings in one \
             render (limit MAX_BUILT_BYTES)"
        )));
    }
    Ok(())
}

/// Refuses a string of `len` bytes made by `what`, then charges it.
fn check_string(state: &State, len: Option<usize>, what: &str) -> Result<(), Error> {
    match len {
        Some(n) if n <= MAX_STRING_BYTES => charge(state, n),
        _ => Err(limit_error(format!(
            "{what} would build a string over {MAX_STRING_BYTES} bytes (limit MAX_STRING_BYTES)"
        ))),
    }
}

fn check_items(len: Option<usize>, what: &str) -> Result<(), Error> {
    match len {
        Some(n) if n <= MAX_SEQ_ITEMS => Ok(()),
        _ => Err(limit_error(format!(
            "{what} would build a list over {MAX_SEQ_ITEMS} items (limit MAX_SEQ_ITEMS)"
        ))),
    }
}

/// minijinja's own operators, run on values the checks below have let through.
static PLAIN: LazyLock<Environment<'static>> = LazyLock::new(Environment::new);
static PLAIN_ADD: LazyLock<Result<Expression<'static, 'static>, Error>> =
    LazyLock::new(|| PLAIN.compile_expression("a + b"));
static PLAIN_MUL: LazyLock<Result<Expression<'static, 'static>, Error>> =
    LazyLock::new(|| PLAIN.compile_expression("a * b"));

fn plain(
    expr: &'static LazyLock<Result<Expression<'static, 'static>, Error>>,
    a: Value,
    b: Value,
) -> Result<Value, Error> {
    match &**expr {
        Ok(e) => e.eval(minijinja::context! { a, b }),
        Err(e) => Err(limit_error(format!(
            "the checked operator does not compile: {e}"
        ))),
    }
}

fn is_seq(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// `a ~ b`, checked: exactly minijinja's `format!("{a}{b}")`.
fn concat(state: &State, a: Value, b: Value) -> Result<Value, Error> {
    let left = a.as_str().map_or_else(|| a.to_string(), str::to_owned);
    let right = b.as_str().map_or_else(|| b.to_string(), str::to_owned);
    check_string(state, left.len().checked_add(right.len()), "`~`")?;
    Ok(Value::from(left + &right))
}

/// `a + b`, checked for strings and lists.
fn add(state: &State, a: Value, b: Value) -> Result<Value, Error> {
    if let (Some(l), Some(r)) = (a.as_str(), b.as_str()) {
        check_string(state, l.len().checked_add(r.len()), "`+`")?;
    } else if is_seq(&a) && is_seq(&b) {
        let len = a.len().zip(b.len()).and_then(|(l, r)| l.checked_add(r));
        check_items(len, "`+`")?;
    }
    plain(&PLAIN_ADD, a, b)
}

/// `a * b`, checked for repeated strings and lists.
fn mul(state: &State, a: Value, b: Value) -> Result<Value, Error> {
    let (seq, count) = if a.kind() == ValueKind::Number {
        (&b, &a)
    } else {
        (&a, &b)
    };
    if let Some(n) = count
        .as_usize()
        .filter(|_| count.kind() == ValueKind::Number)
    {
        if let Some(s) = seq.as_str() {
            check_string(state, s.len().checked_mul(n), "`*`")?;
        } else if is_seq(seq) {
            check_items(seq.len().and_then(|l| l.checked_mul(n)), "`*`")?;
        }
    }
    plain(&PLAIN_MUL, a, b)
}

/// `range(...)` capped at [`MAX_RANGE`] items.
fn range(lower: i64, upper: Option<i64>, step: Option<i64>) -> Result<Value, Error> {
    let (start, stop) = match upper {
        Some(u) => (i128::from(lower), i128::from(u)),
        None => (0, i128::from(lower)),
    };
    let step = i128::from(step.unwrap_or(1));
    let count = match step {
        0 => 0,
        s if s > 0 => (stop - start + s - 1).div_euclid(s).max(0),
        s => (start - stop - s - 1).div_euclid(-s).max(0),
    };
    if count > MAX_RANGE as i128 {
        return Err(limit_error(format!(
            "range() would produce {count} items, over {MAX_RANGE} (limit MAX_RANGE)"
        )));
    }
    let to_isize =
        |v: i64| isize::try_from(v).map_err(|_| limit_error("range(): bound out of range".into()));
    minijinja::functions::range(
        to_isize(lower)?,
        upper.map(to_isize).transpose()?,
        step_arg(step)?,
    )
}

fn step_arg(step: i128) -> Result<Option<isize>, Error> {
    isize::try_from(step)
        .map(Some)
        .map_err(|_| limit_error("range(): step out of range".into()))
}

/// The length of `v` as the template prints it.
fn printed_len(v: &Value) -> usize {
    v.as_str().map_or_else(|| v.to_string().len(), str::len)
}

fn call_builtin(state: &State, filter: Value, args: &[Value]) -> Result<Value, Error> {
    filter.call(state, args)
}

/// `join`, refused before it runs when the joined string would be too long.
fn join(state: &State, args: Rest<Value>) -> Result<Value, Error> {
    let value = args.first().cloned().unwrap_or_default();
    let sep = args.get(1).map_or(0, printed_len);
    if let Ok(items) = value.try_iter() {
        let mut total: usize = 0;
        for (i, item) in items.enumerate() {
            total = total
                .saturating_add(printed_len(&item))
                .saturating_add(if i > 0 { sep } else { 0 });
            if total > MAX_STRING_BYTES {
                break;
            }
        }
        check_string(state, Some(total), "join")?;
    }
    call_builtin(state, Value::from_function(minijinja::filters::join), &args)
}

/// The longest result of replacing `from` by `to` in `s` (`from` empty: between chars).
pub(crate) fn replaced_len(s: &str, from: &str, to: &str) -> Option<usize> {
    let hits = if from.is_empty() {
        s.chars().count().checked_add(1)?
    } else {
        s.matches(from).count()
    };
    s.len().checked_add(hits.checked_mul(to.len())?)
}

/// Python's `str.replace` (in `chat.rs`), checked.
pub(crate) fn check_replace(state: &State, s: &str, from: &str, to: &str) -> Result<(), Error> {
    check_string(state, replaced_len(s, from, to), "replace")
}

/// The `replace` filter, checked.
fn replace(state: &State, args: Rest<Value>) -> Result<Value, Error> {
    let text = |i: usize| args.get(i).map(|v| v.to_string()).unwrap_or_default();
    let (s, from, to) = (text(0), text(1), text(2));
    check_string(state, replaced_len(&s, &from, &to), "replace")?;
    call_builtin(
        state,
        Value::from_function(minijinja::filters::replace),
        &args,
    )
}

/// The `indent` filter, checked: each line grows by the width.
fn indent(state: &State, args: Rest<Value>) -> Result<Value, Error> {
    let s = args.first().map(|v| v.to_string()).unwrap_or_default();
    let width = args.get(1).map_or(Some(4), |w| {
        w.as_str().map_or_else(|| w.as_usize(), |t| Some(t.len()))
    });
    let lines = s.lines().count().saturating_add(1);
    let len = width
        .and_then(|w| w.checked_mul(lines))
        .and_then(|g| g.checked_add(s.len()));
    check_string(state, len, "indent")?;
    call_builtin(
        state,
        Value::from_function(minijinja::filters::indent),
        &args,
    )
}

/// Widest padding a `format` spec may ask for (`%10000s`).
const MAX_FORMAT_WIDTH: usize = 10_000;

/// The `format` filter, checked: padding widths and the total size of the arguments.
fn format(state: &State, args: Rest<Value>) -> Result<Value, Error> {
    let spec = args.first().map(|v| v.to_string()).unwrap_or_default();
    let mut widest = 0usize;
    let mut digits = String::new();
    let mut in_spec = false;
    for c in spec.chars() {
        if c == '%' {
            in_spec = !in_spec;
            digits.clear();
        } else if in_spec && c.is_ascii_digit() {
            digits.push(c);
            widest = widest.max(digits.parse().unwrap_or(usize::MAX));
        } else if in_spec && c.is_ascii_alphabetic() {
            in_spec = false;
            digits.clear();
        } else if in_spec && c == '.' {
            digits.clear();
        }
    }
    if widest > MAX_FORMAT_WIDTH {
        return Err(limit_error(format!(
            "format: a field width of {widest} is over {MAX_FORMAT_WIDTH} (limit MAX_FORMAT_WIDTH)"
        )));
    }
    let total = args
        .iter()
        .fold(0usize, |t, a| t.saturating_add(printed_len(a)));
    let fields = args.len().saturating_mul(MAX_FORMAT_WIDTH);
    check_string(state, Some(total.saturating_add(fields)), "format")?;
    call_builtin(
        state,
        Value::from_function(minijinja::filters::format),
        &args,
    )
}

/// Checks `indent` of `tojson` (ours, in `chat.rs`): a huge indent is a huge allocation.
pub(crate) fn check_json_indent(indent: Option<usize>) -> Result<(), Error> {
    const MAX_JSON_INDENT: usize = 64;
    match indent {
        Some(n) if n > MAX_JSON_INDENT => Err(limit_error(format!(
            "tojson: indent {n} is over {MAX_JSON_INDENT} (limit MAX_JSON_INDENT)"
        ))),
        _ => Ok(()),
    }
}

/// The one formatter: counts every byte of output, literal text included.
fn bounded_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let len = printed_len(value);
    let written = budget(state).output.fetch_add(len, Ordering::Relaxed);
    if written.saturating_add(len) > MAX_OUTPUT_BYTES {
        return Err(limit_error(format!(
            "the rendered chat is over {MAX_OUTPUT_BYTES} bytes (limit MAX_OUTPUT_BYTES)"
        )));
    }
    minijinja::escape_formatter(out, state, value)
}

/// Sets the bounds on `env`: fuel, recursion, the checked operators, filters and output.
pub(crate) fn install(env: &mut Environment<'static>) {
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.add_function("range", range);
    env.add_function(CONCAT_FN, concat);
    env.add_function(ADD_FN, add);
    env.add_function(MUL_FN, mul);
    env.add_filter("join", join);
    env.add_filter("replace", replace);
    env.add_filter("indent", indent);
    env.add_filter("format", format);
    env.set_formatter(bounded_formatter);
}

const CONCAT_FN: &str = "__tributary_concat";
const ADD_FN: &str = "__tributary_add";
const MUL_FN: &str = "__tributary_mul";

/// Refuses a template source over [`MAX_TEMPLATE_BYTES`].
pub(crate) fn check_source(source: &str) -> Result<(), Error> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::new(
            ErrorKind::SyntaxError,
            format!(
                "the chat template is {} bytes, over {MAX_TEMPLATE_BYTES} (limit MAX_TEMPLATE_BYTES)",
                source.len()
            ),
        ));
    }
    Ok(())
}

/// A copy of `code` with the unbounded operators replaced by the checked ones (same
/// stack effect: pop two, push one) and each literal text emitted through the bounded
/// formatter (`EmitRaw(text)` becomes `LoadConst(text)`, `Emit`; jump targets and macro
/// offsets are moved to match).
pub(crate) fn rewrite<'s>(code: &Instructions<'s>) -> Instructions<'s> {
    let len = u32::try_from(code.len()).unwrap_or(u32::MAX);
    // new_pc[old pc] = where that instruction starts in the copy (one past the end too).
    let mut new_pc = Vec::with_capacity(code.len() + 1);
    let mut next: u32 = 0;
    for pc in 0..len {
        new_pc.push(next);
        let width = if matches!(code.get(pc), Some(Instruction::EmitRaw(_))) {
            2
        } else {
            1
        };
        next = next.saturating_add(width);
    }
    new_pc.push(next);
    let target = |t: &u32| {
        usize::try_from(*t)
            .ok()
            .and_then(|i| new_pc.get(i).copied())
            .unwrap_or(next)
    };
    let mut out = Instructions::new(code.name(), code.source());
    for pc in 0..len {
        let Some(instr) = code.get(pc) else { break };
        let mut add = |i: Instruction<'s>| match (code.get_span(pc), code.get_line(pc)) {
            (Some(span), _) => out.add_with_span(i, span),
            (None, Some(line)) => out.add_with_line(i, u16::try_from(line).unwrap_or(u16::MAX)),
            (None, None) => out.add(i),
        };
        match instr {
            Instruction::StringConcat => add(Instruction::CallFunction(CONCAT_FN, Some(2))),
            Instruction::Add => add(Instruction::CallFunction(ADD_FN, Some(2))),
            Instruction::Mul => add(Instruction::CallFunction(MUL_FN, Some(2))),
            Instruction::EmitRaw(text) => {
                add(Instruction::LoadConst(Value::from_safe_string(
                    (*text).to_owned(),
                )));
                add(Instruction::Emit)
            }
            Instruction::Iterate(t) => add(Instruction::Iterate(target(t))),
            Instruction::Jump(t) => add(Instruction::Jump(target(t))),
            Instruction::JumpIfFalse(t) => add(Instruction::JumpIfFalse(target(t))),
            Instruction::JumpIfFalseOrPop(t) => add(Instruction::JumpIfFalseOrPop(target(t))),
            Instruction::JumpIfTrueOrPop(t) => add(Instruction::JumpIfTrueOrPop(target(t))),
            Instruction::BuildMacro(name, t, flags) => {
                add(Instruction::BuildMacro(name, target(t), *flags))
            }
            other => add(other.clone()),
        };
    }
    out
}

/// Renames fuel and recursion errors so that they name the limit.
pub(crate) fn explain(err: Error) -> Error {
    match err.kind() {
        ErrorKind::OutOfFuel => limit_error(format!(
            "the chat template ran more than {FUEL} instructions (limit FUEL)"
        )),
        ErrorKind::InvalidOperation if err.to_string().contains("recursion limit exceeded") => {
            limit_error(format!(
                "the chat template nests macro calls or recursive loops deeper than \
                 {RECURSION_LIMIT} (limit RECURSION_LIMIT)"
            ))
        }
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::chat::ChatTemplate;

    /// The same template in a plain minijinja environment (no limits, no rewrite).
    fn plain_render(source: &str, ctx: Value) -> String {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("t", source.to_owned()).unwrap();
        env.get_template("t").unwrap().render(ctx).unwrap()
    }

    #[test]
    fn the_rewritten_code_renders_exactly_what_minijinja_renders() {
        // Every construct the rewrite touches: literal text in the body, in macros, in
        // loops (recursive too), in captured blocks and filter blocks; `~`, `+`, `*` on
        // strings, numbers and lists; jumps of if/else, and/or, loops and macros.
        let source = "head {% macro m(x, n) %}<m {{ x ~ n }}>{% if n > 0 %}{{ m(x + '!', n - 1) }}{% endif %}</m>{% endmacro %}\
            {% for msg in messages %}[{{ loop.index }}:{{ msg.role ~ '/' ~ msg.content }}]{% if loop.first and msg.role == 'system' or false %} first{% else %} next{% endif %}{% endfor %}\
            {{ m('a', 3) }}{% set cap %}cap {{ 2 * 3 + 1 }} {{ 'ab' * 3 }} {{ [1, 2] * 2 + [3] }}{% endset %}{{ cap | upper }}\
            {% filter lower %}LOUD {{ 'X' ~ 1.5 }}{% endfilter %}\
            {% for item in tree recursive %}({{ item.n }}{% if item.c %}{{ loop(item.c) }}{% endif %}){% endfor %}\
            {{ (messages | map(attribute='role') | join(', ')) ~ ('' if messages else 'none') }} tail";
        let ctx = minijinja::context! {
            messages => vec![
                minijinja::context! { role => "system", content => "be brief" },
                minijinja::context! { role => "user", content => "hi" },
            ],
            tree => serde_json::json!([{"n": 1, "c": [{"n": 2, "c": []}, {"n": 3, "c": [{"n": 4, "c": []}]}]}]),
        };
        let ours = ChatTemplate::new(source)
            .unwrap()
            .render(ctx.clone())
            .unwrap();
        assert_eq!(ours, plain_render(source, ctx));
        assert!(ours.contains("<m a3><m a!2>"), "{ours}");
    }

    #[test]
    fn range_counts_like_python() {
        let n = |lo, hi, step| range(lo, hi, step).map(|v| v.len().unwrap_or(0));
        assert_eq!(n(5, None, None).unwrap(), 5);
        assert_eq!(n(2, Some(10), Some(3)).unwrap(), 3);
        assert_eq!(n(10, Some(0), Some(-3)).unwrap(), 4);
        assert_eq!(n(10, Some(0), None).unwrap(), 0);
        assert!(n(0, Some(10), Some(0)).is_err());
        assert_eq!(n(0, Some(10_000), None).unwrap(), MAX_RANGE);
        let err = range(0, Some(10_001), None).unwrap_err().to_string();
        assert!(err.contains("limit MAX_RANGE"), "{err}");
        assert!(range(i64::MIN, Some(i64::MAX), None).is_err());
    }

    #[test]
    fn the_demo_template_spends_little_fuel_per_message() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/demo/chat_template.jinja");
        let source = std::fs::read_to_string(path).unwrap();
        let t = ChatTemplate::new(&source).unwrap();
        let messages: Vec<_> = (0..1000)
            .map(|i| minijinja::context! { role => if i % 2 == 0 { "user" } else { "assistant" }, content => "text" })
            .collect();
        let (_, fuel) = t
            .render_counting(
                minijinja::context! { messages => messages, add_generation_prompt => true },
            )
            .unwrap();
        println!("demo template: {fuel} fuel for 1000 messages");
        assert!(fuel > 1000, "fuel is counted: {fuel}");
        assert!(fuel < FUEL / 20, "{fuel}");
    }
}
