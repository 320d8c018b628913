//! Reading a definition's text into a tree of [`Node`]s that know their line.
//!
//! YAML goes through saphyr-parser's event stream (YAML 1.2, core schema),
//! built into nodes here so that duplicate keys, tags, aliases and nesting
//! depth are our errors rather than a panic or a silent overwrite. A text
//! whose first character (after blanks) is `{` or `[` is JSON: serde_json
//! checks its syntax (and names line and column), then a small reader below
//! builds the nodes. JSON does not go through the YAML parser because valid
//! JSON is not always valid YAML (`"\ud83d\ude00"` escapes, for one).
//!
//! Invariants: nothing here panics on any input; nodes nest at most
//! [`MAX_NESTING`] deep; aliases expand to at most [`ALIAS_BUDGET`] nodes.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, SpannedEventReceiver, Tag};
use serde_json::{Number, Value};

use super::expr::parse_number;

/// How deeply mappings and lists may nest.
pub(super) const MAX_NESTING: usize = 128;

/// How many nodes all aliases together may expand to (a "billion laughs"
/// document would otherwise exhaust memory).
pub(super) const ALIAS_BUDGET: usize = 100_000;

/// A value in the definition, with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub line: usize,
    pub kind: Kind,
    /// A YAML literal block (`|`): its text's lines are the file's lines
    /// from `line` on, so an error inside it can name its exact line.
    pub literal_block: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always text, with its line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Key {
    pub name: String,
    pub line: usize,
}

/// A problem found while reading, at a line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Issue {
    pub line: usize,
    pub message: String,
}

impl Node {
    fn new(line: usize, kind: Kind) -> Self {
        Self {
            line,
            kind,
            literal_block: false,
        }
    }

    /// `a string`, `a list`, ... for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing (null)".to_owned(),
            Kind::Bool(b) => format!("{b}"),
            Kind::Number(n) => format!("{n}"),
            Kind::String(s) if s.chars().count() <= 40 => format!("\"{s}\""),
            Kind::String(_) => "a string".to_owned(),
            Kind::Seq(_) => "a list".to_owned(),
            Kind::Map(_) => "a mapping".to_owned(),
        }
    }

    /// The node as plain JSON.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            Kind::Null => Value::Null,
            Kind::Bool(b) => Value::Bool(*b),
            Kind::Number(n) => Value::Number(n.clone()),
            Kind::String(s) => Value::String(s.clone()),
            Kind::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Kind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }

    fn count(&self) -> usize {
        1 + match &self.kind {
            Kind::Seq(items) => items.iter().map(Node::count).sum(),
            Kind::Map(entries) => entries.iter().map(|(_, v)| 1 + v.count()).sum(),
            _ => 0,
        }
    }
}

/// Reads `text` (YAML or JSON). Returns the document's root (`None` for an
/// empty document or a syntax error) and the problems found. Duplicate keys
/// are problems that still give a tree (the first value is kept), so that
/// the rest of the file is checked too.
pub(super) fn parse(text: &str) -> (Option<Node>, Vec<Issue>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with(['{', '[']) {
        parse_json(text)
    } else {
        parse_yaml(text)
    }
}

// ---------------------------------------------------------------------------
// YAML

fn parse_yaml(text: &str) -> (Option<Node>, Vec<Issue>) {
    let mut builder = Builder::default();
    let result = Parser::new_from_str(text).load(&mut builder, true);
    if let Err(e) = result {
        if !builder.stopped {
            builder.issues.push(Issue {
                line: e.marker().line().max(1),
                message: format!(
                    "invalid YAML at column {}: {}",
                    e.marker().col() + 1,
                    e.info()
                ),
            });
        }
        return (None, builder.issues);
    }
    if builder.stopped {
        return (None, builder.issues);
    }
    (builder.root, builder.issues)
}

#[derive(Debug)]
struct Frame {
    line: usize,
    anchor: usize,
    kind: FrameKind,
}

#[derive(Debug)]
enum FrameKind {
    Seq(Vec<Node>),
    Map {
        entries: Vec<(Key, Node)>,
        /// The key whose value comes next.
        key: Option<Key>,
        /// Each key's line, to report duplicates.
        seen: HashMap<String, usize>,
    },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: usize,
    root: Option<Node>,
    issues: Vec<Issue>,
    aliased_nodes: usize,
    /// A problem that makes the rest meaningless was found: ignore the rest.
    stopped: bool,
}

impl Builder {
    fn stop(&mut self, line: usize, message: impl Into<String>) {
        self.issues.push(Issue {
            line,
            message: message.into(),
        });
        self.stopped = true;
    }

    fn issue(&mut self, line: usize, message: impl Into<String>) {
        self.issues.push(Issue {
            line,
            message: message.into(),
        });
    }

    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame {
                kind: FrameKind::Map { key: None, .. },
                ..
            })
        )
    }

    fn push(&mut self, line: usize, anchor: usize, kind: FrameKind) {
        if self.stack.len() >= MAX_NESTING {
            self.stop(
                line,
                format!("the document nests more than {MAX_NESTING} levels deep"),
            );
            return;
        }
        self.stack.push(Frame { line, anchor, kind });
    }

    /// Adds a finished node to its parent (or makes it the root).
    fn insert(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(parent) = self.stack.last_mut() else {
            self.root = Some(node);
            return;
        };
        match &mut parent.kind {
            FrameKind::Seq(items) => items.push(node),
            FrameKind::Map { entries, key, seen } => match key.take() {
                None => {
                    // A list or mapping used as a key: keep the structure
                    // going with a placeholder and say so.
                    *key = Some(Key {
                        name: String::new(),
                        line: node.line,
                    });
                    let line = node.line;
                    self.issue(line, "a mapping key must be text, not a list or a mapping");
                }
                Some(k) => {
                    if let Some(first) = seen.get(&k.name) {
                        let message =
                            format!("duplicate field \"{}\" (first at line {first})", k.name);
                        let line = k.line;
                        self.issue(line, message);
                    } else {
                        seen.insert(k.name.clone(), k.line);
                        entries.push((k, node));
                    }
                }
            },
        }
    }

    fn set_key(&mut self, name: String, line: usize) {
        if let Some(Frame {
            kind: FrameKind::Map { key, .. },
            ..
        }) = self.stack.last_mut()
        {
            *key = Some(Key { name, line });
        }
    }

    fn check_collection_tag(&mut self, tag: Option<&Tag>, expected: &str, line: usize) {
        if let Some(tag) = tag
            && !(tag.is_yaml_core_schema() && tag.suffix == expected)
        {
            self.issue(line, format!("unsupported YAML tag \"{tag}\""));
        }
    }

    fn scalar(&mut self, text: &str, style: ScalarStyle, tag: Option<&Tag>, line: usize) -> Node {
        let untagged = || match style {
            ScalarStyle::Plain => resolve_plain(text),
            _ => Ok(Kind::String(text.to_owned())),
        };
        let kind = match tag {
            None => untagged(),
            Some(tag) if tag.is_yaml_core_schema() && tag.suffix == "str" => {
                Ok(Kind::String(text.to_owned()))
            }
            Some(tag) => {
                let tag_problem = match tag.suffix.as_str() {
                    expected @ ("int" | "float" | "bool" | "null") if tag.is_yaml_core_schema() => {
                        match resolve_plain(text) {
                            Ok(kind) if tag_matches(expected, &kind) => None,
                            _ => Some(format!("\"{text}\" is not a valid !!{expected}")),
                        }
                    }
                    _ => Some(format!("unsupported YAML tag \"{tag}\"")),
                };
                // Reported, then read as if untagged, so that one problem
                // does not show up again as a wrong type further on.
                if let Some(problem) = tag_problem {
                    self.issue(line, problem);
                }
                untagged()
            }
        };
        let kind = kind.unwrap_or_else(|message| {
            self.issue(line, message);
            Kind::Null
        });
        Node {
            line,
            kind,
            literal_block: style == ScalarStyle::Literal,
        }
    }
}

fn tag_matches(tag: &str, kind: &Kind) -> bool {
    matches!(
        (tag, kind),
        ("int", Kind::Number(_))
            | ("float", Kind::Number(_))
            | ("bool", Kind::Bool(_))
            | ("null", Kind::Null)
    )
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        if self.stopped {
            return;
        }
        let line = span.start.line().max(1);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    self.stop(
                        line,
                        "a second YAML document starts here; a file holds one integration",
                    );
                }
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_collection_tag(tag.as_deref(), "seq", line);
                self.push(line, anchor, FrameKind::Seq(Vec::new()));
            }
            Event::MappingStart(anchor, tag) => {
                self.check_collection_tag(tag.as_deref(), "map", line);
                let kind = FrameKind::Map {
                    entries: Vec::new(),
                    key: None,
                    seen: HashMap::new(),
                };
                self.push(line, anchor, kind);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return;
                };
                let kind = match frame.kind {
                    FrameKind::Seq(items) => Kind::Seq(items),
                    FrameKind::Map { entries, .. } => Kind::Map(entries),
                };
                self.insert(Node::new(frame.line, kind), frame.anchor);
            }
            Event::Scalar(text, style, anchor, tag) => {
                if self.expecting_key() {
                    if tag.is_some() {
                        self.issue(line, "tags on mapping keys are not supported");
                    }
                    if anchor > 0 {
                        let node = Node::new(line, Kind::String(text.to_string()));
                        self.anchors.insert(anchor, node);
                    }
                    self.set_key(text.into_owned(), line);
                } else {
                    let node = self.scalar(&text, style, tag.as_deref(), line);
                    self.insert(node, anchor);
                }
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id) else {
                    self.stop(line, "an alias refers to an unknown anchor");
                    return;
                };
                self.aliased_nodes += node.count();
                if self.aliased_nodes > ALIAS_BUDGET {
                    self.stop(
                        line,
                        format!("aliases expand to more than {ALIAS_BUDGET} values; write the document out instead"),
                    );
                    return;
                }
                let node = node.clone();
                if self.expecting_key() {
                    match node.kind {
                        Kind::String(name) => self.set_key(name, line),
                        _ => self.issue(line, "a mapping key must be text"),
                    }
                } else {
                    self.insert(node, 0);
                }
            }
        }
    }
}

/// Resolves a plain (unquoted) scalar as YAML 1.2's core schema does.
fn resolve_plain(text: &str) -> Result<Kind, String> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Kind::Null),
        "true" | "True" | "TRUE" => return Ok(Kind::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Kind::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return Err(format!("{text} is not a number JSON can hold")),
        _ => {}
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let negative = text.starts_with('-');
    let radix = |digits: &str, radix: u32| {
        let n = u64::from_str_radix(digits, radix).ok()?;
        if negative {
            return None;
        }
        Some(Number::from(n))
    };
    let prefixed = text
        .strip_prefix("0x")
        .map(|digits| (digits, 16))
        .or_else(|| text.strip_prefix("0o").map(|digits| (digits, 8)));
    if let Some((digits, base)) = prefixed
        && !digits.starts_with(['-', '+'])
        && let Some(n) = radix(digits, base)
    {
        return Ok(Kind::Number(n));
    }
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        let text = text.strip_prefix('+').unwrap_or(text);
        if let Some(n) = parse_number(text, false) {
            return Ok(Kind::Number(n));
        }
    }
    if is_core_float(unsigned) {
        let text = text.strip_prefix('+').unwrap_or(text);
        if let Some(n) = parse_number(text, true) {
            return Ok(Kind::Number(n));
        }
    }
    Ok(Kind::String(text.to_owned()))
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, without the sign.
fn is_core_float(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let from = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - from
    };
    let int = digits(&mut i);
    let mut frac = 0;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        frac = digits(&mut i);
    }
    if int == 0 && frac == 0 {
        return false;
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == bytes.len()
}

// ---------------------------------------------------------------------------
// JSON

fn parse_json(text: &str) -> (Option<Node>, Vec<Issue>) {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let mut message = full.strip_suffix(&suffix).unwrap_or(&full);
        // serde_json reads `{"a": 1,}` as a missing key and `[1,]` as a missing
        // value; say what it is.
        let comma_before = before_error(text, e.line(), e.column()).ends_with(',');
        if comma_before && matches!(message, "key must be a string" | "expected value") {
            message = "trailing comma";
        }
        let issue = Issue {
            line: e.line().max(1),
            message: format!("invalid JSON at column {}: {message}", e.column()),
        };
        return (None, vec![issue]);
    }
    let mut reader = JsonReader {
        text,
        pos: 0,
        line: 1,
        issues: Vec::new(),
    };
    reader.skip_whitespace();
    let root = reader.value(0);
    if root.is_none() && reader.issues.is_empty() {
        // serde_json accepted the text, so this is our reader's fault.
        reader.issues.push(Issue {
            line: reader.line,
            message: "could not read this JSON (a bug in Isoflow: please report it)".to_owned(),
        });
    }
    (root, reader.issues)
}

/// The text before a serde_json error position (1-based line and column),
/// blanks trimmed.
fn before_error(text: &str, line: usize, column: usize) -> &str {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let offset = text[line_start..]
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(text.len(), |(i, _)| line_start + i);
    text[..offset].trim_end()
}

/// Reads JSON that serde_json has already accepted, noting each value's line.
struct JsonReader<'t> {
    text: &'t str,
    pos: usize,
    line: usize,
    issues: Vec<Issue>,
}

impl JsonReader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => return,
            }
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek() == Some(b)).then(|| self.pos += 1)
    }

    fn value(&mut self, depth: usize) -> Option<Node> {
        self.skip_whitespace();
        let line = self.line;
        if depth >= MAX_NESTING {
            self.issues.push(Issue {
                line,
                message: format!("the document nests more than {MAX_NESTING} levels deep"),
            });
            return None;
        }
        let kind = match self.peek()? {
            b'{' => {
                self.pos += 1;
                let mut entries: Vec<(Key, Node)> = Vec::new();
                let mut seen: HashMap<String, usize> = HashMap::new();
                if self.eat(b'}').is_none() {
                    loop {
                        self.skip_whitespace();
                        let key_line = self.line;
                        let name = self.string()?;
                        self.eat(b':')?;
                        let value = self.value(depth + 1)?;
                        if let Some(first) = seen.get(&name) {
                            self.issues.push(Issue {
                                line: key_line,
                                message: format!(
                                    "duplicate field \"{name}\" (first at line {first})"
                                ),
                            });
                        } else {
                            seen.insert(name.clone(), key_line);
                            entries.push((
                                Key {
                                    name,
                                    line: key_line,
                                },
                                value,
                            ));
                        }
                        if self.eat(b',').is_none() {
                            self.eat(b'}')?;
                            break;
                        }
                    }
                }
                Kind::Map(entries)
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']').is_none() {
                    loop {
                        items.push(self.value(depth + 1)?);
                        if self.eat(b',').is_none() {
                            self.eat(b']')?;
                            break;
                        }
                    }
                }
                Kind::Seq(items)
            }
            b'"' => Kind::String(self.string()?),
            b't' => self.word("true", Kind::Bool(true))?,
            b'f' => self.word("false", Kind::Bool(false))?,
            b'n' => self.word("null", Kind::Null)?,
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    self.pos += 1;
                }
                let text = &self.text[start..self.pos];
                let float = text.contains(['.', 'e', 'E']);
                Kind::Number(parse_number(text, float)?)
            }
        };
        Some(Node::new(line, kind))
    }

    fn word(&mut self, word: &str, kind: Kind) -> Option<Kind> {
        self.text[self.pos..].starts_with(word).then(|| {
            self.pos += word.len();
            kind
        })
    }

    /// A string token, unescaped by serde_json itself.
    fn string(&mut self) -> Option<String> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    break;
                }
                _ => self.pos += 1,
            }
        }
        serde_json::from_str(self.text.get(start..self.pos)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn value(text: &str) -> Value {
        let (root, issues) = parse(text);
        assert_eq!(issues, [], "{text}");
        root.expect("a document").to_value()
    }

    fn issues(text: &str) -> Vec<(usize, String)> {
        parse(text)
            .1
            .into_iter()
            .map(|i| (i.line, i.message))
            .collect()
    }

    #[test]
    fn yaml_scalars_follow_the_core_schema() {
        let v = value(
            "a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf: '1'\ng: 0x10\nh: 1e3\ni: 18446744073709551615\nj: 10s\nk: !!str 5\nl: \"x\"\nm:\n",
        );
        assert_eq!(
            v,
            json!({"a": 1, "b": -2, "c": 1.5, "d": true, "e": null, "f": "1", "g": 16, "h": 1000.0,
                   "i": 18446744073709551615u64, "j": "10s", "k": "5", "l": "x", "m": null})
        );
    }

    #[test]
    fn lines_are_recorded() {
        let (root, _) = parse("a: 1\nsteps:\n  - id: x\n    url: |\n      line\n");
        let root = root.expect("a document");
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        assert_eq!(entries[1].0.line, 2);
        let Kind::Seq(steps) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(steps[0].line, 3);
        let Kind::Map(step) = &steps[0].kind else {
            panic!()
        };
        assert_eq!(
            (step[1].0.line, step[1].1.line, step[1].1.literal_block),
            (4, 5, true)
        );
    }

    #[test]
    fn json_keeps_lines_order_and_escapes() {
        let text =
            "{\n\t\"b\": \"\\ud83d\\ude00\",\n  \"a\": [1, 2.5, -3, true, null],\n  \"c\": {}\n}";
        assert_eq!(
            value(text),
            json!({"b": "😀", "a": [1, 2.5, -3, true, null], "c": {}})
        );
        let (root, _) = parse(text);
        let Kind::Map(entries) = root.expect("a document").kind else {
            panic!()
        };
        let lines: Vec<_> = entries
            .iter()
            .map(|(k, v)| (k.name.as_str(), k.line, v.line))
            .collect();
        assert_eq!(lines, [("b", 2, 2), ("a", 3, 3), ("c", 4, 4)]);
    }

    #[test]
    fn duplicate_keys_are_reported_and_the_first_kept() {
        let (root, found) = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            root.expect("still a tree").to_value(),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(found[0].message, "duplicate field \"a\" (first at line 1)");
        assert_eq!(found[0].line, 3);
        assert_eq!(
            issues("{\"a\": 1,\n\"a\": 2}"),
            [(2, "duplicate field \"a\" (first at line 1)".to_owned())]
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        assert_eq!(
            issues("a: 1\nb: [1, 2\n"),
            [(
                3,
                "invalid YAML at column 1: while parsing a flow sequence, expected ',' or ']'"
                    .to_owned()
            )]
        );
        assert_eq!(
            issues("{\"a\": 1,\n}"),
            [(2, "invalid JSON at column 1: trailing comma".to_owned())]
        );
        assert_eq!(
            issues("[1,\n 2,\n]"),
            [(3, "invalid JSON at column 1: trailing comma".to_owned())]
        );
        assert_eq!(
            issues("{\"a\" 1}"),
            [(1, "invalid JSON at column 6: expected `:`".to_owned())]
        );
        assert_eq!(
            issues("a: 1\n---\nb: 2\n"),
            [(
                2,
                "a second YAML document starts here; a file holds one integration".to_owned()
            )]
        );
    }

    #[test]
    fn aliases_expand_within_a_budget() {
        assert_eq!(
            value("a: &x [1, 2]\nb: *x\n"),
            json!({"a": [1, 2], "b": [1, 2]})
        );
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        let found = issues(&bomb);
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .1
                .starts_with("aliases expand to more than 100000 values"),
            "{found:?}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("a: {}{}", "[".repeat(200), "]".repeat(200));
        let found = issues(&deep);
        assert_eq!(found.len(), 1, "{found:?}");
        let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
        assert!(parse(&deep).0.is_some());
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(130), "]".repeat(130));
        assert_eq!(issues(&deep).len(), 1);
    }

    #[test]
    fn tags() {
        assert_eq!(
            issues("a: !foo 1\n"),
            [(1, "unsupported YAML tag \"!foo\"".to_owned())]
        );
        assert_eq!(
            issues("a: !!int x\n"),
            [(1, "\"x\" is not a valid !!int".to_owned())]
        );
        assert_eq!(
            issues("a: .inf\n"),
            [(1, ".inf is not a number JSON can hold".to_owned())]
        );
    }

    #[test]
    fn empty_documents_have_no_root() {
        for text in ["", "   \n", "# just a comment\n", "\u{feff}"] {
            let (root, found) = parse(text);
            assert_eq!((root, found), (None, vec![]), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_yaml_like_text(text in r#"[a-z:\-\[\]{}"'&*!|>#, \n]{0,60}"#) {
            let _ = parse(&text);
        }

        #[test]
        fn json_reads_like_serde_json(v in arb_json()) {
            let text = serde_json::to_string_pretty(&v).expect("serialises");
            let (root, found) = parse(&text);
            prop_assert!(found.is_empty());
            prop_assert_eq!(root.map(|n| n.to_value()), Some(v));
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            any::<String>().prop_map(Value::String),
        ];
        let object = leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[a-z]{1,5}", object, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }
}
