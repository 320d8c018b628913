//! The console's HTML: the page frame and the parts pages share (status
//! badges, times, the JSON viewer, the timeline, the definition graph,
//! source lines). maud escapes every value it is given; nothing here
//! writes raw markup from a tenant's data.

use axum::http::StatusCode;
use axum::response::Html;
use chrono::{DateTime, SecondsFormat, Utc};
use isoflow_engine::model::Step;
use isoflow_proto::prost_types::Timestamp;
use isoflow_proto::v1;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::Signed;

/// Which part of the console a page belongs to, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Runs,
    Integrations,
    Cluster,
    None,
}

/// A whole page: the frame (navigation, sign-out, theme) around `body`.
pub fn page(title: &str, signed: Option<&Signed>, section: Section, body: Markup) -> Html<String> {
    let tenant = signed.and_then(|s| s.session.who.principal());
    Html(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(signed) = signed {
                    meta name="csrf-token" content=(signed.session.csrf);
                }
                title { (title) " · Isoflow" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body data-tenant=[tenant] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console/runs" { "Isoflow" }
                    @if let Some(signed) = signed {
                        nav aria-label="Console" {
                            @if tenant.is_some() {
                                a #nav-runs href="/console/runs"
                                    aria-current=[(section == Section::Runs).then_some("page")] { "Runs" }
                                a #nav-integrations href="/console/integrations"
                                    aria-current=[(section == Section::Integrations).then_some("page")] { "Integrations" }
                            }
                            @if signed.is_admin() {
                                a #nav-cluster href="/console/cluster"
                                    aria-current=[(section == Section::Cluster).then_some("page")] { "Cluster" }
                            }
                        }
                        span.who {
                            @match tenant {
                                Some(tenant) => { "tenant " strong { (tenant) } }
                                None => { strong { "admin" } }
                            }
                        }
                    }
                    button #theme type="button" aria-label="Switch between light and dark" title="Light or dark (t)" { "◐" }
                    @if let Some(signed) = signed {
                        form #sign-out method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(signed.session.csrf);
                            button #sign-out-submit type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }.into_string())
}

/// The page of a refusal: its status and sentence in `#error`.
pub fn problem(status: StatusCode, sentence: &str) -> Html<String> {
    let title = status.canonical_reason().unwrap_or("Error");
    page(
        title,
        None,
        Section::None,
        html! {
            h1 { (status.as_u16()) " " (title) }
            p #error role="alert" { (sentence) }
            p { a href="/console/runs" { "Back to the runs" } }
        },
    )
}

pub fn run_status(status: i32) -> &'static str {
    match v1::RunStatus::try_from(status).unwrap_or(v1::RunStatus::Unspecified) {
        v1::RunStatus::Pending => "queued",
        v1::RunStatus::Running => "running",
        v1::RunStatus::Succeeded => "succeeded",
        v1::RunStatus::Failed => "failed",
        v1::RunStatus::Cancelled => "cancelled",
        v1::RunStatus::Unspecified => "unknown",
    }
}

pub fn step_status(status: i32) -> &'static str {
    match v1::StepStatus::try_from(status).unwrap_or(v1::StepStatus::Unspecified) {
        v1::StepStatus::Succeeded => "succeeded",
        v1::StepStatus::Failed => "failed",
        v1::StepStatus::Skipped => "skipped",
        v1::StepStatus::Unspecified => "unknown",
    }
}

pub fn badge(status: &str) -> Markup {
    html! { span class={ "badge status-" (status) } { (status) } }
}

pub fn ms_of(time: Option<&Timestamp>) -> u64 {
    isoflow_proto::time::to_ms(time)
}

/// A time, in UTC, with its machine-readable form.
pub fn time(ms: u64) -> Markup {
    if ms == 0 {
        return html! { span.none { "—" } };
    }
    let at = DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default();
    html! {
        time datetime=(at.to_rfc3339_opts(SecondsFormat::Millis, true)) {
            (at.format("%Y-%m-%d %H:%M:%S"))
        }
    }
}

/// A duration for people: `840 ms`, `3.2 s`, `4 min 05 s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60),
    }
}

/// A byte count for people.
pub fn bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    match n {
        0..KIB => format!("{n} B"),
        KIB..1_048_576 => format!("{:.1} KiB", n as f64 / KIB as f64),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// At most `max` characters of `text`, and whether it was cut.
pub fn clip(text: &str, max: usize) -> (&str, bool) {
    match text.char_indices().nth(max) {
        Some((at, _)) => (&text[..at], true),
        None => (text, false),
    }
}

/// The most JSON nodes one viewer draws; the rest is in the download.
pub const VIEWER_NODES: usize = 2_000;
/// The most characters of one string the viewer shows.
const VIEWER_STRING: usize = 2_000;

/// A collapsible view of `value` (objects and arrays as `<details>`, open
/// two levels deep), drawing at most [`VIEWER_NODES`] nodes.
pub fn json(value: &Value, id: &str) -> Markup {
    let mut budget = VIEWER_NODES;
    html! {
        div.json id=(id) { (json_node(value, 0, &mut budget)) }
        @if budget == 0 {
            p.note { "Only the first " (VIEWER_NODES) " values are shown here: download it for the rest." }
        }
    }
}

fn json_node(value: &Value, depth: usize, budget: &mut usize) -> Markup {
    *budget = budget.saturating_sub(1);
    match value {
        Value::Null => html! { span.j-null { "null" } },
        Value::Bool(b) => html! { span.j-bool { (b) } },
        Value::Number(n) => html! { span.j-num { (n) } },
        Value::String(s) => {
            let (shown, cut) = clip(s, VIEWER_STRING);
            html! {
                span.j-str { "\"" (shown) @if cut { "…" } "\"" }
                @if cut { span.note { " (" (s.chars().count()) " characters)" } }
            }
        }
        Value::Array(items) => {
            let (children, cut) = children(items.iter(), depth, budget);
            html! {
                details open[depth < 2] {
                    summary { "[" (items.len()) @if items.len() == 1 { " item]" } @else { " items]" } }
                    ol.j-items start="0" {
                        @for child in &children { li { (child) } }
                        @if cut { li.note { "…" } }
                    }
                }
            }
        }
        Value::Object(fields) => {
            let (children, cut) = children(fields.values(), depth, budget);
            html! {
                details open[depth < 2] {
                    summary { "{" (fields.len()) @if fields.len() == 1 { " field}" } @else { " fields}" } }
                    ul.j-fields {
                        @for (key, child) in fields.keys().zip(&children) {
                            li { span.j-key { (key) } ": " (child) }
                        }
                        @if cut { li.note { "…" } }
                    }
                }
            }
        }
    }
}

/// The children drawn while the budget lasts, and whether some were not.
fn children<'a>(
    values: impl ExactSizeIterator<Item = &'a Value>,
    depth: usize,
    budget: &mut usize,
) -> (Vec<Markup>, bool) {
    let total = values.len();
    let mut drawn = Vec::new();
    for value in values {
        if *budget == 0 {
            break;
        }
        drawn.push(json_node(value, depth + 1, budget));
    }
    let cut = drawn.len() < total;
    (drawn, cut)
}

/// One bar of the timeline.
pub struct Bar<'a> {
    pub key: &'a str,
    pub status: &'static str,
    pub start_ms: u64,
    pub end_ms: u64,
    pub attempts: u32,
    pub node: &'a str,
    /// Where its section is on the page.
    pub anchor: String,
}

/// The most bars the timeline draws.
pub const TIMELINE_BARS: usize = 200;

/// The run's steps as a waterfall: one bar per step (loop elements'
/// too) from its start to its end, on the run's own time scale.
pub fn timeline(run_start: u64, run_end: u64, bars: &[Bar<'_>]) -> Markup {
    const LABEL: u64 = 240;
    const WIDTH: u64 = 640;
    const ROW: u64 = 22;
    // The earliest known time: a rerun's copied steps started before the
    // rerun was created.
    let start = bars
        .iter()
        .map(|b| b.start_ms)
        .chain([run_start])
        .filter(|&s| s > 0)
        .min()
        .unwrap_or(0);
    let end = bars
        .iter()
        .map(|b| b.end_ms)
        .max()
        .unwrap_or(0)
        .max(run_end);
    let span = end.saturating_sub(start).max(1);
    let shown = &bars[..bars.len().min(TIMELINE_BARS)];
    let height = ROW * shown.len() as u64 + 24;
    let x = |ms: u64| LABEL + ms.saturating_sub(start) * WIDTH / span;
    html! {
        svg #timeline role="img" viewBox={ "0 0 " (LABEL + WIDTH + 90) " " (height) }
            aria-label={ "Timeline of " (bars.len()) " steps over " (duration(span)) } {
            line.axis x1=(LABEL) y1="2" x2=(LABEL) y2=(height - 20) {}
            text.tick x=(LABEL) y=(height - 6) { "0" }
            text.tick x=(LABEL + WIDTH) y=(height - 6) text-anchor="end" { (duration(span)) }
            @for (i, bar) in shown.iter().enumerate() {
                @let y = ROW * i as u64 + 4;
                @let (from, to) = (x(bar.start_ms.max(start)), x(bar.end_ms.max(bar.start_ms)));
                @let took = bar.end_ms.saturating_sub(bar.start_ms);
                g class={ "bar status-" (bar.status) } data-step-key=(bar.key) {
                    title {
                        (bar.key) ": " (bar.status) ", " (duration(took))
                        @if bar.attempts > 1 { ", " (bar.attempts) " attempts" }
                        @if !bar.node.is_empty() { ", on " (bar.node) }
                    }
                    a href={ "#" (bar.anchor) } {
                        text.label x="4" y=(y + 14) { (clip(bar.key, 34).0) }
                        rect x=(from) y=(y + 3) width=((to - from).max(2)) height="14" rx="2" {}
                        text.took x=(to + 6) y=(y + 14) {
                            (duration(took))
                            @if bar.attempts > 1 { " ×" (bar.attempts) }
                        }
                    }
                }
            }
        }
        @if bars.len() > shown.len() {
            p.note { "The timeline shows the first " (TIMELINE_BARS) " of " (bars.len()) " steps." }
        }
    }
}

/// The definition's steps as a graph: boxes in run order, loops as boxes
/// around their steps, arrows from each step to the next.
pub fn graph(steps: &[Step]) -> Markup {
    let mut boxes = Vec::new();
    let height = layout(steps, 0, 8, &mut boxes);
    let width = 120 + boxes.iter().map(|b| b.x + b.w).max().unwrap_or(300);
    html! {
        svg #graph role="img" viewBox={ "0 0 " (width) " " (height + 8) }
            width=(width) height=(height + 8)
            aria-label={ "The integration's " (boxes.len()) " steps in run order" } {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            @for b in &boxes {
                @if let Some((x, y1, y2)) = b.arrow_from {
                    line.edge x1=(x) y1=(y1) x2=(x) y2=(y2) marker-end="url(#arrow)" {}
                }
            }
            @for b in &boxes {
                g class={ "node kind-" (b.kind) } data-step-id=(b.id) {
                    title { (b.id) ": " (b.detail) }
                    rect x=(b.x) y=(b.y) width=(b.w) height=(b.h) rx="6" {}
                    text.id x=(b.x + 10) y=(b.y + 18) { (clip(&b.id, 40).0) }
                    text.detail x=(b.x + 10) y=(b.y + 34) { (clip(&b.detail, 48).0) }
                }
            }
        }
    }
}

struct GraphBox {
    id: String,
    kind: &'static str,
    detail: String,
    x: u64,
    y: u64,
    w: u64,
    h: u64,
    /// The arrow into this box from the one before: x, from y, to y.
    arrow_from: Option<(u64, u64, u64)>,
}

/// Lays `steps` out from `y` at indent `depth`; returns the y below them.
fn layout(steps: &[Step], depth: u64, mut y: u64, boxes: &mut Vec<GraphBox>) -> u64 {
    const W: u64 = 320;
    const H: u64 = 44;
    const GAP: u64 = 26;
    let x = 8 + depth * 24;
    let mut previous_bottom: Option<u64> = None;
    for step in steps {
        let arrow_from = previous_bottom.map(|bottom| (x + 40, bottom, y));
        let (kind, detail) = match step {
            Step::Code(code) => ("code", format!("code · {:?}", code.runtime).to_lowercase()),
            Step::Http(http) => ("http", format!("http · {} {}", http.method, http.url)),
            Step::Loop(each) => (
                "loop",
                format!(
                    "loop · for each of {}",
                    serde_json::to_string(&each.for_each).unwrap_or_default()
                ),
            ),
        };
        let at = boxes.len();
        boxes.push(GraphBox {
            id: step.id().as_str().to_owned(),
            kind,
            detail,
            x,
            y,
            w: W - depth * 24,
            h: H,
            arrow_from,
        });
        y += H;
        if let Step::Loop(each) = step {
            let inner_top = y + 10;
            let bottom = layout(&each.steps, depth + 1, inner_top, boxes);
            boxes[at].h = bottom - boxes[at].y + 6;
            y = bottom + 6;
        }
        previous_bottom = Some(y);
        y += GAP;
    }
    y - GAP
}

/// Where an error's text points into a step's source: the 1-based lines
/// of `file` (`shape.js:3:9`, `shape.js:3`) it names, in order, at most
/// three.
pub fn error_lines(error: &str, file: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut rest = error;
    while let Some(at) = rest.find(file) {
        let after = &rest[at + file.len()..];
        rest = after;
        // The name must stand alone: not the tail of `other-shape.js`.
        let before = error.len() - after.len() - file.len();
        if error[..before]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            continue;
        }
        let Some(digits) = after.strip_prefix(':') else {
            continue;
        };
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        if let Ok(line) = digits[..end].parse::<usize>()
            && line > 0
            && !lines.contains(&line)
        {
            lines.push(line);
        }
        if lines.len() == 3 {
            break;
        }
    }
    lines
}

/// The lines of `source` around `line` (two before, two after), the line
/// itself marked.
pub fn source_lines(source: &str, file: &str, line: usize) -> Markup {
    let all: Vec<&str> = source.lines().collect();
    if line == 0 || line > all.len() {
        return html! {};
    }
    let first = line.saturating_sub(2).max(1);
    let last = (line + 2).min(all.len());
    html! {
        figure.source-at {
            figcaption { (file) ", line " (line) }
            ol.source start=(first) {
                @for n in first..=last {
                    @let (text, _) = clip(all[n - 1], 300);
                    @if n == line {
                        li.error-line aria-current="true" { code { (text) } }
                    } @else {
                        li { code { (text) } }
                    }
                }
            }
        }
    }
}

/// The keyboard shortcuts, shown under the runs.
pub fn keys_hint() -> Markup {
    html! {
        p.keys { kbd { "/" } " filter · " kbd { "j" } " / " kbd { "k" } " next / previous run · "
            kbd { "Enter" } " open · " kbd { "t" } " light or dark" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_the_lines_of_its_own_file_only() {
        let error = "uncaught TypeError: x is undefined at shape.js:3:11\n    at main (shape.js:7:2)\n    at other-shape.js:9:1 and shape.js:3:4";
        assert_eq!(error_lines(error, "shape.js"), vec![3, 7]);
        assert_eq!(
            error_lines("syntax error at shape.js:12:6: SyntaxError", "shape.js"),
            vec![12]
        );
        assert!(error_lines("shape.js has no line", "shape.js").is_empty());
        assert!(error_lines("at shape.js:0:1", "shape.js").is_empty());
    }

    #[test]
    fn source_lines_mark_the_line_and_escape_the_code() {
        let source = "a\nb\n<script>c</script>\nd\ne\nf";
        let html = source_lines(source, "s.js", 3).into_string();
        assert!(html.contains("<ol class=\"source\" start=\"1\">"), "{html}");
        assert!(
            html.contains("<li class=\"error-line\" aria-current=\"true\"><code>&lt;script&gt;c&lt;/script&gt;</code>"),
            "{html}"
        );
        assert!(!html.contains("<code>f</code>"), "{html}");
        assert_eq!(source_lines(source, "s.js", 99).into_string(), "");
    }

    #[test]
    fn the_viewer_escapes_and_stops_at_its_budget() {
        let value = serde_json::json!({ "<b>": "<img src=x onerror=alert(1)>", "n": [1, 2, 3] });
        let html = json(&value, "v").into_string();
        assert!(html.contains("&lt;b&gt;"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
        let big = Value::Array((0..5_000).map(Value::from).collect());
        let html = json(&big, "v").into_string();
        assert!(
            html.contains("Only the first 2000 values"),
            "{}",
            html.len()
        );
        assert!(
            html.matches("<li>").count() <= VIEWER_NODES,
            "drew too many"
        );
    }

    #[test]
    fn durations_and_sizes_read_as_people_write_them() {
        assert_eq!(duration(840), "840 ms");
        assert_eq!(duration(3_240), "3.2 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2_048), "2.0 KiB");
        assert_eq!(clip("héllo", 2), ("hé", true));
        assert_eq!(clip("hé", 2), ("hé", false));
    }
}
