//! YAML (the team server's bundle) into the same positioned tree as TOML ([`crate::tree`]), so
//! bundle checks report file, line and key exactly as `.keyzero.toml` checks do, and share them.
//!
//! The parser is `saphyr` (YAML 1.2, spans on every node; it refuses duplicate keys and bounds
//! alias expansion). On top of it: one document per file, a size limit, a nesting limit, string
//! keys only, no tags, and no nulls (an empty value is almost always a mistake in a bundle, and
//! the tree has no null to carry it).

use std::path::Path;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::diag::{Diagnostic, Pos};
use crate::tree::{Entry, Node, Val};

/// Largest YAML file accepted, in bytes.
pub const MAX_YAML_BYTES: usize = 8 << 20;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_YAML_DEPTH: usize = 32;

fn pos(file: &Path, m: &saphyr::Marker) -> Pos {
    Pos {
        file: file.to_path_buf(),
        line: m.line().max(1),
        column: m.col() + 1,
    }
}

/// Parses YAML text (exactly one document, whose root is a mapping) into a positioned tree.
/// Every problem found while converting is returned at once.
pub fn parse_yaml(file: &Path, text: &str) -> Result<Node, Vec<Diagnostic>> {
    let start = Pos {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
    };
    if text.len() > MAX_YAML_BYTES {
        return Err(vec![
            Diagnostic::error(
                "config::too_large",
                format!(
                    "the file is {} bytes; at most {MAX_YAML_BYTES} are read",
                    text.len()
                ),
            )
            .at(&start)
            .help("split the bundle, or remove what it does not need"),
        ]);
    }
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        vec![
            Diagnostic::error("config::syntax", format!("invalid YAML: {}", e.info()))
                .at(&pos(file, e.marker()))
                .help("fix the YAML syntax at this position"),
        ]
    })?;
    let mut docs = docs.into_iter();
    let (Some(root), None) = (docs.next(), docs.next()) else {
        return Err(vec![
            Diagnostic::error(
                "config::syntax",
                "expected exactly one YAML document in the file",
            )
            .at(&start)
            .help("remove the other documents (separated by `---`)"),
        ]);
    };
    let mut problems = Vec::new();
    let node = convert(file, &root, 0, &mut problems);
    if !matches!(node.val, Val::Table(_)) && problems.is_empty() {
        problems.push(
            Diagnostic::error(
                "config::type",
                format!(
                    "expected a mapping at the top, found {}",
                    node.val.type_name()
                ),
            )
            .at(&node.pos)
            .help("the file must be a mapping of keys such as `version:` and `policies:`"),
        );
    }
    if problems.is_empty() {
        Ok(node)
    } else {
        Err(problems)
    }
}

fn convert(file: &Path, y: &MarkedYaml<'_>, depth: usize, problems: &mut Vec<Diagnostic>) -> Node {
    let at = pos(file, &y.span.start);
    let mut fail = |code: &'static str, msg: String, help: &str| {
        problems.push(Diagnostic::error(code, msg).at(&at).help(help));
        Val::Str(String::new())
    };
    let val = if depth > MAX_YAML_DEPTH {
        fail(
            "config::too_deep",
            format!("the value is nested more than {MAX_YAML_DEPTH} levels deep"),
            "flatten the structure",
        )
    } else {
        match &y.data {
            YamlData::Value(Scalar::String(s)) => Val::Str(s.to_string()),
            YamlData::Value(Scalar::Integer(i)) => Val::Int(*i),
            YamlData::Value(Scalar::FloatingPoint(f)) => Val::Float(f.into_inner()),
            YamlData::Value(Scalar::Boolean(b)) => Val::Bool(*b),
            YamlData::Value(Scalar::Null) => fail(
                "config::empty",
                "the value is empty (null)".into(),
                "give it a value, or remove the key",
            ),
            YamlData::Representation(s, _, _) => Val::Str(s.to_string()),
            YamlData::Sequence(items) => Val::Array(
                items
                    .iter()
                    .map(|i| convert(file, i, depth + 1, problems))
                    .collect(),
            ),
            YamlData::Mapping(map) => {
                let mut entries = Vec::new();
                for (k, v) in map {
                    let key_pos = pos(file, &k.span.start);
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Representation(s, _, _) => s.to_string(),
                        _ => {
                            problems.push(
                                Diagnostic::error("config::type", "a mapping key must be a string")
                                    .at(&key_pos)
                                    .help(
                                        "write the key as text, quoted if it looks like a number",
                                    ),
                            );
                            continue;
                        }
                    };
                    entries.push(Entry {
                        key,
                        key_pos,
                        node: convert(file, v, depth + 1, problems),
                    });
                }
                Val::Table(entries)
            }
            YamlData::Tagged(tag, _) => fail(
                "config::syntax",
                format!("YAML tags (`{tag}`) are not supported"),
                "remove the tag",
            ),
            YamlData::Alias(_) | YamlData::BadValue => fail(
                "config::syntax",
                "this value could not be read (an unknown or too large alias?)".into(),
                "write the value out instead of using an alias",
            ),
        }
    };
    Node { val, pos: at }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    fn parse(text: &str) -> Result<Node, Vec<Diagnostic>> {
        parse_yaml(Path::new("bundle.yaml"), text)
    }

    #[test]
    fn values_keep_their_positions_and_order() {
        let n = parse("version: \"1\"\npolicies:\n  - name: a\n    rule: 'org == \"x\"'\n    n: 3\n    f: 1.5\n    b: true\n").unwrap();
        let t = n.as_table().unwrap();
        assert_eq!(t[0].key, "version");
        assert_eq!(t[0].node.val, Val::Str("1".into()));
        assert_eq!((t[1].key_pos.line, t[1].key_pos.column), (2, 1));
        let Val::Array(items) = &t[1].node.val else {
            panic!()
        };
        let p = items[0].as_table().unwrap();
        assert_eq!(p[0].key, "name");
        assert_eq!((p[0].key_pos.line, p[0].key_pos.column), (3, 5));
        assert_eq!(p[1].node.val, Val::Str("org == \"x\"".into()));
        assert_eq!((p[1].node.pos.line, p[1].node.pos.column), (4, 11));
        assert_eq!(p[2].node.val, Val::Int(3));
        assert_eq!(p[3].node.val, Val::Float(1.5));
        assert_eq!(p[4].node.val, Val::Bool(true));
    }

    #[test]
    fn syntax_errors_and_duplicates_name_the_line() {
        let e = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert_eq!(e[0].code, "config::syntax");
        assert!(e[0].line.unwrap() >= 2);
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(e[0].message.contains("duplicate"), "{e:?}");
        assert_eq!(e[0].line.unwrap(), 3);
    }

    #[test]
    fn hostile_and_odd_documents_are_refused() {
        for (text, code) in [
            ("a: 1\n---\nb: 2\n", "config::syntax"),
            ("- 1\n- 2\n", "config::type"),
            ("a:\n", "config::empty"),
            ("a: !custom 1\n", "config::syntax"),
            ("? [1, 2]\n: x\n", "config::type"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e[0].code, code, "{text:?}: {e:?}");
        }
        let deep = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(parse(&deep).unwrap_err()[0].code, "config::too_deep");
        let big = format!("a: \"{}\"\n", "x".repeat(MAX_YAML_BYTES));
        assert_eq!(parse(&big).unwrap_err()[0].code, "config::too_large");
        // A billion-laughs document fails instead of expanding.
        let mut lol = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            lol.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        assert!(parse(&lol).is_err());
    }

    #[test]
    fn several_problems_are_reported_at_once() {
        let e = parse("a:\nb: !t 1\nc:\n").unwrap_err();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e.iter().map(|d| d.line.unwrap()).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
