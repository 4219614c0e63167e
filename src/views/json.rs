//! A secret whose value is a JSON object, read key by key: objects are directories, every other
//! value a file.
//!
//! - A string reads as its text, unquoted and unescaped (`{"password": "a\"b"}` -> `a"b`).
//! - A number, `true`, `false` or `null` reads as written in the value (`1.50` stays `1.50`,
//!   `12345678901234567890123` keeps every digit: nothing goes through a float).
//! - An array reads as its compact JSON text: the same elements, numbers and escapes as
//!   written, objects inside keeping their keys in document order, duplicates included, and no
//!   whitespace between tokens.
//! - Listings are sorted by byte order, not in document order: the same value always lists the
//!   same way, whatever serde_json's `preserve_order` feature (which any crate in the build
//!   could turn on) or an editor that reorders keys does, and a duplicate key has no one place.
//! - A duplicate key: the last one wins, as in serde_json, JavaScript's `JSON.parse` and
//!   Python's `json`.
//! - A key that cannot be a file name (empty, `.`, `..`, holding `/` or NUL, over 255 bytes) is
//!   left out: never listed, not found on lookup, and so is everything beneath it.
//! - Only an object makes a tree: any other top-level value is `NotAnObject`.
//! - Nesting deeper than 128 objects and arrays is refused (the limit serde_json sets itself),
//!   so a hostile value cannot exhaust the stack.
//!
//! Errors give a line and a column at most. serde_json's own messages are not passed on:
//! those of its data errors may quote the input, and this input is a secret.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::names::is_file_name;

/// Objects and arrays nested deeper than this are refused.
pub const MAX_DEPTH: usize = 128;

/// Why a value is not a JSON object kvfs can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("not UTF-8 (at byte {offset})")]
    NotUtf8 { offset: usize },
    #[error("malformed JSON at line {line} column {column}")]
    Malformed { line: usize, column: usize },
    #[error("JSON ends early, at line {line} column {column}")]
    EndsEarly { line: usize, column: usize },
    #[error("not a JSON object")]
    NotAnObject,
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl From<serde_json::Error> for JsonError {
    fn from(e: serde_json::Error) -> Self {
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Eof => JsonError::EndsEarly { line, column },
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Data
            | serde_json::error::Category::Io => JsonError::Malformed { line, column },
        }
    }
}

/// A parsed JSON object: a directory of directories and leaves.
#[derive(Debug)]
pub struct JsonTree {
    root: JsonDir,
}

/// One entry of the tree.
#[derive(Debug)]
pub enum JsonNode {
    Dir(JsonDir),
    Leaf(JsonLeaf),
}

/// An object's entries whose keys are file names, sorted by byte order.
#[derive(Debug, Default)]
pub struct JsonDir {
    entries: BTreeMap<String, JsonNode>,
}

/// A leaf's bytes (see the module doc). Zeroed on drop; `Debug` shows only the length.
pub struct JsonLeaf(Zeroizing<Vec<u8>>);

impl fmt::Debug for JsonLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonLeaf(<redacted {} bytes>)", self.0.len())
    }
}

/// Parses a secret's value as a JSON object (see the module doc for the rules).
pub fn parse(value: &[u8]) -> Result<JsonTree, JsonError> {
    let text = std::str::from_utf8(value).map_err(|e| JsonError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    // The whole text is checked once here (syntax, trailing characters, line and column of an
    // error); what follows re-reads valid parts of it.
    let raw: &RawValue = serde_json::from_str(text)?;
    if !raw.get().starts_with('{') {
        return Err(JsonError::NotAnObject);
    }
    Ok(JsonTree { root: dir(raw, 1)? })
}

impl JsonTree {
    /// The top-level object.
    pub fn root(&self) -> &JsonDir {
        &self.root
    }

    /// The entry at `path` (keys from the top), or `None` if the path is empty, a key is
    /// missing or is not a file name, or a key names a leaf before the path ends.
    pub fn get<'p>(&self, path: impl IntoIterator<Item = &'p str>) -> Option<&JsonNode> {
        let mut path = path.into_iter();
        let first = self.root.get(path.next()?)?;
        path.try_fold(first, |node, key| node.as_dir()?.get(key))
    }

    /// The object at `path` (the top-level one for an empty path), or `None` if `path` is not
    /// an object.
    pub fn dir<'p>(&self, path: impl IntoIterator<Item = &'p str>) -> Option<&JsonDir> {
        let mut path = path.into_iter().peekable();
        match path.peek() {
            None => Some(&self.root),
            Some(_) => self.get(path)?.as_dir(),
        }
    }

    /// The sorted keys of the object at `path`, or `None` if `path` is not an object.
    pub fn list<'p>(
        &self,
        path: impl IntoIterator<Item = &'p str>,
    ) -> Option<impl Iterator<Item = &str>> {
        self.dir(path).map(JsonDir::names)
    }

    /// The bytes of the leaf at `path`, or `None` if `path` is not a leaf.
    pub fn leaf<'p>(&self, path: impl IntoIterator<Item = &'p str>) -> Option<&[u8]> {
        self.get(path)?.as_leaf()
    }
}

impl JsonNode {
    pub fn as_dir(&self) -> Option<&JsonDir> {
        match self {
            JsonNode::Dir(dir) => Some(dir),
            JsonNode::Leaf(_) => None,
        }
    }

    pub fn as_leaf(&self) -> Option<&[u8]> {
        match self {
            JsonNode::Dir(_) => None,
            JsonNode::Leaf(leaf) => Some(&leaf.0),
        }
    }
}

impl JsonDir {
    /// The entry named `key`; `None` for a key that is not a file name.
    pub fn get(&self, key: &str) -> Option<&JsonNode> {
        self.entries.get(key)
    }

    /// Keys in byte order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Entries in byte order of their keys.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &JsonNode)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The directory of the object `raw`, at nesting `depth` (the root is 1).
fn dir(raw: &RawValue, depth: usize) -> Result<JsonDir, JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::TooDeep);
    }
    // A map deserialized into a BTreeMap keeps the last of duplicate keys.
    let members: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())?;
    let mut entries = BTreeMap::new();
    for (key, value) in members {
        if !is_file_name(&key) {
            continue;
        }
        let node = match value.get().as_bytes().first() {
            Some(b'{') => JsonNode::Dir(dir(value, depth + 1)?),
            Some(b'"') => {
                let text: String = serde_json::from_str(value.get())?;
                JsonNode::Leaf(JsonLeaf(Zeroizing::new(text.into_bytes())))
            }
            Some(b'[') => {
                let mut out = Zeroizing::new(Vec::with_capacity(value.get().len()));
                compact(value, depth + 1, &mut out)?;
                JsonNode::Leaf(JsonLeaf(out))
            }
            _ => JsonNode::Leaf(JsonLeaf(Zeroizing::new(value.get().as_bytes().to_vec()))),
        };
        entries.insert(key, node);
    }
    Ok(JsonDir { entries })
}

/// Appends the compact text of `raw` to `out`: tokens as written, no whitespace between them.
/// `out` never grows past its starting capacity (the length of the text), so no copy of a
/// value is left behind in a freed buffer.
fn compact(raw: &RawValue, depth: usize, out: &mut Vec<u8>) -> Result<(), JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::TooDeep);
    }
    match raw.get().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get())?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                compact(item, depth + 1, out)?;
            }
            out.push(b']');
        }
        Some(b'{') => {
            let Members(members) = serde_json::from_str(raw.get())?;
            out.push(b'{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key.get().as_bytes());
                out.push(b':');
                compact(value, depth + 1, out)?;
            }
            out.push(b'}');
        }
        // Strings, numbers, literals: one token, as written.
        _ => out.extend_from_slice(raw.get().as_bytes()),
    }
    Ok(())
}

/// An object's members in document order, duplicates kept, keys as written (quoted).
struct Members<'a>(Vec<(&'a RawValue, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(json: &str) -> JsonTree {
        parse(json.as_bytes()).unwrap()
    }

    fn leaf<'t>(t: &'t JsonTree, path: &[&str]) -> &'t [u8] {
        t.leaf(path.iter().copied()).unwrap()
    }

    #[test]
    fn leaves() {
        let t = tree(
            r#"{
                "user": "app",
                "password": "p\"a\\ss\u00e9\n",
                "port": 5432,
                "ratio": 1.50,
                "big": 12345678901234567890123,
                "exp": -1E+3,
                "on": true, "off": false, "none": null,
                "hosts": [ "a", 1.0, {"z": 1, "a": [ ], "z": 2}, "\u0041" ],
                "empty": ""
            }"#,
        );
        assert_eq!(leaf(&t, &["user"]), b"app");
        assert_eq!(leaf(&t, &["password"]), "p\"a\\ss\u{e9}\n".as_bytes());
        assert_eq!(leaf(&t, &["port"]), b"5432");
        assert_eq!(leaf(&t, &["ratio"]), b"1.50");
        assert_eq!(leaf(&t, &["big"]), b"12345678901234567890123");
        assert_eq!(leaf(&t, &["exp"]), b"-1E+3");
        assert_eq!(leaf(&t, &["on"]), b"true");
        assert_eq!(leaf(&t, &["off"]), b"false");
        assert_eq!(leaf(&t, &["none"]), b"null");
        assert_eq!(
            leaf(&t, &["hosts"]),
            br#"["a",1.0,{"z":1,"a":[],"z":2},"\u0041"]"#
        );
        assert_eq!(leaf(&t, &["empty"]), b"");
    }

    #[test]
    fn directories_list_sorted_and_nest() {
        let t = tree(r#"{"b": {"y": {"deep": "1"}, "x": "2"}, "a": "3", "B": "4"}"#);
        assert_eq!(t.list([]).unwrap().collect::<Vec<_>>(), ["B", "a", "b"]);
        assert_eq!(t.list(["b"]).unwrap().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(leaf(&t, &["b", "y", "deep"]), b"1");
        assert!(t.get(["b", "y"]).unwrap().as_dir().is_some());
        assert_eq!(t.root().len(), 3);
        // Missing keys, paths through a leaf, a leaf listed, a directory read.
        assert!(t.get(["c"]).is_none());
        assert!(t.get(["a", "x"]).is_none());
        assert!(t.list(["a"]).is_none());
        assert!(t.leaf(["b"]).is_none());
        assert!(t.get([]).is_none());
        assert_eq!(t.dir([]).unwrap().len(), 3);
        assert!(t.dir(["a"]).is_none());
        assert!(tree("{}").root().is_empty());
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let t = tree(r#"{"k": "first", "k": {"x": "1"}, "k": "last"}"#);
        assert_eq!(leaf(&t, &["k"]), b"last");
        assert_eq!(t.root().len(), 1);
    }

    #[test]
    fn keys_that_are_not_file_names_are_left_out() {
        let long = "k".repeat(256);
        let ok = "k".repeat(255);
        let json = format!(
            r#"{{"": "1", ".": "2", "..": "3", "a/b": "4", "n\u0000ul": "5", "{long}": "6",
                 "{ok}": "7", "...": "8", "sub": {{"/": "9"}}}}"#
        );
        let t = tree(&json);
        assert_eq!(
            t.list([]).unwrap().collect::<Vec<_>>(),
            ["...", ok.as_str(), "sub"]
        );
        for key in ["", ".", "..", "a/b", "n\0ul", long.as_str()] {
            assert!(t.get([key]).is_none(), "{key:?}");
        }
        assert!(t.root().get(".").is_none());
        assert_eq!(t.list(["sub"]).unwrap().count(), 0);
    }

    #[test]
    fn refusals() {
        for (value, want) in [
            ("[1, 2]", JsonError::NotAnObject),
            ("\"text\"", JsonError::NotAnObject),
            ("42", JsonError::NotAnObject),
            ("null", JsonError::NotAnObject),
            (
                "{\"a\": 1,\n \"b\" 2}",
                JsonError::Malformed { line: 2, column: 6 },
            ),
            (
                "{\"a\": 1} x",
                JsonError::Malformed {
                    line: 1,
                    column: 10,
                },
            ),
            (
                "{\"a\": \"unterminated",
                JsonError::EndsEarly {
                    line: 1,
                    column: 19,
                },
            ),
            ("", JsonError::EndsEarly { line: 1, column: 0 }),
        ] {
            assert_eq!(parse(value.as_bytes()).unwrap_err(), want, "{value:?}");
        }
        assert_eq!(
            parse(b"{\"a\": \"\xff\"}").unwrap_err(),
            JsonError::NotUtf8 { offset: 7 }
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |objects: usize| {
            let mut s = String::new();
            for _ in 0..objects {
                s.push_str("{\"a\":");
            }
            s.push('1');
            s.push_str(&"}".repeat(objects));
            s
        };
        assert!(parse(nested(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse(nested(MAX_DEPTH + 1).as_bytes()).unwrap_err(),
            JsonError::TooDeep
        );
        let arrays = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(parse(arrays.as_bytes()).unwrap_err(), JsonError::TooDeep);
        // Far deeper than any stack would take: refused, no overflow.
        let hostile = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse(hostile.as_bytes()).unwrap_err(), JsonError::TooDeep);
    }

    #[test]
    fn errors_hold_no_input() {
        // serde_json would print `invalid type: string "hunter2"` for some data errors; ours
        // are fixed words and numbers whatever the input.
        for value in [
            "{\"pw\": hunter2}",
            "{\"pw\": \"hunter2\\q\"}",
            "{\"pw\": \"hunter2\"",
            "{\"pw\": \"hunter2\"} hunter2",
            "[\"hunter2\"]",
        ] {
            let shown = parse(value.as_bytes()).unwrap_err().to_string();
            assert!(!shown.contains("hunter"), "{shown}");
        }
    }

    #[test]
    fn leaves_do_not_debug_print() {
        let t = tree(r#"{"pw": "hunter2"}"#);
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted 7 bytes"), "{shown}");
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            any::<String>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e300f64..1e300).prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Checks `node` against `value`: every string leaf reads back its string, every other
    /// leaf its JSON, every object lists exactly its keys that are file names.
    fn check(node: &JsonNode, value: &serde_json::Value) -> Result<(), TestCaseError> {
        match (node, value) {
            (JsonNode::Dir(dir), value) => check_dir(dir, value)?,
            (JsonNode::Leaf(leaf), serde_json::Value::String(s)) => {
                prop_assert_eq!(&leaf.0[..], s.as_bytes());
            }
            // The text serde_json wrote, byte for byte (parsing it back would not do: without
            // its float_roundtrip feature serde_json may read a float one ulp off).
            (JsonNode::Leaf(leaf), other) => {
                prop_assert_eq!(&leaf.0[..], serde_json::to_vec(other).unwrap());
            }
        }
        Ok(())
    }

    fn check_dir(dir: &JsonDir, value: &serde_json::Value) -> Result<(), TestCaseError> {
        match value {
            serde_json::Value::Object(map) => {
                let keys: Vec<&str> = map
                    .keys()
                    .map(String::as_str)
                    .filter(|k| is_file_name(k))
                    .collect();
                let mut sorted = keys.clone();
                sorted.sort();
                prop_assert_eq!(dir.names().collect::<Vec<_>>(), sorted);
                for key in keys {
                    check(dir.get(key).unwrap(), &map[key])?;
                }
            }
            other => prop_assert!(false, "a directory for {}", other),
        }
        Ok(())
    }

    proptest! {
        /// Any object serde_json writes, compact or pretty, reads back: each string leaf its
        /// string, each other leaf its compact JSON.
        #[test]
        fn objects_round_trip(
            map in proptest::collection::btree_map(any::<String>(), json_value(), 0..8),
            pretty in any::<bool>(),
        ) {
            let value = serde_json::Value::Object(map.into_iter().collect());
            let text = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            let tree = parse(&text).unwrap();
            check_dir(tree.root(), &value)?;
        }
    }
}
