//! A format-neutral document tree that remembers the line of every key.
//!
//! YAML and TOML are both parsed into [`Node`]s, and the typed config is
//! deserialized from that tree (see `de.rs`). Keeping lines through the whole
//! pipeline is what lets every error, from a YAML syntax slip to an
//! overlapping stream subject found after deserialization, name the line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One value in the document, with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key and the line it is written on.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub line: u32,
}

/// A syntax error, before any meaning is given to the document.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: Option<u32>,
    pub message: String,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The line of the key at `path` (or of the deepest key of it that
    /// exists), for errors found after deserialization.
    pub fn line_of(&self, path: &[&str]) -> Option<u32> {
        let mut node = self;
        let mut line = None;
        for seg in path {
            match &node.value {
                Value::Map(entries) => match entries.iter().find(|(k, _)| k.name == *seg) {
                    Some((k, v)) => {
                        line = Some(k.line);
                        node = v;
                    }
                    None => break,
                },
                // `users.0.password`: an index into a list.
                Value::Seq(items) => match seg.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(item) => {
                        line = Some(item.line);
                        node = item;
                    }
                    None => break,
                },
                _ => break,
            }
        }
        line
    }
}

// ---------------------------------------------------------------- YAML ----

/// Parses one YAML document. An empty document is `Null`.
pub fn parse_yaml(src: &str) -> Result<Node, SyntaxError> {
    let mut builder = YamlBuilder::default();
    let mut parser = Parser::new_from_str(src);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        line: Some(e.marker().line() as u32),
        message: format!("YAML syntax error: {}", e.info()),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        value: Value::Null,
        line: 1,
    }))
}

enum Frame {
    Seq {
        items: Vec<Node>,
        line: u32,
        anchor: usize,
    },
    Map {
        entries: Vec<(Key, Node)>,
        pending_key: Option<Key>,
        line: u32,
        anchor: usize,
    },
}

/// Most values aliases may copy into one document. Each alias copies its
/// anchor's whole value, so a few lines of nested aliases ("billion
/// laughs") would otherwise expand into gigabytes; a real config copies a
/// handful of values.
const MAX_ALIASED_VALUES: usize = 100_000;

/// Values in a node, itself included.
fn count(n: &Node) -> usize {
    1 + match &n.value {
        Value::Seq(items) => items.iter().map(count).sum(),
        Value::Map(entries) => entries.iter().map(|(_, v)| count(v)).sum(),
        _ => 0,
    }
}

#[derive(Default)]
struct YamlBuilder {
    stack: Vec<Frame>,
    root: Option<Node>,
    /// Anchored values and their size (see [`count`]).
    anchors: HashMap<usize, (Node, usize)>,
    /// Values copied by aliases so far.
    aliased: usize,
    error: Option<SyntaxError>,
}

impl YamlBuilder {
    fn fail(&mut self, line: u32, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line: Some(line),
                message,
            });
        }
    }

    /// Hands a finished node to the collection being built (or makes it the
    /// root).
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                Some(key) => {
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                        let (name, l1, l2) = (key.name.clone(), first.line, key.line);
                        self.fail(l2, format!("duplicate key `{name}` (first on line {l1})"));
                        return;
                    }
                    entries.push((key, node));
                }
                None => {
                    let name = match node.value {
                        Value::Str(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null => String::new(),
                        Value::Seq(_) | Value::Map(_) => {
                            self.fail(node.line, "a mapping key must be a plain name".into());
                            return;
                        }
                    };
                    if let Some(Frame::Map { pending_key, .. }) = self.stack.last_mut() {
                        *pending_key = Some(Key {
                            name,
                            line: node.line,
                        });
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for YamlBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line() as u32;
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let value = if style == TScalarStyle::Plain && tag.is_none() {
                    resolve_plain(&text)
                } else {
                    Value::Str(text)
                };
                let node = Node { value, line };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), count(&node)));
                }
                self.push(node);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                line,
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                entries: Vec::new(),
                pending_key: None,
                line,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        line,
                        anchor,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            line,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        entries,
                        line,
                        anchor,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(entries),
                            line,
                        },
                        anchor,
                    ),
                    None => return,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), count(&node)));
                }
                self.push(node);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, size)) => {
                    self.aliased = self.aliased.saturating_add(*size);
                    if self.aliased > MAX_ALIASED_VALUES {
                        self.fail(
                            line,
                            format!("aliases copy more than {MAX_ALIASED_VALUES} values into this document; write the values out instead of nesting aliases"),
                        );
                        return;
                    }
                    let node = node.clone();
                    self.push(node);
                }
                None => self.fail(line, "alias to an unknown anchor".into()),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// YAML 1.2 core schema resolution of a plain (unquoted) scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    let looks_numeric = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text.to_string())
}

// ---------------------------------------------------------------- TOML ----

/// Parses a TOML document.
pub fn parse_toml(src: &str) -> Result<Node, SyntaxError> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    let lines = LineIndex::new(src);
    let table = DeTable::parse(src).map_err(|e| SyntaxError {
        line: e.span().map(|s| lines.line(s.start)),
        message: format!("TOML syntax error: {}", e.message().trim()),
    })?;

    fn conv(v: &Spanned<DeValue<'_>>, lines: &LineIndex) -> Node {
        let line = lines.line(v.span().start);
        let value = match v.get_ref() {
            DeValue::String(s) => Value::Str(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Value::Int(n),
                Err(_) => Value::Str(i.to_string()),
            },
            DeValue::Float(f) => {
                Value::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN))
            }
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::Str(d.to_string()),
            DeValue::Array(a) => Value::Seq(a.iter().map(|x| conv(x, lines)).collect()),
            DeValue::Table(t) => Value::Map(
                t.iter()
                    .map(|(k, x)| {
                        (
                            Key {
                                name: k.get_ref().to_string(),
                                line: lines.line(k.span().start),
                            },
                            conv(x, lines),
                        )
                    })
                    .collect(),
            ),
        };
        Node { value, line }
    }

    let span = table.span();
    let wrapped = Spanned::new(span, DeValue::Table(table.into_inner()));
    Ok(conv(&wrapped, &lines))
}

/// Byte offset -> 1-based line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(src: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }
    fn line(&self, offset: usize) -> u32 {
        (self.starts.partition_point(|&s| s <= offset)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: &Node) -> Vec<(String, u32)> {
        match &n.value {
            Value::Map(e) => e.iter().map(|(k, _)| (k.name.clone(), k.line)).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn yaml_keys_keep_their_lines() {
        let n = parse_yaml("a: 1\n\nb:\n  c: \"x\"\n  d: [1, 2.5, true, ~]\n").unwrap();
        assert_eq!(keys(&n), vec![("a".into(), 1), ("b".into(), 3)]);
        assert_eq!(n.line_of(&["b", "d"]), Some(5));
        assert_eq!(n.get("a").unwrap().value, Value::Int(1));
        let d = n.get("b").unwrap().get("d").unwrap();
        assert_eq!(
            d.value,
            Value::Seq(vec![
                Node {
                    value: Value::Int(1),
                    line: 5
                },
                Node {
                    value: Value::Float(2.5),
                    line: 5
                },
                Node {
                    value: Value::Bool(true),
                    line: 5
                },
                Node {
                    value: Value::Null,
                    line: 5
                },
            ])
        );
    }

    #[test]
    fn yaml_quoted_numbers_stay_strings() {
        let n = parse_yaml("a: \"4222\"\nb: 1GB\nc: 0x10\n").unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Str("4222".into()));
        assert_eq!(n.get("b").unwrap().value, Value::Str("1GB".into()));
        assert_eq!(n.get("c").unwrap().value, Value::Int(16));
    }

    #[test]
    fn yaml_duplicate_keys_are_errors_with_both_lines() {
        let e = parse_yaml("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(
            e.message.contains("duplicate key `a` (first on line 1)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn yaml_syntax_errors_have_lines() {
        let e = parse_yaml("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line.is_some());
        assert!(e.message.starts_with("YAML syntax error"));
    }

    #[test]
    fn yaml_anchors_and_aliases_expand() {
        let n = parse_yaml("a: &x [1]\nb: *x\n").unwrap();
        assert_eq!(n.get("a").unwrap().value, n.get("b").unwrap().value);
    }

    #[test]
    fn nested_aliases_cannot_blow_up_the_document() {
        // "Billion laughs": 8^7 (2 million) strings from 8 lines; found by
        // tests/fuzz.rs taking seconds per case on its corpus file.
        let mut doc = "a: &a [x, x, x, x, x, x, x, x]\n".to_string();
        for (p, c) in ["ab", "bc", "cd", "de", "ef", "fg"].map(|s| (&s[..1], &s[1..])) {
            doc.push_str(&format!(
                "{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            ));
        }
        let e = parse_yaml(&doc).unwrap_err();
        assert!(
            e.message.contains("aliases copy more than"),
            "{}",
            e.message
        );
        assert_eq!(e.line, Some(6));
    }

    #[test]
    fn empty_yaml_is_null() {
        assert_eq!(parse_yaml("").unwrap().value, Value::Null);
        assert_eq!(parse_yaml("# only a comment\n").unwrap().value, Value::Null);
    }

    #[test]
    fn toml_tables_keep_their_lines() {
        let n =
            parse_toml("port = 8085\n\n[nats]\nnats_port = 4222\nmax_payload = \"1MB\"\n").unwrap();
        assert_eq!(n.line_of(&["port"]), Some(1));
        assert_eq!(n.line_of(&["nats", "max_payload"]), Some(5));
        assert_eq!(n.get("port").unwrap().value, Value::Int(8085));
    }

    #[test]
    fn toml_syntax_errors_have_lines() {
        let e = parse_toml("port = 8085\nnats = [\n").unwrap_err();
        assert!(e.line.is_some());
        assert!(e.message.starts_with("TOML syntax error"), "{}", e.message);
    }
}
