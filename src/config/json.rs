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
//! and when a document has several errors the first in the text is reported. Text that is not
//! one JSON value (broken syntax, invalid UTF-8, nesting deeper than [`MAX_DEPTH`]) is refused
//! as a whole document (`.`), the message saying where; the depth bound keeps both passes, and
//! dropping the tree, well within the stack.
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
const FIX_SHAPE: &str = "see the stage's reference page under docs/reference/ for the accepted fields and types";
/// The fix for a document nested deeper than [`MAX_DEPTH`].
const FIX_DEPTH: &str = "a plugin configuration nests a few levels deep: check the brackets";
/// The fix for bytes that are not UTF-8.
const FIX_UTF8: &str = "write the plugin configuration as UTF-8 text";

/// Arrays and objects nest at most this deep (a configuration needs fewer than ten levels).
/// Below serde_json's own limit (128), so that this one, with its clearer message, applies.
pub(super) const MAX_DEPTH: usize = 64;

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
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
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

    /// Reads `bytes` as exactly one JSON value. Anything else is refused as a whole (`.`), the
    /// message saying where (line and column).
    pub(super) fn read(bytes: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let (line, column) = position(bytes, e.valid_up_to());
            ConfigError::new(".", format!("invalid UTF-8 at line {line} column {column}"), FIX_UTF8)
        })?;
        let mut reader = serde_json::Deserializer::from_str(text);
        let node = (&mut reader).deserialize_any(Build { depth: 0 }).map_err(|e| {
            // Only the depth bound is a data error: the visitor accepts every value.
            let fix = if e.is_data() { FIX_DEPTH } else { FIX_SYNTAX };
            ConfigError::new(".", e.to_string(), fix)
        })?;
        reader.end().map_err(|e| ConfigError::new(".", e.to_string(), "remove the text after the JSON object"))?;
        Ok(Document(node))
    }

    /// The document as a plugin configuration: one JSON object (serde would also read an array
    /// as a struct's fields in order: refused plainly), without a top-level `"$schema"` string.
    pub(super) fn configuration(self) -> Result<Self, ConfigError> {
        let Node::Map(mut entries) = self.0 else {
            return Err(ConfigError::new(".", "is not a JSON object", FIX_SYNTAX));
        };
        entries.retain(|(key, value)| !(key == "$schema" && matches!(value, Node::Str(_))));
        Ok(Document(Node::Map(entries)))
    }
}

/// Line and column (from 1, columns in bytes, as serde_json counts them) of byte `at`.
fn position(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = bytes.get(..at).unwrap_or(bytes);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    (line, at - line_start + 1)
}

/// Builds a [`Node`] from serde_json's reader; `depth` is the number of arrays and objects
/// around the value being read.
struct Build {
    depth: usize,
}

impl Build {
    /// The builder for the values inside an array or object, or the error if that is too deep.
    fn inner<E: de::Error>(&self) -> Result<Build, E> {
        match self.depth + 1 {
            depth if depth > MAX_DEPTH => Err(E::custom(format_args!("nested deeper than {MAX_DEPTH} levels"))),
            depth => Ok(Build { depth }),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Build {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Build {
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
        while let Some(item) = seq.next_element_seed(self.inner()?)? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.inner()?)?;
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
            Unexpected::Float(v) => write!(f, "floating point `{}`", super::float_text(v)),
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
        let path = dotted(e.0.path.iter().rev());
        // serde's message repeats the value it refused ("invalid type: integer `424242`"): never
        // for a field that holds a secret, which would then sit in Envoy's log.
        let last = path.rsplit(['.', '[']).next().unwrap_or_default();
        let problem = if ["token", "secret", "password"].iter().any(|w| last.contains(w)) {
            "has the wrong type (its value is not repeated here: the field holds a secret)".to_string()
        } else {
            e.0.message
        };
        ConfigError::new(path, problem, FIX_SHAPE)
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

    /// An object. Not an array of the fields in order, which serde_json also reads: no
    /// configuration is written so, and it would instantiate every struct's `visit_seq`.
    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Node::Map(entries) => Self::visit_entries(entries, visitor),
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
        assert!(e.fix.contains("docs/reference/"), "the fix points to the reference: {e}");
    }

    #[test]
    fn unknown_fields_name_themselves_and_missing_ones_their_parent() {
        let e = refused(r#"{"rules": [{"name": "a", "limt": {}}]}"#);
        assert_eq!(e.field, "rules[0].limt");
        assert!(e.problem.starts_with("unknown field `limt`, expected one of `name`, `limit`, `key`"), "{e}");
        let e = refused(r#"{"rules": [{"name": "a"}]}"#);
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("rules[0]", "missing field `limit`"));
        let e = refused("5");
        assert_eq!((e.field.as_str(), e.problem.as_str()), (".", "is not a JSON object"));
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
    fn a_struct_is_an_object_only() {
        // serde_json would also take the fields in order as an array; no configuration is
        // written so, and reading that form would double the code of every configuration type.
        let e = refused(r#"{"rules": [{"name": "a", "limit": [5, "1s"]}]}"#);
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("rules[0].limit", "invalid type: sequence, expected struct Limit")
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
    fn text_that_is_not_one_json_value_is_refused_as_a_whole_saying_where() {
        let e = refused(r#"{"rules": [{"name": "a"}, "#);
        assert_eq!(e.field, ".");
        assert!(e.problem.starts_with("EOF while parsing a value at line 1"), "{e}");
        assert!(e.fix.contains("one JSON object"), "{e}");
        assert_eq!(refused(r#"{"rules": [{"name": "a""#).field, ".");
        assert_eq!(refused(r#"{"on": true,}"#).problem, "trailing comma at line 1 column 13");
        let e = refused(r#"{"clusters": {"a": {"b": 1e400}}}"#);
        assert_eq!((e.field.as_str(), e.problem.as_str()), (".", "number out of range at line 1 column 30"));
        let e = refused("{} {}");
        assert_eq!((e.field.as_str(), e.fix.as_str()), (".", "remove the text after the JSON object"));
        let e = refused("{} x");
        assert_eq!(e.problem, "trailing characters at line 1 column 4");
    }

    #[test]
    fn strings_unescape_and_invalid_utf8_is_refused_with_its_position() {
        let d: Doc = parse_json(br#"{"clusters": {"p\u0061y\n\"": {}}}"#).unwrap();
        assert!(d.clusters.contains_key("pay\n\""), "{d:?}");
        let e = parse_json::<Doc>(b"{\n \"clusters\": {\"p\xffy\": {}}}").unwrap_err();
        assert_eq!((e.field.as_str(), e.problem.as_str()), (".", "invalid UTF-8 at line 2 column 17"));
        assert!(e.fix.contains("UTF-8"), "{e}");
        // A lone surrogate escape is no character either.
        let e = refused(r#"{"clusters": {"\ud800": {}}}"#);
        assert_eq!((e.field.as_str(), e.fix.as_str()), (".", super::FIX_SYNTAX));
    }

    #[test]
    fn numbers_read_as_serde_json_reads_them() {
        let d: Doc = parse_json(br#"{"clusters": {"p": {"a": 65535, "b": -1.5e-3}, "q": {"b": -7}}}"#).unwrap();
        assert_eq!((d.clusters["p"].a, d.clusters["p"].b, d.clusters["q"].b), (Some(65535), Some(-1.5e-3), Some(-7.0)));
        let e = refused(r#"{"clusters": {"p": {"a": 18446744073709551616}}}"#);
        assert_eq!(e.problem, "invalid type: floating point `1.8446744073709552e+19`, expected u16");
        assert_eq!(
            refused(r#"{"clusters": {"p": {"a": 2.0}}}"#).problem,
            "invalid type: floating point `2.0`, expected u16"
        );
        assert_eq!(refused(r#"{"clusters": {"p": {"a": -1}}}"#).problem, "invalid value: integer `-1`, expected u16");
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_exhaust_the_stack() {
        for depth in [super::MAX_DEPTH + 1, 10_000] {
            let json = format!(r#"{{"rules": [{{"name": "a", "key": {}{}}}]}}"#, "[".repeat(depth), "]".repeat(depth));
            let e = refused(&json);
            assert_eq!(e.field, ".", "{e}");
            assert!(e.problem.starts_with("nested deeper than 64 levels at line 1"), "{e}");
            assert!(e.fix.contains("brackets"), "{e}");
        }
        // The document, `rules`, the rule and `key` are four levels: 64 in all.
        let nested = format!("{}{}", "[".repeat(super::MAX_DEPTH - 4), "]".repeat(super::MAX_DEPTH - 4));
        let json =
            format!(r#"{{"rules": [{{"name": "a", "key": [{nested}], "limit": {{"requests": 1, "per": "1s"}}}}]}}"#);
        if let Err(e) = parse_json::<Doc>(json.as_bytes()) {
            panic!("{e}");
        }
    }
}
