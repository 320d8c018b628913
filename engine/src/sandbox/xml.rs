//! `ctx.xml.parse` and `ctx.xml.stringify`: XML text to and from plain JSON
//! values, run host-side in Rust (parsing with quick-xml).
//!
//! # The mapping
//!
//! [`parse`] returns an object with exactly one key, the root element's name,
//! whose value is the root element's value. An element's value is:
//!
//! - a **string** when the element has no attributes and no child elements:
//!   its text, kept exactly as written (not trimmed); `<a/>` and `<a></a>`
//!   both give `""`;
//! - otherwise an **object**: each attribute as `"@name": "value"`; each child
//!   element under its name, where a name seen more than once becomes an array
//!   in document order; and the element's text, if it has any that is not
//!   whitespace, under `"#text"`. Text is cut into runs by child elements;
//!   runs that are only whitespace (the indentation between elements) are
//!   dropped and the others are joined as written.
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <order id="A-17" xmlns:x="urn:x">
//!   <!-- comments are dropped -->
//!   <customer>Ada &amp; Co</customer>
//!   <line sku="P1" qty="2"/>
//!   <line sku="P2" qty="1">gift wrap</line>
//!   <note><![CDATA[fragile <glass>]]></note>
//!   <x:ref>  spaced  </x:ref>
//!   <empty/>
//! </order>
//! ```
//!
//! parses to
//!
//! ```json
//! { "order": {
//!     "@id": "A-17", "@xmlns:x": "urn:x",
//!     "customer": "Ada & Co",
//!     "line": [ { "@sku": "P1", "@qty": "2" },
//!               { "@sku": "P2", "@qty": "1", "#text": "gift wrap" } ],
//!     "note": "fragile <glass>",
//!     "x:ref": "  spaced  ",
//!     "empty": "" } }
//! ```
//!
//! Further rules:
//!
//! - Every value is a string: `"2"` stays `"2"`, nothing guesses numbers,
//!   booleans or dates.
//! - `{ alwaysArray: true }` makes every child element an array (even one
//!   seen once); `{ alwaysArray: ["line"] }` does so for the names listed. The
//!   root element itself is never an array.
//! - CDATA is text. The five predefined entities (`&lt;` `&gt;` `&amp;`
//!   `&apos;` `&quot;`) and character references (`&#65;` `&#x41;`) are
//!   decoded. Entities declared in a DTD are not expanded: any other entity is
//!   an error, so entity bombs cannot blow up memory.
//! - Comments, processing instructions, the XML declaration and the DOCTYPE
//!   are dropped. A declared encoding is ignored: the text is already a
//!   JavaScript string.
//! - Namespace prefixes stay as written: `<soap:Envelope>` is the key
//!   `"soap:Envelope"` and its `xmlns:soap` attribute is `"@xmlns:soap"`.
//! - Line ends are normalised as XML requires (`\r\n` reads as `\n`), and in
//!   attribute values tabs and line ends read as spaces unless written as
//!   character references.
//!
//! [`parse`] fails, with a line and column, on text that is not well-formed
//! XML: a syntax error, a mismatched or unclosed tag, more than one root
//! element, text outside the root element, an invalid name, a character XML
//! does not allow, an undefined entity, or elements nested deeper than
//! [`MAX_DEPTH`] levels. It never recurses, so no input can exhaust the stack.
//!
//! [`stringify()`] is the inverse. Its value must be an object with exactly one
//! key, the root element's name. Below it:
//!
//! - a string is text (escaped), a number or boolean is its JSON text, and
//!   `null` is an empty element: `{ a: "x" }` is `<a>x</a>`, `{ a: 1 }` is
//!   `<a>1</a>`, `{ a: "" }` is `<a></a>` and `{ a: null }` is `<a/>`;
//! - an array is one sibling element per item, so `{ r: { b: ["1", "2"] } }`
//!   is `<r><b>1</b><b>2</b></r>`; an empty array writes nothing; the root
//!   cannot be an array, nor can an array hold an array;
//! - an object is an element: its `"@name"` keys are attributes (a string,
//!   number or boolean; `null` leaves the attribute out), its `"#text"` key
//!   is text, and every other key is a child element, written in the
//!   object's key order;
//! - names must be valid XML names (no spaces, not starting with a digit,
//!   not empty); the error names the path, as in `value.order.line[2]`;
//! - `{ indent: 2 }` pretty-prints (at most 10 spaces, as `JSON.stringify`
//!   allows), except inside an element with both `"#text"` and child
//!   elements, where added whitespace would change the text;
//!   `{ declaration: true }` starts the output with
//!   `<?xml version="1.0" encoding="UTF-8"?>` and a line break.
//!
//! # Invariants
//!
//! - For every value `v` that [`parse`] returns (with the default options),
//!   `parse(stringify(v))` gives back `v`, pretty-printed or not.
//! - Every error is one lowercase sentence that starts with the function
//!   (`ctx.xml.parse: ...`) and says where; no input panics.
//! - Key order is JavaScript's only while serde_json keeps insertion order
//!   (its `preserve_order` feature); without it, maps are sorted by key and
//!   so is the output of [`stringify()`].
//!
//! # Where to look next
//!
//! `host.rs` calls [`parse`] and [`stringify()`] with the options' JSON text;
//! `prelude.js` exposes them to JavaScript as `ctx.xml`.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use quick_xml::XmlVersion;
use quick_xml::errors::{IllFormedError, SyntaxError};
use quick_xml::escape::{EscapeError, resolve_predefined_entity};
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// How deeply elements may nest, in both directions. Deep enough for any real
/// document, shallow enough that a hostile one costs little.
/// Deepest element nesting either direction accepts. The host hands values
/// to [`stringify`] as JSON text, and serde_json reads at most 128 levels, of
/// which an element can take two (an object inside an array), so 60 levels
/// keep parse and stringify symmetric with room to spare.
pub const MAX_DEPTH: usize = 60;

/// `JSON.stringify` caps its indent at 10 spaces; so do we, which also keeps
/// a huge `indent` from turning a small value into gigabytes of spaces.
const MAX_INDENT: usize = 10;

/// Options of `ctx.xml.parse(text, options)`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ParseOptions {
    /// Which child elements become arrays even when seen only once.
    pub always_array: AlwaysArray,
}

/// Which child elements [`parse`] turns into arrays. JSON `false` (or `null`)
/// is [`AlwaysArray::Repeated`], `true` is [`AlwaysArray::All`] and an array
/// of element names is [`AlwaysArray::Names`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AlwaysArray {
    /// Only a name seen more than once in the same parent becomes an array.
    #[default]
    Repeated,
    /// Every child element becomes an array.
    All,
    /// Child elements with these names (as written, prefix included) always
    /// become arrays; others only when repeated.
    Names(BTreeSet<String>),
}

impl AlwaysArray {
    fn wants_array(&self, name: &str) -> bool {
        match self {
            Self::Repeated => false,
            Self::All => true,
            Self::Names(names) => names.contains(name),
        }
    }
}

impl<'de> Deserialize<'de> for AlwaysArray {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AlwaysArrayVisitor;

        impl<'de> Visitor<'de> for AlwaysArrayVisitor {
            type Value = AlwaysArray;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("false, true or an array of element names")
            }

            fn visit_bool<E: de::Error>(self, all: bool) -> Result<AlwaysArray, E> {
                Ok(if all {
                    AlwaysArray::All
                } else {
                    AlwaysArray::Repeated
                })
            }

            fn visit_unit<E: de::Error>(self) -> Result<AlwaysArray, E> {
                Ok(AlwaysArray::Repeated)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AlwaysArray, A::Error> {
                let mut names = BTreeSet::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.insert(name);
                }
                Ok(AlwaysArray::Names(names))
            }
        }

        deserializer.deserialize_any(AlwaysArrayVisitor)
    }
}

/// Options of `ctx.xml.stringify(value, options)`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StringifyOptions {
    /// Start with `<?xml version="1.0" encoding="UTF-8"?>` and a line break.
    pub declaration: bool,
    /// Pretty-print with this many spaces per level (at most 10); compact
    /// when `None`.
    pub indent: Option<usize>,
}

/// Why `ctx.xml.parse` or `ctx.xml.stringify` failed: the message of the
/// exception JavaScript sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The text is not well-formed XML, or goes beyond what [`parse`] accepts.
    #[error("ctx.xml.parse: {message} at line {line}, column {column}")]
    Parse {
        message: String,
        /// 1-based.
        line: usize,
        /// 1-based, in characters.
        column: usize,
    },
    /// The text holds no element at all.
    #[error(
        "ctx.xml.parse: no root element (the text is empty or holds only whitespace, comments or declarations)"
    )]
    NoRootElement,
    /// The value has no XML form; the message names the path, as in
    /// `value.order.line[2]`.
    #[error("ctx.xml.stringify: {message}")]
    Stringify { message: String },
}

// ---------------------------------------------------------------------------
// parse
// ---------------------------------------------------------------------------

/// Parses XML text into its JSON form (see the module documentation).
pub fn parse(text: &str, options: &ParseOptions) -> Result<Value, XmlError> {
    // quick-xml skips a byte order mark and counts offsets after it; so do
    // we, which also keeps the mark out of column numbers.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // One pass up front rather than checks scattered over events: it also
    // covers the inside of tags, where quick-xml reads control characters as
    // separators, and it keeps `stringify` able to write every parsed string.
    if let Some((offset, c)) = find_forbidden_char(text) {
        return Err(parse_error(
            text,
            offset,
            format!("character {} is not allowed in xml", code_point(c)),
        ));
    }

    let mut reader = Reader::from_str(text);
    let mut parser = Parser {
        text,
        options,
        version: XmlVersion::Implicit1_0,
        stack: Vec::new(),
        root: None,
    };
    let mut first = true;
    loop {
        let start = offset_of(reader.buffer_position());
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(error) => {
                let offset = offset_of(reader.error_position());
                return Err(parse_error(text, offset, describe(&error)));
            }
        };
        match event {
            Event::Start(tag) => {
                let frame = parser.open(&tag, start)?;
                parser.stack.push(frame);
            }
            Event::Empty(tag) => {
                let frame = parser.open(&tag, start)?;
                parser.close(frame);
            }
            Event::End(_) => {
                // quick-xml already matched the end tag against its start.
                let Some(frame) = parser.stack.pop() else {
                    return Err(parse_error(
                        text,
                        start,
                        "closing tag without an opening tag".to_owned(),
                    ));
                };
                parser.close(frame);
            }
            Event::Text(content) => {
                let content = content.xml_content(parser.version);
                parser.text(&content, start)?;
            }
            Event::CData(content) => {
                let content = content.xml_content(parser.version);
                parser.text(&content, start)?;
            }
            Event::GeneralRef(reference) => {
                let decoded = decode_reference(&reference)
                    .map_err(|message| parse_error(text, start, message))?;
                let mut buf = [0; 4];
                let decoded = match decoded {
                    Decoded::Char(c) => &*c.encode_utf8(&mut buf),
                    Decoded::Str(s) => s,
                };
                parser.text(decoded, start)?;
            }
            Event::Decl(decl) => {
                if !first {
                    return Err(parse_error(
                        text,
                        start,
                        "the xml declaration must come first".to_owned(),
                    ));
                }
                parser.version = decl.xml_version().map_err(|error| {
                    parse_error(
                        text,
                        start,
                        format!("invalid xml declaration: {}", describe(&error)),
                    )
                })?;
            }
            Event::DocType(_) => {
                if !parser.stack.is_empty() || parser.root.is_some() {
                    return Err(parse_error(
                        text,
                        start,
                        "a doctype must come before the root element".to_owned(),
                    ));
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
        first = false;
    }

    if let Some(open) = parser.stack.last() {
        return Err(parse_error(
            text,
            open.offset,
            format!("unclosed tag <{}>", open.name),
        ));
    }
    let (name, value) = parser.root.ok_or(XmlError::NoRootElement)?;
    let mut document = Map::new();
    document.insert(name, value);
    Ok(Value::Object(document))
}

/// State of one [`parse`] call. Elements under construction live on an
/// explicit stack, so nesting depth costs heap, never call stack.
struct Parser<'a> {
    text: &'a str,
    options: &'a ParseOptions,
    version: XmlVersion,
    stack: Vec<Frame>,
    root: Option<(String, Value)>,
}

/// An open element.
struct Frame {
    name: String,
    /// Byte offset of its `<`, for "unclosed tag" errors.
    offset: usize,
    /// Attributes (`@name`) and child elements.
    map: Map<String, Value>,
    /// Has attributes or child elements, so its value is an object.
    is_object: bool,
    /// Text runs kept so far (only once it is an object).
    text: String,
    /// Text since the last child tag (or the start tag).
    run: String,
}

impl Frame {
    /// Ends the current text run at a child tag or the end tag: an object
    /// keeps it unless it is whitespace between elements.
    fn end_run(&mut self) {
        if !is_whitespace(&self.run) {
            self.text.push_str(&self.run);
        }
        self.run.clear();
    }

    fn into_entry(mut self) -> (String, Value) {
        if !self.is_object {
            // No child tag ever ended a run, so `run` is all of its text.
            return (self.name, Value::String(self.run));
        }
        self.end_run();
        if !self.text.is_empty() {
            self.map
                .insert("#text".to_owned(), Value::String(self.text));
        }
        (self.name, Value::Object(self.map))
    }
}

impl Parser<'_> {
    /// Checks a start tag (or empty-element tag) at `offset` and returns its
    /// frame, attributes decoded.
    fn open(&mut self, tag: &BytesStart<'_>, offset: usize) -> Result<Frame, XmlError> {
        let name = tag.name();
        let name: &str = name.as_ref();
        if !is_name(name) {
            return Err(self.error(offset, format!("invalid element name \"{name}\"")));
        }
        if self.stack.is_empty() && self.root.is_some() {
            return Err(self.error(
                offset,
                format!("more than one root element: <{name}> follows the root element"),
            ));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                offset,
                format!("elements nested deeper than {MAX_DEPTH} levels"),
            ));
        }

        let mut map = Map::new();
        for attribute in tag.attributes() {
            let attribute = attribute.map_err(|error| {
                // Attribute errors count from just after the tag's `<`.
                let (at, message) = describe_attr(&error);
                self.error(offset + 1 + at, format!("{message} in <{name}>"))
            })?;
            let key: &str = attribute.key.as_ref();
            if !is_name(key) {
                return Err(self.error(
                    offset,
                    format!("invalid attribute name \"{key}\" in <{name}>"),
                ));
            }
            let value = attribute.normalized_value(self.version).map_err(|error| {
                let message = match &error {
                    quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, entity)) => {
                        undefined_entity(entity)
                    }
                    quick_xml::Error::Escape(EscapeError::InvalidCharRef(_)) => {
                        "invalid character reference".to_owned()
                    }
                    other => describe(other),
                };
                self.error(
                    offset,
                    format!("{message} in attribute \"{key}\" of <{name}>"),
                )
            })?;
            // Raw text was checked up front; a character reference can still
            // name a character XML forbids.
            if let Some(c) = attribute
                .value
                .contains('&')
                .then(|| value.chars().find(|&c| !is_xml_char(c)))
                .flatten()
            {
                return Err(self.error(
                    offset,
                    format!(
                        "character {} is not allowed in xml (in attribute \"{key}\" of <{name}>)",
                        code_point(c)
                    ),
                ));
            }
            let mut at_key = String::with_capacity(key.len() + 1);
            at_key.push('@');
            at_key.push_str(key);
            map.insert(at_key, Value::String(value.into_owned()));
        }

        if let Some(parent) = self.stack.last_mut() {
            parent.end_run();
            parent.is_object = true;
        }
        Ok(Frame {
            name: name.to_owned(),
            offset,
            is_object: !map.is_empty(),
            map,
            text: String::new(),
            run: String::new(),
        })
    }

    /// Finishes an element and hangs it on its parent (or makes it the root).
    fn close(&mut self, frame: Frame) {
        let (name, value) = frame.into_entry();
        let Some(parent) = self.stack.last_mut() else {
            self.root = Some((name, value));
            return;
        };
        let always_array = self.options.always_array.wants_array(&name);
        match parent.map.entry(name) {
            Entry::Vacant(entry) => {
                entry.insert(if always_array {
                    Value::Array(vec![value])
                } else {
                    value
                });
            }
            // An element's value is never an array itself, so an array here
            // is one this function made for the name.
            Entry::Occupied(mut entry) => match entry.get_mut() {
                Value::Array(items) => items.push(value),
                first => {
                    let first = first.take();
                    entry.insert(Value::Array(vec![first, value]));
                }
            },
        }
    }

    /// Adds decoded text found at `offset`.
    fn text(&mut self, content: &str, offset: usize) -> Result<(), XmlError> {
        match self.stack.last_mut() {
            Some(frame) => {
                frame.run.push_str(content);
                Ok(())
            }
            None if is_whitespace(content) => Ok(()),
            None => {
                // Point past leading whitespace, counted in the raw text
                // (decoding may have shortened it).
                let raw = self.text.get(offset..).unwrap_or_default();
                let skip = raw.len() - raw.trim_start_matches(is_xml_whitespace).len();
                Err(self.error(offset + skip, "text outside the root element".to_owned()))
            }
        }
    }

    fn error(&self, offset: usize, message: String) -> XmlError {
        parse_error(self.text, offset, message)
    }
}

enum Decoded {
    Char(char),
    Str(&'static str),
}

/// Decodes `&...;` in text: character references and the five predefined
/// entities, nothing else (see the module documentation on DTD entities).
fn decode_reference(reference: &quick_xml::events::BytesRef<'_>) -> Result<Decoded, String> {
    let raw: &str = reference;
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => Ok(Decoded::Char(c)),
            Ok(Some(c)) => Err(format!(
                "character reference &{raw}; names {}, which is not allowed in xml",
                code_point(c)
            )),
            Ok(None) | Err(_) => Err(format!("invalid character reference &{raw};")),
        };
    }
    resolve_predefined_entity(raw)
        .map(Decoded::Str)
        .ok_or_else(|| undefined_entity(raw))
}

fn undefined_entity(name: &str) -> String {
    format!(
        "undefined entity &{name}; (only &lt; &gt; &amp; &apos; &quot; and character references are decoded)"
    )
}

fn parse_error(text: &str, offset: usize, message: String) -> XmlError {
    let (line, column) = line_column(text, offset);
    XmlError::Parse {
        message,
        line,
        column,
    }
}

/// quick-xml reports offsets as `u64`; ours index a `&str`, so they fit.
fn offset_of(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let column = 1 + before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count();
    (line, column)
}

/// A quick-xml error as a lowercase clause, without position.
fn describe(error: &quick_xml::Error) -> String {
    match error {
        quick_xml::Error::Syntax(error) => match error {
            SyntaxError::InvalidBangMarkup => "unknown markup after <!",
            SyntaxError::UnclosedPI => "processing instruction is never closed (no ?>)",
            SyntaxError::UnclosedXmlDecl => "xml declaration is never closed (no ?>)",
            SyntaxError::UnclosedComment => "comment is never closed (no -->)",
            SyntaxError::UnclosedDoctype => "doctype is never closed (no >)",
            SyntaxError::UnclosedCData => "cdata section is never closed (no ]]>)",
            SyntaxError::UnclosedTag => "tag is never closed (no >)",
            SyntaxError::UnclosedSingleQuotedAttributeValue => {
                "attribute value is never closed (no ')"
            }
            SyntaxError::UnclosedDoubleQuotedAttributeValue => {
                "attribute value is never closed (no \")"
            }
        }
        .to_owned(),
        quick_xml::Error::IllFormed(error) => match error {
            IllFormedError::MissingDeclVersion(_) => {
                "the xml declaration must start with a version".to_owned()
            }
            IllFormedError::UnknownVersion => {
                "unknown xml version (expected 1.0 or 1.1)".to_owned()
            }
            IllFormedError::MissingDoctypeName => "doctype without a name".to_owned(),
            IllFormedError::MissingEndTag(name) => format!("unclosed tag <{name}>"),
            IllFormedError::UnmatchedEndTag(name) => {
                format!("closing tag </{name}> without an opening tag")
            }
            IllFormedError::MismatchedEndTag { expected, found } => {
                format!("mismatched closing tag </{found}>, expected </{expected}>")
            }
            IllFormedError::DoubleHyphenInComment => "-- inside a comment".to_owned(),
            IllFormedError::UnclosedReference => {
                "& starts a reference that is never closed (no ;), write &amp; for a literal &"
                    .to_owned()
            }
        },
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
            undefined_entity(name)
        }
        quick_xml::Error::Escape(EscapeError::InvalidCharRef(_)) => {
            "invalid character reference".to_owned()
        }
        quick_xml::Error::InvalidAttr(error) => describe_attr(error).1.to_owned(),
        // I/O, encoding and namespace errors cannot come from a `&str` read
        // without namespace resolution; quick-xml's text will do.
        other => other.to_string(),
    }
}

/// An attribute error: its offset from just after the tag's `<`, and a clause.
fn describe_attr(error: &AttrError) -> (usize, &'static str) {
    match *error {
        AttrError::ExpectedEq(at) => (at, "attribute name without = and a value"),
        AttrError::ExpectedValue(at) => (at, "= without an attribute value"),
        AttrError::UnquotedValue(at) => (at, "attribute value without quotes"),
        AttrError::ExpectedQuote(at, _) => (at, "attribute value without its closing quote"),
        AttrError::Duplicated(at, _) => (at, "duplicate attribute"),
    }
}

// ---------------------------------------------------------------------------
// stringify
// ---------------------------------------------------------------------------

/// Writes a JSON value in the shape [`parse`] returns as XML text (see the
/// module documentation).
pub fn stringify(value: &Value, options: &StringifyOptions) -> Result<String, XmlError> {
    let (name, root) = match value {
        Value::Object(map) if map.len() == 1 => {
            map.iter().next().expect("the map has exactly one entry")
        }
        Value::Object(map) => {
            return Err(stringify_error(format!(
                "value must be an object with exactly one key (the root element name), not an object with {} keys",
                map.len()
            )));
        }
        other => {
            return Err(stringify_error(format!(
                "value must be an object with exactly one key (the root element name), not {}",
                kind(other)
            )));
        }
    };
    let mut writer = XmlWriter {
        out: String::new(),
        indent: options.indent.map(|n| n.min(MAX_INDENT)),
        path: Vec::new(),
    };
    if options.declaration {
        writer
            .out
            .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    }
    if !is_name(name) {
        return Err(writer.key_error(name, "element"));
    }
    writer.path.push(Segment::Key(name));
    if root.is_array() {
        return Err(writer.error("is an array, but the root must be a single element".to_owned()));
    }
    let pretty = writer.indent.is_some();
    writer.element(name, root, 1, pretty)?;
    Ok(writer.out)
}

/// One step of a path in a stringify error message.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

struct XmlWriter<'a> {
    out: String,
    /// Spaces per level, already capped.
    indent: Option<usize>,
    /// Where the writer is, for error messages; `element` pushes and pops.
    path: Vec<Segment<'a>>,
}

impl<'a> XmlWriter<'a> {
    /// Writes one element. Recursion is bounded by [`MAX_DEPTH`] (`depth`
    /// counts the root as 1), which keeps the stack small.
    fn element(
        &mut self,
        name: &'a str,
        value: &'a Value,
        depth: usize,
        pretty: bool,
    ) -> Result<(), XmlError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nests elements deeper than {MAX_DEPTH} levels")));
        }
        self.out.push('<');
        self.out.push_str(name);
        let map = match value {
            Value::Null => {
                self.out.push_str("/>");
                return Ok(());
            }
            Value::Bool(_) | Value::Number(_) | Value::String(_) => {
                self.out.push('>');
                self.scalar_text(value)?;
                self.close_tag(name);
                return Ok(());
            }
            Value::Array(_) => {
                return Err(
                    self.error("is an array inside an array, which xml cannot express".to_owned())
                );
            }
            Value::Object(map) => map,
        };

        let mut has_text = false;
        let mut has_children = false;
        for (key, item) in map {
            if let Some(attribute) = key.strip_prefix('@') {
                self.attribute(key, attribute, item)?;
            } else if key == "#text" {
                has_text |= match item {
                    Value::String(s) => !s.is_empty(),
                    Value::Null => false,
                    _ => true,
                };
            } else {
                has_children |= match item {
                    Value::Array(items) => !items.is_empty(),
                    _ => true,
                };
            }
        }
        if !has_text && !has_children {
            self.out.push_str("/>");
            return Ok(());
        }
        self.out.push('>');

        // Whitespace added next to text would change the text on the way back.
        let pretty_children = pretty && !has_text;
        for (key, item) in map {
            if key.starts_with('@') {
                continue;
            }
            self.path.push(Segment::Key(key));
            if key == "#text" {
                self.scalar_text(item)?;
            } else if !is_name(key) {
                self.path.pop();
                return Err(self.key_error(key, "element"));
            } else if let Value::Array(items) = item {
                for (index, item) in items.iter().enumerate() {
                    self.path.push(Segment::Index(index));
                    self.child(key, item, depth, pretty_children)?;
                    self.path.pop();
                }
            } else {
                self.child(key, item, depth, pretty_children)?;
            }
            self.path.pop();
        }
        if pretty_children {
            self.newline(depth - 1);
        }
        self.close_tag(name);
        Ok(())
    }

    fn child(
        &mut self,
        name: &'a str,
        value: &'a Value,
        parent_depth: usize,
        pretty: bool,
    ) -> Result<(), XmlError> {
        if pretty {
            self.newline(parent_depth);
        }
        self.element(name, value, parent_depth + 1, pretty)
    }

    fn attribute(&mut self, key: &'a str, name: &str, value: &Value) -> Result<(), XmlError> {
        self.path.push(Segment::Key(key));
        if !is_name(name) {
            self.path.pop();
            return Err(self.key_error(key, "attribute"));
        }
        let text = match value {
            Value::Null => {
                self.path.pop();
                return Ok(());
            }
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Bool(_) | Value::Number(_) => Cow::Owned(value.to_string()),
            Value::Array(_) | Value::Object(_) => {
                return Err(self.error(format!(
                    "must be a string, number, boolean or null, not {}",
                    kind(value)
                )));
            }
        };
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        if let Err(c) = escape_into(&mut self.out, &text, true) {
            return Err(self.error(format!(
                "contains {}, which xml cannot represent",
                code_point(c)
            )));
        }
        self.out.push('"');
        self.path.pop();
        Ok(())
    }

    /// Writes a string, number or boolean as element text; `null` writes nothing.
    fn scalar_text(&mut self, value: &Value) -> Result<(), XmlError> {
        match value {
            Value::Null => Ok(()),
            Value::String(s) => escape_into(&mut self.out, s, false).map_err(|c| {
                self.error(format!(
                    "contains {}, which xml cannot represent",
                    code_point(c)
                ))
            }),
            Value::Bool(_) | Value::Number(_) => {
                self.out.push_str(&value.to_string());
                Ok(())
            }
            Value::Array(_) | Value::Object(_) => Err(self.error(format!(
                "must be a string, number, boolean or null, not {}",
                kind(value)
            ))),
        }
    }

    fn close_tag(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    fn newline(&mut self, depth: usize) {
        let indent = self.indent.unwrap_or(0);
        self.out.push('\n');
        self.out.extend(std::iter::repeat_n(' ', depth * indent));
    }

    /// An error about the value at the current path; `message` follows it.
    fn error(&self, message: String) -> XmlError {
        stringify_error(format!("{} {message}", render_path(&self.path)))
    }

    /// An error about a key of the object at the current path.
    fn key_error(&self, key: &str, what: &str) -> XmlError {
        stringify_error(format!(
            "key \"{key}\" at {} is not a valid {what} name",
            render_path(&self.path)
        ))
    }
}

fn stringify_error(message: String) -> XmlError {
    XmlError::Stringify { message }
}

/// A JavaScript-style path from the argument, as in `value.order["@id"]`.
fn render_path(path: &[Segment<'_>]) -> String {
    // A path 500 levels deep helps nobody: keep its two ends.
    const KEEP: usize = 8;
    let mut out = String::from("value");
    for (i, segment) in path.iter().enumerate() {
        if path.len() > 2 * KEEP && i == KEEP {
            out.push('…');
        }
        if path.len() > 2 * KEEP && (KEEP..path.len() - KEEP).contains(&i) {
            continue;
        }
        match *segment {
            Segment::Key(key) if is_identifier(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Key(key) => {
                out.push('[');
                out.push_str(&Value::String(key.to_owned()).to_string());
                out.push(']');
            }
            Segment::Index(index) => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
    out
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Appends `text` escaped for element text or, with `attribute`, for a
/// double-quoted attribute value. Fails with the first character XML 1.0
/// cannot hold at all.
///
/// `\r` (and, in attributes, `\t` and `\n`) are written as character
/// references because a parser normalises them when written raw.
fn escape_into(out: &mut String, text: &str, attribute: bool) -> Result<(), char> {
    let bytes = text.as_bytes();
    let mut done = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'\r' => "&#13;",
            b'"' if attribute => "&quot;",
            b'\t' if attribute => "&#9;",
            b'\n' if attribute => "&#10;",
            b'\t' | b'\n' => continue,
            0..=0x1F => return Err(char::from(b)),
            0xEF => match forbidden_at(bytes, i) {
                Some(c) => return Err(c),
                None => continue,
            },
            _ => continue,
        };
        // `i` is an ASCII byte, so both slices end on character boundaries.
        out.push_str(&text[done..i]);
        out.push_str(replacement);
        done = i + 1;
    }
    out.push_str(&text[done..]);
    Ok(())
}

// ---------------------------------------------------------------------------
// characters and names (XML 1.0, fifth edition)
// ---------------------------------------------------------------------------

/// The first character XML 1.0 forbids outright, with its byte offset.
fn find_forbidden_char(text: &str) -> Option<(usize, char)> {
    /// A control character other than tab and line ends, or the lead byte
    /// of U+FFFE and U+FFFF. Written without branches so that the check of
    /// a whole chunk compiles to a few vector instructions.
    fn suspect(b: u8) -> bool {
        ((b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r')) | (b == 0xEF)
    }
    const CHUNK: usize = 64;
    let bytes = text.as_bytes();
    for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
        if !chunk.iter().fold(false, |any, &b| any | suspect(b)) {
            continue;
        }
        for (j, &b) in chunk.iter().enumerate() {
            let i = n * CHUNK + j;
            match b {
                b'\t' | b'\n' | b'\r' => {}
                0..=0x1F => return Some((i, char::from(b))),
                0xEF => {
                    if let Some(c) = forbidden_at(bytes, i) {
                        return Some((i, c));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// U+FFFE or U+FFFF (UTF-8 `EF BF BE` / `EF BF BF`) starting at `i`.
fn forbidden_at(bytes: &[u8], i: usize) -> Option<char> {
    match bytes.get(i..i + 3) {
        Some([0xEF, 0xBF, 0xBE]) => Some('\u{FFFE}'),
        Some([0xEF, 0xBF, 0xBF]) => Some('\u{FFFF}'),
        _ => None,
    }
}

/// XML 1.0 `Char`; a Rust `char` is never a surrogate.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

fn is_xml_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn is_whitespace(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// XML 1.0 `Name` (colons allowed: prefixes are kept as written).
fn is_name(name: &str) -> bool {
    // Nearly every real name is ASCII: check those bytes without decoding.
    if name.is_ascii() {
        let bytes = name.as_bytes();
        return bytes
            .first()
            .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-' | b'.'));
    }
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start_char) && chars.all(is_name_char)
}

fn is_name_start_char(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_default(text: &str) -> Result<Value, XmlError> {
        parse(text, &ParseOptions::default())
    }

    fn parse_ok(text: &str) -> Value {
        match parse_default(text) {
            Ok(value) => value,
            Err(error) => panic!("{text:?} should parse: {error}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse_default(text) {
            Ok(value) => panic!("{text:?} should fail, parsed as {value}"),
            Err(error) => error.to_string(),
        }
    }

    fn parse_with(text: &str, options: &str) -> Value {
        let options: ParseOptions = serde_json::from_str(options).expect("valid options");
        parse(text, &options).expect("valid xml")
    }

    fn stringify_ok(value: &Value) -> String {
        stringify(value, &StringifyOptions::default()).expect("stringifiable")
    }

    fn stringify_with(value: &Value, options: &str) -> String {
        let options: StringifyOptions = serde_json::from_str(options).expect("valid options");
        stringify(value, &options).expect("stringifiable")
    }

    fn stringify_err(value: &Value) -> String {
        match stringify(value, &StringifyOptions::default()) {
            Ok(text) => panic!("{value} should fail, gave {text}"),
            Err(error) => error.to_string(),
        }
    }

    // --- parse: the mapping ----------------------------------------------

    #[test]
    fn module_doc_example_holds() {
        let text = r#"<?xml version="1.0" encoding="UTF-8"?>
<order id="A-17" xmlns:x="urn:x">
  <!-- comments are dropped -->
  <customer>Ada &amp; Co</customer>
  <line sku="P1" qty="2"/>
  <line sku="P2" qty="1">gift wrap</line>
  <note><![CDATA[fragile <glass>]]></note>
  <x:ref>  spaced  </x:ref>
  <empty/>
</order>"#;
        assert_eq!(
            parse_ok(text),
            json!({ "order": {
                "@id": "A-17", "@xmlns:x": "urn:x",
                "customer": "Ada & Co",
                "line": [ { "@sku": "P1", "@qty": "2" },
                          { "@sku": "P2", "@qty": "1", "#text": "gift wrap" } ],
                "note": "fragile <glass>",
                "x:ref": "  spaced  ",
                "empty": "" } })
        );
    }

    #[test]
    fn text_only_elements_are_strings_kept_exactly() {
        assert_eq!(parse_ok("<a>hello</a>"), json!({ "a": "hello" }));
        assert_eq!(
            parse_ok("<a>  two  words \n</a>"),
            json!({ "a": "  two  words \n" })
        );
        assert_eq!(parse_ok("<a>   </a>"), json!({ "a": "   " }));
        assert_eq!(parse_ok("<a/>"), json!({ "a": "" }));
        assert_eq!(parse_ok("<a></a>"), json!({ "a": "" }));
        assert_eq!(
            parse_ok("<a>42</a>"),
            json!({ "a": "42" }),
            "no number guessing"
        );
        assert_eq!(parse_ok("<a>true</a>"), json!({ "a": "true" }));
    }

    #[test]
    fn attributes_make_an_object() {
        assert_eq!(
            parse_ok(r#"<a id="1" kind='x'/>"#),
            json!({ "a": { "@id": "1", "@kind": "x" } })
        );
        assert_eq!(
            parse_ok(r#"<a id="1">text</a>"#),
            json!({ "a": { "@id": "1", "#text": "text" } })
        );
        assert_eq!(
            parse_ok("<a id=\"1\">  </a>"),
            json!({ "a": { "@id": "1" } }),
            "whitespace-only text of an object is dropped"
        );
    }

    #[test]
    fn children_repeat_into_arrays_in_document_order() {
        assert_eq!(
            parse_ok("<a><b>1</b><c>x</c><b>2</b><b>3</b></a>"),
            json!({ "a": { "b": ["1", "2", "3"], "c": "x" } })
        );
        assert_eq!(parse_ok("<a><b/></a>"), json!({ "a": { "b": "" } }));
    }

    #[test]
    fn whitespace_between_elements_is_dropped_other_text_joined() {
        let text = "<a>\n  <b>1</b>\n  <c>2</c>\n</a>";
        assert_eq!(parse_ok(text), json!({ "a": { "b": "1", "c": "2" } }));
        assert_eq!(
            parse_ok("<p>Hello <b>world</b>, again <i>!</i> </p>"),
            json!({ "p": { "b": "world", "i": "!", "#text": "Hello , again " } })
        );
    }

    #[test]
    fn always_array_options() {
        let text = "<a><b>1</b><c>2</c><c>3</c></a>";
        assert_eq!(
            parse_with(text, "{}"),
            json!({ "a": { "b": "1", "c": ["2", "3"] } })
        );
        assert_eq!(
            parse_with(text, r#"{"alwaysArray":false}"#),
            json!({ "a": { "b": "1", "c": ["2", "3"] } })
        );
        assert_eq!(
            parse_with(text, r#"{"alwaysArray":true}"#),
            json!({ "a": { "b": ["1"], "c": ["2", "3"] } })
        );
        assert_eq!(
            parse_with(text, r#"{"alwaysArray":["b"]}"#),
            json!({ "a": { "b": ["1"], "c": ["2", "3"] } })
        );
        assert_eq!(
            parse_with("<a/>", r#"{"alwaysArray":true}"#),
            json!({ "a": "" }),
            "the root is never an array"
        );
        assert_eq!(
            parse_with(text, r#"{"alwaysArray":null}"#),
            parse_with(text, "{}")
        );
        // The same options give the same value back after a round trip.
        let all = parse_with(text, r#"{"alwaysArray":true}"#);
        assert_eq!(
            parse_with(&stringify_ok(&all), r#"{"alwaysArray":true}"#),
            all
        );
    }

    #[test]
    fn options_reject_unknown_fields_and_wrong_types() {
        let error = serde_json::from_str::<ParseOptions>(r#"{"alwaysarray":true}"#)
            .expect_err("unknown field");
        assert!(error.to_string().contains("unknown field"), "{error}");
        let error = serde_json::from_str::<ParseOptions>(r#"{"alwaysArray":"b"}"#)
            .expect_err("a string is neither a boolean nor a list");
        assert!(
            error
                .to_string()
                .contains("false, true or an array of element names"),
            "{error}"
        );
        let options: StringifyOptions =
            serde_json::from_str(r#"{"declaration":true,"indent":2}"#).expect("valid");
        assert!(options.declaration);
        assert_eq!(options.indent, Some(2));
        assert!(serde_json::from_str::<StringifyOptions>(r#"{"pretty":true}"#).is_err());
    }

    #[test]
    fn cdata_entities_and_character_references_are_text() {
        assert_eq!(
            parse_ok(
                "<a>x &lt;&gt;&amp;&apos;&quot; &#65;&#x42;&#x1F600; <![CDATA[<b>&amp;]]></a>"
            ),
            json!({ "a": "x <>&'\" AB😀 <b>&amp;" })
        );
        assert_eq!(
            parse_ok(r#"<a t="&lt;&amp;&#x41;&quot;"/>"#),
            json!({ "a": { "@t": "<&A\"" } })
        );
    }

    #[test]
    fn comments_pis_declaration_and_doctype_are_dropped() {
        let text = "<?xml version=\"1.0\"?>\n<!DOCTYPE a>\n<!-- c --><?pi x?>\
                    <a><!-- inside -->x<?pi?>y</a>\n<!-- after -->\n";
        assert_eq!(parse_ok(text), json!({ "a": "xy" }));
    }

    #[test]
    fn dtd_entities_are_not_expanded() {
        let bomb = r#"<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
]>
<lolz>&lol2;</lolz>"#;
        assert_eq!(
            parse_err(bomb),
            "ctx.xml.parse: undefined entity &lol2; (only &lt; &gt; &amp; &apos; &quot; and \
             character references are decoded) at line 5, column 7"
        );
    }

    #[test]
    fn namespace_prefixes_stay_as_written() {
        let text = r#"<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">
  <soap:Body><m:Price xmlns:m="urn:m">1.5</m:Price></soap:Body>
</soap:Envelope>"#;
        assert_eq!(
            parse_ok(text),
            json!({ "soap:Envelope": {
                "@xmlns:soap": "http://www.w3.org/2003/05/soap-envelope",
                "soap:Body": { "m:Price": { "@xmlns:m": "urn:m", "#text": "1.5" } } } })
        );
    }

    #[test]
    fn line_ends_and_attribute_whitespace_are_normalised() {
        assert_eq!(parse_ok("<a>x\r\ny\rz</a>"), json!({ "a": "x\ny\nz" }));
        assert_eq!(
            parse_ok("<a t=\"x\ny\tz&#10;&#9;\"/>"),
            json!({ "a": { "@t": "x y z\n\t" } })
        );
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        assert_eq!(parse_ok("\u{feff}<a>x</a>"), json!({ "a": "x" }));
        assert_eq!(
            parse_err("\u{feff}<a>\n <b></a>"),
            "ctx.xml.parse: mismatched closing tag </a>, expected </b> at line 2, column 5"
        );
    }

    #[test]
    fn unicode_in_text_names_and_attributes() {
        let text = "<שלום עיר=\"ירושלים\" emoji=\"🦀𝄞\">مرحبا بالعالم 😀 𐍈</שלום>";
        let value = parse_ok(text);
        assert_eq!(
            value,
            json!({ "שלום": { "@עיר": "ירושלים", "@emoji": "🦀𝄞", "#text": "مرحبا بالعالم 😀 𐍈" } })
        );
        assert_eq!(parse_ok(&stringify_ok(&value)), value);
        // Columns count characters, so a non-BMP character counts once.
        assert_eq!(
            parse_err("<a>😀😀<b></a>"),
            "ctx.xml.parse: mismatched closing tag </a>, expected </b> at line 1, column 9"
        );
    }

    #[test]
    fn realistic_order_document() {
        let text = r#"<?xml version="1.0" encoding="UTF-8"?>
<orders batch="2024-06-01" xmlns="urn:example:orders">
  <order id="1001" currency="EUR">
    <customer ref="C-7">Jane &amp; John Doe</customer>
    <line sku="A-1" qty="2"/>
    <line sku="B-22" qty="1"/>
    <line sku="C-333" qty="10">engraved: "For you"</line>
    <shipping method="express"><address>Rue de l'Église 3, 1000 Bruxelles</address></shipping>
  </order>
  <order id="1002" currency="USD">
    <customer ref="C-8">Bob</customer>
    <line sku="A-1" qty="1"/>
  </order>
</orders>
"#;
        let value = parse_ok(text);
        assert_eq!(
            value,
            json!({ "orders": {
                "@batch": "2024-06-01",
                "@xmlns": "urn:example:orders",
                "order": [
                    {
                        "@id": "1001", "@currency": "EUR",
                        "customer": { "@ref": "C-7", "#text": "Jane & John Doe" },
                        "line": [
                            { "@sku": "A-1", "@qty": "2" },
                            { "@sku": "B-22", "@qty": "1" },
                            { "@sku": "C-333", "@qty": "10", "#text": "engraved: \"For you\"" }
                        ],
                        "shipping": { "@method": "express",
                                      "address": "Rue de l'Église 3, 1000 Bruxelles" }
                    },
                    {
                        "@id": "1002", "@currency": "USD",
                        "customer": { "@ref": "C-8", "#text": "Bob" },
                        "line": { "@sku": "A-1", "@qty": "1" }
                    }
                ] } })
        );
        assert_eq!(parse_ok(&stringify_ok(&value)), value);
        assert_eq!(
            parse_ok(&stringify_with(
                &value,
                r#"{"declaration":true,"indent":2}"#
            )),
            value
        );
        let lines = parse_with(text, r#"{"alwaysArray":["line"]}"#);
        assert_eq!(
            lines["orders"]["order"][1]["line"],
            json!([{ "@sku": "A-1", "@qty": "1" }])
        );
    }

    #[test]
    fn deep_nesting_is_allowed_up_to_the_limit() {
        let text = format!("{}x{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        let value = parse_ok(&text);
        assert_eq!(parse_ok(&stringify_ok(&value)), value);
    }

    // --- parse: errors ---------------------------------------------------

    #[test]
    fn mismatched_closing_tag() {
        assert_eq!(
            parse_err("<a>\n  <b>\n  </b></a\n></b>"),
            "ctx.xml.parse: closing tag </b> without an opening tag at line 4, column 2"
        );
        assert_eq!(
            parse_err("<a>\n  <x/>\n      </b>"),
            "ctx.xml.parse: mismatched closing tag </b>, expected </a> at line 3, column 7"
        );
    }

    #[test]
    fn unclosed_tags_point_at_the_innermost_opening() {
        assert_eq!(
            parse_err("<a>\n  <b>text"),
            "ctx.xml.parse: unclosed tag <b> at line 2, column 3"
        );
        assert_eq!(
            parse_err("<a>\n  <b"),
            "ctx.xml.parse: tag is never closed (no >) at line 2, column 3"
        );
        assert_eq!(
            parse_err("<a>\n<!-- no end"),
            "ctx.xml.parse: comment is never closed (no -->) at line 2, column 1"
        );
        assert_eq!(
            parse_err("<a><![CDATA[x</a>"),
            "ctx.xml.parse: cdata section is never closed (no ]]>) at line 1, column 4"
        );
        assert_eq!(
            parse_err("<a b=\"1/>"),
            "ctx.xml.parse: attribute value is never closed (no \") at line 1, column 1"
        );
    }

    #[test]
    fn more_than_one_root() {
        assert_eq!(
            parse_err("<a/>\n<b/>"),
            "ctx.xml.parse: more than one root element: <b> follows the root element at line 2, column 1"
        );
    }

    #[test]
    fn text_outside_the_root() {
        assert_eq!(
            parse_err("hello <a/>"),
            "ctx.xml.parse: text outside the root element at line 1, column 1"
        );
        assert_eq!(
            parse_err("<a/>\n  trailing"),
            "ctx.xml.parse: text outside the root element at line 2, column 3"
        );
        assert_eq!(
            parse_err("<a/>&amp;"),
            "ctx.xml.parse: text outside the root element at line 1, column 5"
        );
        assert_eq!(
            parse_err("<a/><![CDATA[x]]>"),
            "ctx.xml.parse: text outside the root element at line 1, column 5"
        );
    }

    #[test]
    fn nothing_but_prolog_is_no_root() {
        let expected = "ctx.xml.parse: no root element (the text is empty or holds only \
                        whitespace, comments or declarations)";
        assert_eq!(parse_err(""), expected);
        assert_eq!(parse_err("  \n "), expected);
        assert_eq!(parse_err("<?xml version=\"1.0\"?><!-- only -->"), expected);
    }

    #[test]
    fn nesting_deeper_than_the_limit() {
        let text = "<a>".repeat(100_000);
        assert_eq!(
            parse_err(&text),
            format!(
                "ctx.xml.parse: elements nested deeper than 60 levels at line 1, column {}",
                MAX_DEPTH * 3 + 1
            )
        );
    }

    #[test]
    fn malformed_markup() {
        assert_eq!(
            parse_err("<a>x & y</a>"),
            "ctx.xml.parse: & starts a reference that is never closed (no ;), write &amp; \
             for a literal & at line 1, column 6"
        );
        assert_eq!(
            parse_err("<a><1b/></a>"),
            "ctx.xml.parse: invalid element name \"1b\" at line 1, column 4"
        );
        assert_eq!(
            parse_err("<a>\n<>x</></a>"),
            "ctx.xml.parse: invalid element name \"\" at line 2, column 1"
        );
        assert_eq!(
            parse_err("<a b='1' b='2'/>"),
            "ctx.xml.parse: duplicate attribute in <a> at line 1, column 10"
        );
        assert_eq!(
            parse_err("<a\n b=1/>"),
            "ctx.xml.parse: attribute value without quotes in <a> at line 2, column 4"
        );
        assert_eq!(
            parse_err("<a b/>"),
            "ctx.xml.parse: attribute name without = and a value in <a> at line 1, column 5"
        );
        assert_eq!(
            parse_err("<a 2b='x'/>"),
            "ctx.xml.parse: invalid attribute name \"2b\" in <a> at line 1, column 1"
        );
        assert_eq!(
            parse_err("<a><!x></a>"),
            "ctx.xml.parse: unknown markup after <! at line 1, column 4"
        );
        assert_eq!(
            parse_err("<a/><?xml version=\"1.0\"?>"),
            "ctx.xml.parse: the xml declaration must come first at line 1, column 5"
        );
        assert_eq!(
            parse_err("<?xml version=\"2.0\"?><a/>"),
            "ctx.xml.parse: invalid xml declaration: unknown xml version (expected 1.0 or 1.1) \
             at line 1, column 1"
        );
        assert_eq!(
            parse_err("<a><!DOCTYPE a></a>"),
            "ctx.xml.parse: a doctype must come before the root element at line 1, column 4"
        );
    }

    #[test]
    fn bad_references_and_characters() {
        assert_eq!(
            parse_err("<a>\n&nbsp;</a>"),
            "ctx.xml.parse: undefined entity &nbsp; (only &lt; &gt; &amp; &apos; &quot; and \
             character references are decoded) at line 2, column 1"
        );
        assert_eq!(
            parse_err("<a t='&nbsp;'/>"),
            "ctx.xml.parse: undefined entity &nbsp; (only &lt; &gt; &amp; &apos; &quot; and \
             character references are decoded) in attribute \"t\" of <a> at line 1, column 1"
        );
        assert_eq!(
            parse_err("<a>&#xZZ;</a>"),
            "ctx.xml.parse: invalid character reference &#xZZ; at line 1, column 4"
        );
        assert_eq!(
            parse_err("<a>&#0;</a>"),
            "ctx.xml.parse: invalid character reference &#0; at line 1, column 4"
        );
        assert_eq!(
            parse_err("<a>&#1;</a>"),
            "ctx.xml.parse: character reference &#1; names U+0001, which is not allowed in xml \
             at line 1, column 4"
        );
        assert_eq!(
            parse_err("<a t='&#x1;'/>"),
            "ctx.xml.parse: character U+0001 is not allowed in xml (in attribute \"t\" of <a>) \
             at line 1, column 1"
        );
        assert_eq!(
            parse_err("<a>ok\nbad\u{7}</a>"),
            "ctx.xml.parse: character U+0007 is not allowed in xml at line 2, column 4"
        );
        assert_eq!(
            parse_err("<a\u{1}/>"),
            "ctx.xml.parse: character U+0001 is not allowed in xml at line 1, column 3"
        );
        assert_eq!(
            parse_err("<a>\u{FFFF}</a>"),
            "ctx.xml.parse: character U+FFFF is not allowed in xml at line 1, column 4"
        );
        // The scan goes by 64-byte chunks: U+FFFE straddling two chunks, and
        // a control character deep in the second one, are still found.
        let straddling = format!("<a>{}\u{FFFE}</a>", "x".repeat(60));
        assert_eq!(
            parse_err(&straddling),
            "ctx.xml.parse: character U+FFFE is not allowed in xml at line 1, column 64"
        );
        let late = format!("<a>{}\u{1F}</a>", "é".repeat(50));
        assert_eq!(
            parse_err(&late),
            "ctx.xml.parse: character U+001F is not allowed in xml at line 1, column 54"
        );
        // U+FFFD and other characters that start with the same byte are fine.
        assert_eq!(
            parse_ok("<a>\u{FFFD}\u{F900}</a>"),
            json!({ "a": "\u{FFFD}\u{F900}" })
        );
    }

    // --- stringify -------------------------------------------------------

    #[test]
    fn stringify_values() {
        let value = json!({ "a": {
            "@id": 7, "@ok": true, "@skip": null, "@s": "q\"<&>\n\t\r",
            "s": "x<y & z>w\r\n", "n": 1.5, "b": false, "z": null, "e": "",
            "list": ["1", null, { "@k": "v" }], "none": [],
            "obj": { "#text": "t", "c": "1" }
        } });
        let text = stringify_ok(&value);
        // serde_json orders keys (unless its `preserve_order` feature is on),
        // so check pieces rather than one string.
        for piece in [
            "<a ",
            r#"id="7""#,
            r#"ok="true""#,
            r#"s="q&quot;&lt;&amp;&gt;&#10;&#9;&#13;""#,
            "<s>x&lt;y &amp; z&gt;w&#13;\n</s>",
            "<n>1.5</n>",
            "<b>false</b>",
            "<z/>",
            "<e></e>",
            "<list>1</list><list/><list k=\"v\"/>",
        ] {
            assert!(text.contains(piece), "{piece} not in {text}");
        }
        assert!(!text.contains("skip"), "{text}");
        assert!(!text.contains("none"), "{text}");
        assert!(text.contains("<obj>t<c>1</c></obj>") || text.contains("<obj><c>1</c>t</obj>"));
    }

    #[test]
    fn stringify_simple_documents_exactly() {
        assert_eq!(stringify_ok(&json!({ "a": "x" })), "<a>x</a>");
        assert_eq!(stringify_ok(&json!({ "a": null })), "<a/>");
        assert_eq!(stringify_ok(&json!({ "a": {} })), "<a/>");
        assert_eq!(stringify_ok(&json!({ "a": 3 })), "<a>3</a>");
        assert_eq!(
            stringify_ok(&json!({ "a": { "b": ["1", "2"] } })),
            "<a><b>1</b><b>2</b></a>"
        );
        assert_eq!(
            stringify_with(&json!({ "a": "x" }), r#"{"declaration":true}"#),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a>x</a>"
        );
    }

    #[test]
    fn stringify_pretty_prints() {
        let value = json!({ "r": { "@v": "1", "a": { "b": ["x", "y"], "c": null }, "d": "" } });
        assert_eq!(
            stringify_with(&value, r#"{"indent":2,"declaration":true}"#),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <r v=\"1\">\n  <a>\n    <b>x</b>\n    <b>y</b>\n    <c/>\n  </a>\n  <d></d>\n</r>"
        );
        assert_eq!(
            stringify_with(&json!({ "r": { "a": "1" } }), r#"{"indent":0}"#),
            "<r>\n<a>1</a>\n</r>"
        );
        assert_eq!(
            stringify_with(&json!({ "r": { "a": "1" } }), r#"{"indent":1000000}"#),
            "<r>\n          <a>1</a>\n</r>",
            "indent is capped at 10 like JSON.stringify"
        );
        // Mixed content stays compact: added whitespace would change its text.
        let mixed = json!({ "p": { "#text": "Hi ", "b": { "i": "x" } } });
        let text = stringify_with(&mixed, r#"{"indent":2}"#);
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(parse_ok(&text), mixed);
    }

    #[test]
    fn stringify_rejects_what_xml_cannot_express() {
        assert_eq!(
            stringify_err(&json!("x")),
            "ctx.xml.stringify: value must be an object with exactly one key (the root element \
             name), not a string"
        );
        assert_eq!(
            stringify_err(&json!({ "a": "1", "b": "2" })),
            "ctx.xml.stringify: value must be an object with exactly one key (the root element \
             name), not an object with 2 keys"
        );
        assert_eq!(
            stringify_err(&json!({ "a": ["1", "2"] })),
            "ctx.xml.stringify: value.a is an array, but the root must be a single element"
        );
        assert_eq!(
            stringify_err(&json!({ "order": { "item": ["1", "2", ["x"]] } })),
            "ctx.xml.stringify: value.order.item[2] is an array inside an array, which xml \
             cannot express"
        );
        assert_eq!(
            stringify_err(&json!({ "order": { "first name": "x" } })),
            "ctx.xml.stringify: key \"first name\" at value.order is not a valid element name"
        );
        assert_eq!(
            stringify_err(&json!({ "1st": "x" })),
            "ctx.xml.stringify: key \"1st\" at value is not a valid element name"
        );
        assert_eq!(
            stringify_err(&json!({ "": "x" })),
            "ctx.xml.stringify: key \"\" at value is not a valid element name"
        );
        assert_eq!(
            stringify_err(&json!({ "a": { "#comment": "x" } })),
            "ctx.xml.stringify: key \"#comment\" at value.a is not a valid element name"
        );
        assert_eq!(
            stringify_err(&json!({ "a": { "b": [{ "@": "x" }] } })),
            "ctx.xml.stringify: key \"@\" at value.a.b[0] is not a valid attribute name"
        );
        assert_eq!(
            stringify_err(&json!({ "a": { "@id": { "x": 1 } } })),
            "ctx.xml.stringify: value.a[\"@id\"] must be a string, number, boolean or null, \
             not an object"
        );
        assert_eq!(
            stringify_err(&json!({ "a": { "#text": ["x"], "b": "1" } })),
            "ctx.xml.stringify: value.a[\"#text\"] must be a string, number, boolean or null, \
             not an array"
        );
        assert_eq!(
            stringify_err(&json!({ "a": { "b": "bell\u{7}" } })),
            "ctx.xml.stringify: value.a.b contains U+0007, which xml cannot represent"
        );
        assert_eq!(
            stringify_err(&json!({ "a": { "@t": "\u{FFFE}" } })),
            "ctx.xml.stringify: value.a[\"@t\"] contains U+FFFE, which xml cannot represent"
        );
    }

    #[test]
    fn stringify_depth_limit() {
        let mut value = json!("leaf");
        for _ in 0..MAX_DEPTH {
            value = json!({ "a": value });
        }
        // MAX_DEPTH wrappers: the innermost "a" holding "leaf" is level 60.
        let text = stringify_ok(&value);
        assert_eq!(parse_ok(&text), value);
        let deeper = json!({ "a": value });
        let error = stringify_err(&deeper);
        assert!(
            error.starts_with("ctx.xml.stringify: value.a.a.a.a.a.a.a.a….a.a.a.a.a.a.a.a nests elements deeper than 60 levels"),
            "{error}"
        );
    }

    // --- properties ------------------------------------------------------

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn xml_char() -> impl Strategy<Value = char> {
            prop_oneof![
                3 => prop::char::range('a', 'z'),
                2 => prop::sample::select(vec![
                    ' ', '\t', '\n', '\r', '<', '>', '&', '"', '\'', ']', ';', '#', '=', '/',
                ]),
                1 => any::<char>().prop_filter("a character xml allows", |&c| is_xml_char(c)),
            ]
        }

        fn xml_string() -> impl Strategy<Value = String> {
            prop::collection::vec(xml_char(), 0..12).prop_map(String::from_iter)
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => "[a-zA-Z_][a-zA-Z0-9_.:-]{0,5}",
                1 => "[é日ß][a-zé日·0-9-]{0,3}",
            ]
        }

        /// Element values in the shape `parse` returns.
        fn element() -> impl Strategy<Value = Value> {
            let leaf = xml_string().prop_map(Value::String);
            leaf.prop_recursive(5, 48, 5, |inner| {
                let child = prop_oneof![
                    3 => inner.clone(),
                    1 => prop::collection::vec(inner, 2..4).prop_map(Value::Array),
                ];
                (
                    prop::collection::btree_map(name(), xml_string(), 0..3),
                    prop::collection::btree_map(name(), child, 0..4),
                    prop::option::of(
                        xml_string().prop_filter("not only whitespace", |s| !is_whitespace(s)),
                    ),
                )
                    .prop_filter("an object needs attributes or children", |(a, c, _)| {
                        !a.is_empty() || !c.is_empty()
                    })
                    .prop_map(|(attributes, children, text)| {
                        let mut map = Map::new();
                        for (key, value) in attributes {
                            map.insert(format!("@{key}"), Value::String(value));
                        }
                        for (key, value) in children {
                            map.insert(key, value);
                        }
                        if let Some(text) = text {
                            map.insert("#text".to_owned(), Value::String(text));
                        }
                        Value::Object(map)
                    })
            })
        }

        fn document() -> impl Strategy<Value = Value> {
            (name(), element()).prop_map(|(name, element)| json!({ name: element }))
        }

        const SAMPLE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE r>
<r a="1" b='&amp;&#x41;'>
  <x>text &lt; more</x>
  <x/>
  <y:z xmlns:y="urn:y"><![CDATA[c]]>tail<w k="v">&#128512;</w></y:z>
  <!-- note -->
</r>"#;

        fn mutated_sample() -> impl Strategy<Value = String> {
            let edit = (
                any::<prop::sample::Index>(),
                0..6usize,
                xml_string(),
                0..3u8,
            );
            prop::collection::vec(edit, 1..6).prop_map(|edits| {
                let mut text = SAMPLE.to_owned();
                for (at, len, insert, op) in edits {
                    let mut start = at.index(text.len() + 1);
                    while !text.is_char_boundary(start) {
                        start -= 1;
                    }
                    let mut end = (start + len).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    match op {
                        0 => text.replace_range(start..end, ""),
                        1 => text.insert_str(start, &insert),
                        _ => {
                            let copy = text[start..end].to_owned();
                            text.insert_str(end, &copy);
                        }
                    }
                }
                text
            })
        }

        /// Whatever parses must survive the trip back: that is the contract
        /// `stringify` promises for `parse` output.
        fn check_round_trip(text: &str) -> Result<(), TestCaseError> {
            if let Ok(value) = parse_default(text) {
                let again = stringify(&value, &StringifyOptions::default())
                    .map_err(|e| TestCaseError::fail(format!("{value}: {e}")))?;
                prop_assert_eq!(parse_default(&again).ok(), Some(value));
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn stringify_then_parse_gives_back_the_value(value in document(), indent in prop::option::of(0..4usize)) {
                let options = StringifyOptions { declaration: indent.is_some(), indent };
                let text = stringify(&value, &options)
                    .map_err(|e| TestCaseError::fail(format!("{value}: {e}")))?;
                let parsed = parse_default(&text)
                    .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                prop_assert_eq!(parsed, value, "text: {}", text);
            }

            #[test]
            fn arbitrary_strings_never_panic(text in any::<String>()) {
                check_round_trip(&text)?;
            }

            #[test]
            fn markup_soup_never_panics(text in r#"[<>/?!\[\]a-c:="' &;#x0-9\n-]{0,60}"#) {
                check_round_trip(&text)?;
            }

            #[test]
            fn mutated_documents_never_panic(text in mutated_sample()) {
                check_round_trip(&text)?;
            }
        }
    }
}
