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
//! - [`parse_to_json`] writes keys in document order and [`stringify_json`]
//!   reads them in the order of the JSON text, as JavaScript does. The
//!   [`Value`] forms, [`parse`] and [`stringify()`], keep that order only
//!   while serde_json keeps insertion order (its `preserve_order` feature);
//!   without it, maps are sorted by key.
//!
//! # Memory
//!
//! Both directions run on the host, outside the JavaScript heap, so a step
//! could otherwise make the host allocate far more than its own heap limit:
//! a long key written twice per array item, a tree of `Value`s with a map
//! per element, an attribute map per element. [`parse_to_json`] and
//! [`stringify_json`] therefore take a budget, `max_bytes` (the host passes
//! the step's heap limit), and fail with one sentence that states it as
//! soon as what they hold would pass it. Besides the input text, which the
//! caller already holds, they hold:
//!
//! - a compact form of the document: fixed-size records for elements (32
//!   bytes), attributes (16) and JSON values (24), kept in chunks of 1024
//!   records so that growing never copies them; strings point into the
//!   input text, and only those that had to be decoded (a reference, a line
//!   end, a run of text in several pieces, a JSON escape) are copied into
//!   one pool;
//! - small indexes: the distinct element names, the open elements, the
//!   attribute names of a start tag with many, the path being read;
//! - the output text, which is first written to a counter that stops at
//!   what is left of the budget, then allocated once at exactly the measured
//!   size and written again.
//!
//! Each buffer is charged at its capacity before it grows, and one that
//! grows by copying (the pool, the indexes) is charged for its old and new
//! blocks together, as both exist during the copy; hash tables are charged
//! as hashbrown lays them out. What is left uncharged is small or bounded by
//! the input: quick-xml's decoded copy of one text event or attribute value
//! and its record of the open tags' names, serde_json's scratch copy of one
//! escaped string, the writer's path (at most two steps per level of
//! [`MAX_DEPTH`]) and error messages. The tests check the budget against
//! what a counting allocator sees.
//!
//! # Where to look next
//!
//! `host.rs` calls [`parse_to_json`] and [`stringify_json`] with the options'
//! JSON text and the step's heap limit as the budget; `prelude.js` exposes
//! them to JavaScript as `ctx.xml`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use quick_xml::XmlVersion;
use quick_xml::errors::{IllFormedError, SyntaxError};
use quick_xml::escape::{EscapeError, resolve_predefined_entity};
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Deepest element nesting either direction accepts: deep enough for any
/// real document, shallow enough that a hostile one costs little. serde_json
/// reads at most 128 levels of JSON, of which an element can take two (an
/// object inside an array), so 60 levels keep parse and stringify symmetric
/// with room to spare.
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
    /// Parsing would hold more memory than the call's budget (see the
    /// module documentation on memory).
    #[error(
        "ctx.xml.parse: the document needs more than {} of memory to parse, the step's heap limit",
        Size(*limit_bytes)
    )]
    ParseMemory { limit_bytes: usize },
    /// Writing the XML would hold more memory than the call's budget.
    #[error(
        "ctx.xml.stringify: the value needs more than {} of memory to write as xml, the step's heap limit",
        Size(*limit_bytes)
    )]
    StringifyMemory { limit_bytes: usize },
    /// The input text and the strings decoded from it come to more than
    /// the 4 GiB that the compact form's 32-bit offsets address.
    #[error("ctx.xml.{function}: the text is longer than 4 GiB, more than ctx.xml handles")]
    TooLong { function: &'static str },
}

/// A byte count as a limit is stated: whole mebibytes as `64 MiB`, anything
/// else in bytes.
struct Size(usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: usize = 1 << 20;
        if self.0 >= MIB && self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

// ---------------------------------------------------------------------------
// memory: the budget, compact storage, and sized output
// ---------------------------------------------------------------------------

/// Which function a [`Budget`] belongs to, for its errors.
#[derive(Debug, Clone, Copy)]
enum Op {
    Parse,
    Stringify,
}

/// The memory one call holds on the host, counted before it is allocated.
#[derive(Debug)]
struct Budget {
    op: Op,
    limit: usize,
    used: usize,
}

impl Budget {
    fn new(op: Op, limit: usize) -> Self {
        Budget { op, limit, used: 0 }
    }

    /// The error for going past the budget.
    fn exceeded(&self) -> XmlError {
        match self.op {
            Op::Parse => XmlError::ParseMemory {
                limit_bytes: self.limit,
            },
            Op::Stringify => XmlError::StringifyMemory {
                limit_bytes: self.limit,
            },
        }
    }

    /// The error for offsets that no longer fit in 32 bits.
    fn too_long(&self) -> XmlError {
        XmlError::TooLong {
            function: match self.op {
                Op::Parse => "parse",
                Op::Stringify => "stringify",
            },
        }
    }

    /// Records `bytes` more held, or fails if that would pass the limit.
    fn charge(&mut self, bytes: usize) -> Result<(), XmlError> {
        match self.used.checked_add(bytes) {
            Some(used) if used <= self.limit => {
                self.used = used;
                Ok(())
            }
            _ => Err(self.exceeded()),
        }
    }

    fn release(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.used, "released more than was charged");
        self.used = self.used.saturating_sub(bytes);
    }

    /// Grows `buffer` to `capacity` items. Its old block is released only
    /// after the new one is charged: a reallocation that moves holds both.
    fn grow_to<B: Buffer>(&mut self, buffer: &mut B, capacity: usize) -> Result<(), XmlError> {
        let old = buffer.capacity();
        if capacity <= old {
            return Ok(());
        }
        let bytes = capacity
            .checked_mul(B::ITEM_BYTES)
            .ok_or_else(|| self.exceeded())?;
        self.charge(bytes)?;
        buffer.reserve_exact(capacity - buffer.len());
        self.release(old * B::ITEM_BYTES);
        // An allocator may hand out more than asked; count what was given.
        let extra = (buffer.capacity() - capacity) * B::ITEM_BYTES;
        self.used += extra;
        Ok(())
    }

    /// Makes room for `additional` more items, doubling as `Vec` does.
    fn reserve<B: Buffer>(&mut self, buffer: &mut B, additional: usize) -> Result<(), XmlError> {
        let needed = buffer
            .len()
            .checked_add(additional)
            .ok_or_else(|| self.exceeded())?;
        if needed <= buffer.capacity() {
            return Ok(());
        }
        let capacity = needed.max(buffer.capacity().saturating_mul(2)).max(8);
        self.grow_to(buffer, capacity)
    }

    /// Makes room for one more entry in `table`, charging the new table
    /// before the old one is released: growing builds one from the other.
    fn reserve_entry<T: Table>(&mut self, table: &mut T) -> Result<(), XmlError> {
        if table.len() < table.capacity() {
            return Ok(());
        }
        let old = table_bytes::<T>(table.capacity());
        // Growing doubles the buckets; from empty, a table takes four.
        let grown = (2 * table.capacity()).max(3);
        self.charge(table_bytes::<T>(grown))?;
        table.reserve_one();
        self.release(table_bytes::<T>(grown));
        self.release(old);
        self.charge(table_bytes::<T>(table.capacity()))
    }
}

/// A hash table whose memory a [`Budget`] estimates.
trait Table {
    const ENTRY_BYTES: usize;
    fn len(&self) -> usize;
    fn capacity(&self) -> usize;
    fn reserve_one(&mut self);
}

impl<K: std::hash::Hash + Eq, V> Table for HashMap<K, V> {
    const ENTRY_BYTES: usize = size_of::<(K, V)>();
    fn len(&self) -> usize {
        HashMap::len(self)
    }
    fn capacity(&self) -> usize {
        HashMap::capacity(self)
    }
    fn reserve_one(&mut self) {
        HashMap::reserve(self, 1);
    }
}

impl<K: std::hash::Hash + Eq> Table for HashSet<K> {
    const ENTRY_BYTES: usize = size_of::<K>();
    fn len(&self) -> usize {
        HashSet::len(self)
    }
    fn capacity(&self) -> usize {
        HashSet::capacity(self)
    }
    fn reserve_one(&mut self) {
        HashSet::reserve(self, 1);
    }
}

/// The memory of a hash table that holds `capacity` entries, as hashbrown
/// lays it out: a power of two of buckets with an eighth left free, each an
/// entry and a control byte, and a group of control bytes more.
fn table_bytes<T: Table>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity.saturating_mul(8) / 7).next_power_of_two();
    buckets
        .saturating_mul(T::ENTRY_BYTES + 1)
        .saturating_add(16)
}

/// A growable buffer whose capacity a [`Budget`] manages.
trait Buffer {
    const ITEM_BYTES: usize;
    fn len(&self) -> usize;
    fn capacity(&self) -> usize;
    fn reserve_exact(&mut self, additional: usize);
}

impl<T> Buffer for Vec<T> {
    const ITEM_BYTES: usize = size_of::<T>();
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
    fn reserve_exact(&mut self, additional: usize) {
        Vec::reserve_exact(self, additional);
    }
}

impl Buffer for String {
    const ITEM_BYTES: usize = 1;
    fn len(&self) -> usize {
        String::len(self)
    }
    fn capacity(&self) -> usize {
        String::capacity(self)
    }
    fn reserve_exact(&mut self, additional: usize) {
        String::reserve_exact(self, additional);
    }
}

/// Records per chunk of a [`Chunked`] list.
const CHUNK: usize = 1024;

/// No record: the end of a list.
const NONE: u32 = u32::MAX;

/// An append-only list of records, indexed by `u32`, stored in chunks of
/// [`CHUNK`] so that growing never copies or doubles what is stored: it
/// holds at most one chunk more than its records. The first chunk grows
/// from small, so that small documents stay small.
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Chunked<T> {
    fn new() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// The number of records, which `push` keeps below `u32::MAX`.
    fn len(&self) -> u32 {
        self.len as u32
    }

    fn push(&mut self, budget: &mut Budget, item: T) -> Result<u32, XmlError> {
        // `NONE` marks the end of a list, and `index + 1` stamps a parent
        // while its children are grouped: both must stay free.
        let index = u32::try_from(self.len)
            .ok()
            .filter(|&index| index < NONE - 1)
            .ok_or_else(|| budget.too_long())?;
        if self.len == self.chunks.len() * CHUNK {
            budget.reserve(&mut self.chunks, 1)?;
            let mut chunk = Vec::new();
            budget.grow_to(&mut chunk, if self.len == 0 { 16 } else { CHUNK })?;
            self.chunks.push(chunk);
        }
        let chunk = self
            .chunks
            .last_mut()
            .expect("a chunk with room was just made");
        if chunk.len() == chunk.capacity() {
            // Only the first chunk starts below CHUNK records.
            budget.grow_to(chunk, (2 * chunk.capacity()).min(CHUNK))?;
        }
        chunk.push(item);
        self.len += 1;
        Ok(index)
    }

    fn get(&self, index: u32) -> &T {
        let index = index as usize;
        &self.chunks[index / CHUNK][index % CHUNK]
    }

    fn get_mut(&mut self, index: u32) -> &mut T {
        let index = index as usize;
        &mut self.chunks[index / CHUNK][index % CHUNK]
    }
}

/// A string of a document: a slice of the input text, or of the pool when
/// it had to be decoded. Offsets past the input's end are in the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Str {
    start: u32,
    len: u32,
}

impl Str {
    const EMPTY: Str = Str { start: 0, len: 0 };

    fn end(self) -> u32 {
        self.start + self.len
    }
}

/// The strings of one document: the input text and a pool of decoded
/// strings after it, addressed together by [`Str`].
#[derive(Debug)]
struct Store<'a> {
    input: &'a str,
    pool: String,
}

impl<'a> Store<'a> {
    /// Fails when the input is too long for [`Str`] offsets.
    fn new(input: &'a str, budget: &Budget) -> Result<Self, XmlError> {
        if u32::try_from(input.len()).is_err() {
            return Err(budget.too_long());
        }
        Ok(Store {
            input,
            pool: String::new(),
        })
    }

    fn get(&self, s: Str) -> &str {
        let (start, end) = (s.start as usize, s.end() as usize);
        if s.len == 0 {
            ""
        } else if end <= self.input.len() {
            &self.input[start..end]
        } else {
            &self.pool[start - self.input.len()..end - self.input.len()]
        }
    }

    /// `text` as a slice of the input, if it is one.
    fn in_input(&self, text: &str) -> Option<Str> {
        let at = text
            .as_ptr()
            .addr()
            .wrapping_sub(self.input.as_ptr().addr());
        let fits = at <= self.input.len() && text.len() <= self.input.len() - at;
        // The input is shorter than 4 GiB (see `new`), so both fit.
        fits.then_some(Str {
            start: at as u32,
            len: text.len() as u32,
        })
    }

    /// Where the next string added to the pool starts, as a pool offset.
    fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// The pool from `start` (a pool offset) to its end.
    fn pool_tail(&self, start: usize) -> Str {
        // `push` keeps the input and the pool together under 4 GiB.
        Str {
            start: (self.input.len() + start) as u32,
            len: (self.pool.len() - start) as u32,
        }
    }

    /// Appends `text` to the pool.
    fn push(&mut self, budget: &mut Budget, text: &str) -> Result<(), XmlError> {
        let end = self.input.len() + self.pool.len() + text.len();
        if u32::try_from(end).is_err() {
            return Err(budget.too_long());
        }
        budget.reserve(&mut self.pool, text.len())?;
        self.pool.push_str(text);
        Ok(())
    }

    /// `text` as a [`Str`]: free when it is a slice of the input, copied
    /// into the pool otherwise.
    fn keep(&mut self, budget: &mut Budget, text: &str) -> Result<Str, XmlError> {
        if let Some(s) = self.in_input(text) {
            return Ok(s);
        }
        let start = self.pool_len();
        self.push(budget, text)?;
        Ok(self.pool_tail(start))
    }
}

/// Where a writer's text goes: first a [`Counter`], which measures it and
/// fails once it passes what is left of the budget, then a `String`
/// allocated at exactly the measured size. The same code writes both times,
/// so the second pass cannot outgrow the first.
trait Sink {
    fn push_str(&mut self, text: &str) -> Result<(), XmlError>;
    fn push_spaces(&mut self, count: usize) -> Result<(), XmlError>;
}

/// Measures output without holding it.
#[derive(Debug)]
struct Counter {
    len: usize,
    limit: usize,
    exceeded: XmlError,
}

impl Counter {
    fn add(&mut self, bytes: usize) -> Result<(), XmlError> {
        match self.len.checked_add(bytes) {
            Some(len) if len <= self.limit => {
                self.len = len;
                Ok(())
            }
            _ => Err(self.exceeded.clone()),
        }
    }
}

impl Sink for Counter {
    fn push_str(&mut self, text: &str) -> Result<(), XmlError> {
        self.add(text.len())
    }

    fn push_spaces(&mut self, count: usize) -> Result<(), XmlError> {
        self.add(count)
    }
}

impl Sink for String {
    fn push_str(&mut self, text: &str) -> Result<(), XmlError> {
        debug_assert!(
            self.len() + text.len() <= self.capacity(),
            "output outgrew its measure"
        );
        String::push_str(self, text);
        Ok(())
    }

    fn push_spaces(&mut self, count: usize) -> Result<(), XmlError> {
        debug_assert!(
            self.len() + count <= self.capacity(),
            "output outgrew its measure"
        );
        self.extend(std::iter::repeat_n(' ', count));
        Ok(())
    }
}

/// Something that writes its text to any [`Sink`].
trait WriteText {
    fn write_to<S: Sink>(&self, out: &mut S) -> Result<(), XmlError>;
}

/// Writes `what` twice: to a [`Counter`] limited to what is left of the
/// budget, then into a `String` of exactly that size, which is charged.
fn write_sized<W: WriteText>(what: &W, budget: &mut Budget) -> Result<String, XmlError> {
    let mut counter = Counter {
        len: 0,
        limit: budget.limit.saturating_sub(budget.used),
        exceeded: budget.exceeded(),
    };
    what.write_to(&mut counter)?;
    budget.charge(counter.len)?;
    let mut out = String::with_capacity(counter.len);
    what.write_to(&mut out)?;
    debug_assert_eq!(out.len(), counter.len, "both passes write the same text");
    Ok(out)
}

// ---------------------------------------------------------------------------
// parse
// ---------------------------------------------------------------------------

/// Parses XML text into the JSON text of its JSON form (see the module
/// documentation): what `ctx.xml.parse` hands back to JavaScript.
///
/// Fails with [`XmlError::ParseMemory`] as soon as the memory it holds for
/// the result (the parsed document and the JSON text, see the module
/// documentation on memory) would pass `max_bytes`.
pub fn parse_to_json(
    text: &str,
    options: &ParseOptions,
    max_bytes: usize,
) -> Result<String, XmlError> {
    let mut budget = Budget::new(Op::Parse, max_bytes);
    let document = read_xml(text, options, &mut budget)?;
    write_sized(&document, &mut budget)
}

/// Parses XML text into its JSON form (see the module documentation).
///
/// This is [`parse_to_json`] without a budget, read back with serde_json:
/// for tests and trusted callers, as the [`Value`] it builds is not bounded.
pub fn parse(text: &str, options: &ParseOptions) -> Result<Value, XmlError> {
    let json = parse_to_json(text, options, usize::MAX)?;
    Ok(serde_json::from_str(&json)
        .expect("parse_to_json writes json nested at most 121 levels, which serde_json reads"))
}

/// Attributes of one start tag that quick-xml checks for duplicates; with
/// more, [`XmlReader::open`] does, within the budget. quick-xml itself turns
/// to a hash set at 32, so up to here its record is a short list.
const QUICK_XML_CHECKS_ATTRIBUTES: u32 = 16;

/// A parsed document, in the compact form that [`XmlDocument::write_to`]
/// turns into JSON text.
#[derive(Debug)]
struct XmlDocument<'a> {
    store: Store<'a>,
    /// In document order of their start tags, so the root is the first.
    elements: Chunked<Element>,
    attributes: Chunked<Attribute>,
    /// The distinct element names, by the id elements refer to them with.
    names: Vec<Name>,
}

/// An element. Its value is an object when it has attributes or child
/// elements, and otherwise its text as a string.
#[derive(Debug)]
struct Element {
    name: u32,
    /// Its attributes are `attribute_count` records from this index.
    first_attribute: u32,
    attribute_count: u32,
    /// All of its text when it is a string; its `#text` when an object.
    text: Str,
    /// The first child. Once the element is closed, children are grouped
    /// by name: this is the first child of the first group.
    first_child: u32,
    /// While the parent is open, the next child in document order; once it
    /// is closed, the first child of the next group (only read on the
    /// first child of a group).
    next: u32,
    /// Once the parent is closed, the next child of the same name.
    next_same_name: u32,
}

impl Element {
    fn is_object(&self) -> bool {
        self.attribute_count > 0 || self.first_child != NONE
    }
}

#[derive(Debug)]
struct Attribute {
    name: Str,
    value: Str,
}

#[derive(Debug)]
struct Name {
    text: Str,
    /// The options ask for an array even when the name is seen once.
    always_array: bool,
}

/// Per element name, while one element's children are being grouped.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// `parent + 1` of the element being grouped when this name was last
    /// seen; the first child with a new stamp starts a group.
    stamp: u32,
    /// The last child of that group so far.
    tail: u32,
}

/// State of one [`parse_to_json`] call. Elements under construction live on
/// an explicit stack, so nesting depth costs heap, never call stack.
struct XmlReader<'a, 'b> {
    document: XmlDocument<'a>,
    budget: &'b mut Budget,
    options: &'b ParseOptions,
    version: XmlVersion,
    stack: Vec<Frame>,
    root_closed: bool,
    /// Name ids by name; names are slices of the input.
    ids: HashMap<&'a str, u32>,
    /// Indexed by name id.
    slots: Vec<Slot>,
    /// The attribute names of a start tag with many attributes, to find a
    /// duplicate (see `open`).
    attribute_names: HashSet<&'a str>,
}

/// An open element.
#[derive(Debug)]
struct Frame {
    element: u32,
    /// Byte offset of its `<`, for "unclosed tag" errors.
    offset: usize,
    /// Its last child so far, to append the next one to.
    last_child: u32,
    /// Text since the last child tag (or the start tag).
    run: Run,
    /// Text runs kept so far (only once it is an object).
    text: Joined,
}

/// A text run being read. Text comes in pieces (text, a character
/// reference, CDATA); a single piece is a slice of the input, and only a
/// run of several is copied into the pool. While a run is read nothing else
/// adds to the pool, so a copied run is the pool's tail.
#[derive(Debug, Clone, Copy)]
enum Run {
    Empty,
    Input(Str),
    /// The run is the pool from this pool offset to its end.
    Pool(usize),
}

/// The runs of an object's text that are kept, joined.
#[derive(Debug, Default)]
enum Joined {
    #[default]
    Empty,
    One(Str),
    /// Mixed content: runs separated by child elements, whose own text went
    /// into the pool in between, so they are joined apart (and charged).
    Many(String),
}

fn read_xml<'a>(
    text: &'a str,
    options: &ParseOptions,
    budget: &mut Budget,
) -> Result<XmlDocument<'a>, XmlError> {
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
    let mut parser = XmlReader {
        document: XmlDocument {
            store: Store::new(text, budget)?,
            elements: Chunked::new(),
            attributes: Chunked::new(),
            names: Vec::new(),
        },
        budget,
        options,
        version: XmlVersion::Implicit1_0,
        stack: Vec::new(),
        root_closed: false,
        ids: HashMap::new(),
        slots: Vec::new(),
        attribute_names: HashSet::new(),
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
            Event::Start(tag) => parser.open(&tag, start)?,
            Event::Empty(tag) => {
                parser.open(&tag, start)?;
                parser.close()?;
            }
            Event::End(_) => {
                // quick-xml already matched the end tag against its start.
                if parser.stack.is_empty() {
                    return Err(parse_error(
                        text,
                        start,
                        "closing tag without an opening tag".to_owned(),
                    ));
                }
                parser.close()?;
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
                if !parser.stack.is_empty() || parser.root_closed {
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
        let element = parser.document.elements.get(open.element);
        let name = parser.document.name(element.name);
        return Err(parse_error(
            text,
            open.offset,
            format!("unclosed tag <{name}>"),
        ));
    }
    if !parser.root_closed {
        return Err(XmlError::NoRootElement);
    }
    Ok(parser.document)
}

impl<'a> XmlReader<'a, '_> {
    /// Checks a start tag (or empty-element tag) at `offset`, records the
    /// element with its attributes decoded, and opens it.
    fn open(&mut self, tag: &BytesStart<'_>, offset: usize) -> Result<(), XmlError> {
        let name = tag.name();
        let name: &str = name.as_ref();
        if !is_name(name) {
            return Err(self.error(offset, format!("invalid element name \"{name}\"")));
        }
        if self.stack.is_empty() && self.root_closed {
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
        let name_id = self.intern(name)?;

        // The parent's text run ends here, before attribute values go into
        // the pool after it.
        if let Some(parent) = self.stack.last_mut() {
            end_run(parent, &mut self.document.store, self.budget)?;
        }

        let first_attribute = self.document.attributes.len();
        let mut attribute_count: u32 = 0;
        let mut attributes = tag.attributes();
        while let Some(attribute) = attributes.next() {
            // quick-xml's duplicate check keeps a record per attribute that
            // no budget sees; past a few attributes, ours takes over.
            let own_check = attribute_count >= QUICK_XML_CHECKS_ATTRIBUTES;
            if attribute_count == QUICK_XML_CHECKS_ATTRIBUTES {
                attributes.with_checks(false);
                for index in 0..attribute_count {
                    let name = self.document.attributes.get(first_attribute + index).name;
                    self.remember_attribute(name)?;
                }
            }
            let attribute = match attribute {
                Ok(attribute) => attribute,
                Err(error) => {
                    // quick-xml checks a key before its value: so do we.
                    if let Some(key) = own_check
                        .then(|| self.key_of_failed_attribute(&error, offset))
                        .flatten()
                        .filter(|&key| {
                            let key = self.document.store.get(key);
                            self.attribute_names.contains(key)
                        })
                    {
                        let at = key.start as usize;
                        return Err(self.error(at, format!("duplicate attribute in <{name}>")));
                    }
                    // Attribute errors count from just after the tag's `<`.
                    let (at, message) = describe_attr(&error);
                    return Err(self.error(offset + 1 + at, format!("{message} in <{name}>")));
                }
            };
            let key: &str = attribute.key.as_ref();
            let key_span = self
                .document
                .store
                .in_input(key)
                .expect("quick-xml borrows attribute names from the text it reads");
            if own_check && !self.remember_attribute(key_span)? {
                let at = key_span.start as usize;
                return Err(self.error(at, format!("duplicate attribute in <{name}>")));
            }
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
            let attribute = Attribute {
                name: key_span,
                value: self.document.store.keep(self.budget, &value)?,
            };
            self.document.attributes.push(self.budget, attribute)?;
            attribute_count += 1;
        }
        if self.attribute_names.capacity() > 0 {
            self.budget.release(table_bytes::<HashSet<&str>>(
                self.attribute_names.capacity(),
            ));
            self.attribute_names = HashSet::new();
        }

        let element = self.document.elements.push(
            self.budget,
            Element {
                name: name_id,
                first_attribute,
                attribute_count,
                text: Str::EMPTY,
                first_child: NONE,
                next: NONE,
                next_same_name: NONE,
            },
        )?;
        if let Some(parent) = self.stack.last_mut() {
            let elements = &mut self.document.elements;
            match parent.last_child {
                NONE => elements.get_mut(parent.element).first_child = element,
                last => elements.get_mut(last).next = element,
            }
            parent.last_child = element;
        }
        self.budget.reserve(&mut self.stack, 1)?;
        self.stack.push(Frame {
            element,
            offset,
            last_child: NONE,
            run: Run::Empty,
            text: Joined::Empty,
        });
        Ok(())
    }

    /// The key of an attribute whose value quick-xml could not read, in a
    /// start tag at `offset`: the name before its `=`, which quick-xml
    /// splits at `=` and whitespace.
    fn key_of_failed_attribute(&self, error: &AttrError, offset: usize) -> Option<Str> {
        let input = self.document.store.input;
        // Positions count from just after the tag's `<`.
        let value_at = match *error {
            AttrError::UnquotedValue(at) | AttrError::ExpectedValue(at) => offset + 1 + at,
            // At the end of the text: the value starts at its only quote.
            AttrError::ExpectedQuote(at, quote) => {
                input.get(..offset + 1 + at)?.rfind(char::from(quote))?
            }
            AttrError::ExpectedEq(_) | AttrError::Duplicated(..) => return None,
        };
        let before = input.get(..value_at)?.trim_end_matches(is_xml_whitespace);
        let before = before
            .strip_suffix('=')?
            .trim_end_matches(is_xml_whitespace);
        let start = before.rfind(is_xml_whitespace).map_or(0, |at| at + 1);
        self.document.store.in_input(&before[start..])
    }

    /// Adds an attribute name of the start tag being read to those seen;
    /// false if it was already there.
    fn remember_attribute(&mut self, name: Str) -> Result<bool, XmlError> {
        let input: &'a str = self.document.store.input;
        self.budget.reserve_entry(&mut self.attribute_names)?;
        Ok(self
            .attribute_names
            .insert(&input[name.start as usize..name.end() as usize]))
    }

    /// The id of an element name, recorded on first sight.
    fn intern(&mut self, name: &str) -> Result<u32, XmlError> {
        let span = self
            .document
            .store
            .in_input(name)
            .expect("quick-xml borrows element names from the text it reads");
        let input: &'a str = self.document.store.input;
        let name: &'a str = &input[span.start as usize..span.end() as usize];
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = u32::try_from(self.document.names.len()).map_err(|_| self.budget.too_long())?;
        self.budget.reserve_entry(&mut self.ids)?;
        self.budget.reserve(&mut self.document.names, 1)?;
        self.budget.reserve(&mut self.slots, 1)?;
        self.ids.insert(name, id);
        self.document.names.push(Name {
            text: span,
            always_array: self.options.always_array.wants_array(name),
        });
        self.slots.push(Slot {
            stamp: 0,
            tail: NONE,
        });
        Ok(id)
    }

    /// Finishes the innermost open element: its text, and its children
    /// grouped by name.
    fn close(&mut self) -> Result<(), XmlError> {
        let mut frame = self
            .stack
            .pop()
            .expect("close is only called with an element open");
        let store = &mut self.document.store;
        let is_object = self.document.elements.get(frame.element).is_object();
        let text = if is_object {
            end_run(&mut frame, store, self.budget)?;
            match std::mem::take(&mut frame.text) {
                Joined::Empty => Str::EMPTY,
                Joined::One(text) => text,
                Joined::Many(joined) => {
                    let text = store.keep(self.budget, &joined)?;
                    self.budget.release(joined.capacity());
                    text
                }
            }
        } else {
            // No child tag ever ended a run, so `run` is all of its text.
            match frame.run {
                Run::Empty => Str::EMPTY,
                Run::Input(text) => text,
                Run::Pool(start) => store.pool_tail(start),
            }
        };
        self.document.elements.get_mut(frame.element).text = text;
        if is_object {
            self.group_children(frame.element);
        }
        if self.stack.is_empty() {
            self.root_closed = true;
        }
        Ok(())
    }

    /// Relinks the children of `parent` into groups of the same name, in
    /// the order each name first appears, each group in document order:
    /// the order of the object's keys and of each array's items.
    fn group_children(&mut self, parent: u32) {
        let stamp = parent + 1;
        let elements = &mut self.document.elements;
        let mut child = elements.get(parent).first_child;
        let mut first_head = NONE;
        let mut last_head = NONE;
        while child != NONE {
            let (next, name) = {
                let element = elements.get(child);
                (element.next, element.name)
            };
            elements.get_mut(child).next = NONE;
            let slot = &mut self.slots[name as usize];
            if slot.stamp == stamp {
                elements.get_mut(slot.tail).next_same_name = child;
            } else {
                match last_head {
                    NONE => first_head = child,
                    last => elements.get_mut(last).next = child,
                }
                last_head = child;
                slot.stamp = stamp;
            }
            slot.tail = child;
            child = next;
        }
        elements.get_mut(parent).first_child = first_head;
    }

    /// Adds decoded text found at `offset`.
    fn text(&mut self, content: &str, offset: usize) -> Result<(), XmlError> {
        let Some(frame) = self.stack.last_mut() else {
            if is_whitespace(content) {
                return Ok(());
            }
            // Point past leading whitespace, counted in the raw text
            // (decoding may have shortened it).
            let raw = self.document.store.input.get(offset..).unwrap_or_default();
            let skip = raw.len() - raw.trim_start_matches(is_xml_whitespace).len();
            return Err(self.error(offset + skip, "text outside the root element".to_owned()));
        };
        if content.is_empty() {
            return Ok(());
        }
        let store = &mut self.document.store;
        frame.run = match frame.run {
            Run::Empty => match store.in_input(content) {
                Some(piece) => Run::Input(piece),
                None => {
                    let start = store.pool_len();
                    store.push(self.budget, content)?;
                    Run::Pool(start)
                }
            },
            Run::Input(run) => match store.in_input(content) {
                Some(piece) if piece.start == run.end() => Run::Input(Str {
                    start: run.start,
                    len: run.len + piece.len,
                }),
                _ => {
                    let start = store.pool_len();
                    let input: &str = store.input;
                    store.push(self.budget, &input[run.start as usize..run.end() as usize])?;
                    store.push(self.budget, content)?;
                    Run::Pool(start)
                }
            },
            Run::Pool(start) => {
                store.push(self.budget, content)?;
                Run::Pool(start)
            }
        };
        Ok(())
    }

    fn error(&self, offset: usize, message: String) -> XmlError {
        parse_error(self.document.store.input, offset, message)
    }
}

/// Ends the current text run of `frame` at a child tag or the end tag: an
/// object keeps it unless it is whitespace between elements.
fn end_run(frame: &mut Frame, store: &mut Store<'_>, budget: &mut Budget) -> Result<(), XmlError> {
    let (run, pooled_at) = match std::mem::replace(&mut frame.run, Run::Empty) {
        Run::Empty => return Ok(()),
        Run::Input(run) => (run, None),
        Run::Pool(start) => (store.pool_tail(start), Some(start)),
    };
    let kept = !is_whitespace(store.get(run));
    if kept {
        match &mut frame.text {
            Joined::Empty => {
                frame.text = Joined::One(run);
                return Ok(());
            }
            Joined::One(first) => {
                let first = *first;
                let mut joined = String::new();
                budget.grow_to(&mut joined, (first.len + run.len) as usize)?;
                joined.push_str(store.get(first));
                joined.push_str(store.get(run));
                frame.text = Joined::Many(joined);
            }
            Joined::Many(joined) => {
                budget.reserve(joined, run.len as usize)?;
                joined.push_str(store.get(run));
            }
        }
    }
    // A dropped or copied run that was the pool's tail is not needed there.
    if let Some(start) = pooled_at {
        store.pool.truncate(start);
    }
    Ok(())
}

impl XmlDocument<'_> {
    fn name(&self, id: u32) -> &str {
        self.store.get(self.names[id as usize].text)
    }

    /// Writes the element at `index` as a JSON value. Recursion is bounded
    /// by [`MAX_DEPTH`], which the reader enforced.
    fn write_element<S: Sink>(&self, out: &mut S, index: u32) -> Result<(), XmlError> {
        let element = self.elements.get(index);
        if !element.is_object() {
            return write_json_string(out, &[self.store.get(element.text)]);
        }
        out.push_str("{")?;
        let mut comma = false;
        let mut separate = |out: &mut S| {
            let first = !comma;
            comma = true;
            if first { Ok(()) } else { out.push_str(",") }
        };
        for offset in 0..element.attribute_count {
            let attribute = self.attributes.get(element.first_attribute + offset);
            separate(out)?;
            write_json_string(out, &["@", self.store.get(attribute.name)])?;
            out.push_str(":")?;
            write_json_string(out, &[self.store.get(attribute.value)])?;
        }
        let mut head = element.first_child;
        while head != NONE {
            let first = self.elements.get(head);
            let name = &self.names[first.name as usize];
            separate(out)?;
            write_json_string(out, &[self.store.get(name.text)])?;
            out.push_str(":")?;
            if first.next_same_name == NONE && !name.always_array {
                self.write_element(out, head)?;
            } else {
                out.push_str("[")?;
                let mut item = head;
                while item != NONE {
                    if item != head {
                        out.push_str(",")?;
                    }
                    self.write_element(out, item)?;
                    item = self.elements.get(item).next_same_name;
                }
                out.push_str("]")?;
            }
            head = first.next;
        }
        if element.text.len > 0 {
            separate(out)?;
            out.push_str("\"#text\":")?;
            write_json_string(out, &[self.store.get(element.text)])?;
        }
        out.push_str("}")
    }
}

impl WriteText for XmlDocument<'_> {
    /// `{"root": value}`, compact, keys in the order the module
    /// documentation gives.
    fn write_to<S: Sink>(&self, out: &mut S) -> Result<(), XmlError> {
        let root = self.elements.get(0);
        out.push_str("{")?;
        write_json_string(out, &[self.name(root.name)])?;
        out.push_str(":")?;
        self.write_element(out, 0)?;
        out.push_str("}")
    }
}

/// Writes the concatenation of `pieces` as one JSON string, escaped as
/// serde_json escapes.
fn write_json_string<S: Sink>(out: &mut S, pieces: &[&str]) -> Result<(), XmlError> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\"")?;
    for text in pieces {
        let mut done = 0;
        for (i, &b) in text.as_bytes().iter().enumerate() {
            let mut unicode = [b'\\', b'u', b'0', b'0', 0, 0];
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0C => "\\f",
                0..=0x1F => {
                    unicode[4] = HEX[usize::from(b >> 4)];
                    unicode[5] = HEX[usize::from(b & 0xF)];
                    std::str::from_utf8(&unicode).expect("an escape is ascii")
                }
                _ => continue,
            };
            // `i` is an ASCII byte, so both slices end on character boundaries.
            out.push_str(&text[done..i])?;
            out.push_str(escape)?;
            done = i + 1;
        }
        out.push_str(&text[done..])?;
    }
    out.push_str("\"")
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

/// Writes a value, given as JSON text, as XML text (see the module
/// documentation): what `ctx.xml.stringify` does with what `JSON.stringify`
/// made of its argument.
///
/// Fails with [`XmlError::StringifyMemory`] as soon as the memory it holds
/// (the value read from `json`, then the XML text, see the module
/// documentation on memory) would pass `max_bytes`; the XML text is never
/// allocated larger than that.
pub fn stringify_json(
    json: &str,
    options: &StringifyOptions,
    max_bytes: usize,
) -> Result<String, XmlError> {
    let mut budget = Budget::new(Op::Stringify, max_bytes);
    let (document, root) = read_json(json, &mut budget)?;
    let writing = Writing {
        document: &document,
        root,
        options,
    };
    write_sized(&writing, &mut budget)
}

/// Writes a JSON value in the shape [`parse`] returns as XML text (see the
/// module documentation).
///
/// This is [`stringify_json`] of the value's JSON text, without a budget:
/// for tests and trusted callers.
pub fn stringify(value: &Value, options: &StringifyOptions) -> Result<String, XmlError> {
    let json = value.to_string();
    stringify_json(&json, options, usize::MAX)
}

/// A JSON value read by [`read_json`].
#[derive(Debug)]
struct JsonNode {
    /// Its key, when it is a member of an object.
    key: Str,
    kind: Kind,
    /// A string's or a number's [`Str`] (`start`, `len`); a container's
    /// first item or member and its number of them.
    a: u32,
    b: u32,
    /// The next item or member of the same container.
    next: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    False,
    True,
    /// Its text as written in the JSON text.
    Number,
    String,
    Array,
    Object,
}

impl JsonNode {
    /// The text of a string or a number.
    fn text(&self) -> Str {
        Str {
            start: self.a,
            len: self.b,
        }
    }

    /// The first item or member of a container.
    fn first(&self) -> u32 {
        self.a
    }

    /// The number of items or members of a container.
    fn count(&self) -> u32 {
        self.b
    }

    /// A phrase for error messages, as in "not an array".
    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::False | Kind::True => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

/// A value read from JSON text: its strings point into the text unless they
/// had escapes.
#[derive(Debug)]
struct JsonDocument<'a> {
    store: Store<'a>,
    nodes: Chunked<JsonNode>,
}

impl JsonDocument<'_> {
    fn node(&self, index: u32) -> &JsonNode {
        self.nodes.get(index)
    }

    /// The items or members of the container at `index`, in order.
    fn children(&self, index: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.node(index).first();
        std::iter::successors((first != NONE).then_some(first), |&child| {
            let next = self.node(child).next;
            (next != NONE).then_some(next)
        })
    }

    fn key(&self, index: u32) -> &str {
        self.store.get(self.node(index).key)
    }

    /// A scalar's text as element text or an attribute value; `None` for
    /// `null` (and containers).
    fn scalar_text(&self, node: &JsonNode) -> Option<&str> {
        match node.kind {
            Kind::False => Some("false"),
            Kind::True => Some("true"),
            Kind::Number | Kind::String => Some(self.store.get(node.text())),
            Kind::Null | Kind::Array | Kind::Object => None,
        }
    }
}

/// One step of a path in a stringify error message.
#[derive(Debug, Clone, Copy)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Reads JSON text into a [`JsonDocument`], charging `budget`, and returns
/// it with the index of its root value.
fn read_json<'a>(json: &'a str, budget: &mut Budget) -> Result<(JsonDocument<'a>, u32), XmlError> {
    let mut reader = JsonReader {
        document: JsonDocument {
            store: Store::new(json, budget)?,
            nodes: Chunked::new(),
        },
        budget,
        path: Vec::new(),
        number_from: 0,
        failure: None,
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let root = ValueSeed {
        reader: &mut reader,
    }
    .deserialize(&mut deserializer)
    .and_then(|root| deserializer.end().map(|()| root));
    match root {
        Ok(root) => Ok((reader.document, root)),
        Err(error) => Err(reader
            .failure
            .take()
            .unwrap_or_else(|| stringify_error(format!("value is not JSON: {error}")))),
    }
}

/// State of [`read_json`]; the serde seeds below fill it.
struct JsonReader<'a, 'b> {
    document: JsonDocument<'a>,
    budget: &'b mut Budget,
    /// Where the reader is, for the depth error.
    path: Vec<PathStep>,
    /// Where to look for the next number's text (see `number_text`).
    number_from: usize,
    /// Why reading stopped, when it was not serde_json's doing: serde only
    /// carries its own errors, so ours wait here.
    failure: Option<XmlError>,
}

#[derive(Debug, Clone, Copy)]
enum PathStep {
    Key(Str),
    Index(u32),
}

impl JsonReader<'_, '_> {
    /// Parks `error` and returns serde's stand-in for it.
    fn fail<E: de::Error>(&mut self, error: XmlError) -> E {
        self.failure = Some(error);
        E::custom("stopped by ctx.xml")
    }

    fn push<E: de::Error>(&mut self, kind: Kind, a: u32, b: u32) -> Result<u32, E> {
        let node = JsonNode {
            key: Str::EMPTY,
            kind,
            a,
            b,
            next: NONE,
        };
        self.document
            .nodes
            .push(self.budget, node)
            .map_err(|error| self.fail(error))
    }

    /// Records the number serde_json just read, as it is written in the
    /// text: numbers are written as the value's author wrote them (for
    /// `JSON.stringify`, as `String(n)` does), never re-formatted from an
    /// `f64`, which serde_json reads to within one unit in the last place.
    fn push_number<E: de::Error>(&mut self) -> Result<u32, E> {
        let text = self.number_text();
        self.push(Kind::Number, text.start, text.len)
    }

    /// The text of the next number in the JSON text. serde_json reports
    /// values in the order of the text, and outside strings only numbers
    /// hold a `-` or a digit, so a cursor that skips strings finds each one
    /// after the last; the whole text is scanned once.
    fn number_text(&mut self) -> Str {
        let bytes = self.document.store.input.as_bytes();
        let mut at = self.number_from;
        while let Some(&b) = bytes.get(at) {
            match b {
                b'-' | b'0'..=b'9' => break,
                b'"' => {
                    at += 1;
                    while let Some(&b) = bytes.get(at) {
                        at += if b == b'\\' { 2 } else { 1 };
                        if b == b'"' {
                            break;
                        }
                    }
                }
                _ => at += 1,
            }
        }
        let start = at.min(bytes.len());
        let len = bytes[start..]
            .iter()
            .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            .count();
        self.number_from = start + len;
        // The text is shorter than 4 GiB (`Store::new`).
        Str {
            start: start as u32,
            len: len as u32,
        }
    }

    fn string<E: de::Error>(&mut self, text: &str) -> Result<Str, E> {
        self.document
            .store
            .keep(self.budget, text)
            .map_err(|error| self.fail(error))
    }

    /// Enters a container, or fails when it is deeper than any element can
    /// be: each element takes at most two levels (an object in an array),
    /// so no value that `stringify` can write is that deep, and serde_json's
    /// own limit (128) is never the one that speaks.
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        if self.path.len() < 2 * MAX_DEPTH {
            return Ok(());
        }
        let path: Vec<Segment<'_>> = self
            .path
            .iter()
            .map(|step| match *step {
                PathStep::Key(key) => Segment::Key(self.document.store.get(key)),
                PathStep::Index(index) => Segment::Index(index as usize),
            })
            .collect();
        let error = stringify_error(format!(
            "{} is nested too deeply (xml elements nest at most {MAX_DEPTH} levels)",
            render_path(&path)
        ));
        Err(self.fail(error))
    }

    fn step_in<E: de::Error>(&mut self, step: PathStep) -> Result<(), E> {
        self.budget
            .reserve(&mut self.path, 1)
            .map_err(|error| self.fail(error))?;
        self.path.push(step);
        Ok(())
    }

    /// Appends `child` to a container being read, whose last child so far
    /// is `last`.
    fn link(&mut self, first: &mut u32, last: &mut u32, child: u32) {
        match *last {
            NONE => *first = child,
            previous => self.document.nodes.get_mut(previous).next = child,
        }
        *last = child;
    }
}

/// Reads one JSON value into the reader's nodes and returns its index.
/// Containers are recorded after their contents.
struct ValueSeed<'r, 'a, 'b> {
    reader: &'r mut JsonReader<'a, 'b>,
}

impl<'a> DeserializeSeed<'a> for ValueSeed<'_, 'a, '_> {
    type Value = u32;

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for ValueSeed<'_, 'a, '_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<u32, E> {
        self.reader.push(Kind::Null, 0, 0)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<u32, E> {
        let kind = if value { Kind::True } else { Kind::False };
        self.reader.push(kind, 0, 0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<u32, E> {
        self.reader.push_number()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<u32, E> {
        self.reader.push_number()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u32, E> {
        self.reader.push_number()
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<u32, E> {
        let text = self.reader.string(value)?;
        self.reader.push(Kind::String, text.start, text.len)
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<u32, A::Error> {
        let reader = self.reader;
        reader.enter()?;
        let (mut first, mut last, mut count) = (NONE, NONE, 0);
        loop {
            reader.step_in(PathStep::Index(count))?;
            let item = seq.next_element_seed(ValueSeed {
                reader: &mut *reader,
            })?;
            reader.path.pop();
            let Some(item) = item else { break };
            reader.link(&mut first, &mut last, item);
            count += 1;
        }
        reader.push(Kind::Array, first, count)
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<u32, A::Error> {
        let reader = self.reader;
        reader.enter()?;
        let (mut first, mut last, mut count) = (NONE, NONE, 0);
        while let Some(key) = map.next_key_seed(KeySeed {
            reader: &mut *reader,
        })? {
            reader.step_in(PathStep::Key(key))?;
            let member = map.next_value_seed(ValueSeed {
                reader: &mut *reader,
            })?;
            reader.path.pop();
            reader.document.nodes.get_mut(member).key = key;
            reader.link(&mut first, &mut last, member);
            count += 1;
        }
        reader.push(Kind::Object, first, count)
    }
}

/// Reads an object's key.
struct KeySeed<'r, 'a, 'b> {
    reader: &'r mut JsonReader<'a, 'b>,
}

impl<'a> DeserializeSeed<'a> for KeySeed<'_, 'a, '_> {
    type Value = Str;

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Str, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'a> Visitor<'a> for KeySeed<'_, 'a, '_> {
    type Value = Str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Str, E> {
        self.reader.string(value)
    }
}

/// What [`stringify_json`] writes: the document from its root.
struct Writing<'d, 'a> {
    document: &'d JsonDocument<'a>,
    root: u32,
    options: &'d StringifyOptions,
}

impl WriteText for Writing<'_, '_> {
    fn write_to<S: Sink>(&self, out: &mut S) -> Result<(), XmlError> {
        let document = self.document;
        let root = document.node(self.root);
        let root_member = match root.kind {
            Kind::Object if root.count() == 1 => root.first(),
            Kind::Object => {
                return Err(stringify_error(format!(
                    "value must be an object with exactly one key (the root element name), not an object with {} keys",
                    root.count()
                )));
            }
            _ => {
                return Err(stringify_error(format!(
                    "value must be an object with exactly one key (the root element name), not {}",
                    root.kind_name()
                )));
            }
        };
        let name = document.key(root_member);
        let mut writer = XmlWriter {
            document,
            out,
            indent: self.options.indent.map(|n| n.min(MAX_INDENT)),
            path: Vec::new(),
        };
        if self.options.declaration {
            writer
                .out
                .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")?;
        }
        if !is_name(name) {
            return Err(writer.key_error(name, "element"));
        }
        writer.path.push(Segment::Key(name));
        if document.node(root_member).kind == Kind::Array {
            return Err(
                writer.error("is an array, but the root must be a single element".to_owned())
            );
        }
        let pretty = writer.indent.is_some();
        writer.element(name, root_member, 1, pretty)
    }
}

struct XmlWriter<'d, 'a, 'o, S> {
    document: &'d JsonDocument<'a>,
    out: &'o mut S,
    /// Spaces per level, already capped.
    indent: Option<usize>,
    /// Where the writer is, for error messages; `element` pushes and pops.
    /// At most two steps per level of [`MAX_DEPTH`].
    path: Vec<Segment<'d>>,
}

impl<'d, S: Sink> XmlWriter<'d, '_, '_, S> {
    /// Writes one element. Recursion is bounded by [`MAX_DEPTH`] (`depth`
    /// counts the root as 1), which keeps the stack small.
    fn element(
        &mut self,
        name: &'d str,
        index: u32,
        depth: usize,
        pretty: bool,
    ) -> Result<(), XmlError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nests elements deeper than {MAX_DEPTH} levels")));
        }
        let document = self.document;
        let node = document.node(index);
        self.out.push_str("<")?;
        self.out.push_str(name)?;
        match node.kind {
            Kind::Null => return self.out.push_str("/>"),
            Kind::Array => {
                return Err(
                    self.error("is an array inside an array, which xml cannot express".to_owned())
                );
            }
            Kind::Object => {}
            _ => {
                self.out.push_str(">")?;
                self.scalar_text(node)?;
                return self.close_tag(name);
            }
        }

        let mut has_text = false;
        let mut has_children = false;
        for member in document.children(index) {
            let key = document.key(member);
            let item = document.node(member);
            if let Some(attribute) = key.strip_prefix('@') {
                self.attribute(key, attribute, item)?;
            } else if key == "#text" {
                has_text |= match item.kind {
                    Kind::String => item.text().len > 0,
                    Kind::Null => false,
                    _ => true,
                };
            } else {
                has_children |= match item.kind {
                    Kind::Array => item.count() > 0,
                    _ => true,
                };
            }
        }
        if !has_text && !has_children {
            return self.out.push_str("/>");
        }
        self.out.push_str(">")?;

        // Whitespace added next to text would change the text on the way back.
        let pretty_children = pretty && !has_text;
        for member in document.children(index) {
            let key = document.key(member);
            if key.starts_with('@') {
                continue;
            }
            let item = document.node(member);
            self.path.push(Segment::Key(key));
            if key == "#text" {
                self.scalar_text(item)?;
            } else if !is_name(key) {
                self.path.pop();
                return Err(self.key_error(key, "element"));
            } else if item.kind == Kind::Array {
                for (position, child) in document.children(member).enumerate() {
                    self.path.push(Segment::Index(position));
                    self.child(key, child, depth, pretty_children)?;
                    self.path.pop();
                }
            } else {
                self.child(key, member, depth, pretty_children)?;
            }
            self.path.pop();
        }
        if pretty_children {
            self.newline(depth - 1)?;
        }
        self.close_tag(name)
    }

    fn child(
        &mut self,
        name: &'d str,
        index: u32,
        parent_depth: usize,
        pretty: bool,
    ) -> Result<(), XmlError> {
        if pretty {
            self.newline(parent_depth)?;
        }
        self.element(name, index, parent_depth + 1, pretty)
    }

    fn attribute(&mut self, key: &'d str, name: &str, value: &JsonNode) -> Result<(), XmlError> {
        self.path.push(Segment::Key(key));
        if !is_name(name) {
            self.path.pop();
            return Err(self.key_error(key, "attribute"));
        }
        if matches!(value.kind, Kind::Array | Kind::Object) {
            return Err(self.error(format!(
                "must be a string, number, boolean or null, not {}",
                value.kind_name()
            )));
        }
        let Some(text) = self.document.scalar_text(value) else {
            self.path.pop();
            return Ok(());
        };
        self.out.push_str(" ")?;
        self.out.push_str(name)?;
        self.out.push_str("=\"")?;
        escape_into(self.out, text, true, |c| unrepresentable(&self.path, c))?;
        self.out.push_str("\"")?;
        self.path.pop();
        Ok(())
    }

    /// Writes a string, number or boolean as element text; `null` writes nothing.
    fn scalar_text(&mut self, value: &JsonNode) -> Result<(), XmlError> {
        if matches!(value.kind, Kind::Array | Kind::Object) {
            return Err(self.error(format!(
                "must be a string, number, boolean or null, not {}",
                value.kind_name()
            )));
        }
        match self.document.scalar_text(value) {
            Some(text) => escape_into(self.out, text, false, |c| unrepresentable(&self.path, c)),
            None => Ok(()),
        }
    }

    fn close_tag(&mut self, name: &str) -> Result<(), XmlError> {
        self.out.push_str("</")?;
        self.out.push_str(name)?;
        self.out.push_str(">")
    }

    fn newline(&mut self, depth: usize) -> Result<(), XmlError> {
        let indent = self.indent.unwrap_or(0);
        self.out.push_str("\n")?;
        self.out.push_spaces(depth * indent)
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

/// The error for a character XML cannot hold, in the value at `path`.
fn unrepresentable(path: &[Segment<'_>], c: char) -> XmlError {
    stringify_error(format!(
        "{} contains {}, which xml cannot represent",
        render_path(path),
        code_point(c)
    ))
}

/// Writes `text` escaped for element text or, with `attribute`, for a
/// double-quoted attribute value. Fails with `forbidden` of the first
/// character XML 1.0 cannot hold at all.
///
/// `\r` (and, in attributes, `\t` and `\n`) are written as character
/// references because a parser normalises them when written raw.
fn escape_into<S: Sink>(
    out: &mut S,
    text: &str,
    attribute: bool,
    forbidden: impl FnOnce(char) -> XmlError,
) -> Result<(), XmlError> {
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
            0..=0x1F => return Err(forbidden(char::from(b))),
            0xEF => match forbidden_at(bytes, i) {
                Some(c) => return Err(forbidden(c)),
                None => continue,
            },
            _ => continue,
        };
        // `i` is an ASCII byte, so both slices end on character boundaries.
        out.push_str(&text[done..i])?;
        out.push_str(replacement)?;
        done = i + 1;
    }
    out.push_str(&text[done..])
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
    use serde_json::{Map, json};

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

    // --- memory ----------------------------------------------------------

    /// A global allocator that counts, per thread, what the thread holds, so
    /// that tests running in parallel do not see each other's memory. It
    /// applies to every test of this crate, and only counts: `System` does
    /// the allocating.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        struct Counting;

        thread_local! {
            static HELD: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn add(bytes: isize) {
            // `try_with`: a thread frees its last blocks after its locals go.
            let _ = HELD.try_with(|held| {
                let now = held.get() + bytes;
                held.set(now);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
            });
        }

        // SAFETY: every call goes to `System` with the caller's arguments;
        // the counting around it touches no allocation.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                // SAFETY: the caller's contract is `System`'s.
                let block = unsafe { System.alloc(layout) };
                if !block.is_null() {
                    add(layout.size() as isize);
                }
                block
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                // SAFETY: as for `alloc`.
                let block = unsafe { System.alloc_zeroed(layout) };
                if !block.is_null() {
                    add(layout.size() as isize);
                }
                block
            }

            unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
                // SAFETY: as for `alloc`.
                unsafe { System.dealloc(block, layout) };
                add(-(layout.size() as isize));
            }

            unsafe fn realloc(&self, block: *mut u8, layout: Layout, size: usize) -> *mut u8 {
                // SAFETY: as for `alloc`.
                let moved = unsafe { System.realloc(block, layout, size) };
                if !moved.is_null() {
                    // A block that moves exists twice for a moment: count the
                    // new one before the old one goes.
                    add(size as isize);
                    add(-(layout.size() as isize));
                }
                moved
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;

        /// Runs `f` and returns its result with the most memory this thread
        /// held during it beyond what it held before.
        pub(super) fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
            let before = HELD.with(Cell::get);
            PEAK.with(|peak| peak.set(before));
            let result = f();
            let peak = PEAK.with(Cell::get) - before;
            (result, peak.max(0) as usize)
        }
    }

    const MIB: usize = 1 << 20;

    /// What a call may hold beyond its budget without it being a defect: the
    /// allocations the budget leaves uncounted (see the module documentation
    /// on memory), which the tests' inputs keep small.
    const SLACK: usize = 4 * 1024;

    fn parse_within(text: &str, max_bytes: usize) -> (Result<String, XmlError>, usize) {
        counting::peak_of(|| parse_to_json(text, &ParseOptions::default(), max_bytes))
    }

    fn stringify_within(
        json: &str,
        options: &StringifyOptions,
        max_bytes: usize,
    ) -> (Result<String, XmlError>, usize) {
        counting::peak_of(|| stringify_json(json, options, max_bytes))
    }

    /// The least budget for which `works` holds, which is where a call's
    /// estimate peaks (the budget check is monotonic).
    fn least_budget(works: impl Fn(usize) -> bool) -> usize {
        let (mut low, mut high) = (0, 64 * MIB);
        assert!(works(high), "does not fit in 64 MiB");
        while low < high {
            let middle = low + (high - low) / 2;
            if works(middle) {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        low
    }

    #[test]
    fn memory_errors_state_the_limit() {
        assert_eq!(
            XmlError::ParseMemory {
                limit_bytes: 128 * MIB
            }
            .to_string(),
            "ctx.xml.parse: the document needs more than 128 MiB of memory to parse, the step's \
             heap limit"
        );
        assert_eq!(
            XmlError::StringifyMemory { limit_bytes: 1000 }.to_string(),
            "ctx.xml.stringify: the value needs more than 1000 bytes of memory to write as xml, \
             the step's heap limit"
        );
        assert_eq!(
            XmlError::TooLong { function: "parse" }.to_string(),
            "ctx.xml.parse: the text is longer than 4 GiB, more than ctx.xml handles"
        );
    }

    #[test]
    fn records_are_as_small_as_the_module_documentation_says() {
        assert_eq!(size_of::<Element>(), 32);
        assert_eq!(size_of::<Attribute>(), 16);
        assert_eq!(size_of::<JsonNode>(), 24);
    }

    #[test]
    fn a_long_key_over_a_million_items_is_refused_within_the_budget() {
        // 3 MB of JSON that is 2 GB of XML, as the key is written twice per
        // item; writing it all used to take 3 GB at its peak.
        let json = format!(
            "{{\"r\":{{\"{}\":[{}\"\"]}}}}",
            "k".repeat(1000),
            "\"\",".repeat(999_999)
        );
        let (result, peak) = stringify_within(&json, &StringifyOptions::default(), 64 * MIB);
        assert_eq!(
            result,
            Err(XmlError::StringifyMemory {
                limit_bytes: 64 * MIB
            })
        );
        assert!(peak <= 64 * MIB + SLACK, "peak {peak}");
    }

    #[test]
    fn pretty_printing_deep_data_is_refused_within_the_budget() {
        // A million short items 60 levels down: 4 MB of JSON, 8 MB of
        // compact XML, but 600 spaces of indentation per item at indent 10.
        let mut json = format!("{{\"b\":[{}\"x\"]}}", "\"x\",".repeat(999_999));
        for _ in 2..MAX_DEPTH {
            json = format!("{{\"a\":{json}}}");
        }
        let json = format!("{{\"r\":{json}}}");
        let pretty = StringifyOptions {
            declaration: false,
            indent: Some(10),
        };
        let (result, peak) = stringify_within(&json, &pretty, 64 * MIB);
        assert_eq!(
            result,
            Err(XmlError::StringifyMemory {
                limit_bytes: 64 * MIB
            })
        );
        assert!(peak <= 64 * MIB + SLACK, "peak {peak}");

        let (compact, peak) = stringify_within(&json, &StringifyOptions::default(), 64 * MIB);
        let compact = compact.expect("compact, the same value fits");
        let (open, close) = ("<a>".repeat(MAX_DEPTH - 2), "</a>".repeat(MAX_DEPTH - 2));
        assert_eq!(
            compact,
            format!("<r>{open}{}{close}</r>", "<b>x</b>".repeat(1_000_000))
        );
        assert!(peak <= 64 * MIB + SLACK, "peak {peak}");
    }

    #[test]
    fn an_element_with_100k_attributes_is_refused_within_the_budget() {
        let xml = format!(
            "<a{}/>",
            (0..100_000)
                .map(|i| format!(" a{i}=\"v\""))
                .collect::<String>()
        );
        let (result, peak) = parse_within(&xml, 2 * MIB);
        assert_eq!(
            result,
            Err(XmlError::ParseMemory {
                limit_bytes: 2 * MIB
            })
        );
        assert!(peak <= 2 * MIB + SLACK, "peak {peak}");

        // Under a larger budget it parses, and its JSON form goes back the
        // other way, under the same rule.
        let (json, peak) = parse_within(&xml, 64 * MIB);
        let json = json.expect("100k attributes fit in 64 MiB");
        assert!(peak <= 8 * MIB, "peak {peak}");
        let default = StringifyOptions::default();
        let (result, peak) = stringify_within(&json, &default, 2 * MIB);
        assert_eq!(
            result,
            Err(XmlError::StringifyMemory {
                limit_bytes: 2 * MIB
            })
        );
        assert!(peak <= 2 * MIB + SLACK, "peak {peak}");
        assert_eq!(
            stringify_within(&json, &default, 64 * MIB).0,
            Ok(xml.clone())
        );

        // Past the first few attributes, duplicates are found by this module
        // rather than quick-xml: the same error, at the same place.
        let duplicate = xml.replace("/>", " a99=\"w\"/>");
        assert_eq!(
            parse_err(&duplicate),
            format!(
                "ctx.xml.parse: duplicate attribute in <a> at line 1, column {}",
                xml.len()
            )
        );
    }

    #[test]
    fn deeply_nested_json_is_refused_before_it_costs_anything() {
        let default = StringifyOptions::default();
        let arrays = format!("{}1{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        let (result, peak) = stringify_within(&arrays, &default, 64 * MIB);
        assert_eq!(
            result.map_err(|e| e.to_string()),
            Err(
                "ctx.xml.stringify: value[0][0][0][0][0][0][0][0]…[0][0][0][0][0][0][0][0] is \
                 nested too deeply (xml elements nest at most 60 levels)"
                    .to_owned()
            )
        );
        assert!(peak <= SLACK, "peak {peak}");
        let objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        let (result, peak) = stringify_within(&objects, &default, 64 * MIB);
        assert_eq!(
            result.map_err(|e| e.to_string()),
            Err(
                "ctx.xml.stringify: value.a.a.a.a.a.a.a.a….a.a.a.a.a.a.a.a is nested too \
                 deeply (xml elements nest at most 60 levels)"
                    .to_owned()
            )
        );
        assert!(peak <= SLACK, "peak {peak}");

        // The deepest value xml can hold is still read: 60 elements, each
        // in an array.
        let mut value = json!("x");
        for _ in 1..MAX_DEPTH {
            value = json!({ "a": [value] });
        }
        let value = json!({ "r": value });
        let text = stringify_ok(&value);
        assert_eq!(parse_with(&text, r#"{"alwaysArray":true}"#), value);
    }

    #[test]
    fn a_32_mb_document_is_refused_within_a_64_mib_budget() {
        // An element per four bytes: the old code held 860 MB for it.
        let text = format!("<r>{}</r>", "<i/>".repeat(8_000_000));
        let (result, peak) = parse_within(&text, 64 * MIB);
        assert_eq!(
            result,
            Err(XmlError::ParseMemory {
                limit_bytes: 64 * MIB
            })
        );
        assert!(peak <= 64 * MIB + SLACK, "peak {peak}");
    }

    #[test]
    fn json_text_keeps_document_order_and_escapes_as_serde_json() {
        let text = r#"<order id="A-17" xmlns:x="urn:x">
  <customer>Ada &amp; Co</customer>
  <line sku="P1" qty="2"/>
  <note><![CDATA[fragile <glass>]]></note>
  <line sku="P2" qty="1">gift wrap</line>
  <x:ref>  spaced  </x:ref>
  <empty/>
</order>"#;
        assert_eq!(
            parse_to_json(text, &ParseOptions::default(), 64 * MIB),
            Ok(r##"{"order":{"@id":"A-17","@xmlns:x":"urn:x","customer":"Ada & Co","line":[{"@sku":"P1","@qty":"2"},{"@sku":"P2","@qty":"1","#text":"gift wrap"}],"note":"fragile <glass>","x:ref":"  spaced  ","empty":""}}"##.to_owned())
        );
        let text = "<p q='&quot;\\'>a \"b\"<i/>\t&#13;&#x1F600;<i>c&#10;</i></p>";
        let json = parse_to_json(text, &ParseOptions::default(), 64 * MIB);
        assert_eq!(
            json,
            Ok(r##"{"p":{"@q":"\"\\","i":["","c\n"],"#text":"a \"b\"\t\r😀"}}"##.to_owned())
        );
        let value = parse_ok(text);
        assert_eq!(json, Ok(value.to_string()));
    }

    #[test]
    fn numbers_are_written_as_the_json_text_has_them() {
        // As `String(n)` in JavaScript, which wrote the text, and never
        // re-read through an `f64` (serde_json reads to within one unit in
        // the last place): `1e+21` stays `1e+21`, and the last digit of the
        // last one stays 2.
        let json = r#"{"n":{"@a":1e+21,"s":"1\"-2\\","b":-0.5,"c":12345678901234567890,"d":-2.121877934321362e-143}}"#;
        assert_eq!(
            stringify_json(json, &StringifyOptions::default(), 64 * MIB),
            Ok(
                "<n a=\"1e+21\"><s>1\"-2\\</s><b>-0.5</b><c>12345678901234567890</c>\
                <d>-2.121877934321362e-143</d></n>"
                    .to_owned()
            )
        );
        assert_eq!(
            stringify_json("{\"a\":1} x", &StringifyOptions::default(), 64 * MIB)
                .map_err(|e| e.to_string()),
            Err(
                "ctx.xml.stringify: value is not JSON: trailing characters at line 1 column 9"
                    .to_owned()
            )
        );
    }

    #[test]
    fn the_budget_is_exact_and_covers_what_is_allocated() {
        // Text in pieces (entities, CDATA, line ends), mixed content,
        // repeated names, decoded attributes and more than a chunk of
        // elements: each path that copies into the pool.
        let rows: String = (0..1500)
            .map(|i| format!("<row n=\"{i}\" t=\"a&amp;b\r\n\">v{i} &lt; w\r\n<![CDATA[x]]></row>"))
            .collect();
        let texts = [
            "<a/>".to_owned(),
            "<a>text</a>".to_owned(),
            format!("<r>{rows}<p>one <b>two</b> three <i/> four</p></r>"),
            format!(
                "<r>{}</r>",
                (0..40)
                    .map(|i| format!("<n{i}>x</n{i}>"))
                    .collect::<String>()
            ),
        ];
        let options = ParseOptions::default();
        for text in &texts {
            let least = least_budget(|max| parse_to_json(text, &options, max).is_ok());
            let (json, peak) = parse_within(text, least);
            let json = json.expect("the least budget that works");
            assert!(json.len() <= least);
            assert!(peak <= least + SLACK, "peak {peak} over {least} for {text}");
            assert_eq!(
                parse_to_json(text, &options, least - 1),
                Err(XmlError::ParseMemory {
                    limit_bytes: least - 1
                })
            );

            for indent in [None, Some(2)] {
                let options = StringifyOptions {
                    declaration: true,
                    indent,
                };
                let least = least_budget(|max| stringify_json(&json, &options, max).is_ok());
                let (xml, peak) = stringify_within(&json, &options, least);
                assert!(xml.expect("the least budget that works").len() <= least);
                assert!(peak <= least + SLACK, "peak {peak} over {least} for {json}");
                assert_eq!(
                    stringify_json(&json, &options, least - 1),
                    Err(XmlError::StringifyMemory {
                        limit_bytes: least - 1
                    })
                );
            }
        }
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
            fn the_budget_holds_for_any_document(
                value in document(),
                max_bytes in 0..4096usize,
                indent in prop::option::of(0..4usize),
            ) {
                let text = stringify(&value, &StringifyOptions::default())
                    .map_err(|e| TestCaseError::fail(format!("{value}: {e}")))?;
                let (json, peak) = parse_within(&text, max_bytes);
                match json {
                    Ok(json) => {
                        prop_assert!(json.len() <= max_bytes);
                        let parsed: Option<Value> = serde_json::from_str(&json).ok();
                        prop_assert_eq!(parsed.as_ref(), Some(&value));
                    }
                    Err(error) => prop_assert_eq!(error, XmlError::ParseMemory { limit_bytes: max_bytes }),
                }
                prop_assert!(peak <= max_bytes + SLACK, "parse peak {} over {}", peak, max_bytes);

                let options = StringifyOptions { declaration: indent.is_some(), indent };
                let (xml, peak) = stringify_within(&value.to_string(), &options, max_bytes);
                match xml {
                    Ok(xml) => {
                        prop_assert!(xml.len() <= max_bytes);
                        prop_assert_eq!(parse_default(&xml).ok(), Some(value));
                    }
                    Err(error) => prop_assert_eq!(error, XmlError::StringifyMemory { limit_bytes: max_bytes }),
                }
                prop_assert!(peak <= max_bytes + SLACK, "stringify peak {} over {}", peak, max_bytes);
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
