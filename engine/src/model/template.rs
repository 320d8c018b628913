//! Templates: strings with `{{ expression }}` inside, and JSON values whose
//! strings are templates.
//!
//! A string that is exactly one `{{ expression }}` (whitespace around it
//! allowed) is *whole* and renders to the expression's JSON value, of any
//! type. Any other string interpolates: text as is, string values as they
//! are, `null` as nothing, other values as compact JSON. Object keys are
//! never templates. A literal `{{` is written `{{ "{{" }}`.
//!
//! Invariants: a template keeps the text it was parsed from, so serialising
//! it gives back exactly what the user wrote; two templates are equal when
//! their texts are.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::expr::{self, Expr, Parser, Path, Scope, StepRef, SyntaxError};

/// A syntax error in a template string: one sentence naming the column,
/// e.g. `unexpected "." at column 12 of "{{ steps.a..b }}"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    message: String,
    /// Line of the error within the template text, from 0.
    line_offset: usize,
}

impl TemplateError {
    fn new(text: &str, error: &SyntaxError) -> Self {
        let before = &text[..error.offset.min(text.len())];
        Self {
            message: error.describe(text),
            line_offset: before.matches('\n').count(),
        }
    }

    /// How many lines into the template text the error is (0 for the first).
    pub fn line_offset(&self) -> usize {
        self.line_offset
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TemplateError {}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Expr),
}

/// A string with `{{ expression }}`s in it.
#[derive(Clone)]
pub struct TemplateString {
    raw: String,
    parts: Vec<Part>,
    /// Exactly one expression, with nothing but whitespace around it.
    whole: bool,
}

impl TemplateString {
    /// Parses `raw`.
    ///
    /// # Errors
    /// The first syntax error, with its column.
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest_at = 0;
        while let Some(found) = raw[rest_at..].find("{{") {
            let open = rest_at + found;
            if open > rest_at {
                parts.push(Part::Text(raw[rest_at..open].to_owned()));
            }
            let mut parser = Parser::new(raw, open + 2);
            let expr = parser.template_expression().map_err(|e| {
                let e = if e.what.ends_with("end of text") {
                    SyntaxError {
                        offset: open,
                        what: "unclosed \"{{\"".to_owned(),
                        hint: Some("end the expression with \"}}\"".to_owned()),
                    }
                } else {
                    e
                };
                TemplateError::new(raw, &e)
            })?;
            parts.push(Part::Expr(expr));
            rest_at = parser.pos();
        }
        if rest_at < raw.len() {
            parts.push(Part::Text(raw[rest_at..].to_owned()));
        }
        let mut exprs = 0;
        let mut other_text = false;
        for part in &parts {
            match part {
                Part::Expr(_) => exprs += 1,
                Part::Text(t) => other_text |= !t.trim().is_empty(),
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            whole: exprs == 1 && !other_text,
            parts,
        })
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the text has no `{{ }}`: it renders to itself.
    pub fn is_literal(&self) -> bool {
        !self.parts.iter().any(|p| matches!(p, Part::Expr(_)))
    }

    /// The expression, when the text is exactly one `{{ expression }}`.
    pub fn whole_expression(&self) -> Option<&Expr> {
        if !self.whole {
            return None;
        }
        self.expressions().next()
    }

    /// The expressions, left to right.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }

    /// The text before the first expression (all of it when there is none).
    pub fn leading_text(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }

    /// Renders to a JSON value: a whole expression's value, else a string.
    pub fn render(&self, scope: &Scope<'_>) -> Value {
        if let Some(e) = self.whole_expression() {
            return expr::eval(e, scope);
        }
        Value::String(self.render_string(scope).into_owned())
    }

    /// Renders to a string, as for a URL or a header: each expression's value
    /// interpolated (strings as they are, `null` as nothing, others as JSON).
    pub fn render_string(&self, scope: &Scope<'_>) -> Cow<'_, str> {
        if self.is_literal() {
            return Cow::Borrowed(&self.raw);
        }
        let mut out = String::with_capacity(self.raw.len());
        for part in &self.parts {
            match part {
                // Whitespace around a whole expression is layout, not content.
                Part::Text(_) if self.whole => {}
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => match expr::eval_ref(e, scope).as_ref() {
                    Value::Null => {}
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Cow::Owned(out)
    }

    /// Every path in the expressions, left to right.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        let mut out = Vec::new();
        for e in self.expressions() {
            e.collect_paths(&mut out);
        }
        out.into_iter()
    }

    /// Every `steps.<id>.output` referenced, left to right.
    pub fn references(&self) -> impl Iterator<Item = &StepRef> {
        self.paths().filter_map(|p| match &p.root {
            expr::Root::Step(r) => Some(r),
            _ => None,
        })
    }
}

impl PartialEq for TemplateString {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl fmt::Debug for TemplateString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TemplateString({:?})", self.raw)
    }
}

impl fmt::Display for TemplateString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for TemplateString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for TemplateString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Numbers and booleans are accepted as their text, as the loader
        // does, so that `limit: 100` works in a query.
        let text = match Value::deserialize(deserializer)? {
            Value::String(s) => s,
            v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
            _ => return Err(serde::de::Error::custom("expected a string")),
        };
        TemplateString::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for TemplateString {
    fn schema_name() -> Cow<'static, str> {
        "TemplateString".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A string with `{{ expression }}`s in it (numbers and booleans are taken as their text).",
            "type": ["string", "number", "boolean"]
        })
    }
}

/// One node of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// A subtree with no expression anywhere: rendered by copying it.
    Literal(Value),
    String(TemplateString),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// A JSON value whose strings are [`TemplateString`]s.
#[derive(Clone, PartialEq)]
pub struct Template(Node);

impl Template {
    /// A template with no expressions: renders to `value`. Strings in it are
    /// taken as they are, `{{` included.
    pub fn literal(value: Value) -> Self {
        Self(Node::Literal(value))
    }

    /// A template that is one template string.
    pub fn string(s: TemplateString) -> Self {
        if s.is_literal() {
            return Self(Node::Literal(Value::String(s.raw)));
        }
        Self(Node::String(s))
    }

    /// An array of templates.
    pub fn array(items: Vec<Template>) -> Self {
        if items.iter().all(|t| matches!(t.0, Node::Literal(_))) {
            return Self::literal(Value::Array(
                items.into_iter().map(Template::into_value).collect(),
            ));
        }
        Self(Node::Array(items.into_iter().map(|t| t.0).collect()))
    }

    /// An object of templates, keys in order.
    pub fn object(entries: Vec<(String, Template)>) -> Self {
        if entries.iter().all(|(_, t)| matches!(t.0, Node::Literal(_))) {
            return Self::literal(Value::Object(
                entries
                    .into_iter()
                    .map(|(k, t)| (k, t.into_value()))
                    .collect(),
            ));
        }
        Self(Node::Object(
            entries.into_iter().map(|(k, t)| (k, t.0)).collect(),
        ))
    }

    /// Parses every string of `value` as a template string.
    ///
    /// # Errors
    /// The first syntax error found.
    pub fn from_value(value: Value) -> Result<Self, TemplateError> {
        Ok(match value {
            Value::String(s) => Self::string(TemplateString::parse(&s)?),
            Value::Array(items) => Self::array(
                items
                    .into_iter()
                    .map(Self::from_value)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Self::object(
                map.into_iter()
                    .map(|(k, v)| Ok((k, Self::from_value(v)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => Self::literal(other),
        })
    }

    /// Parses one template string into a template.
    ///
    /// # Errors
    /// The first syntax error found.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        Ok(Self::string(TemplateString::parse(text)?))
    }

    /// The JSON value as written.
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    fn into_value(self) -> Value {
        fn go(node: Node) -> Value {
            match node {
                Node::Literal(v) => v,
                Node::String(s) => Value::String(s.raw),
                Node::Array(items) => Value::Array(items.into_iter().map(go).collect()),
                Node::Object(entries) => {
                    Value::Object(entries.into_iter().map(|(k, v)| (k, go(v))).collect())
                }
            }
        }
        go(self.0)
    }

    /// True when there is no expression anywhere: it renders to itself.
    pub fn is_literal(&self) -> bool {
        matches!(self.0, Node::Literal(_))
    }

    /// The value, when [`is_literal`](Self::is_literal).
    pub fn as_literal(&self) -> Option<&Value> {
        match &self.0 {
            Node::Literal(v) => Some(v),
            _ => None,
        }
    }

    /// The template string, when the whole template is one string with expressions.
    pub fn as_template_string(&self) -> Option<&TemplateString> {
        match &self.0 {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// Renders the template: every template string replaced by its value.
    pub fn render(&self, scope: &Scope<'_>) -> Value {
        fn go(node: &Node, scope: &Scope<'_>) -> Value {
            match node {
                Node::Literal(v) => v.clone(),
                Node::String(s) => s.render(scope),
                Node::Array(items) => Value::Array(items.iter().map(|n| go(n, scope)).collect()),
                Node::Object(entries) => Value::Object(
                    entries
                        .iter()
                        .map(|(k, n)| (k.clone(), go(n, scope)))
                        .collect(),
                ),
            }
        }
        go(&self.0, scope)
    }

    /// [`render`](Self::render) straight to JSON text, without building
    /// the value first: a large payload an expression points at is
    /// serialised from where it is, not copied.
    pub fn render_json(&self, scope: &Scope<'_>) -> String {
        struct View<'a, 's> {
            node: &'a Node,
            scope: &'a Scope<'s>,
        }
        impl Serialize for View<'_, '_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let view = |node| View {
                    node,
                    scope: self.scope,
                };
                match self.node {
                    Node::Literal(v) => v.serialize(serializer),
                    Node::String(t) => match t.whole_expression() {
                        Some(e) => expr::eval_ref(e, self.scope).serialize(serializer),
                        None => serializer.serialize_str(&t.render_string(self.scope)),
                    },
                    Node::Array(items) => serializer.collect_seq(items.iter().map(view)),
                    Node::Object(entries) => {
                        serializer.collect_map(entries.iter().map(|(k, n)| (k, view(n))))
                    }
                }
            }
        }
        serde_json::to_string(&View {
            node: &self.0,
            scope,
        })
        .expect("JSON values and strings always serialise")
    }

    /// Every template string, depth first, in document order.
    pub fn strings(&self) -> impl Iterator<Item = &TemplateString> {
        fn go<'t>(node: &'t Node, out: &mut Vec<&'t TemplateString>) {
            match node {
                Node::Literal(_) => {}
                Node::String(s) => out.push(s),
                Node::Array(items) => items.iter().for_each(|n| go(n, out)),
                Node::Object(entries) => entries.iter().for_each(|(_, n)| go(n, out)),
            }
        }
        let mut out = Vec::new();
        go(&self.0, &mut out);
        out.into_iter()
    }

    /// Every path in the template's expressions.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.strings().flat_map(TemplateString::paths)
    }

    /// Every `steps.<id>.output` referenced, in document order.
    pub fn references(&self) -> impl Iterator<Item = &StepRef> {
        self.strings().flat_map(TemplateString::references)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({})", self.to_value())
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct N<'a>(&'a Node);
        impl Serialize for N<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    Node::Literal(v) => v.serialize(serializer),
                    Node::String(s) => s.serialize(serializer),
                    Node::Array(items) => {
                        let mut seq = serializer.serialize_seq(Some(items.len()))?;
                        for item in items {
                            seq.serialize_element(&N(item))?;
                        }
                        seq.end()
                    }
                    Node::Object(entries) => {
                        let mut map = serializer.serialize_map(Some(entries.len()))?;
                        for (k, v) in entries {
                            map.serialize_entry(k, &N(v))?;
                        }
                        map.end()
                    }
                }
            }
        }
        N(&self.0).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Template::from_value(Value::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Template {
    fn schema_name() -> Cow<'static, str> {
        "Template".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Any JSON value; each string in it may hold `{{ expression }}`s. A string that is exactly one `{{ expression }}` becomes the expression's value, of any type."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn scope_with<'a>(input: &'a Value, steps: &'a serde_json::Map<String, Value>) -> Scope<'a> {
        Scope::new(input, steps)
    }

    #[test]
    fn whole_expressions_keep_their_type() {
        let input = json!({"n": 3, "list": [1, 2], "s": "x"});
        let steps = serde_json::Map::new();
        let scope = scope_with(&input, &steps);
        let t = TemplateString::parse("{{ input.list }}").expect("parses");
        assert_eq!(t.render(&scope), json!([1, 2]));
        let t = TemplateString::parse("  {{input.n}}\n").expect("parses");
        assert_eq!(t.render(&scope), json!(3));
        assert_eq!(t.render_string(&scope), "3");
    }

    #[test]
    fn mixed_strings_interpolate() {
        let input = json!({"n": 3, "list": [1, 2], "s": "x", "o": {"a": null}});
        let steps = serde_json::Map::new();
        let scope = scope_with(&input, &steps);
        let t = TemplateString::parse(
            "n={{ input.n }} s={{ input.s }} l={{ input.list }} z={{ input.none }} o={{ input.o }}",
        )
        .expect("parses");
        assert_eq!(t.render(&scope), json!("n=3 s=x l=[1,2] z= o={\"a\":null}"));
        let t = TemplateString::parse("{{ input.s }}{{ input.s }}").expect("parses");
        assert_eq!(t.render(&scope), json!("xx"));
        let t = TemplateString::parse("a {{ \"{{\" }} b }}").expect("parses");
        assert_eq!(t.render(&scope), json!("a {{ b }}"));
        let t = TemplateString::parse("{{ '}}' }}").expect("parses");
        assert_eq!(t.render(&scope), json!("}}"));
    }

    #[test]
    fn syntax_errors_point_into_the_template() {
        let e = TemplateString::parse("{{ steps.a..b }}").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "unexpected \".\" at column 12 of \"{{ steps.a..b }}\" (a step's output is read as steps.a.output)"
        );
        let e = TemplateString::parse("x {{ input.a ").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "unclosed \"{{\" at column 3 of \"x {{ input.a \" (end the expression with \"}}\")"
        );
        let e = TemplateString::parse("{{ }}").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "expected an expression, found \"}}\" at column 4 of \"{{ }}\""
        );
        let e = TemplateString::parse("{{ input.a } }}").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "unexpected \"}\" at column 12 of \"{{ input.a } }}\""
        );
        let e = TemplateString::parse("line one\n{{ input. }}").expect_err("bad");
        assert_eq!(e.line_offset(), 1);
        assert!(
            e.to_string()
                .starts_with("unexpected \"}}\" at line 2, column 11 of \"{{ input. }}\""),
            "{e}"
        );
    }

    #[test]
    fn templates_render_nested_values_and_keep_literals() {
        let input = json!({"id": 7});
        let steps = json!({"fetch": {"status": 200}});
        let steps = steps.as_object().expect("object").clone();
        let scope = scope_with(&input, &steps);
        let source = json!({"id": "{{ input.id }}", "fixed": {"a": [1, "{x}"]}, "list": ["{{ steps.fetch.output.status }}", "s{{ input.id }}"]});
        let t = Template::from_value(source.clone()).expect("parses");
        assert_eq!(
            t.render(&scope),
            json!({"id": 7, "fixed": {"a": [1, "{x}"]}, "list": [200, "s7"]})
        );
        assert_eq!(t.to_value(), source);
        assert_eq!(t.render_json(&scope), t.render(&scope).to_string());
        assert_eq!(serde_json::to_value(&t).expect("serialises"), source);
        let ids: Vec<_> = t.references().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["fetch"]);
        assert!(!t.is_literal());
        assert!(
            Template::from_value(json!({"a": [1, "b"]}))
                .expect("parses")
                .is_literal()
        );
    }

    #[test]
    fn deserialising_checks_the_syntax() {
        let e =
            serde_json::from_value::<Template>(json!({"a": ["{{ input..x }}"]})).expect_err("bad");
        assert!(
            e.to_string().starts_with("unexpected \".\" at column 10"),
            "{e}"
        );
        let t: TemplateString = serde_json::from_value(json!(100)).expect("numbers are text");
        assert_eq!(t.as_str(), "100");
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = TemplateString::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_template_like_text(text in r#"[a-z{}.\[\]()'"!=<> 0-9\\\n]{0,40}"#) {
            let _ = TemplateString::parse(&text);
        }

        #[test]
        fn render_json_is_render_serialised(
            value in prop::collection::vec((0u32..5, "[a-z ]{0,6}"), 0..8),
        ) {
            let input = json!({"n": 42, "s": "text", "list": [1, {"k": null}], "o": {"a": [true]}});
            let steps = serde_json::Map::new();
            let scope = scope_with(&input, &steps);
            let exprs = ["{{ input.n }}", "{{ input.list }}", "x {{ input.s }} y", "{{ input.o }}", "{{ input.none }}"];
            let source = Value::Object(
                value
                    .iter()
                    .enumerate()
                    .map(|(i, (e, lit))| {
                        let v = if lit.len() % 2 == 0 { json!(exprs[*e as usize]) } else { json!([lit, exprs[*e as usize]]) };
                        (format!("k{i}"), v)
                    })
                    .collect(),
            );
            let t = Template::from_value(source).expect("parses");
            prop_assert_eq!(t.render_json(&scope), t.render(&scope).to_string());
        }

        #[test]
        fn literal_text_renders_to_itself(text in "[^{]*") {
            let t = TemplateString::parse(&text).expect("no braces, no expressions");
            let input = Value::Null;
            let steps = serde_json::Map::new();
            prop_assert_eq!(t.render(&Scope::new(&input, &steps)), Value::String(text));
        }
    }
}
