//! Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+alternative}`, `${VAR+alternative}` and `$$` for a
//! literal `$`, with defaults that may interpolate again. Variables come only from the map the
//! caller hands in (the tree's `.env`, the preview's own, the host's named values), never from
//! previewd's own environment.

use std::collections::BTreeMap;

/// Nested defaults deeper than this are refused (a hostile file could nest without end).
const MAX_NESTING: usize = 16;

/// The interpolated text, and the variables it used that are not set (Compose warns and
/// substitutes an empty string).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Interpolated {
    pub text: String,
    pub unset: Vec<String>,
}

pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<Interpolated, String> {
    let mut out = Interpolated::default();
    expand(text, vars, &mut out, 0)?;
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn expand(
    text: &str,
    vars: &BTreeMap<String, String>,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "variables nested more than {MAX_NESTING} deep in defaults"
        ));
    }
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.text.push('$');
                rest = &after[1..];
            }
            Some(c) if is_name_start(c) => {
                let end = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
                let name = &after[..end];
                substitute(name, vars, out);
                rest = &after[end..];
            }
            Some('{') => {
                let body_len = closing_brace(&after[1..]).ok_or_else(|| {
                    format!("unclosed \"${{\" in {text:?}: escape a literal $ as $$")
                })?;
                let body = &after[1..1 + body_len];
                braced(body, text, vars, out, depth)?;
                rest = &after[1 + body_len + 1..];
            }
            _ => {
                return Err(format!(
                    "invalid interpolation in {text:?}: a $ must start $VAR, ${{VAR}} or $$ (a literal $)"
                ))
            }
        }
    }
    out.text.push_str(rest);
    Ok(())
}

/// The length of a `${...}` body up to its matching `}`, nested `${` counted.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn substitute(name: &str, vars: &BTreeMap<String, String>, out: &mut Interpolated) {
    match vars.get(name) {
        Some(value) => out.text.push_str(value),
        None => {
            if !out.unset.iter().any(|n| n == name) {
                out.unset.push(name.to_owned());
            }
        }
    }
}

fn braced(
    body: &str,
    whole: &str,
    vars: &BTreeMap<String, String>,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), String> {
    let end = body.find(|c| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..end];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(format!(
            "invalid variable name in \"${{{body}}}\" of {whole:?}"
        ));
    }
    let operator = &body[end..];
    let value = vars.get(name);
    let empty = value.is_none_or(|v| v.is_empty());
    let (op, arg) = if let Some(arg) = operator.strip_prefix(":-") {
        (":-", arg)
    } else if let Some(arg) = operator.strip_prefix(":?") {
        (":?", arg)
    } else if let Some(arg) = operator.strip_prefix(":+") {
        (":+", arg)
    } else if operator.is_empty() {
        ("", "")
    } else {
        // The operator's first character, which need not be ASCII in a hostile file.
        let first = operator.chars().next().map_or(0, char::len_utf8);
        let (op, arg) = operator.split_at(first);
        match op {
            "-" | "?" | "+" => (op, arg),
            _ => {
                return Err(format!(
                    "invalid interpolation \"${{{body}}}\" in {whole:?}: after the name comes }}, :-, -, :?, ?, :+ or +"
                ))
            }
        }
    };
    match op {
        "" => substitute(name, vars, out),
        ":-" if empty => expand(arg, vars, out, depth + 1)?,
        "-" if value.is_none() => expand(arg, vars, out, depth + 1)?,
        ":-" | "-" => substitute(name, vars, out),
        ":?" | "?" if (op == ":?" && empty) || value.is_none() => {
            let mut message = Interpolated::default();
            expand(arg, vars, &mut message, depth + 1)?;
            let why = if message.text.is_empty() {
                "it is required".to_owned()
            } else {
                message.text
            };
            return Err(format!("variable {name} is not set: {why}"));
        }
        ":?" | "?" => substitute(name, vars, out),
        ":+" if !empty => expand(arg, vars, out, depth + 1)?,
        "+" if value.is_some() => expand(arg, vars, out, depth + 1)?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("SET".into(), "value".into()),
            ("EMPTY".into(), String::new()),
            ("PORT".into(), "8080".into()),
        ])
    }

    fn run(text: &str) -> Result<String, String> {
        interpolate(text, &vars()).map(|i| i.text)
    }

    #[test]
    fn the_compose_forms() {
        let table = [
            ("plain", "plain"),
            ("$SET", "value"),
            ("${SET}", "value"),
            ("a${SET}b", "avalueb"),
            ("$SET.x", "value.x"),
            ("$$SET", "$SET"),
            ("$${SET}", "${SET}"),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${SET:-d}", "value"),
            ("${UNSET-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${SET:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${UNSET:-${PORT}}", "8080"),
            ("${UNSET:-${ALSO:-deep}}", "deep"),
            ("${UNSET:-a $$ b}", "a $ b"),
            ("${SET:?must}", "value"),
            ("${EMPTY?must}", ""),
            ("http://x:${PORT}/", "http://x:8080/"),
        ];
        for (input, want) in table {
            assert_eq!(run(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unset_variables_are_empty_and_reported_once() {
        let got = interpolate("$A-${A}-$B", &vars()).unwrap();
        assert_eq!(got.text, "--");
        assert_eq!(got.unset, ["A", "B"]);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let table = [
            (
                "${UNSET:?set it in .env}",
                "variable UNSET is not set: set it in .env",
            ),
            ("${EMPTY:?}", "variable EMPTY is not set: it is required"),
            ("${UNSET?}", "variable UNSET is not set: it is required"),
            ("${SET", "unclosed"),
            ("$", "invalid interpolation"),
            ("100$ off", "invalid interpolation"),
            ("${1X}", "invalid variable name"),
            ("${SET/x/y}", "invalid interpolation"),
            ("${SETé}", "invalid interpolation"),
        ];
        for (input, want) in table {
            let error = run(input).unwrap_err();
            assert!(error.contains(want), "{input}: {error}");
        }
        let deep = format!("{}x{}", "${U:-".repeat(40), "}".repeat(40));
        assert!(run(&deep).unwrap_err().contains("nested"));
    }
}
