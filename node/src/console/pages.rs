//! The console's pages and actions. Each reads and acts through the API
//! as the session's tenant (see the module docs of `console`).

use std::collections::BTreeMap;

use axum::Form;
use axum::body::Body;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use isoflow_engine::model::{CodeSource, Integration, Step};
use isoflow_engine::run::step_replay;
use isoflow_engine::sandbox::Runtime;
use isoflow_proto::v1;
use isoflow_proto::v1::isoflow_server::Isoflow;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use tokio_stream::{Stream, StreamExt};

use super::session::{Who, clear_cookie, same_origin, set_cookie};
use super::view::{self, Bar, Section, badge, bytes, duration, ms_of, page, time};
use super::{Console, Problem, Signed, bundle};

/// The most bytes of a payload a page parses to show; larger ones are
/// downloads only.
pub const VIEW_BYTES: usize = 256 * 1024;
/// The most steps a run page shows in full (loop elements included);
/// the others are a link to their own page.
pub const STEP_SECTIONS: usize = 50;
/// The most log lines a run page shows.
pub const LOG_LINES: u32 = 500;
/// The most characters of one log line a page shows.
const LOG_CHARS: usize = 2_000;
/// The largest step input a bundle takes (the API serves larger ones).
pub const BUNDLE_INPUT_BYTES: usize = 64 * 1024 * 1024;

type Page = Result<Response, Problem>;

/// Calls the API's `$method` as `$tenant` with `$message`: the answer's
/// message (or stream), or the API's refusal.
macro_rules! api {
    ($console:expr, $tenant:expr, $method:ident, $message:expr) => {
        $console
            .api()
            .$method(Console::request($tenant, $message))
            .await
            .map(tonic::Response::into_inner)
    };
}

// ---- sign-in ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct Ended {
    ended: Option<String>,
}

pub async fn sign_in_page(State(console): State<Console>, Query(q): Query<Ended>) -> Response {
    let notice = q.ended.map(
        |_| "Your session ended: its token was revoked or its tenant disabled, or it expired.",
    );
    sign_in_form(&console, StatusCode::OK, None, notice)
}

fn sign_in_form(
    console: &Console,
    status: StatusCode,
    error: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let open = console.inner.auth.is_open();
    let body = html! {
        section.sign-in {
            h1 { "Sign in" }
            @if let Some(error) = error { p #error role="alert" { (error) } }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            form #sign-in method="post" action="/console/sign-in" {
                @if open {
                    p { "This node takes no tokens: every caller is tenant " strong { "local" } "." }
                    input type="hidden" name="token" value="";
                } @else {
                    label for="token" { "API token" }
                    input #token type="password" name="token" required autocomplete="off"
                        autofocus aria-describedby="token-help";
                    p #token-help .help { "A tenant's API token shows that tenant's runs; the node's admin token shows the cluster." }
                }
                button #sign-in-submit type="submit" { "Sign in" }
            }
        }
    };
    (status, page("Sign in", None, Section::None, body)).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
}

pub async fn sign_in(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if let Err(wait) = console.sign_in_attempt(peer.ip()) {
        let seconds = wait.as_secs().max(1);
        let mut refused = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many sign-in attempts from this address: try again in {seconds} s"),
        )
        .into_response();
        if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
            refused.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return refused;
    }
    if !same_origin(&headers, console.public_origin()) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "the sign-in did not come from this console's page",
        )
        .into_response();
    }
    let token = form.token.trim().to_owned();
    let (who, to) = if !token.is_empty() && console.inner.admin.is_admin(token.as_bytes()) {
        (Who::Admin { token }, "/console/cluster")
    } else {
        let presented = (!token.is_empty()).then_some(token.as_bytes());
        match console.inner.auth.authenticate(presented) {
            Ok(tenant) => (Who::Tenant { tenant, token }, "/console/runs"),
            Err(status) => {
                let sentence = match status.code() {
                    tonic::Code::PermissionDenied => status.message().to_owned(),
                    _ => "That token is not valid: use a tenant's API token or the node's admin token.".to_owned(),
                };
                return sign_in_form(&console, StatusCode::UNAUTHORIZED, Some(&sentence), None);
            }
        }
    };
    let id = console.inner.sessions.open(who);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, to.to_owned()),
            (header::SET_COOKIE, set_cookie(&id, console.secure())),
        ],
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct Action {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: String,
}

/// The action's fields; none (and so no CSRF token) when the body is not
/// a form.
fn action(form: Result<Form<Action>, FormRejection>) -> Action {
    form.map(|Form(a)| a).unwrap_or_default()
}

/// Refuses a state-changing request that is not the console's own: no or
/// a wrong CSRF token, or another site's origin.
fn check_action(
    console: &Console,
    signed: &Signed,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(), Problem> {
    if !same_origin(headers, console.public_origin()) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "the request came from another site: actions are taken from the console's own pages only",
        ));
    }
    if !signed.session.csrf_ok(csrf) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "the request carries no valid CSRF token: reload the page and try again",
        ));
    }
    Ok(())
}

pub async fn sign_out(
    State(console): State<Console>,
    signed: Signed,
    headers: HeaderMap,
    form: Result<Form<Action>, FormRejection>,
) -> Page {
    let form = action(form);
    check_action(&console, &signed, &headers, &form.csrf)?;
    console.inner.sessions.close(&headers);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/console/sign-in".to_owned()),
            (header::SET_COOKIE, clear_cookie()),
        ],
    )
        .into_response())
}

// ---- runs ------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    integration: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    trigger: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    page_size: String,
}

const STATUSES: [(&str, v1::RunStatus); 5] = [
    ("queued", v1::RunStatus::Pending),
    ("running", v1::RunStatus::Running),
    ("succeeded", v1::RunStatus::Succeeded),
    ("failed", v1::RunStatus::Failed),
    ("cancelled", v1::RunStatus::Cancelled),
];

/// A `datetime-local` field (`2026-11-29T15:30`, UTC) as a timestamp.
fn local_time(field: &str, text: &str) -> Result<Option<prost_types::Timestamp>, Problem> {
    if text.is_empty() {
        return Ok(None);
    }
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("{field} is {text:?}: not a time like 2026-11-29T15:30 (UTC)"),
            )
        })?;
    Ok(Some(prost_types::Timestamp {
        seconds: parsed.and_utc().timestamp(),
        nanos: 0,
    }))
}

use isoflow_proto::prost_types;

pub async fn runs(
    State(console): State<Console>,
    signed: Signed,
    Query(q): Query<RunsQuery>,
) -> Page {
    let tenant = signed.tenant()?;
    let _turn = console.page_turn(tenant).await?;
    let status = match q.status.as_str() {
        "" => v1::RunStatus::Unspecified,
        s => STATUSES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, status)| *status)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("status {s:?} is not a run status"),
                )
            })?,
    };
    let number = |field: &str, text: &str| -> Result<u32, Problem> {
        if text.is_empty() {
            return Ok(0);
        }
        text.parse().map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("{field} is {text:?}: not a number"),
            )
        })
    };
    let page_size = match number("page_size", &q.page_size)? {
        0 => 50,
        n => n.min(200),
    };
    let request = v1::ListRunsRequest {
        page_size,
        page_token: q.page_token.clone(),
        integration: q.integration.clone(),
        version: number("version", &q.version)?,
        status: status as i32,
        create_time_from: local_time("from", &q.from)?,
        create_time_to: local_time("to", &q.to)?,
        trigger: q.trigger.clone(),
    };
    let listed = api!(console, tenant, list_runs, request)?;
    let integrations = integration_names(&console, tenant).await?;
    let next = (!listed.next_page_token.is_empty()).then(|| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("integration", &q.integration),
            ("version", &q.version),
            ("status", &q.status),
            ("trigger", &q.trigger),
            ("from", &q.from),
            ("to", &q.to),
            ("page_size", &q.page_size),
        ] {
            if !v.is_empty() {
                query.append_pair(k, v);
            }
        }
        query.append_pair("page_token", &listed.next_page_token);
        format!("/console/runs?{}", query.finish())
    });
    // Only the first page follows new runs: later pages would shift.
    let live = q.page_token.is_empty();
    let body = html! {
        h1 { "Runs" }
        form #filters method="get" action="/console/runs" role="search" aria-label="Filter the runs" {
            label { span { "Integration" }
                select name="integration" {
                    option value="" { "any" }
                    @for name in &integrations {
                        option value=(name) selected[*name == q.integration] { (name) }
                    }
                }
            }
            label { span { "Version" } input name="version" inputmode="numeric" size="4" value=(q.version); }
            label { span { "Status" }
                select name="status" {
                    option value="" { "any" }
                    @for (name, _) in STATUSES {
                        option value=(name) selected[name == q.status] { (name) }
                    }
                }
            }
            label { span { "Trigger" } input name="trigger" placeholder="webhook, cron:nightly…" size="14" value=(q.trigger); }
            label { span { "From (UTC)" } input type="datetime-local" name="from" value=(q.from); }
            label { span { "To (UTC)" } input type="datetime-local" name="to" value=(q.to); }
            button type="submit" { "Filter" }
            a.reset href="/console/runs" { "Clear" }
        }
        div #runs-live data-live=[live.then_some("/console/events")] aria-live="polite" {
            table #runs {
                caption.visually-hidden { "Runs, newest first" }
                thead { tr {
                    th scope="col" { "Run" } th scope="col" { "Integration" } th scope="col" { "Status" }
                    th scope="col" { "Trigger" } th scope="col" { "Started" } th scope="col" { "Took" }
                    th scope="col" { "Error" }
                } }
                tbody {
                    @for run in &listed.runs {
                        @let status = view::run_status(run.status);
                        @let (created, updated) = (ms_of(run.create_time.as_ref()), ms_of(run.update_time.as_ref()));
                        tr.run data-run-id=(run.run_id) data-status=(status) {
                            td { a.run-link href={ "/console/runs/" (run.run_id) } { code { (short_id(&run.run_id)) } } }
                            td { (run.integration) span.version { " v" (run.version) } }
                            td { (badge(status)) }
                            td { (run.trigger) }
                            td { (time(created)) }
                            td.num { @if matches!(status, "succeeded" | "failed" | "cancelled") { (duration(updated.saturating_sub(created))) } }
                            td.error-cell { (view::clip(&run.error, 140).0) }
                        }
                    }
                }
            }
            @if listed.runs.is_empty() { p.empty { "No runs match." } }
        }
        nav.pages aria-label="Pages" {
            @if !q.page_token.is_empty() { a href="/console/runs" { "First page" } }
            @if let Some(next) = &next { a #next-page href=(next) rel="next" { "Next page" } }
        }
        (view::keys_hint())
    };
    Ok(page("Runs", Some(&signed), Section::Runs, body).into_response())
}

fn short_id(run_id: &str) -> &str {
    view::clip(run_id, 13).0
}

/// The names of the tenant's integrations (the first thousand).
async fn integration_names(console: &Console, tenant: &str) -> Result<Vec<String>, Problem> {
    let listed = api!(
        console,
        tenant,
        list_integrations,
        v1::ListIntegrationsRequest {
            page_size: 1000,
            page_token: String::new(),
        }
    )?;
    Ok(listed.integrations.into_iter().map(|i| i.name).collect())
}

// ---- a run -----------------------------------------------------------------

/// A payload read for a page: parsed when small enough.
enum Shown {
    Value(Value),
    /// Over [`VIEW_BYTES`]: at least this many bytes.
    TooLarge(u64),
    /// Not valid JSON (should not happen): its start as text.
    Text(String),
}

/// Reads at most `VIEW_BYTES + 1` bytes of a payload stream.
async fn read_shown<S>(mut stream: S) -> Result<Shown, Problem>
where
    S: Stream<Item = Result<v1::PayloadChunk, tonic::Status>> + Unpin,
{
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk?.data);
        if buffer.len() > VIEW_BYTES {
            return Ok(Shown::TooLarge(buffer.len() as u64));
        }
    }
    Ok(match serde_json::from_slice(&buffer) {
        Ok(value) => Shown::Value(value),
        Err(_) => Shown::Text(String::from_utf8_lossy(&buffer).into_owned()),
    })
}

fn shown(shown: &Shown, id: &str, download: &str, class: &str) -> Markup {
    html! {
        @match shown {
            Shown::Value(value) => {
                (view::json(value, id))
                a class=(class) href=(download) download { "Download" }
            }
            Shown::TooLarge(n) => {
                p.note { "At least " (bytes(*n)) ": too large to show here. " }
                a class=(class) href=(download) download { "Download it" }
            }
            Shown::Text(text) => {
                pre { (view::clip(text, 4_000).0) }
                a class=(class) href=(download) download { "Download" }
            }
        }
    }
}

/// The step id in a step key (`loop/00000002/shape` -> `shape`).
fn step_id(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The element id of a step's section.
fn anchor(key: &str) -> String {
    format!("step-{}", key.replace('/', "-"))
}

/// The run's definition, as deployed.
async fn definition(console: &Console, tenant: &str, run: &v1::Run) -> Option<Integration> {
    let integration = console
        .api()
        .get_integration(Console::request(
            tenant,
            v1::GetIntegrationRequest {
                name: run.integration.clone(),
                version: run.version,
            },
        ))
        .await
        .ok()?
        .into_inner();
    serde_json::from_str(&integration.definition_json).ok()
}

pub(super) async fn get_run(
    console: &Console,
    tenant: &str,
    run_id: &str,
) -> Result<v1::Run, Problem> {
    Ok(api!(
        console,
        tenant,
        get_run,
        v1::GetRunRequest {
            run_id: run_id.to_owned(),
        }
    )?)
}

pub async fn run(
    State(console): State<Console>,
    signed: Signed,
    Path(run_id): Path<String>,
) -> Page {
    let tenant = signed.tenant()?;
    let _turn = console.page_turn(tenant).await?;
    let mut run = get_run(&console, tenant, &run_id).await?;
    // The store keeps steps by key; the page shows them as they ran.
    run.steps
        .sort_by_key(|s| (ms_of(s.start_time.as_ref()), ms_of(s.end_time.as_ref())));
    let status = view::run_status(run.status);
    let finished = matches!(status, "succeeded" | "failed" | "cancelled");
    let logs = api!(
        console,
        tenant,
        get_run_logs,
        v1::GetRunLogsRequest {
            run_id: run_id.clone(),
            page_size: LOG_LINES,
            page_token: String::new(),
        }
    )?;
    let mut by_step: BTreeMap<&str, Vec<&v1::LogLine>> = BTreeMap::new();
    for line in &logs.lines {
        by_step.entry(&line.step_key).or_default().push(line);
    }
    let definition = definition(&console, tenant, &run).await;
    let versions = if status == "failed" {
        other_versions(&console, tenant, &run).await
    } else {
        Vec::new()
    };
    let (created, updated) = (
        ms_of(run.create_time.as_ref()),
        ms_of(run.update_time.as_ref()),
    );
    let bars: Vec<Bar<'_>> = run
        .steps
        .iter()
        .map(|s| Bar {
            key: &s.step_key,
            status: view::step_status(s.status),
            start_ms: ms_of(s.start_time.as_ref()),
            end_ms: ms_of(s.end_time.as_ref()),
            attempts: s.attempts,
            node: &s.node,
            anchor: anchor(&s.step_key),
        })
        .collect();
    let mut sections = Vec::new();
    for step in run.steps.iter().take(STEP_SECTIONS) {
        let defined = definition
            .as_ref()
            .and_then(|d| d.find_step(step_id(&step.step_key)));
        let logs = by_step
            .get(step.step_key.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        sections.push(step_section(&console, tenant, &run, step, defined, logs, false).await?);
    }
    let csrf = &signed.session.csrf;
    let body = html! {
        div #run data-run-id=(run.run_id) data-status=(status)
            data-live=[(!finished).then(|| format!("/console/runs/{}/events", run.run_id))]
            aria-live="polite" {
            header.run-head {
                h1 { (run.integration) span.version { " v" (run.version) } " · " code { (run.run_id) } }
                p { span #run-status class={ "badge status-" (status) } { (status) } }
            }
            dl.facts {
                dt { "Trigger" } dd { (run.trigger) }
                dt { "Created" } dd { (time(created)) }
                dt { "Updated" } dd { (time(updated)) }
                @if finished { dt { "Took" } dd { (duration(updated.saturating_sub(created))) } }
                @if !run.rerun_of.is_empty() {
                    dt { "Rerun of" }
                    dd { a #rerun-of href={ "/console/runs/" (run.rerun_of) } { code { (run.rerun_of) } }
                        " from step " code { (run.from_step) } }
                }
                @if run.from_version != 0 {
                    dt { "Version" }
                    dd #moved { "moved from version " (run.from_version) " to version " (run.version)
                        " at step " code { (run.from_step) } }
                }
                dt { "Input" } dd { a.download-run-input href={ "/console/runs/" (run.run_id) "/input" } download { "Download" } }
                @if status == "succeeded" {
                    dt { "Output" } dd { a.download-run-output href={ "/console/runs/" (run.run_id) "/output" } download { "Download" } }
                }
            }
            @if !run.error.is_empty() {
                p #run-error role="alert" { (run.error) }
            }
            div.actions {
                @if matches!(status, "queued" | "running") {
                    form #cancel method="post" action={ "/console/runs/" (run.run_id) "/cancel" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button #cancel-run type="submit" { "Cancel run" }
                    }
                }
                @if status == "failed" {
                    form #rerun method="post" action={ "/console/runs/" (run.run_id) "/rerun" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button #rerun-run type="submit" { "Re-run from the failed step" }
                    }
                    @if !versions.is_empty() {
                        form #resume method="post" action={ "/console/runs/" (run.run_id) "/rerun" } {
                            input type="hidden" name="csrf" value=(csrf);
                            label for="resume-version" { "Resume with version" }
                            select #resume-version name="version" {
                                @for v in &versions { option value=(v) { "version " (v) } }
                            }
                            button #resume-run type="submit" { "Resume from the failed step" }
                        }
                    }
                }
            }
            h2 { "Timeline" }
            @if run.steps.is_empty() { p.empty { "No step has finished yet." } }
            @else { (view::timeline(created, if finished { updated } else { 0 }, &bars)) }
            h2 { "Steps" }
            @for section in &sections { (section) }
            @if run.steps.len() > STEP_SECTIONS {
                p.note { "The first " (STEP_SECTIONS) " of " (run.steps.len()) " steps are shown in full; the others:" }
                ul.more-steps {
                    @for step in run.steps.iter().skip(STEP_SECTIONS) {
                        li { a href={ "/console/runs/" (run.run_id) "/steps/" (step.step_key) } { (step.step_key) } " " (badge(view::step_status(step.status))) }
                    }
                }
            }
            @if !logs.next_page_token.is_empty() {
                p.note { "The first " (LOG_LINES) " log lines are shown; " code { "isoflowctl logs " (run.run_id) } " prints them all." }
            }
        }
    };
    Ok(page(
        &format!("Run {}", short_id(&run.run_id)),
        Some(&signed),
        Section::Runs,
        body,
    )
    .into_response())
}

/// The integration's versions other than the run's, newest first (at
/// most 50): what a failed run may resume with.
async fn other_versions(console: &Console, tenant: &str, run: &v1::Run) -> Vec<u32> {
    let latest = console
        .api()
        .get_integration(Console::request(
            tenant,
            v1::GetIntegrationRequest {
                name: run.integration.clone(),
                version: 0,
            },
        ))
        .await
        .map(|r| r.into_inner().version)
        .unwrap_or(run.version);
    (1..=latest)
        .rev()
        .filter(|v| *v != run.version)
        .take(50)
        .collect()
}

/// One step's section: what it was given, what it returned, what it
/// logged and why it failed. `defined`: the step in the run's definition
/// (its kind, a code step's source).
async fn step_section(
    console: &Console,
    tenant: &str,
    run: &v1::Run,
    step: &v1::Step,
    defined: Option<&Step>,
    logs: &[&v1::LogLine],
    with_input: bool,
) -> Result<Markup, Problem> {
    let key = &step.step_key;
    let status = view::step_status(step.status);
    let base = format!("/console/runs/{}/steps/{}", run.run_id, key);
    let kind = match defined {
        Some(Step::Code(_)) => "code",
        Some(Step::Http(_)) => "http",
        Some(Step::Loop(_)) => "loop",
        None => "step",
    };
    let output = match step.output_bytes {
        Some(n) if n > VIEW_BYTES as u64 => Some(Shown::TooLarge(n)),
        Some(_) => {
            let stream = console
                .api()
                .get_step_output(Console::request(
                    tenant,
                    v1::GetStepOutputRequest {
                        run_id: run.run_id.clone(),
                        step_key: key.clone(),
                    },
                ))
                .await;
            match stream {
                Ok(stream) => Some(read_shown(stream.into_inner()).await?),
                Err(_) => None,
            }
        }
        None => None,
    };
    // Rendering a step's input again reads the outputs before it: the run
    // page does it for the failed step only, a step's own page for its
    // step.
    let input = if kind == "code" && (with_input || !step.error.is_empty()) {
        let stream = console
            .api()
            .get_step_input(Console::request(
                tenant,
                v1::GetStepInputRequest {
                    run_id: run.run_id.clone(),
                    step_key: key.clone(),
                },
            ))
            .await;
        match stream {
            Ok(stream) => Some(read_shown(stream.into_inner()).await?),
            Err(_) => None,
        }
    } else {
        None
    };
    let file = format!("{}.js", step_id(key));
    let source = match defined {
        Some(Step::Code(code)) => match &code.code {
            CodeSource::Source(source) => Some(source.as_str()),
            CodeSource::File(_) => None,
        },
        _ => None,
    };
    let lines = source
        .map(|_| view::error_lines(&step.error, &file))
        .unwrap_or_default();
    let (start, end) = (
        ms_of(step.start_time.as_ref()),
        ms_of(step.end_time.as_ref()),
    );
    Ok(html! {
        section.step id=(anchor(key)) data-step-key=(key) data-status=(status) aria-labelledby={ (anchor(key)) "-title" } {
            h3 id={ (anchor(key)) "-title" } {
                code { (key) } " " span.kind { (kind) } " " (badge(status))
            }
            p.step-facts {
                (duration(end.saturating_sub(start)))
                @if step.attempts > 1 { " · " (step.attempts) " attempts" }
                @if !step.node.is_empty() { " · on " code { (step.node) } }
                " · " (time(start))
                @if let Some(n) = step.output_bytes { " · output " (bytes(n)) }
            }
            @if !step.error.is_empty() {
                div.step-error role="alert" {
                    pre { (view::clip(&step.error, 8_000).0) }
                    @if let Some(source) = source {
                        @for line in &lines { (view::source_lines(source, &file, *line)) }
                    }
                }
            }
            @if let Some(input) = &input {
                details.step-input id={ "in-" (key) } {
                    summary { "Input" }
                    (shown(input, &format!("in-json-{key}"), &format!("{base}/input"), "download-input"))
                    p.bundle {
                        a.download-bundle href={ (base) "/bundle" } download { "Download a bundle" }
                        " (the step's code and this input): "
                        code { "isoflow eval " (file) " --input @input.json" }
                    }
                }
            }
            @if input.is_none() && kind == "code" {
                p.step-input-link { a href=(base) { "Input and bundle" } " (rendered again from the run's stored data)" }
            }
            @if let Some(output) = &output {
                details.step-output id={ "out-" (key) } open[output_small(output)] {
                    summary { "Output" }
                    (shown(output, &format!("out-json-{key}"), &format!("{base}/output"), "download-output"))
                }
            }
            @if !logs.is_empty() {
                details.logs id={ "logs-" (key) } open {
                    summary { "Logs (" (logs.len()) ")" }
                    ul.step-logs {
                        @for line in logs {
                            @let level = log_level(line.level);
                            li class={ "log level-" (level) } {
                                (time(ms_of(line.time.as_ref())))
                                " " span.level { (level) }
                                @if line.attempt > 1 { " " span.attempt { "attempt " (line.attempt) } }
                                " " span.message { (view::clip(&line.message, LOG_CHARS).0) }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn output_small(shown: &Shown) -> bool {
    matches!(shown, Shown::Value(_))
}

fn log_level(level: i32) -> &'static str {
    match v1::LogLevel::try_from(level).unwrap_or(v1::LogLevel::Unspecified) {
        v1::LogLevel::Debug => "debug",
        v1::LogLevel::Info | v1::LogLevel::Unspecified => "info",
        v1::LogLevel::Warn => "warn",
        v1::LogLevel::Error => "error",
    }
}

/// `/console/runs/{id}/steps/{key}[/output|/input|/bundle]`: a step's own
/// page, or one of its downloads.
pub async fn step_resource(
    State(console): State<Console>,
    signed: Signed,
    Path((run_id, rest)): Path<(String, String)>,
) -> Page {
    let tenant = signed.tenant()?.to_owned();
    let _turn = console.page_turn(&tenant).await?;
    let (key, what) = match rest.rsplit_once('/') {
        Some((key, what @ ("output" | "input" | "bundle"))) => (key.to_owned(), what),
        _ => (rest.clone(), "page"),
    };
    match what {
        "output" => {
            let stream = api!(
                console,
                &tenant,
                get_step_output,
                v1::GetStepOutputRequest {
                    run_id: run_id.clone(),
                    step_key: key.clone(),
                }
            )?;
            Ok(download(stream, &format!("{}-output.json", step_id(&key))))
        }
        "input" => {
            let stream = api!(
                console,
                &tenant,
                get_step_input,
                v1::GetStepInputRequest {
                    run_id: run_id.clone(),
                    step_key: key.clone(),
                }
            )?;
            Ok(download(stream, &format!("{}-input.json", step_id(&key))))
        }
        "bundle" => step_bundle(&console, &tenant, &run_id, &key).await,
        _ => {
            let run = get_run(&console, &tenant, &run_id).await?;
            let step = run
                .steps
                .iter()
                .find(|s| s.step_key == key)
                .ok_or_else(|| {
                    Problem::not_found(format!("run {run_id} has no finished step {key}"))
                })?;
            let definition = definition(&console, &tenant, &run).await;
            let logs = api!(
                console,
                &tenant,
                get_run_logs,
                v1::GetRunLogsRequest {
                    run_id: run_id.clone(),
                    page_size: LOG_LINES,
                    page_token: String::new(),
                }
            )?;
            let mine: Vec<&v1::LogLine> = logs.lines.iter().filter(|l| l.step_key == key).collect();
            let section = step_section(
                &console,
                &tenant,
                &run,
                step,
                definition.as_ref().and_then(|d| d.find_step(step_id(&key))),
                &mine,
                true,
            )
            .await?;
            let body = html! {
                p { a href={ "/console/runs/" (run.run_id) } { "← run " code { (run.run_id) } } }
                (section)
            };
            Ok(page(&format!("Step {key}"), Some(&signed), Section::Runs, body).into_response())
        }
    }
}

/// `name` with every character but letters, digits, `.`, `-` and `_` as
/// `_`: safe in a `Content-Disposition` header and on any file system.
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A payload stream as a download.
fn download<S>(stream: S, name: &str) -> Response
where
    S: Stream<Item = Result<v1::PayloadChunk, tonic::Status>> + Send + 'static,
{
    let body = Body::from_stream(stream.map(|chunk| {
        chunk
            .map(|c| c.data)
            .map_err(|status| std::io::Error::other(status.message().to_owned()))
    }));
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", file_name(name)),
            ),
        ],
        body,
    )
        .into_response()
}

async fn step_bundle(console: &Console, tenant: &str, run_id: &str, key: &str) -> Page {
    let store = console.api().coordinator.store.clone();
    let (file_key, file_run) = (key.to_owned(), run_id.to_owned());
    let (tenant, run_id, key) = (tenant.to_owned(), run_id.to_owned(), key.to_owned());
    let replay = tokio::task::spawn_blocking(move || step_replay(&store, &tenant, &run_id, &key))
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let replay = replay.map_err(|e| {
        use isoflow_engine::run::ReplayError;
        match e {
            ReplayError::NotFound(_) | ReplayError::NoSuchStep { .. } => {
                Problem::not_found(e.to_string())
            }
            ReplayError::Store(_) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            _ => Problem::new(StatusCode::CONFLICT, e.to_string()),
        }
    })?;
    // Written compact, and only up to the limit: a deep input's pretty
    // form would be many times its size.
    let mut input = Capped::new(BUNDLE_INPUT_BYTES);
    if serde_json::to_writer(&mut input, &replay.input).is_err() {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the step's input is over {}: too large for a bundle; `isoflowctl step-input` streams it",
                bytes(BUNDLE_INPUT_BYTES as u64)
            ),
        ));
    }
    let input = input.bytes;
    let id = step_id(&file_key).to_owned();
    let file = format!("{id}.js");
    let runtime = match replay.runtime {
        Runtime::V8 => "",
        Runtime::QuickJs => " --runtime quickjs",
    };
    let readme = format!(
        "Step {file_key} of run {file_run}, as the run gave it: its code ({file}) and its input\n\
         (input.json), rendered again from the run's stored input and the outputs\n\
         of the steps before it. To run it as the run did:\n\n    \
         isoflow eval {file} --input @input.json{runtime}\n\n\
         Change {file} until it does what it should, deploy the fixed version,\n\
         and resume the run from this step with it (the console's \"Resume\", or\n\
         isoflowctl rerun {file_run} --version N).\n"
    );
    let tar = bundle::tar(&[
        (file.as_str(), replay.source.as_bytes()),
        ("input.json", &input),
        ("README.txt", readme.as_bytes()),
    ]);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    file_name(&format!("{id}-bundle.tar"))
                ),
            ),
        ],
        tar,
    )
        .into_response())
}

/// A writer that refuses to hold more than its limit.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
}

impl Capped {
    fn new(limit: usize) -> Capped {
        Capped {
            bytes: Vec::new(),
            limit,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `/console/runs/{id}/input`: the run's input, as a download.
pub async fn run_input(
    State(console): State<Console>,
    signed: Signed,
    Path(run_id): Path<String>,
) -> Page {
    let tenant = signed.tenant()?;
    let stream = api!(
        console,
        tenant,
        get_run_input,
        v1::GetRunInputRequest { run_id }
    )?;
    Ok(download(stream, "input.json"))
}

/// `/console/runs/{id}/output`: a succeeded run's output, as a download.
pub async fn run_output(
    State(console): State<Console>,
    signed: Signed,
    Path(run_id): Path<String>,
) -> Page {
    let tenant = signed.tenant()?;
    let stream = api!(
        console,
        tenant,
        get_run_output,
        v1::GetRunOutputRequest { run_id }
    )?;
    Ok(download(stream, "output.json"))
}

// ---- actions ---------------------------------------------------------------

pub async fn cancel(
    State(console): State<Console>,
    signed: Signed,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    form: Result<Form<Action>, FormRejection>,
) -> Page {
    let form = action(form);
    check_action(&console, &signed, &headers, &form.csrf)?;
    let tenant = signed.tenant()?;
    console
        .api()
        .cancel_run(Console::request(
            tenant,
            v1::CancelRunRequest {
                run_id: run_id.clone(),
            },
        ))
        .await?;
    Ok(Redirect::to(&format!("/console/runs/{run_id}")).into_response())
}

/// Re-runs a failed run from its failed step; with `version`, resumes it
/// with that version's definition (a fix).
pub async fn rerun(
    State(console): State<Console>,
    signed: Signed,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    form: Result<Form<Action>, FormRejection>,
) -> Page {
    let form = action(form);
    check_action(&console, &signed, &headers, &form.csrf)?;
    let tenant = signed.tenant()?;
    let version = match form.version.as_str() {
        "" => None,
        v => Some(v.parse::<u32>().map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("version {v:?} is not a number"),
            )
        })?),
    };
    let run = api!(
        console,
        tenant,
        rerun_run,
        v1::RerunRunRequest { run_id, version }
    )?;
    Ok(Redirect::to(&format!("/console/runs/{}", run.run_id)).into_response())
}

// ---- integrations ----------------------------------------------------------

/// The most runs of one integration (or version) a page counts.
const COUNTED_RUNS: u32 = 200;

/// Of the newest runs matching: how many, how many failed, the newest's
/// time.
async fn run_stats(
    console: &Console,
    tenant: &str,
    integration: &str,
    version: u32,
) -> Result<(usize, usize, u64), Problem> {
    let listed = api!(
        console,
        tenant,
        list_runs,
        v1::ListRunsRequest {
            page_size: COUNTED_RUNS,
            integration: integration.to_owned(),
            version,
            ..Default::default()
        }
    )?;
    let failed = listed
        .runs
        .iter()
        .filter(|r| r.status == v1::RunStatus::Failed as i32)
        .count();
    let newest = listed
        .runs
        .first()
        .map_or(0, |r| ms_of(r.create_time.as_ref()));
    Ok((listed.runs.len(), failed, newest))
}

fn failure_rate(runs: usize, failed: usize) -> Markup {
    html! {
        @if runs == 0 { span.none { "—" } }
        @else {
            @let rate = failed as f64 * 100.0 / runs as f64;
            span class={ "rate" @if failed > 0 { " bad" } } { (format!("{rate:.0}%")) }
            span.note { " (" (failed) " of " (runs) ")" }
        }
    }
}

async fn triggers_of(
    console: &Console,
    tenant: &str,
    integration: &str,
) -> Result<Vec<v1::TriggerInfo>, Problem> {
    Ok(api!(
        console,
        tenant,
        list_triggers,
        v1::ListTriggersRequest {
            integration: integration.to_owned(),
            page_size: 1000,
            page_token: String::new(),
        }
    )?
    .triggers)
}

pub async fn integrations(State(console): State<Console>, signed: Signed) -> Page {
    let tenant = signed.tenant()?;
    let _turn = console.page_turn(tenant).await?;
    let listed = api!(
        console,
        tenant,
        list_integrations,
        v1::ListIntegrationsRequest {
            page_size: 200,
            page_token: String::new(),
        }
    )?;
    let mut rows = Vec::new();
    for integration in &listed.integrations {
        let stats = run_stats(&console, tenant, &integration.name, 0).await?;
        let triggers = triggers_of(&console, tenant, &integration.name).await?;
        rows.push((integration, stats, triggers));
    }
    let body = html! {
        h1 { "Integrations" }
        table #integrations {
            caption.visually-hidden { "Deployed integrations" }
            thead { tr {
                th scope="col" { "Integration" } th scope="col" { "Latest version" } th scope="col" { "Deployed" }
                th scope="col" { "Triggers" } th scope="col" { "Last run" }
                th scope="col" { "Failure rate (last " (COUNTED_RUNS) " runs)" }
            } }
            tbody {
                @for (integration, (runs, failed, newest), triggers) in &rows {
                    tr.integration data-name=(integration.name) {
                        td { a href={ "/console/integrations/" (integration.name) } { (integration.name) } }
                        td.num { (integration.version) }
                        td { (time(ms_of(integration.deploy_time.as_ref()))) }
                        td { @for t in triggers { span.trigger { (t.r#type) ":" (t.trigger) @if t.paused { " (paused)" } } " " } }
                        td { (time(*newest)) }
                        td { (failure_rate(*runs, *failed)) }
                    }
                }
            }
        }
        @if rows.is_empty() { p.empty { "Nothing is deployed yet: " code { "isoflowctl deploy integration.yaml" } "." } }
    };
    Ok(page("Integrations", Some(&signed), Section::Integrations, body).into_response())
}

/// The most versions an integration's page lists.
const LISTED_VERSIONS: u32 = 20;

pub async fn integration(
    State(console): State<Console>,
    signed: Signed,
    Path(name): Path<String>,
) -> Page {
    let tenant = signed.tenant()?;
    let _turn = console.page_turn(tenant).await?;
    let get = |version: u32| {
        console.api().get_integration(Console::request(
            tenant,
            v1::GetIntegrationRequest {
                name: name.clone(),
                version,
            },
        ))
    };
    let latest = get(0).await?.into_inner();
    let definition: Option<Integration> = serde_json::from_str(&latest.definition_json).ok();
    let triggers = triggers_of(&console, tenant, &name).await?;
    let mut versions = Vec::new();
    for version in (1..=latest.version).rev().take(LISTED_VERSIONS as usize) {
        let deployed = get(version).await.ok().map(|r| r.into_inner());
        let stats = run_stats(&console, tenant, &name, version).await?;
        versions.push((version, deployed, stats));
    }
    let recent = api!(
        console,
        tenant,
        list_runs,
        v1::ListRunsRequest {
            page_size: 10,
            integration: name.clone(),
            ..Default::default()
        }
    )?
    .runs;
    let body = html! {
        h1 { (latest.name) span.version { " v" (latest.version) } }
        @if let Some(d) = &definition {
            @if let Some(description) = &d.description { p.description { (description) } }
            h2 { "Steps" }
            (view::graph(&d.steps))
        }
        h2 { "Triggers" }
        table #triggers {
            thead { tr { th scope="col" { "Trigger" } th scope="col" { "Type" } th scope="col" { "Schedule" }
                th scope="col" { "State" } th scope="col" { "Last tick" } th scope="col" { "Next tick" } } }
            tbody {
                tr.trigger { td { "api" } td { "StartRun, isoflowctl start" } td {} td { "always" } td {} td {} }
                @for t in &triggers {
                    tr.trigger data-trigger=(t.trigger) {
                        td { code { (t.trigger) } } td { (t.r#type) }
                        td { (t.schedule) @if !t.timezone.is_empty() { " (" (t.timezone) ")" } }
                        td { @if t.paused { "paused" } @else { "active" } }
                        td { (time(ms_of(t.last_tick_time.as_ref()))) }
                        td { (time(ms_of(t.next_tick_time.as_ref()))) }
                    }
                }
            }
        }
        h2 { "Versions" }
        table #versions {
            thead { tr { th scope="col" { "Version" } th scope="col" { "Deployed" } th scope="col" { "Runs counted" }
                th scope="col" { "Failure rate" } th scope="col" { "Last run" } } }
            tbody {
                @for (version, deployed, (runs, failed, newest)) in &versions {
                    tr.version data-version=(version) {
                        td.num { a href={ "/console/runs?integration=" (name) "&version=" (version) } { (version) } }
                        td { (time(deployed.as_ref().map_or(0, |d| ms_of(d.deploy_time.as_ref())))) }
                        td.num { (runs) }
                        td { (failure_rate(*runs, *failed)) }
                        td { (time(*newest)) }
                    }
                }
            }
        }
        @if latest.version > LISTED_VERSIONS { p.note { "The newest " (LISTED_VERSIONS) " versions are listed." } }
        h2 { "Recent runs" }
        table #recent-runs {
            thead { tr { th scope="col" { "Run" } th scope="col" { "Version" } th scope="col" { "Status" }
                th scope="col" { "Trigger" } th scope="col" { "Started" } } }
            tbody {
                @for run in &recent {
                    tr.run data-run-id=(run.run_id) {
                        td { a href={ "/console/runs/" (run.run_id) } { code { (short_id(&run.run_id)) } } }
                        td.num { (run.version) }
                        td { (badge(view::run_status(run.status))) }
                        td { (run.trigger) }
                        td { (time(ms_of(run.create_time.as_ref()))) }
                    }
                }
            }
        }
        p { a href={ "/console/runs?integration=" (name) } { "All runs of " (name) } }
    };
    Ok(page(&name, Some(&signed), Section::Integrations, body).into_response())
}

// ---- cluster ---------------------------------------------------------------

pub async fn cluster(State(console): State<Console>, signed: Signed) -> Page {
    if !signed.is_admin() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "the cluster page is the admin's: sign in with the node's admin token",
        ));
    }
    let view = console.api().coordinator.cluster_view();
    let capacity: u32 = view.workers.iter().map(|w| w.capacity).sum();
    let busy: usize = view.workers.iter().map(|w| w.in_flight).sum();
    let body = html! {
        h1 { "Cluster" }
        dl #cluster .facts {
            dt { "Leader" } dd #leader { code { (view.leader) } }
            dt { "Queue depth" } dd #queue-depth { (view.queued) }
            dt { "Runs in flight" } dd #in-flight { (busy) " of " (capacity) " slots" }
        }
        table #nodes {
            caption { "Workers taking runs" }
            thead { tr { th scope="col" { "Node" } th scope="col" { "Connection" } th scope="col" { "Runs in flight" }
                th scope="col" { "Capacity" } th scope="col" { "Load" } } }
            tbody {
                @for w in &view.workers {
                    tr.node data-node=(w.name) {
                        td { code { (w.name) } }
                        td { @if w.remote { "gRPC stream" } @else { "in process" } }
                        td.num { (w.in_flight) }
                        td.num { (w.capacity) }
                        td { meter min="0" max=(w.capacity.max(1)) value=(w.in_flight) aria-label={ "Load of " (w.name) } {} }
                    }
                }
            }
        }
        @if view.workers.is_empty() { p.empty { "No worker is connected: runs wait in the queue." } }
    };
    Ok(page("Cluster", Some(&signed), Section::Cluster, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_writer_refuses_past_its_limit_and_keeps_what_fit() {
        use std::io::Write;
        let mut capped = Capped::new(8);
        capped.write_all(b"12345").expect("fits");
        assert!(capped.write_all(b"6789").is_err());
        assert_eq!(capped.bytes, b"12345");
        // A deep value stops at the limit rather than growing past it.
        let deep: Value = serde_json::from_str(&format!("{}0{}", "[".repeat(100), "]".repeat(100)))
            .expect("json");
        let mut capped = Capped::new(50);
        assert!(serde_json::to_writer(&mut capped, &deep).is_err());
        assert!(capped.bytes.len() <= 50);
    }

    #[test]
    fn download_names_keep_only_safe_characters() {
        assert_eq!(file_name("shape-output.json"), "shape-output.json");
        assert_eq!(file_name("a\r\nb\"c/d.json"), "a__b_c_d.json");
    }
}
