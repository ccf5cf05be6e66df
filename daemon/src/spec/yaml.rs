//! A compose file read into a tree of nodes that each know their line and column, with hard
//! bounds on what a hostile file can cost (size, depth, node count, alias expansion). The tree
//! is all `spec` reads YAML through: its checks walk it and report every mistake at once,
//! where deserializing straight into types would stop at the first.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, Options, Spanned};

/// The largest compose file previewd reads. Real ones are a few kilobytes.
pub const MAX_BYTES: usize = 1024 * 1024;

/// Where a node starts, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in file order; YAML merge keys (`<<`) are already merged.
    Map(Vec<(Key, Node)>),
}

/// A value and where it is written (for a value reached through an alias: where the alias
/// is, which is where the user sees it used).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Value {
    /// What the value is, for messages: "a string", "a list".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar as the text Compose would use (numbers and booleans as written in decimal and
    /// `true`/`false`); `None` for null, lists and mappings.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// Why a file could not be read as YAML at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Parses one YAML document within the budget.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_BYTES {
        return Err(SyntaxError {
            pos: None,
            message: format!(
                "the file is {} bytes; previewd reads compose files of at most {MAX_BYTES} bytes",
                text.len()
            ),
        });
    }
    let mut budget = Budget::default();
    budget.max_depth = 32;
    budget.max_nodes = 50_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_documents = 1;
    budget.max_events = 200_000;
    budget.max_total_scalar_bytes = 4 * MAX_BYTES;
    let mut options = Options::default();
    options.budget = Some(budget);
    let parsed: Result<Spanned<Tree>, _> = serde_saphyr::from_str_with_options(text, options);
    match parsed {
        Ok(tree) => Ok(node(tree)),
        Err(error) => {
            let pos = error.location().map(|l| Pos {
                line: l.line(),
                column: l.column(),
            });
            let shown = error.without_snippet().to_string();
            // The parser's message leads with its own "error: line L column C: ".
            let message = match shown.split_once(": ") {
                Some((lead, rest)) if lead.starts_with("error") => rest,
                _ => shown.as_str(),
            };
            let message = match message.split_once(": ") {
                Some((lead, rest)) if lead.starts_with("line ") => rest,
                _ => message,
            };
            Err(SyntaxError {
                pos,
                message: message.lines().next().unwrap_or("").to_owned(),
            })
        }
    }
}

/// What the parser hands back; turned into [`Node`]s at once.
enum Tree {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Tree>>),
    Map(Vec<(Spanned<String>, Spanned<Tree>)>),
}

fn pos(location: &serde_saphyr::Location) -> Pos {
    Pos {
        line: location.line(),
        column: location.column(),
    }
}

fn node(tree: Spanned<Tree>) -> Node {
    let value = match tree.value {
        Tree::Null => Value::Null,
        Tree::Bool(b) => Value::Bool(b),
        Tree::Int(i) => Value::Int(i),
        Tree::Float(f) => Value::Float(f),
        Tree::Str(s) => Value::Str(s),
        Tree::Seq(items) => Value::Seq(items.into_iter().map(node).collect()),
        Tree::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = Key {
                        pos: pos(&k.referenced),
                        name: k.value,
                    };
                    (key, node(v))
                })
                .collect(),
        ),
    };
    Node {
        value,
        pos: pos(&tree.referenced),
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }

    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Tree, E> {
        i64::try_from(v)
            .map(Tree::Int)
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Tree, E> {
        Ok(Tree::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Tree>>()? {
            items.push(item);
        }
        Ok(Tree::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Tree>>()?;
            entries.push((key, value));
        }
        Ok(Tree::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(node: &'a Node, key: &str) -> &'a Node {
        match &node.value {
            Value::Map(entries) => &entries.iter().find(|(k, _)| k.name == key).unwrap().1,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn nodes_know_where_they_are_and_merge_keys_are_merged() {
        let root = parse(
            "x-base: &base\n  restart: \"no\"\nservices:\n  web:\n    <<: *base\n    image: busybox\n",
        )
        .unwrap();
        let web = get(get(&root, "services"), "web");
        let image = get(web, "image");
        assert_eq!(image.value, Value::Str("busybox".into()));
        assert_eq!(
            image.pos,
            Pos {
                line: 6,
                column: 12
            }
        );
        assert_eq!(get(web, "restart").value, Value::Str("no".into()));
    }

    #[test]
    fn syntax_errors_say_where() {
        let error = parse("services:\n  web:\n    image: [unclosed\n").unwrap_err();
        assert_eq!(
            error.pos,
            Some(Pos {
                line: 3,
                column: 12
            })
        );
        assert!(error.message.contains("unclosed"), "{error:?}");
        let error = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(error.pos, Some(Pos { line: 2, column: 1 }));
        assert!(error.message.contains("duplicate"), "{error:?}");
    }

    #[test]
    fn an_alias_bomb_is_refused_quickly() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for pair in names.windows(2) {
            let refs = vec![format!("*{}", pair[0]); 9].join(", ");
            text.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
        }
        let error = parse(&text).unwrap_err();
        assert!(error.message.contains("budget"), "{error:?}");
    }

    #[test]
    fn deep_nesting_and_huge_files_are_refused() {
        let deep = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep).is_err());
        let huge = format!("a: \"{}\"\n", "x".repeat(10 * 1024 * 1024));
        let error = parse(&huge).unwrap_err();
        assert_eq!(error.pos, None);
        assert!(error.message.contains("at most 1048576 bytes"), "{error:?}");
    }
}
