//! A positioned value tree: TOML (here) and YAML ([`crate::yaml`]) parsed into plain data where every key and
//! value knows its file, line and column. Everything after parsing works on this tree, so the
//! schema checks never depend on the syntax's library.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml_edit::{Item, TableLike};

use crate::diag::{Diagnostic, Pos};

/// A value with the position where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub val: Val,
    /// Where the value starts.
    pub pos: Pos,
}

/// A value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A date/time (kept as written; keyzero has no date-typed option).
    Datetime(String),
    /// An array.
    Array(Vec<Node>),
    /// A table, in file order.
    Table(Vec<Entry>),
}

/// One key of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Where the key is written.
    pub key_pos: Pos,
    /// The value.
    pub node: Node,
}

impl Val {
    /// A short name of the type, for errors ("expected a string, found an integer").
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime(_) => "a date-time",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

impl Node {
    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.val {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The table entries, when this is a table.
    pub fn as_table(&self) -> Option<&[Entry]> {
        match &self.val {
            Val::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The entry named `key`, when this is a table holding it.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.as_table()?.iter().find(|e| e.key == key)
    }
}

/// Maps byte offsets to line and column.
#[derive(Debug)]
struct LineIndex {
    file: Arc<Path>,
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(file: &Path, text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            file: Arc::from(file),
            starts,
        }
    }

    fn pos(&self, offset: usize) -> Pos {
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        Pos {
            file: PathBuf::from(&*self.file),
            line,
            column: offset.saturating_sub(start) + 1,
        }
    }
}

/// Parses TOML text into a positioned tree (the root is a table).
pub fn parse_toml(file: &Path, text: &str) -> Result<Node, Diagnostic> {
    let idx = LineIndex::new(file, text);
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        let pos = idx.pos(e.span().map_or(0, |s| s.start));
        let msg = e.message().trim().to_string();
        Diagnostic::error("config::syntax", format!("invalid TOML: {msg}"))
            .at(&pos)
            .help("fix the TOML syntax at this position")
    })?;
    Ok(Node {
        val: table_val(&idx, doc.as_table()),
        pos: idx.pos(0),
    })
}

fn table_val(idx: &LineIndex, t: &dyn TableLike) -> Val {
    let mut entries = Vec::new();
    for (key, item) in t.iter() {
        let Some((k, item)) = t.get_key_value(key).map(|(k, _)| (k, item)) else {
            continue;
        };
        let key_pos = idx.pos(k.span().map_or(0, |s| s.start));
        let Some(node) = item_node(idx, item, &key_pos) else {
            continue;
        };
        entries.push(Entry {
            key: key.to_string(),
            key_pos,
            node,
        });
    }
    Val::Table(entries)
}

fn item_node(idx: &LineIndex, item: &Item, fallback: &Pos) -> Option<Node> {
    let pos = |span: Option<std::ops::Range<usize>>| {
        span.map_or_else(|| fallback.clone(), |s| idx.pos(s.start))
    };
    match item {
        Item::None => None,
        Item::Value(v) => Some(value_node(idx, v, fallback)),
        Item::Table(t) => Some(Node {
            val: table_val(idx, t),
            pos: pos(t.span()),
        }),
        Item::ArrayOfTables(a) => Some(Node {
            val: Val::Array(
                a.iter()
                    .map(|t| Node {
                        val: table_val(idx, t),
                        pos: pos(t.span()),
                    })
                    .collect(),
            ),
            pos: pos(a.span()),
        }),
    }
}

fn value_node(idx: &LineIndex, v: &toml_edit::Value, fallback: &Pos) -> Node {
    use toml_edit::Value as V;
    let pos = v
        .span()
        .map_or_else(|| fallback.clone(), |s| idx.pos(s.start));
    let val = match v {
        V::String(s) => Val::Str(s.value().clone()),
        V::Integer(i) => Val::Int(*i.value()),
        V::Float(f) => Val::Float(*f.value()),
        V::Boolean(b) => Val::Bool(*b.value()),
        V::Datetime(d) => Val::Datetime(d.value().to_string()),
        V::Array(a) => Val::Array(a.iter().map(|x| value_node(idx, x, &pos)).collect()),
        V::InlineTable(t) => table_val(idx, t),
    };
    Node { val, pos }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_point_at_keys_and_values() {
        let text = "a = 1\n[t]\n  b = \"x\"\nc = { d = true }\n";
        let root = parse_toml(Path::new("f.toml"), text).unwrap();
        let t = root.get("t").unwrap();
        let b = t.node.get("b").unwrap();
        assert_eq!((b.key_pos.line, b.key_pos.column), (3, 3));
        assert_eq!(b.node.as_str(), Some("x"));
        let d = t.node.get("c").unwrap().node.get("d").unwrap();
        assert_eq!(d.key_pos.line, 4);
        assert_eq!(d.node.val, Val::Bool(true));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse_toml(Path::new("f.toml"), "a = 1\nb = = 2\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.starts_with("invalid TOML"));
    }
}
