//! serde Deserializer over a [`Node`] tree.
//!
//! Its error type records the key path and line of the innermost failing
//! value, and for an unknown key keeps the list of valid keys so the message
//! can suggest the closest one. That is the whole reason this exists instead
//! of deserializing with serde_yaml/toml directly: their errors cannot say
//! "line 12, nats.nats_prot: did you mean `nats_port`?" for both formats.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::tree::{Key, Node, Value};

/// A deserialization error with where it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// Path segments, innermost first while the error bubbles up.
    path_rev: Vec<String>,
    pub line: Option<u32>,
    pub message: String,
}

impl DeError {
    /// The dotted key path, e.g. `nats.streams.CUSTOM.max_age`.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for seg in self.path_rev.iter().rev() {
            if !out.is_empty() && !seg.starts_with('[') {
                out.push('.');
            }
            out.push_str(seg);
        }
        out
    }

    fn at_line(mut self, line: u32) -> Self {
        self.line.get_or_insert(line);
        self
    }

    fn under(mut self, seg: String, line: u32) -> Self {
        self.path_rev.push(seg);
        self.at_line(line)
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path();
        if p.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{p}: {}", self.message)
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path_rev: Vec::new(),
            line: None,
            message: msg.to_string(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown_key_message(field, expected))
    }

    fn missing_field(field: &'static str) -> Self {
        Self::custom(format!("missing required key `{field}`"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format!(
            "unknown value {variant:?}, expected one of {}",
            list(expected)
        ))
    }
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "unknown key `nats_prot` (did you mean `nats_port`?)", or the list of
/// valid keys when none is close.
pub fn unknown_key_message(field: &str, expected: &[&str]) -> String {
    match closest(field, expected) {
        Some(best) => format!("unknown key `{field}` (did you mean `{best}`?)"),
        None if expected.is_empty() => format!("unknown key `{field}`"),
        None => format!("unknown key `{field}`; valid keys: {}", list(expected)),
    }
}

/// The candidate with the smallest edit distance, if it is close enough to
/// be a plausible typo (or differs only in case or `-` vs `_`).
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let w = norm(word);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(&w, &norm(c));
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (word.chars().count() / 3).max(2);
    (d <= limit).then_some(c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Deserializes `T` from a node.
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        line: node.line,
    })
}

/// A node plus the line errors about it as a whole should point at (the
/// line of the key that owns it, which reads better than the first line of
/// a nested block).
struct NodeDe<'a> {
    node: &'a Node,
    line: u32,
}

impl NodeDe<'_> {
    fn describe(&self) -> de::Unexpected<'_> {
        match &self.node.value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Int(i) => de::Unexpected::Signed(*i),
            Value::Float(f) => de::Unexpected::Float(*f),
            Value::Str(s) => de::Unexpected::Str(s),
            Value::Seq(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
        }
    }
}

macro_rules! forward_to_any {
    ($($name:ident)*) => {
        $(fn $name<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            self.deserialize_any(v)
        })*
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let line = self.line;
        let r = match &self.node.value {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) if *i >= 0 => v.visit_u64(*i as u64),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(s) => v.visit_str(s),
            Value::Seq(items) => v.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                len: items.len(),
            }),
            Value::Map(entries) => v.visit_map(MapDe {
                entries: entries.iter(),
                value: None,
            }),
        };
        r.map_err(|e| {
            e.at_line(
                if matches!(self.node.value, Value::Map(_) | Value::Seq(_)) {
                    line
                } else {
                    self.node.line
                },
            )
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    /// Scalars read as text where text is wanted: `server_name: 42` is the
    /// name "42", not a type error.
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let text = match &self.node.value {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return self.deserialize_any(v),
        };
        v.visit_str(&text)
            .map_err(|e: DeError| e.at_line(self.node.line))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Str(s) => v
                .visit_enum(s.as_str().into_deserializer())
                .map_err(|e: DeError| e.at_line(self.node.line)),
            _ => Err(de::Error::invalid_type(self.describe(), &"a name (string)"))
                .map_err(|e: DeError| e.at_line(self.node.line)),
        }
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_bytes deserialize_byte_buf
        deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Map(_) => self.deserialize_any(v),
            // `nats:` with nothing under it means "all defaults".
            Value::Null => v
                .visit_map(MapDe {
                    entries: [].iter(),
                    value: None,
                })
                .map_err(|e| e.at_line(self.line)),
            _ => Err(de::Error::invalid_type(
                self.describe(),
                &"a mapping of keys",
            ))
            .map_err(|e: DeError| e.at_line(self.node.line)),
        }
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    len: usize,
}

impl<'de> SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, node)) => seed
                .deserialize(NodeDe {
                    node,
                    line: node.line,
                })
                .map(Some)
                .map_err(|e| e.under(format!("[{i}]"), node.line)),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Key, Node)>,
    value: Option<&'a (Key, Node)>,
}

impl<'de> MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let key = &entry.0;
        seed.deserialize(key.name.as_str().into_deserializer())
            .map(Some)
            .map_err(|e: DeError| e.under(key.name.clone(), key.line))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, node) = self.value.take().expect("value requested before key");
        seed.deserialize(NodeDe {
            node,
            line: key.line,
        })
        .map_err(|e| e.under(key.name.clone(), key.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree::parse_yaml;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        nats_port: u16,
        #[serde(default)]
        name: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        port: u16,
        nats: Inner,
        #[serde(default)]
        list: Vec<Inner>,
    }

    #[test]
    fn unknown_key_names_path_line_and_closest_key() {
        let n = parse_yaml("port: 1\nnats:\n  nats_prot: 4222\n").unwrap();
        let e = from_node::<Outer>(&n).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.path(), "nats.nats_prot");
        assert!(e.message.contains("did you mean `nats_port`?"), "{e}");
    }

    #[test]
    fn far_off_keys_list_the_valid_ones() {
        let n = parse_yaml("port: 1\nzzzzzzzz: 2\n").unwrap();
        let e = from_node::<Outer>(&n).unwrap_err();
        assert!(
            e.message.contains("valid keys: `port`, `nats`, `list`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_path_and_line() {
        let n = parse_yaml("port: 1\nnats:\n  nats_port: \"abc\"\n").unwrap();
        let e = from_node::<Outer>(&n).unwrap_err();
        assert_eq!((e.line, e.path().as_str()), (Some(3), "nats.nats_port"));
        assert!(e.message.contains("invalid type: string \"abc\""), "{e}");
    }

    #[test]
    fn out_of_range_number() {
        let n = parse_yaml("port: 70000\nnats: {nats_port: 1}\n").unwrap();
        let e = from_node::<Outer>(&n).unwrap_err();
        assert_eq!((e.line, e.path().as_str()), (Some(1), "port"));
        assert!(e.message.contains("expected u16"), "{e}");
    }

    #[test]
    fn missing_key_points_at_its_parent() {
        let n = parse_yaml("port: 1\nnats:\n  name: x\n").unwrap();
        let e = from_node::<Outer>(&n).unwrap_err();
        assert_eq!((e.line, e.path().as_str()), (Some(2), "nats"));
        assert_eq!(e.message, "missing required key `nats_port`");
    }

    #[test]
    fn sequence_elements_are_indexed() {
        let n = parse_yaml(
            "port: 1\nnats: {nats_port: 1}\nlist:\n  - nats_port: 1\n  - nats_port: x\n",
        )
        .unwrap();
        let e = from_node::<Outer>(&n).unwrap_err();
        assert_eq!((e.line, e.path().as_str()), (Some(5), "list[1].nats_port"));
    }

    #[test]
    fn numbers_are_accepted_as_text() {
        let n = parse_yaml("port: 1\nnats: {nats_port: 1, name: 42}\n").unwrap();
        assert_eq!(
            from_node::<Outer>(&n).unwrap().nats.name.as_deref(),
            Some("42")
        );
    }

    #[test]
    fn closest_handles_case_and_dashes() {
        assert_eq!(
            closest("NATS-PORT", &["nats_port", "port"]),
            Some("nats_port")
        );
        assert_eq!(closest("completely_else", &["port"]), None);
    }
}
