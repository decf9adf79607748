//! Reads a plugin configuration in two passes, so that a refusal names the offending field.
//!
//! Naming the field (`rules[0].limit.per`) while deserializing straight from the JSON text takes
//! a wrapper around every visitor and seed of every configuration type, and in wasm each wrapper
//! is a second monomorphized copy of that type's deserialization code. Here the text is first
//! read into a small [`Node`] tree (one visitor, instantiated once for serde_json's reader); the
//! typed configuration is then deserialized from the tree by [`At`], whose map and sequence
//! accessors add the key or index to an error as it travels up. The typed visitors are
//! instantiated for that one deserializer only, and only for the visitor methods a type asks
//! for (as serde_json's reader does), with one shared error path for everything else.
//!
//! The tree keeps objects in document order with repeated keys, so the typed pass sees what it
//! would have read from the text: a repeated struct field is still refused (`duplicate field`),
//! and when a document has several errors the first in the text is reported. serde_json's
//! nesting limit (128) bounds the depth of the tree and of both passes.
//!
//! Limit: map keys are read as strings (a map keyed by numbers or booleans would need a key
//! deserializer that parses them).

use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Unexpected, VariantAccess};
use serde::Deserialize;

use super::ConfigError;

/// The fix for text that is not one JSON value.
const FIX_SYNTAX: &str = "the plugin configuration must be one JSON object, e.g. {} for all defaults";
/// The fix for a well-formed document with a wrong field, type or value.
const FIX_SHAPE: &str = "see the filter's configuration reference in README.md for the accepted fields and types";

/// A JSON value as read from the text: numbers as serde_json classified them, objects in
/// document order with repeated keys kept.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Node::Null => Unexpected::Unit,
            Node::Bool(b) => Unexpected::Bool(*b),
            Node::Unsigned(n) => Unexpected::Unsigned(*n),
            Node::Signed(n) => Unexpected::Signed(*n),
            Node::Float(n) => Unexpected::Float(*n),
            Node::Str(s) => Unexpected::Str(s),
            Node::Seq(_) => Unexpected::Seq,
            Node::Map(_) => Unexpected::Map,
        }
    }
}

/// One step from a value to a value inside it.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
    /// Inside an object, where the text is broken before a key could be read.
    Unknown,
}

/// `rules[0].limit.per`; `.` for the document itself.
fn dotted<'a>(steps: impl Iterator<Item = &'a Step>) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
            Step::Key(_) | Step::Unknown if !out.is_empty() => out.push('.'),
            _ => {}
        }
        match step {
            Step::Key(k) => out.push_str(k),
            Step::Unknown => out.push('?'),
            Step::Index(_) => {}
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// A parsed plugin configuration, ready to be deserialized into its typed form.
#[derive(Debug)]
pub(super) struct Document(Node);

impl Document {
    /// The deserializer of the typed pass.
    pub(super) fn root(&self) -> At<'_> {
        At(&self.0)
    }

    /// Reads `text` as exactly one JSON value. A syntax error names where it was found.
    pub(super) fn read(text: &[u8]) -> Result<Self, ConfigError> {
        let mut reader = serde_json::Deserializer::from_slice(text);
        let mut path = Vec::new();
        let node = (&mut reader).deserialize_any(Build { path: &mut path }).map_err(|e| {
            let fix = if e.is_syntax() || e.is_eof() { FIX_SYNTAX } else { FIX_SHAPE };
            ConfigError::new(dotted(path.iter()), e.to_string(), fix)
        })?;
        reader.end().map_err(|e| ConfigError::new(".", e.to_string(), "remove the text after the JSON object"))?;
        Ok(Document(node))
    }
}

/// Builds a [`Node`] from serde_json's reader. `path` is the way to the value being read: a
/// step is pushed on entering a value and popped when it was read, so when reading fails it
/// names where.
struct Build<'p> {
    path: &'p mut Vec<Step>,
}

/// A value inside an object or array: pushes its step, then reads it.
struct Within<'p> {
    path: &'p mut Vec<Step>,
    step: Step,
}

impl<'de> DeserializeSeed<'de> for Within<'_> {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        self.path.push(self.step);
        let node = deserializer.deserialize_any(Build { path: &mut *self.path })?;
        self.path.pop();
        Ok(node)
    }
}

impl<'de> de::Visitor<'de> for Build<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Unsigned(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Signed(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) =
            seq.next_element_seed(Within { path: &mut *self.path, step: Step::Index(items.len()) })?
        {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        loop {
            let key = match map.next_key::<String>() {
                Ok(Some(key)) => key,
                Ok(None) => break,
                Err(e) => {
                    self.path.push(Step::Unknown);
                    return Err(e);
                }
            };
            let value = map.next_value_seed(Within { path: &mut *self.path, step: Step::Key(key.clone()) })?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// Why the typed pass refused the document, and where: `path` is innermost step first, as the
/// error collects them on its way up.
#[derive(Debug)]
pub(super) struct Error(Box<Failure>);

#[derive(Debug)]
struct Failure {
    path: Vec<Step>,
    message: String,
}

impl Error {
    #[cold]
    #[inline(never)]
    fn message(message: String) -> Self {
        Error(Box::new(Failure { path: Vec::new(), message }))
    }

    #[cold]
    #[inline(never)]
    fn at(mut self, key: &str) -> Self {
        self.0.path.push(Step::Key(key.to_owned()));
        self
    }

    #[cold]
    #[inline(never)]
    fn at_index(mut self, index: usize) -> Self {
        self.0.path.push(Step::Index(index));
        self
    }
}

/// serde's own messages, with values named as JSON spells them. Out of line and cold: every
/// field of every configuration type calls them, and inlined they would copy the message
/// formatting into each.
impl de::Error for Error {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::message(msg.to_string())
    }

    #[cold]
    #[inline(never)]
    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Error::message(format!("invalid type: {}, expected {expected}", AsJson(unexpected)))
    }

    #[cold]
    #[inline(never)]
    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Error::message(format!("invalid value: {}, expected {expected}", AsJson(unexpected)))
    }
}

/// A value named as JSON spells it (`null`, `1.5e300`), in the words of serde_json's own
/// messages. Written out rather than deferring to serde's `Unexpected` display, which would link
/// the standard library's float formatting for its floating-point case.
struct AsJson<'a>(Unexpected<'a>);

impl fmt::Display for AsJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Bool(b) => write!(f, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(f, "integer `{n}`"),
            Unexpected::Signed(n) => write!(f, "integer `{n}`"),
            Unexpected::Float(v) => write!(f, "floating point `{}`", super::number_text(v)),
            Unexpected::Char(c) => write!(f, "character `{c}`"),
            Unexpected::Str(s) => write!(f, "string {s:?}"),
            Unexpected::Bytes(_) => f.write_str("byte array"),
            Unexpected::Option => f.write_str("Option value"),
            Unexpected::NewtypeStruct => f.write_str("newtype struct"),
            Unexpected::Seq => f.write_str("sequence"),
            Unexpected::Map => f.write_str("map"),
            Unexpected::Enum => f.write_str("enum"),
            Unexpected::UnitVariant => f.write_str("unit variant"),
            Unexpected::NewtypeVariant => f.write_str("newtype variant"),
            Unexpected::TupleVariant => f.write_str("tuple variant"),
            Unexpected::StructVariant => f.write_str("struct variant"),
            Unexpected::Other(other) => f.write_str(other),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for ConfigError {
    fn from(e: Error) -> Self {
        ConfigError::new(dotted(e.0.path.iter().rev()), e.0.message, FIX_SHAPE)
    }
}

/// A value of the wrong kind for what the typed pass asked for. Not generic, so that every
/// visitor shares it.
#[cold]
#[inline(never)]
fn mismatch(node: &Node, expected: &dyn de::Expected) -> Error {
    de::Error::invalid_type(node.unexpected(), expected)
}

/// The typed pass's deserializer: a value of the tree, borrowed.
pub(super) struct At<'a>(&'a Node);

impl<'a> At<'a> {
    fn visit_items<V: de::Visitor<'a>>(items: &'a [Node], visitor: V) -> Result<V::Value, Error> {
        let len = items.len();
        let mut access = Items { items: items.iter(), index: 0 };
        let value = visitor.visit_seq(&mut access)?;
        match access.items.len() {
            0 => Ok(value),
            _ => Err(de::Error::invalid_length(len, &"fewer elements in array")),
        }
    }

    fn visit_entries<V: de::Visitor<'a>>(entries: &'a [(String, Node)], visitor: V) -> Result<V::Value, Error> {
        let len = entries.len();
        let mut access = Entries { entries: entries.iter(), pending: None };
        let value = visitor.visit_map(&mut access)?;
        match access.entries.len() {
            0 => Ok(value),
            _ => Err(de::Error::invalid_length(len, &"fewer elements in map")),
        }
    }
}

/// Deserializer methods that read a number: all alike.
macro_rules! read_as_u64 {
    ($($method:ident)*) => {
        $(
            fn $method<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.deserialize_u64(visitor)
            }
        )*
    };
}

/// Like serde_json's reader, every method but `deserialize_any` calls only the visitor method
/// that fits the type asked for and refuses anything else with one shared error: a visitor's
/// other methods are never instantiated.
impl<'de> Deserializer<'de> for At<'de> {
    type Error = Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(*b),
            Node::Unsigned(n) => visitor.visit_u64(*n),
            Node::Signed(n) => visitor.visit_i64(*n),
            Node::Float(n) => visitor.visit_f64(*n),
            Node::Str(s) => visitor.visit_borrowed_str(s),
            Node::Seq(items) => Self::visit_items(items, visitor),
            Node::Map(entries) => Self::visit_entries(entries, visitor),
        }
    }

    fn deserialize_bool<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Bool(b) => visitor.visit_bool(*b),
            other => Err(mismatch(other, &visitor)),
        }
    }

    fn deserialize_u64<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Unsigned(n) => visitor.visit_u64(*n),
            Node::Signed(n) => visitor.visit_i64(*n),
            Node::Float(n) => visitor.visit_f64(*n),
            other => Err(mismatch(other, &visitor)),
        }
    }

    fn deserialize_string<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Str(s) => visitor.visit_borrowed_str(s),
            other => Err(mismatch(other, &visitor)),
        }
    }

    fn deserialize_unit<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => visitor.visit_unit(),
            other => Err(mismatch(other, &visitor)),
        }
    }

    fn deserialize_seq<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Seq(items) => Self::visit_items(items, visitor),
            other => Err(mismatch(other, &visitor)),
        }
    }

    fn deserialize_map<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Map(entries) => Self::visit_entries(entries, visitor),
            other => Err(mismatch(other, &visitor)),
        }
    }

    /// An object, or an array of the fields in order (serde_json accepts both).
    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Node::Map(entries) => Self::visit_entries(entries, visitor),
            Node::Seq(items) => Self::visit_items(items, visitor),
            other => Err(mismatch(other, &visitor)),
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// `"variant"` or `{"variant": content}`, as serde_json reads enums.
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Node::Str(s) => visitor.visit_enum(StrDeserializer::<Error>::new(s)),
            Node::Map(entries) => match entries.as_slice() {
                [(key, content)] => visitor.visit_enum(Variant { key, content }),
                _ => Err(de::Error::invalid_length(entries.len(), &"a map with one key")),
            },
            other => Err(mismatch(other, &"a string or a map with one key")),
        }
    }

    /// A value nobody reads: dropped whatever it is.
    fn deserialize_ignored_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! { i128 u128 char bytes byte_buf }

    // Every number type reads like `u64`: the visitor checks its own range and kind.
    read_as_u64! { deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_u8 deserialize_u16 }
    read_as_u64! { deserialize_u32 deserialize_f32 deserialize_f64 }

    fn deserialize_str<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }
    fn deserialize_identifier<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }
    fn deserialize_unit_struct<V: de::Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_tuple<V: de::Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }
}

/// The elements of an array; an error inside one gains its index.
struct Items<'a> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
}

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let Some(node) = self.items.next() else { return Ok(None) };
        let index = self.index;
        self.index += 1;
        seed.deserialize(At(node)).map(Some).map_err(|e| e.at_index(index))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of an object; an error in a key (an unknown field) or inside a value gains the key.
struct Entries<'a> {
    entries: std::slice::Iter<'a, (String, Node)>,
    pending: Option<&'a (String, Node)>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else { return Ok(None) };
        match seed.deserialize(StrDeserializer::<Error>::new(&entry.0)) {
            Ok(k) => {
                self.pending = Some(entry);
                Ok(Some(k))
            }
            Err(e) => Err(e.at(&entry.0)),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.pending.take() {
            Some((key, node)) => seed.deserialize(At(node)).map_err(|e| e.at(key)),
            None => Err(de::Error::custom("a map value was read before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An enum written as `{"variant": content}`; an error in the content gains the variant name.
struct Variant<'a> {
    key: &'a str,
    content: &'a Node,
}

impl<'de> EnumAccess<'de> for Variant<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        match seed.deserialize(StrDeserializer::<Error>::new(self.key)) {
            Ok(v) => Ok((v, self)),
            Err(e) => Err(e.at(self.key)),
        }
    }
}

impl<'de> VariantAccess<'de> for Variant<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        <()>::deserialize(At(self.content)).map_err(|e| e.at(self.key))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(At(self.content)).map_err(|e| e.at(self.key))
    }

    fn tuple_variant<V: de::Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        At(self.content).deserialize_seq(visitor).map_err(|e| e.at(self.key))
    }

    fn struct_variant<V: de::Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        At(self.content).deserialize_map(visitor).map_err(|e| e.at(self.key))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use crate::config::{parse_json, ConfigError};

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Enforce,
        Shadow,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        requests: u64,
        per: String,
        #[serde(default)]
        burst: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        name: String,
        limit: Limit,
        #[serde(default)]
        key: Option<Vec<serde_json::Value>>,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        a: Option<u16>,
        #[serde(default)]
        b: Option<f64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        on: Option<bool>,
        #[serde(default)]
        clusters: BTreeMap<String, Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Flat {
        #[serde(flatten)]
        inner: Inner,
        #[serde(default)]
        status: Option<u16>,
    }

    fn refused(json: &str) -> ConfigError {
        match parse_json::<Doc>(json.as_bytes()) {
            Ok(d) => panic!("{json} was accepted: {d:?}"),
            Err(e) => e,
        }
    }

    const RULE: &str = r#"{"name": "a", "limit": {"requests": 5, "per": "1s"}}"#;

    #[test]
    fn a_good_document_reads_like_serde_json_reads_it() {
        let json = format!(
            r#"{{"rules": [{RULE}, {{"name": "b", "limit": {{"requests": 1, "per": "1m", "burst": 3}},
                "key": ["client_ip", {{"header": "x-a"}}, 1.5, -2, null, true]}}],
               "mode": "shadow", "on": null, "clusters": {{"pay": {{"a": 503, "b": 2}}}}}}"#
        );
        let ours: Doc = parse_json(json.as_bytes()).unwrap();
        let theirs: Doc = serde_json::from_str(&json).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.clusters["pay"], Inner { a: Some(503), b: Some(2.0) });
    }

    #[test]
    fn type_errors_name_the_path_with_keys_and_indexes() {
        let e =
            refused(&format!(r#"{{"rules": [{RULE}, {{"name": "b", "limit": {{"requests": -5, "per": "1s"}}}}]}}"#));
        assert_eq!(e.field, "rules[1].limit.requests");
        assert_eq!(e.problem, "invalid value: integer `-5`, expected u64");
        let e = refused(r#"{"clusters": {"pay": {"a": 70000}}}"#);
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("clusters.pay.a", "invalid value: integer `70000`, expected u16")
        );
        let e = refused(r#"{"clusters": {"pay": {"a": 1.5}}}"#);
        assert_eq!(e.problem, "invalid type: floating point `1.5`, expected u16");
        let e = refused(r#"{"clusters": {"pay": {"b": "2"}}}"#);
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("clusters.pay.b", r#"invalid type: string "2", expected f64"#)
        );
        let e = refused(r#"{"rules": {}}"#);
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("rules", "invalid type: map, expected a sequence"));
        let e = refused(r#"{"rules": [{"name": null}]}"#);
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("rules[0].name", "invalid type: null, expected a string"));
        assert!(e.fix.contains("README.md"), "{e}");
    }

    #[test]
    fn unknown_fields_name_themselves_and_missing_ones_their_parent() {
        let e = refused(r#"{"rules": [{"name": "a", "limt": {}}]}"#);
        assert_eq!(e.field, "rules[0].limt");
        assert!(e.problem.starts_with("unknown field `limt`, expected one of `name`, `limit`, `key`"), "{e}");
        let e = refused(r#"{"rules": [{"name": "a"}]}"#);
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("rules[0]", "missing field `limit`"));
        let e = refused("5");
        assert_eq!((e.field.as_str(), e.problem.as_str()), (".", "invalid type: integer `5`, expected struct Doc"));
    }

    #[test]
    fn enums_are_strings_or_one_key_maps() {
        assert_eq!(parse_json::<Doc>(br#"{"mode": {"enforce": null}}"#).unwrap().mode, Some(Mode::Enforce));
        let e = refused(r#"{"mode": "dry"}"#);
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("mode", "unknown variant `dry`, expected `enforce` or `shadow`")
        );
        assert_eq!(refused(r#"{"mode": 5}"#).field, "mode");
        assert_eq!(refused(r#"{"mode": {"shadow": 1}}"#).field, "mode.shadow");
    }

    #[test]
    fn repeated_fields_are_refused_and_repeated_map_keys_keep_the_last() {
        let e = refused(r#"{"on": true, "on": false}"#);
        assert_eq!((e.field.as_str(), e.problem.as_str()), (".", "duplicate field `on`"));
        let d: Doc = parse_json(br#"{"clusters": {"a": {"a": 1}, "a": {"a": 2}}}"#).unwrap();
        assert_eq!(d.clusters["a"].a, Some(2));
    }

    #[test]
    fn the_first_error_in_the_text_is_reported() {
        assert_eq!(refused(r#"{"on": 1, "mode": "dry"}"#).field, "on");
        assert_eq!(refused(r#"{"mode": "dry", "on": 1}"#).field, "mode");
    }

    #[test]
    fn a_struct_may_be_an_array_of_its_fields_as_with_serde_json() {
        let d: Doc = parse_json(br#"{"rules": [{"name": "a", "limit": [5, "1s"]}]}"#).unwrap();
        assert_eq!(d.rules[0].limit, Limit { requests: 5, per: "1s".into(), burst: None });
        let e = refused(r#"{"rules": [{"name": "a", "limit": [5, "1s", 1, 2]}]}"#);
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("rules[0].limit", "invalid length 4, expected fewer elements in array")
        );
    }

    #[test]
    fn flattened_blocks_read_and_refuse_unknown_fields() {
        let f: Flat = parse_json(br#"{"a": 1, "status": 503}"#).unwrap();
        assert_eq!(f, Flat { inner: Inner { a: Some(1), b: None }, status: Some(503) });
        let e = parse_json::<Flat>(br#"{"a": 1, "x": 2}"#).unwrap_err();
        assert!(e.problem.contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn syntax_errors_name_where_the_text_broke() {
        let e = refused(r#"{"rules": [{"name": "a"}, "#);
        assert_eq!(e.field, "rules");
        assert!(e.problem.starts_with("EOF while parsing a list"), "{e}");
        assert!(e.fix.contains("one JSON object"), "{e}");
        // Where the text breaks at a key, the step is `?` (no key could be read).
        assert_eq!(refused(r#"{"rules": [{"name": "a""#).field, "rules[0].?");
        let e = refused(r#"{"on": true,}"#);
        assert_eq!(e.field, "?");
        let e = refused(r#"{"clusters": {"a": {"b": 1e400}}}"#);
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("clusters.a.b", "number out of range at line 1 column 31"));
        let e = refused("{} {}");
        assert_eq!((e.field.as_str(), e.fix.as_str()), (".", "remove the text after the JSON object"));
    }
}
