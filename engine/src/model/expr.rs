//! The expression language inside `{{ ... }}`: lexer, parser, AST, printer
//! and evaluator.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := compare ("&&" compare)*
//! compare := unary (("==" | "!=" | "<" | "<=" | ">" | ">=") unary)?
//! unary   := "!" unary | primary
//! primary := literal | path | "(" expr ")"
//! path    := ("input" | "item" | "index" | "steps" "." ID "." "output") segment*
//! segment := "." NAME | "[" INTEGER "]" | "[" STRING "]"
//! literal := NUMBER | STRING | "true" | "false" | "null"
//! ```
//!
//! Invariants: parsing never panics and never recurses deeper than
//! [`MAX_DEPTH`]; `Expr::parse(&expr.to_string()) == Ok(expr)` for every
//! expression (the printer adds exactly the parentheses the grammar needs);
//! evaluation never fails: a path that leads nowhere is `null`, and operators
//! on values they do not apply to give `false`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;

use serde_json::{Number, Value};

/// How deeply parentheses and `!` may nest in one expression.
pub const MAX_DEPTH: usize = 64;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `null`, `true`, `false`, a number or a quoted string.
    Literal(Value),
    /// A path into the run's data: `input.x`, `steps.fetch.output.body`, `item[0]`.
    Path(Path),
    /// `!operand`: `true` when the operand is falsy.
    Not(Box<Expr>),
    /// `left op right`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `||`: the left operand if it is truthy, else the right one (as in JavaScript).
    Or,
    /// `&&`: the left operand if it is falsy, else the right one (as in JavaScript).
    And,
    /// `==`: deep equality of JSON values, numbers by value (`1 == 1.0`).
    Eq,
    /// `!=`: the negation of `==`.
    Ne,
    /// `<` on two numbers or two strings; `false` otherwise.
    Lt,
    /// `<=` on two numbers or two strings; `false` otherwise.
    Le,
    /// `>` on two numbers or two strings; `false` otherwise.
    Gt,
    /// `>=` on two numbers or two strings; `false` otherwise.
    Ge,
}

impl BinaryOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
        }
    }

    fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => PREC_OR,
            BinaryOp::And => PREC_AND,
            _ => PREC_COMPARE,
        }
    }
}

const PREC_OR: u8 = 1;
const PREC_AND: u8 = 2;
const PREC_COMPARE: u8 = 3;
const PREC_UNARY: u8 = 4;
const PREC_ATOM: u8 = 5;

/// A path: a root and the members and indexes taken from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// Where the path starts.
    pub root: Root,
    /// `.name`, `["name"]` and `[0]`, in order.
    pub segments: Vec<Segment>,
}

/// The start of a [`Path`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Root {
    /// `input`: the run's input.
    Input,
    /// `item`: the current element, inside a loop's steps.
    Item,
    /// `index`: the current element's index (from 0), inside a loop's steps.
    Index,
    /// `steps.<id>.output`: the output of an earlier step.
    Step(StepRef),
}

/// A reference to a step's output, `steps.<id>.output`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StepRef {
    /// The id as written (validation checks that such a step exists).
    pub id: String,
}

/// One step along a [`Path`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// `.name` or `["name"]`: an object member (or an array element, when
    /// the name is a whole number, as in JavaScript).
    Field(String),
    /// `[0]`: an array element (or the object member `"0"`, as in JavaScript).
    Index(u64),
}

/// A syntax error in an expression, at a byte offset of the text parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// Byte offset of the offending token in the text handed to the parser.
    pub offset: usize,
    /// What is wrong, e.g. `unexpected "."`.
    pub what: String,
    /// Advice appended after the position, e.g. `use "==" to compare`.
    pub hint: Option<String>,
}

impl SyntaxError {
    fn new(offset: usize, what: impl Into<String>) -> Self {
        Self {
            offset,
            what: what.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The sentence for this error: `what at column C of "text"; hint`.
    pub fn describe(&self, text: &str) -> String {
        let mut out = format!("{} at {}", self.what, position(text, self.offset));
        if let Some(hint) = &self.hint {
            out.push_str(" (");
            out.push_str(hint);
            out.push(')');
        }
        out
    }
}

/// `column C of "text"`, or `line L, column C of "that line"` for
/// multi-line text; long lines are cut around the column.
fn position(text: &str, offset: usize) -> String {
    let offset = floor_char_boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let line = &text[line_start..line_end];
    let column = text[line_start..offset].chars().count() + 1;
    let excerpt = excerpt(line, column);
    if text.contains('\n') {
        format!("line {line_no}, column {column} of \"{excerpt}\"")
    } else {
        format!("column {column} of \"{excerpt}\"")
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The line itself when short, else about 60 characters around `column`.
fn excerpt(line: &str, column: usize) -> Cow<'_, str> {
    const WIDTH: usize = 60;
    let count = line.chars().count();
    if count <= WIDTH + 20 {
        return Cow::Borrowed(line);
    }
    let start = column.saturating_sub(WIDTH / 2 + 1);
    let end = (start + WIDTH).min(count);
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(line.chars().skip(start).take(end - start));
    if end < count {
        out.push('…');
    }
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok<'s> {
    Ident(&'s str),
    Number(Number),
    Str(String),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Op(BinaryOp),
    Bang,
    /// `}}`: the end of a template expression.
    Close,
    /// The end of the text.
    End,
}

impl Tok<'_> {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("\"{s}\""),
            Tok::Number(n) => format!("\"{n}\""),
            Tok::Str(_) => "a string".to_owned(),
            Tok::Dot => "\".\"".to_owned(),
            Tok::LBracket => "\"[\"".to_owned(),
            Tok::RBracket => "\"]\"".to_owned(),
            Tok::LParen => "\"(\"".to_owned(),
            Tok::RParen => "\")\"".to_owned(),
            Tok::Op(op) => format!("\"{}\"", op.symbol()),
            Tok::Bang => "\"!\"".to_owned(),
            Tok::Close => "\"}}\"".to_owned(),
            Tok::End => "end of text".to_owned(),
        }
    }
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl<'s> Lexer<'s> {
    fn peek_byte(&self, ahead: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + ahead).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b) = self.peek_byte(0) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The next token and the byte offset where it starts.
    fn next(&mut self) -> Result<(Tok<'s>, usize), SyntaxError> {
        self.skip_whitespace();
        let start = self.pos;
        let Some(b) = self.peek_byte(0) else {
            return Ok((Tok::End, start));
        };
        let two = |lexer: &mut Self, tok: Tok<'s>| {
            lexer.pos += 2;
            Ok((tok, start))
        };
        let one = |lexer: &mut Self, tok: Tok<'s>| {
            lexer.pos += 1;
            Ok((tok, start))
        };
        let next = self.peek_byte(1);
        match b {
            b'.' => one(self, Tok::Dot),
            b'[' => one(self, Tok::LBracket),
            b']' => one(self, Tok::RBracket),
            b'(' => one(self, Tok::LParen),
            b')' => one(self, Tok::RParen),
            b'}' if next == Some(b'}') => two(self, Tok::Close),
            b'=' if next == Some(b'=') => two(self, Tok::Op(BinaryOp::Eq)),
            b'!' if next == Some(b'=') => two(self, Tok::Op(BinaryOp::Ne)),
            b'<' if next == Some(b'=') => two(self, Tok::Op(BinaryOp::Le)),
            b'>' if next == Some(b'=') => two(self, Tok::Op(BinaryOp::Ge)),
            b'&' if next == Some(b'&') => two(self, Tok::Op(BinaryOp::And)),
            b'|' if next == Some(b'|') => two(self, Tok::Op(BinaryOp::Or)),
            b'!' => one(self, Tok::Bang),
            b'<' => one(self, Tok::Op(BinaryOp::Lt)),
            b'>' => one(self, Tok::Op(BinaryOp::Gt)),
            b'=' => Err(SyntaxError::new(start, "unexpected \"=\"").hint("use \"==\" to compare")),
            b'&' => Err(SyntaxError::new(start, "unexpected \"&\"").hint("use \"&&\"")),
            b'|' => Err(SyntaxError::new(start, "unexpected \"|\"").hint("use \"||\"")),
            b'"' | b'\'' => self.string(b),
            b'-' | b'0'..=b'9' => self.number(),
            b if is_ident_start(b) => {
                while self.peek_byte(0).is_some_and(is_ident_continue) {
                    self.pos += 1;
                }
                Ok((Tok::Ident(&self.src[start..self.pos]), start))
            }
            _ => {
                let c = self.src[start..].chars().next().unwrap_or('?');
                Err(SyntaxError::new(start, format!("unexpected \"{c}\"")))
            }
        }
    }

    fn number(&mut self) -> Result<(Tok<'s>, usize), SyntaxError> {
        let start = self.pos;
        let digits = |lexer: &mut Self| {
            let from = lexer.pos;
            while lexer.peek_byte(0).is_some_and(|b| b.is_ascii_digit()) {
                lexer.pos += 1;
            }
            lexer.pos - from
        };
        if self.peek_byte(0) == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let mut valid = digits(self) > 0;
        // As in JSON: no leading zeros.
        if self.pos - int_start > 1 && self.src.as_bytes()[int_start] == b'0' {
            valid = false;
        }
        let mut float = false;
        if self.peek_byte(0) == Some(b'.') && self.peek_byte(1).is_some_and(|b| b.is_ascii_digit())
        {
            self.pos += 1;
            digits(self);
            float = true;
        }
        if matches!(self.peek_byte(0), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek_byte(0), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            valid &= digits(self) > 0;
            float = true;
        }
        // A number runs into no letter: `1abc` is a typo, not `1` then `abc`.
        while self.peek_byte(0).is_some_and(is_ident_continue) {
            self.pos += 1;
            valid = false;
        }
        let text = &self.src[start..self.pos];
        let number = if valid {
            parse_number(text, float)
        } else {
            None
        };
        match number {
            Some(n) => Ok((Tok::Number(n), start)),
            None => Err(SyntaxError::new(
                start,
                format!("invalid number \"{text}\""),
            )),
        }
    }

    fn string(&mut self, quote: u8) -> Result<(Tok<'s>, usize), SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = &self.src[self.pos..];
            let Some(c) = rest.chars().next() else {
                return Err(SyntaxError::new(start, "unterminated string"));
            };
            if c as u32 == u32::from(quote) {
                self.pos += 1;
                return Ok((Tok::Str(out), start));
            }
            if c != '\\' {
                out.push(c);
                self.pos += c.len_utf8();
                continue;
            }
            let escape_at = self.pos;
            self.pos += 1;
            let Some(e) = self.src[self.pos..].chars().next() else {
                return Err(SyntaxError::new(start, "unterminated string"));
            };
            self.pos += e.len_utf8();
            match e {
                '\\' | '"' | '\'' => out.push(e),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => out.push(self.unicode_escape(escape_at)?),
                _ => {
                    return Err(
                        SyntaxError::new(escape_at, format!("unknown escape \"\\{e}\""))
                            .hint("use \\\\, \\\", \\', \\n, \\r, \\t or \\u{...}"),
                    );
                }
            }
        }
    }

    /// `\u{1F600}`: after the `u`.
    fn unicode_escape(&mut self, escape_at: usize) -> Result<char, SyntaxError> {
        let bad = || {
            SyntaxError::new(escape_at, "invalid \\u escape")
                .hint("write \\u{...} with 1 to 6 hex digits")
        };
        if self.peek_byte(0) != Some(b'{') {
            return Err(bad());
        }
        self.pos += 1;
        let from = self.pos;
        while self.peek_byte(0).is_some_and(|b| b.is_ascii_hexdigit()) {
            self.pos += 1;
        }
        let hex = &self.src[from..self.pos];
        if hex.is_empty() || hex.len() > 6 || self.peek_byte(0) != Some(b'}') {
            return Err(bad());
        }
        self.pos += 1;
        u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(bad)
    }
}

/// A number literal's value, exactly as JSON would read it: whole numbers as
/// integers when they fit, everything else as the nearest `f64`.
pub(crate) fn parse_number(text: &str, float: bool) -> Option<Number> {
    if !float {
        if let Ok(n) = text.parse::<u64>() {
            return Some(Number::from(n));
        }
        if let Ok(n) = text.parse::<i64>() {
            return Some(Number::from(n));
        }
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

// ---------------------------------------------------------------------------
// Parser

pub(crate) struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<(Tok<'s>, usize)>,
    depth: usize,
}

impl<'s> Parser<'s> {
    /// A parser reading `src` from byte offset `pos`.
    pub fn new(src: &'s str, pos: usize) -> Self {
        Self {
            lexer: Lexer { src, pos },
            peeked: None,
            depth: 0,
        }
    }

    /// The byte offset just after the last token taken.
    pub fn pos(&self) -> usize {
        debug_assert!(
            self.peeked.is_none(),
            "pos is only meaningful between tokens"
        );
        self.lexer.pos
    }

    fn peek(&mut self) -> Result<&(Tok<'s>, usize), SyntaxError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lexer.next()?);
        }
        Ok(self.peeked.as_ref().expect("filled just above"))
    }

    fn take(&mut self) -> Result<(Tok<'s>, usize), SyntaxError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lexer.next(),
        }
    }

    fn unexpected(tok: &Tok<'_>, at: usize) -> SyntaxError {
        SyntaxError::new(at, format!("unexpected {}", tok.describe()))
    }

    /// One expression, then `end` (either [`Tok::Close`] or [`Tok::End`]).
    fn expression_then(&mut self, close: bool) -> Result<Expr, SyntaxError> {
        let expr = self.or()?;
        let (tok, at) = self.take()?;
        match tok {
            Tok::Close if close => Ok(expr),
            Tok::End if !close => Ok(expr),
            Tok::Op(op) if op.precedence() == PREC_COMPARE => {
                Err(Self::unexpected(&tok, at).hint("comparisons do not chain; add parentheses"))
            }
            _ => Err(Self::unexpected(&tok, at)),
        }
    }

    /// An expression followed by `}}`; [`Parser::pos`] is then just after it.
    pub fn template_expression(&mut self) -> Result<Expr, SyntaxError> {
        self.expression_then(true)
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        let mut left = self.and()?;
        while matches!(self.peek()?.0, Tok::Op(BinaryOp::Or)) {
            self.take()?;
            let right = self.and()?;
            left = Expr::Binary(BinaryOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        let mut left = self.compare()?;
        while matches!(self.peek()?.0, Tok::Op(BinaryOp::And)) {
            self.take()?;
            let right = self.compare()?;
            left = Expr::Binary(BinaryOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn compare(&mut self) -> Result<Expr, SyntaxError> {
        let left = self.unary()?;
        let op = match self.peek()?.0 {
            Tok::Op(op) if op.precedence() == PREC_COMPARE => op,
            _ => return Ok(left),
        };
        self.take()?;
        let right = self.unary()?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn nest(&mut self, at: usize) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SyntaxError::new(
                at,
                format!("expression nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        let at = self.peek()?.1;
        if self.peek()?.0 == Tok::Bang {
            self.take()?;
            self.nest(at)?;
            let operand = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(operand)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let (tok, at) = self.take()?;
        match tok {
            Tok::Number(n) => Ok(Expr::Literal(Value::Number(n))),
            Tok::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Tok::LParen => {
                self.nest(at)?;
                let inner = self.or()?;
                self.depth -= 1;
                match self.take()? {
                    (Tok::RParen, _) => Ok(inner),
                    (tok, at) => Err(Self::unexpected(&tok, at).hint("expected \")\"")),
                }
            }
            Tok::Ident("null") => Ok(Expr::Literal(Value::Null)),
            Tok::Ident("true") => Ok(Expr::Literal(Value::Bool(true))),
            Tok::Ident("false") => Ok(Expr::Literal(Value::Bool(false))),
            Tok::Ident(name) => {
                let root = self.root(name, at)?;
                let segments = self.segments()?;
                Ok(Expr::Path(Path { root, segments }))
            }
            Tok::Close | Tok::End => Err(SyntaxError::new(
                at,
                format!("expected an expression, found {}", tok.describe()),
            )),
            _ => Err(Self::unexpected(&tok, at)),
        }
    }

    fn root(&mut self, name: &str, at: usize) -> Result<Root, SyntaxError> {
        match name {
            "input" => Ok(Root::Input),
            "item" => Ok(Root::Item),
            "index" => Ok(Root::Index),
            "steps" => {
                self.expect_dot("expected a step id after \"steps.\"")?;
                let id = match self.take()? {
                    (Tok::Ident(id), _) => id.to_owned(),
                    (tok, at) => {
                        return Err(
                            Self::unexpected(&tok, at).hint("expected a step id after \"steps.\"")
                        );
                    }
                };
                let hint = format!("a step's output is read as steps.{id}.output");
                self.expect_dot(&hint)?;
                match self.take()? {
                    (Tok::Ident("output"), _) => Ok(Root::Step(StepRef { id })),
                    (tok, at) => Err(Self::unexpected(&tok, at).hint(hint)),
                }
            }
            _ => Err(SyntaxError::new(at, format!("unknown name \"{name}\""))
                .hint("expected input, steps, item, index, true, false or null")),
        }
    }

    fn expect_dot(&mut self, hint: &str) -> Result<(), SyntaxError> {
        match self.take()? {
            (Tok::Dot, _) => Ok(()),
            (tok, at) => Err(Self::unexpected(&tok, at).hint(hint)),
        }
    }

    fn segments(&mut self) -> Result<Vec<Segment>, SyntaxError> {
        let mut segments = Vec::new();
        loop {
            match self.peek()?.0 {
                Tok::Dot => {
                    self.take()?;
                    match self.take()? {
                        (Tok::Ident(name), _) => segments.push(Segment::Field(name.to_owned())),
                        (tok, at) => {
                            return Err(Self::unexpected(&tok, at).hint(
                                "expected a name after \".\"; use [\"...\"] for other names",
                            ));
                        }
                    }
                }
                Tok::LBracket => {
                    self.take()?;
                    let (tok, at) = self.take()?;
                    let segment = match tok {
                        Tok::Str(name) => Segment::Field(name),
                        Tok::Number(n) if n.is_u64() => {
                            Segment::Index(n.as_u64().expect("checked is_u64"))
                        }
                        tok => {
                            return Err(Self::unexpected(&tok, at)
                                .hint("expected an index (0, 1, ...) or a quoted name"));
                        }
                    };
                    match self.take()? {
                        (Tok::RBracket, _) => segments.push(segment),
                        (tok, at) => return Err(Self::unexpected(&tok, at).hint("expected \"]\"")),
                    }
                }
                _ => return Ok(segments),
            }
        }
    }
}

impl Expr {
    /// Parses a bare expression (without the `{{ }}` around it).
    ///
    /// # Errors
    /// A sentence naming the problem and its column, e.g.
    /// `unexpected "." at column 9 of "steps.a..b"`.
    pub fn parse(text: &str) -> Result<Expr, String> {
        Parser::new(text, 0)
            .expression_then(false)
            .map_err(|e| e.describe(text))
    }

    /// Every path in the expression, left to right.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.collect_paths(&mut out);
        out
    }

    pub(crate) fn collect_paths<'e>(&'e self, out: &mut Vec<&'e Path>) {
        match self {
            Expr::Literal(_) => {}
            Expr::Path(p) => out.push(p),
            Expr::Not(e) => e.collect_paths(out),
            Expr::Binary(_, l, r) => {
                l.collect_paths(out);
                r.collect_paths(out);
            }
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Expr::Literal(_) | Expr::Path(_) => PREC_ATOM,
            Expr::Not(_) => PREC_UNARY,
            Expr::Binary(op, ..) => op.precedence(),
        }
    }

    /// Writes `self`, in parentheses when its precedence is below `min`.
    fn fmt_at(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        let paren = self.precedence() < min;
        if paren {
            f.write_str("(")?;
        }
        match self {
            Expr::Literal(v) => fmt_literal(v, f)?,
            Expr::Path(p) => write!(f, "{p}")?,
            Expr::Not(e) => {
                f.write_str("!")?;
                e.fmt_at(f, PREC_UNARY)?;
            }
            Expr::Binary(op, l, r) => {
                let p = op.precedence();
                // `||` and `&&` associate to the left; comparisons do not chain.
                let (left_min, right_min) = if p == PREC_COMPARE {
                    (PREC_UNARY, PREC_UNARY)
                } else {
                    (p, p + 1)
                };
                l.fmt_at(f, left_min)?;
                write!(f, " {} ", op.symbol())?;
                r.fmt_at(f, right_min)?;
            }
        }
        if paren {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_at(f, 0)
    }
}

fn fmt_literal(v: &Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match v {
        Value::String(s) => fmt_string(s, f),
        // Only scalars are literals; a compound value prints as its JSON,
        // which the parser does not read back.
        other => write!(f, "{other}"),
    }
}

fn fmt_string(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

fn is_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(|&b| is_ident_start(b)) && bytes.iter().all(|&b| is_ident_continue(b))
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Input => f.write_str("input")?,
            Root::Item => f.write_str("item")?,
            Root::Index => f.write_str("index")?,
            Root::Step(r) => write!(f, "steps.{}.output", r.id)?,
        }
        for segment in &self.segments {
            match segment {
                Segment::Field(name) if is_identifier(name) => write!(f, ".{name}")?,
                Segment::Field(name) => {
                    f.write_str("[")?;
                    fmt_string(name, f)?;
                    f.write_str("]")?;
                }
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Evaluation

/// Where expressions find step outputs: implemented for the usual maps from
/// step id to output, and by the engine for its own stores.
pub trait StepOutputs {
    /// The output of step `id`, or `None` when it has none (not run, skipped).
    fn output(&self, id: &str) -> Option<&Value>;
}

impl<S: BuildHasher> StepOutputs for HashMap<String, Value, S> {
    fn output(&self, id: &str) -> Option<&Value> {
        self.get(id)
    }
}

impl StepOutputs for BTreeMap<String, Value> {
    fn output(&self, id: &str) -> Option<&Value> {
        self.get(id)
    }
}

impl StepOutputs for serde_json::Map<String, Value> {
    fn output(&self, id: &str) -> Option<&Value> {
        self.get(id)
    }
}

/// Looks in `.0` first, then in `.1`: a loop iteration's own step outputs
/// over the outputs of the top-level steps before the loop.
impl<A: StepOutputs, B: StepOutputs> StepOutputs for (A, B) {
    fn output(&self, id: &str) -> Option<&Value> {
        self.0.output(id).or_else(|| self.1.output(id))
    }
}

impl<T: StepOutputs + ?Sized> StepOutputs for &T {
    fn output(&self, id: &str) -> Option<&Value> {
        (**self).output(id)
    }
}

/// What an expression can see: the run's input, the outputs of earlier
/// steps, and inside a loop's steps the current item and its index.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    input: &'a Value,
    steps: &'a dyn StepOutputs,
    item: Option<(&'a Value, usize)>,
}

impl fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("input", self.input)
            .field("item", &self.item)
            .finish_non_exhaustive()
    }
}

impl<'a> Scope<'a> {
    /// A scope outside any loop.
    pub fn new(input: &'a Value, steps: &'a dyn StepOutputs) -> Self {
        Self {
            input,
            steps,
            item: None,
        }
    }

    /// The same scope inside a loop, at element `index` (from 0) whose value is `item`.
    #[must_use]
    pub fn with_item(self, item: &'a Value, index: usize) -> Self {
        Self {
            item: Some((item, index)),
            ..self
        }
    }
}

static NULL: Value = Value::Null;

/// Evaluates `expr`. Never fails: a path that leads nowhere is `null`.
pub fn eval(expr: &Expr, scope: &Scope<'_>) -> Value {
    eval_ref(expr, scope).into_owned()
}

/// [`eval`] without copying values that already exist in the scope.
pub(crate) fn eval_ref<'a>(expr: &'a Expr, scope: &Scope<'a>) -> Cow<'a, Value> {
    match expr {
        Expr::Literal(v) => Cow::Borrowed(v),
        Expr::Path(p) => resolve(p, scope),
        Expr::Not(e) => Cow::Owned(Value::Bool(!truthy(&eval_ref(e, scope)))),
        Expr::Binary(BinaryOp::Or, l, r) => {
            let left = eval_ref(l, scope);
            if truthy(&left) {
                left
            } else {
                eval_ref(r, scope)
            }
        }
        Expr::Binary(BinaryOp::And, l, r) => {
            let left = eval_ref(l, scope);
            if truthy(&left) {
                eval_ref(r, scope)
            } else {
                left
            }
        }
        Expr::Binary(op, l, r) => {
            let (left, right) = (eval_ref(l, scope), eval_ref(r, scope));
            Cow::Owned(Value::Bool(compare(*op, &left, &right)))
        }
    }
}

fn resolve<'a>(path: &Path, scope: &Scope<'a>) -> Cow<'a, Value> {
    let mut current: &'a Value = match &path.root {
        Root::Input => scope.input,
        Root::Item => scope.item.map_or(&NULL, |(item, _)| item),
        Root::Step(r) => scope.steps.output(&r.id).unwrap_or(&NULL),
        Root::Index => {
            return match (scope.item, path.segments.is_empty()) {
                (Some((_, index)), true) => Cow::Owned(Value::from(index)),
                _ => Cow::Borrowed(&NULL),
            };
        }
    };
    for segment in &path.segments {
        let next = match (current, segment) {
            (Value::Object(map), Segment::Field(name)) => map.get(name),
            (Value::Object(map), Segment::Index(i)) => map.get(&i.to_string()),
            (Value::Array(items), Segment::Index(i)) => {
                usize::try_from(*i).ok().and_then(|i| items.get(i))
            }
            (Value::Array(items), Segment::Field(name)) => {
                array_index(name).and_then(|i| items.get(i))
            }
            _ => None,
        };
        current = next.unwrap_or(&NULL);
    }
    Cow::Borrowed(current)
}

/// `"3"` names element 3 of an array, as in JavaScript; `"03"` does not.
fn array_index(name: &str) -> Option<usize> {
    let i: usize = name.parse().ok()?;
    (i.to_string() == name).then_some(i)
}

/// JavaScript's truthiness: `null`, `false`, `0` and `""` are falsy;
/// everything else, empty arrays and objects included, is truthy.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn compare(op: BinaryOp, l: &Value, r: &Value) -> bool {
    use std::cmp::Ordering;
    let ordering = match (l, r) {
        (Value::Number(a), Value::Number(b)) => number_cmp(a, b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    };
    match op {
        BinaryOp::Eq => deep_equal(l, r),
        BinaryOp::Ne => !deep_equal(l, r),
        BinaryOp::Lt => ordering == Some(Ordering::Less),
        BinaryOp::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        BinaryOp::Gt => ordering == Some(Ordering::Greater),
        BinaryOp::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
        BinaryOp::And | BinaryOp::Or => unreachable!("handled by eval_ref"),
    }
}

fn number_cmp(a: &Number, b: &Number) -> Option<std::cmp::Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// Equality of JSON values: numbers by value, objects regardless of key order.
pub fn deep_equal(l: &Value, r: &Value) -> bool {
    match (l, r) {
        (Value::Number(a), Value::Number(b)) => number_cmp(a, b) == Some(std::cmp::Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| deep_equal(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| deep_equal(v, w)))
        }
        _ => l == r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse_err(text: &str) -> String {
        Expr::parse(text).expect_err("should not parse")
    }

    fn eval_str(text: &str, input: Value, steps: &serde_json::Map<String, Value>) -> Value {
        let expr = Expr::parse(text).expect("parses");
        eval(&expr, &Scope::new(&input, steps))
    }

    #[test]
    fn parses_paths() {
        let e = Expr::parse(r#"steps.fetch.output.body["content-type"][0].x"#).expect("parses");
        assert_eq!(
            e,
            Expr::Path(Path {
                root: Root::Step(StepRef { id: "fetch".into() }),
                segments: vec![
                    Segment::Field("body".into()),
                    Segment::Field("content-type".into()),
                    Segment::Index(0),
                    Segment::Field("x".into()),
                ],
            })
        );
    }

    #[test]
    fn precedence_and_associativity() {
        let e = Expr::parse("a_is_not_a_root").expect_err("unknown root");
        assert!(
            e.starts_with("unknown name \"a_is_not_a_root\" at column 1"),
            "{e}"
        );
        let e = Expr::parse("input.a || input.b && !input.c == 1").expect("parses");
        assert_eq!(e.to_string(), "input.a || input.b && !input.c == 1");
        let Expr::Binary(BinaryOp::Or, _, right) = &e else {
            panic!("|| at the top: {e:?}")
        };
        let Expr::Binary(BinaryOp::And, _, cmp) = &**right else {
            panic!("&& below ||")
        };
        assert!(matches!(&**cmp, Expr::Binary(BinaryOp::Eq, l, _) if matches!(**l, Expr::Not(_))));
        let e = Expr::parse("(input.a || input.b) && input.c").expect("parses");
        assert_eq!(e.to_string(), "(input.a || input.b) && input.c");
        let e = Expr::parse("input.a || (input.b || input.c)").expect("parses");
        assert_eq!(e.to_string(), "input.a || (input.b || input.c)");
    }

    #[test]
    fn errors_name_the_column() {
        assert_eq!(
            parse_err("steps.a..b"),
            "unexpected \".\" at column 9 of \"steps.a..b\" (a step's output is read as steps.a.output)"
        );
        assert_eq!(
            parse_err("input.x = 1"),
            "unexpected \"=\" at column 9 of \"input.x = 1\" (use \"==\" to compare)"
        );
        assert_eq!(
            parse_err("'abc"),
            "unterminated string at column 1 of \"'abc\""
        );
        assert_eq!(
            parse_err("input[-1]"),
            "unexpected \"-1\" at column 7 of \"input[-1]\" (expected an index (0, 1, ...) or a quoted name)"
        );
        assert_eq!(
            parse_err("01"),
            "invalid number \"01\" at column 1 of \"01\""
        );
        assert_eq!(
            parse_err(""),
            "expected an expression, found end of text at column 1 of \"\""
        );
        assert_eq!(
            parse_err("1 < 2 < 3"),
            "unexpected \"<\" at column 7 of \"1 < 2 < 3\" (comparisons do not chain; add parentheses)"
        );
        assert!(
            parse_err(&"(".repeat(100)).starts_with("expression nested more than 64 levels deep")
        );
        assert!(
            parse_err(&"!".repeat(100)).starts_with("expression nested more than 64 levels deep")
        );
    }

    #[test]
    fn long_and_multiline_text_is_excerpted() {
        let long = format!("{} ?", "input.a || ".repeat(20));
        let e = parse_err(&long);
        assert!(
            e.starts_with("unexpected \"?\" at column 222 of \"…"),
            "{e}"
        );
        assert!(e.len() < 120, "{e}");
        let e = parse_err("input.a ||\n  ?");
        assert_eq!(e, "unexpected \"?\" at line 2, column 3 of \"  ?\"");
    }

    #[test]
    fn strings_and_escapes() {
        let e = Expr::parse(r#"'it\'s' == "a\"b\\c\n\u{1F600}""#).expect("parses");
        let Expr::Binary(_, l, r) = e else { panic!() };
        assert_eq!(*l, Expr::Literal(json!("it's")));
        assert_eq!(*r, Expr::Literal(json!("a\"b\\c\n😀")));
        assert!(parse_err(r#""\q""#).starts_with("unknown escape \"\\q\" at column 2"));
        assert!(parse_err(r#""\u{110000}""#).starts_with("invalid \\u escape at column 2"));
    }

    #[test]
    fn evaluates_paths_and_missing_values() {
        let steps = json!({"fetch": {"body": {"orders": [{"id": 1}, {"id": 2}], "0": "zero"}}});
        let steps = steps.as_object().expect("object").clone();
        let input = json!({"x": {"y": [10, 20]}});
        assert_eq!(eval_str("input.x.y[1]", input.clone(), &steps), json!(20));
        assert_eq!(
            eval_str("input.x.y[\"1\"]", input.clone(), &steps),
            json!(20)
        );
        assert_eq!(
            eval_str("input.x.nope.deeper", input.clone(), &steps),
            Value::Null
        );
        assert_eq!(
            eval_str(
                "steps.fetch.output.body.orders[1].id",
                input.clone(),
                &steps
            ),
            json!(2)
        );
        assert_eq!(
            eval_str("steps.fetch.output.body[0]", input.clone(), &steps),
            json!("zero")
        );
        assert_eq!(
            eval_str("steps.other.output", input.clone(), &steps),
            Value::Null
        );
        assert_eq!(eval_str("item", input.clone(), &steps), Value::Null);
        assert_eq!(eval_str("index", input, &steps), Value::Null);
    }

    #[test]
    fn item_and_index_inside_a_loop() {
        let input = json!(null);
        let item = json!({"sku": "A"});
        let steps = serde_json::Map::new();
        let scope = Scope::new(&input, &steps).with_item(&item, 7);
        assert_eq!(
            eval(&Expr::parse("item.sku").expect("parses"), &scope),
            json!("A")
        );
        assert_eq!(
            eval(&Expr::parse("index").expect("parses"), &scope),
            json!(7)
        );
        assert_eq!(
            eval(&Expr::parse("index.x").expect("parses"), &scope),
            Value::Null
        );
    }

    #[test]
    fn layered_step_outputs() {
        let local: HashMap<String, Value> = [("a".to_owned(), json!(1))].into();
        let global: BTreeMap<String, Value> =
            [("a".to_owned(), json!(2)), ("b".to_owned(), json!(3))].into();
        let layered = (&local, &global);
        let input = Value::Null;
        let scope = Scope::new(&input, &layered);
        assert_eq!(
            eval(&Expr::parse("steps.a.output").expect("parses"), &scope),
            json!(1)
        );
        assert_eq!(
            eval(&Expr::parse("steps.b.output").expect("parses"), &scope),
            json!(3)
        );
    }

    #[test]
    fn operators_follow_javascript_where_it_is_sane() {
        let steps = serde_json::Map::new();
        let input = json!({"n": 0, "s": "", "a": [], "o": {}, "name": "x"});
        let cases = [
            ("input.n || 'default'", json!("default")),
            ("input.name || 'default'", json!("x")),
            ("input.a && 'yes'", json!("yes")),
            ("input.s && 'yes'", json!("")),
            ("!input.o", json!(false)),
            ("!input.missing", json!(true)),
            ("1 == 1.0", json!(true)),
            ("input.o == input.o", json!(true)),
            ("'a' < 'b'", json!(true)),
            ("2 >= 10", json!(false)),
            ("'2' < 10", json!(false)),
            ("null < 1", json!(false)),
            ("null == input.missing", json!(true)),
            ("-1.5e1 < -2", json!(true)),
            ("18446744073709551615 > 9223372036854775807", json!(true)),
        ];
        for (text, want) in cases {
            assert_eq!(eval_str(text, input.clone(), &steps), want, "{text}");
        }
        assert!(deep_equal(
            &json!({"a": 1, "b": [1.0]}),
            &json!({"b": [1], "a": 1.0})
        ));
        assert!(!deep_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z_][a-z0-9_]{0,6}", any::<String>(),]
    }

    fn arb_literal() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            any::<String>().prop_map(Value::String),
        ]
    }

    fn arb_path() -> impl Strategy<Value = Path> {
        let root = prop_oneof![
            Just(Root::Input),
            Just(Root::Item),
            Just(Root::Index),
            "[a-z][a-z0-9_]{0,8}".prop_map(|id| Root::Step(StepRef { id })),
        ];
        let segment = prop_oneof![
            arb_name().prop_map(Segment::Field),
            any::<u64>().prop_map(Segment::Index)
        ];
        (root, prop::collection::vec(segment, 0..4))
            .prop_map(|(root, segments)| Path { root, segments })
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![
            arb_literal().prop_map(Expr::Literal),
            arb_path().prop_map(Expr::Path)
        ];
        leaf.prop_recursive(6, 48, 2, |inner| {
            let op = prop_oneof![
                Just(BinaryOp::Or),
                Just(BinaryOp::And),
                Just(BinaryOp::Eq),
                Just(BinaryOp::Ne),
                Just(BinaryOp::Lt),
                Just(BinaryOp::Le),
                Just(BinaryOp::Gt),
                Just(BinaryOp::Ge),
            ];
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
                (op, inner.clone(), inner).prop_map(|(op, l, r)| Expr::Binary(
                    op,
                    Box::new(l),
                    Box::new(r)
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = Expr::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_expression_like_text(text in r#"[a-z.\[\]()'"!=<>&| 0-9\\{}-]{0,40}"#) {
            let _ = Expr::parse(&text);
        }

        #[test]
        fn parse_of_display_is_identity(expr in arb_expr()) {
            let text = expr.to_string();
            prop_assert_eq!(Expr::parse(&text), Ok(expr), "{}", text);
        }
    }
}
