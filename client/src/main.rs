//! `isoflowctl`: Isoflow's API from a shell, over [`isoflow_client::Client`].
//!
//! Output is plain lines, one item a line: tables with a header row, a run
//! id alone where a script wants one (`RUN=$(isoflowctl start orders)`), a
//! run's output as JSON on stdout (so `| jq` works) and progress on stderr.
//!
//! Exit codes: 0 done (a followed run succeeded); 1 a followed run
//! (`start --wait`, `watch`) failed or was cancelled; 2 the command itself
//! failed (bad flags, no connection, or the server refused it), after one
//! line `error: <sentence>` on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use isoflow_client::v1::run_update::Update;
use isoflow_client::v1::{self, RunStatus, StepStatus};
use isoflow_client::{AdminClient, Client, ConnectOptions, Error, prost_types, time};
use serde_json::Value;
use tokio_stream::StreamExt;

#[derive(Debug, Parser)]
#[command(
    name = "isoflowctl",
    version,
    about = "Talks to an Isoflow server: deploy integrations, start runs and follow them"
)]
struct Cli {
    /// The server's gRPC address (https://... for a server with TLS)
    #[arg(
        long,
        env = "ISOFLOW_SERVER",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    server: String,
    /// The CA certificate (PEM) that signs an https:// server's certificate
    /// [default: the Mozilla roots]
    #[arg(long, env = "ISOFLOW_CA", global = true)]
    ca: Option<PathBuf>,
    /// The API token; it names the tenant
    #[arg(long, env = "ISOFLOW_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deploy an integration definition, with every .js file under its folder
    Deploy {
        /// The definition (YAML or JSON)
        file: PathBuf,
    },
    /// List integrations: the latest version of each
    Integrations,
    /// Start a run and print its id (with --wait: follow it, print its output)
    Start {
        integration: String,
        /// The version to run [default: the latest]
        #[arg(long)]
        version: Option<u32>,
        /// The input: JSON text, @path to read it from a file, @- from stdin
        #[arg(long, default_value = "null")]
        input: String,
        /// Follow the run: steps on stderr as they finish, then the output
        /// on stdout; exit 1 if the run fails or is cancelled
        #[arg(long)]
        wait: bool,
    },
    /// Start a run and print its output when it ends, in one call; exit 1
    /// if it fails or is cancelled
    Execute {
        integration: String,
        /// The version to run [default: the latest]
        #[arg(long)]
        version: Option<u32>,
        /// The input: JSON text, @path to read it from a file, @- from stdin
        #[arg(long, default_value = "null")]
        input: String,
        /// Makes a retried call wait for the run the first one started
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// List runs, newest first, a page at a time, optionally only those of
    /// an integration, a version, a status or a time range
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The page after the one that printed this token
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only runs of this integration
        #[arg(long)]
        integration: Option<String>,
        /// Only runs of this version
        #[arg(long = "version", value_name = "VERSION")]
        integration_version: Option<u32>,
        /// Only runs with this status: pending, running, succeeded, failed
        /// or cancelled
        #[arg(long)]
        status: Option<String>,
        /// Only runs created since: a time (2026-11-28T10:00:00Z) or a
        /// duration ago (2h, 3days)
        #[arg(long)]
        since: Option<String>,
        /// Only runs created before: a time or a duration ago
        #[arg(long)]
        until: Option<String>,
        /// Only runs started this way: api, webhook, cron, rerun, or one
        /// trigger (webhook:orders, cron:nightly)
        #[arg(long)]
        trigger: Option<String>,
    },
    /// Tenant administration with the node's admin token (from
    /// --admin-token-file or ISOFLOW_ADMIN_TOKEN, never the command line)
    Admin {
        /// A file holding the admin token
        #[arg(long, global = true)]
        admin_token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Show a run: status, error and steps
    Show { run_id: String },
    /// Follow a run until it ends; exit 1 if it fails or is cancelled
    Watch {
        run_id: String,
        /// Print the steps' log lines too
        #[arg(long)]
        logs: bool,
    },
    /// Print the output of a run that succeeded, as JSON
    Output { run_id: String },
    /// Print the input a run was started with, as JSON
    Input { run_id: String },
    /// Print what a step of a run checkpointed, as JSON (its key as `show`
    /// lists it)
    StepOutput { run_id: String, step_key: String },
    /// Print the input a code step was given (a failed one too), as JSON:
    /// `isoflow eval step.js --input @input.json` runs the step on it
    StepInput { run_id: String, step_key: String },
    /// Print a run's log lines, finished or not
    Logs { run_id: String },
    /// Cancel a run: steps in flight finish, no others start
    Cancel { run_id: String },
    /// Triggers: list them, pause and resume cron triggers
    #[command(subcommand)]
    Triggers(TriggerCommand),
    /// Run a failed run again from the step it failed in, as a new run,
    /// and print its id (with --wait: follow it, print its output). The
    /// steps before that one are not run again: their outputs are the old
    /// run's. With --version, the fixed version runs from that step on
    Rerun {
        run_id: String,
        /// Run this version of the integration (a fix deployed since) from
        /// the failed step on; its steps up to that one must be the run's
        #[arg(long)]
        version: Option<u32>,
        /// Follow the new run: steps on stderr as they finish, then the
        /// output on stdout; exit 1 if it fails or is cancelled
        #[arg(long)]
        wait: bool,
    },
    /// Credentials http steps send (`credential: <name>`), sealed on the
    /// server; no command prints a secret
    #[command(subcommand)]
    Credentials(CredentialCommand),
}

#[derive(Debug, Subcommand)]
enum TriggerCommand {
    /// The triggers of an integration (or of all), with cron state
    List { integration: Option<String> },
    /// Pause a cron trigger: its ticks pass without runs
    Pause {
        integration: String,
        trigger: String,
    },
    /// Resume a paused cron trigger from its next tick
    Resume {
        integration: String,
        trigger: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GrantArg {
    ClientCredentials,
    RefreshToken,
    AuthorizationCode,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Tenants: create, list, disable, enable, set quotas
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Tenants' API tokens: issue, list, revoke
    #[command(subcommand)]
    Tokens(TokenCommand),
}

/// A tenant's quotas; each one left out takes the node's default.
#[derive(Debug, Default, clap::Args)]
struct QuotaArgs {
    /// Runs on workers at once (0: no limit)
    #[arg(long)]
    runs_in_flight: Option<u32>,
    /// The largest run input, in bytes
    #[arg(long)]
    max_payload_bytes: Option<u64>,
    /// Runs webhooks may start per minute (0: no limit)
    #[arg(long)]
    webhook_runs_per_minute: Option<u32>,
    /// How long finished runs are kept (30days, 12h; 0s: forever)
    #[arg(long)]
    retention: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant
    Create {
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List tenants with their quotas
    List,
    /// Disable a tenant: its tokens are refused, its webhooks and cron
    /// triggers stop; its data stays
    Disable { name: String },
    /// Enable a disabled tenant
    Enable { name: String },
    /// Replace a tenant's quotas (those left out take the node's defaults)
    Quotas {
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue a token for a tenant and print it: the only time it is shown
    Issue {
        tenant: String,
        /// What the token is for
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List issued tokens (ids, tenants, labels), never the tokens
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by its id
    Revoke { token_id: String },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Store a credential (or replace one); the secret is read from stdin
    /// unless --secret-from says otherwise, never from the command line
    Set {
        name: String,
        /// `Authorization: Bearer <secret>`
        #[arg(long, group = "kind")]
        bearer: bool,
        /// `Authorization: Basic`, with this username and the secret as password
        #[arg(long, group = "kind", value_name = "USERNAME")]
        basic: Option<String>,
        /// The secret in this header, e.g. X-Api-Key
        #[arg(long, group = "kind", value_name = "HEADER")]
        header: Option<String>,
        /// The secret as this query parameter, e.g. api_key
        #[arg(long, group = "kind", value_name = "PARAM")]
        query: Option<String>,
        /// Where it may be sent: scheme, host, optional port and path
        /// prefix (repeat for several)
        #[arg(long = "origin", required = true)]
        origins: Vec<String>,
        /// Accept http:// origins (the secret then crosses the network in clear)
        #[arg(long)]
        allow_plain_http: bool,
        /// stdin, env:NAME or file:PATH
        #[arg(long, default_value = "stdin")]
        secret_from: String,
    },
    /// Store an OAuth2 credential (or replace one): steps send its access
    /// token as a bearer token, renewed by the server before it expires and
    /// after a 401. The client secret is read from stdin unless
    /// --secret-from says otherwise
    SetOauth2 {
        name: String,
        /// The provider's token endpoint
        #[arg(long)]
        token_url: String,
        #[arg(long)]
        client_id: String,
        #[arg(long, value_enum)]
        grant: GrantArg,
        /// A scope to ask for (repeat for several)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The refresh token of the refresh-token grant: stdin, env:NAME or
        /// file:PATH
        #[arg(long)]
        refresh_token_from: Option<String>,
        /// The authorization-code grant's sign-in page
        #[arg(long)]
        authorize_url: Option<String>,
        /// Send the client secret in the form body instead of HTTP Basic
        #[arg(long)]
        client_secret_in_body: bool,
        /// Where the access token may be sent (repeat for several)
        #[arg(long = "origin", required = true)]
        origins: Vec<String>,
        /// Accept http:// origins and endpoints
        #[arg(long)]
        allow_plain_http: bool,
        /// The client secret: stdin, env:NAME or file:PATH
        #[arg(long, default_value = "stdin")]
        secret_from: String,
    },
    /// Start the authorization-code flow of an OAuth2 credential: prints
    /// the URL to open in a browser
    Authorize { name: String },
    /// List credentials: names, kinds, origins, versions, OAuth2 state; no
    /// secrets
    List,
    /// Replace a credential's secret, keeping its kind and origins
    Rotate {
        name: String,
        /// stdin, env:NAME or file:PATH
        #[arg(long, default_value = "stdin")]
        secret_from: String,
    },
    /// Delete a credential
    Delete { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(code) => code,
        // `isoflowctl runs | head`: the reader has all it wants.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error here is one sentence that says its cause.
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // An empty ISOFLOW_TOKEN is no token, as an unset one.
    let mut options = ConnectOptions::new();
    if let Some(token) = cli.token.filter(|token| !token.is_empty()) {
        options = options.token(token);
    }
    // An empty ISOFLOW_CA is no CA, as an unset one.
    if let Some(ca) = cli.ca.filter(|ca| !ca.as_os_str().is_empty()) {
        options = options.ca_file(&ca)?;
    }
    let mut out = std::io::stdout().lock();
    let command = match cli.command {
        Command::Admin {
            admin_token_file,
            command,
        } => {
            let token = admin_token(admin_token_file.as_deref())?;
            let admin = AdminClient::connect_with(&cli.server, &options.token(token)).await?;
            admin_command(&admin, command, &mut out).await?;
            return Ok(ExitCode::SUCCESS);
        }
        command => command,
    };
    let client = Client::connect_with(&cli.server, &options).await?;
    match command {
        // Answered above, with the admin token.
        Command::Admin { .. } => {}
        Command::Deploy { file } => {
            let integration = client.deploy_file(&file).await?;
            deployed(&mut out, &integration)?;
        }
        Command::Integrations => {
            let integrations = client.integrations().await?;
            if integrations.is_empty() {
                eprintln!("no integrations");
            } else {
                integrations_table(&mut out, &integrations)?;
            }
        }
        Command::Start {
            integration,
            version,
            input,
            wait,
        } => {
            let input = read_input(&input)?;
            let run = client.start_run_json(&integration, version, input).await?;
            let started = format!(
                "run {} of {} version {}",
                run.run_id, run.integration, run.version
            );
            return started_run(&client, &run, wait, &started, &mut out).await;
        }
        Command::Execute {
            integration,
            version,
            input,
            request_id,
        } => {
            let input: serde_json::Value =
                serde_json::from_slice(&read_input(&input)?).context("the input is not JSON")?;
            let (run, output) = client
                .execute(&integration, version, &input, &request_id)
                .await?;
            match output {
                Some(output) => writeln!(out, "{}", pretty(&output))?,
                None => eprintln!(
                    "run {} {}: {}",
                    run.run_id,
                    run.status().as_str_name(),
                    run.error
                ),
            }
            return Ok(outcome(&run));
        }
        Command::Runs {
            limit,
            page_token,
            integration,
            integration_version,
            status,
            since,
            until,
            trigger,
        } => {
            let now = SystemTime::now();
            let mut request = v1::ListRunsRequest {
                page_size: limit,
                page_token,
                integration: integration.unwrap_or_default(),
                version: integration_version.unwrap_or(0),
                status: match &status {
                    Some(status) => parse_status(status)? as i32,
                    None => 0,
                },
                create_time_from: since
                    .as_deref()
                    .map(|t| time_ms(t, now, "--since"))
                    .transpose()?
                    .and_then(time::from_ms),
                create_time_to: until
                    .as_deref()
                    .map(|t| time_ms(t, now, "--until"))
                    .transpose()?
                    .and_then(time::from_ms),
                trigger: trigger.unwrap_or_default(),
            };
            // A filter that matches little may answer empty pages with a
            // token: follow them (a bounded number) to the first runs.
            let mut page = client.list_runs(request.clone()).await?;
            for _ in 0..100 {
                if !page.runs.is_empty() || page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token.clone();
                page = client.list_runs(request.clone()).await?;
            }
            if page.runs.is_empty() {
                eprintln!("no runs");
            } else {
                runs_table(&mut out, &page.runs)?;
            }
            if !page.next_page_token.is_empty() {
                eprintln!(
                    "more: the same command with --page-token {}",
                    page.next_page_token
                );
            }
        }
        Command::Credentials(command) => credentials(&client, command, &mut out).await?,
        Command::Triggers(command) => {
            let infos = match command {
                TriggerCommand::List { integration } => {
                    client.triggers(integration.as_deref()).await?
                }
                TriggerCommand::Pause {
                    integration,
                    trigger,
                } => vec![
                    client
                        .set_trigger_paused(&integration, &trigger, true)
                        .await?,
                ],
                TriggerCommand::Resume {
                    integration,
                    trigger,
                } => vec![
                    client
                        .set_trigger_paused(&integration, &trigger, false)
                        .await?,
                ],
            };
            writeln!(
                out,
                "INTEGRATION\tTRIGGER\tTYPE\tSCHEDULE\tSTATE\tLAST\tNEXT"
            )?;
            let time = |ms: u64| {
                if ms == 0 {
                    "-".to_owned()
                } else {
                    timestamp(ms)
                }
            };
            for info in infos {
                let schedule = if info.schedule.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{} {}", info.schedule, info.timezone)
                };
                let state = match (info.r#type.as_str(), info.paused) {
                    ("cron", true) => "paused",
                    ("cron", false) => "active",
                    _ => "-",
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    info.integration,
                    info.trigger,
                    info.r#type,
                    schedule,
                    state,
                    time(ms(&info.last_tick_time)),
                    time(ms(&info.next_tick_time))
                )?;
            }
        }
        Command::Show { run_id } => {
            let run = client.run(&run_id).await?;
            show(&mut out, &run)?;
        }
        Command::Watch { run_id, logs } => {
            let run = follow(&client, &run_id, logs, &mut out).await?;
            return Ok(outcome(&run));
        }
        Command::Output { run_id } => {
            let output = client.output(&run_id).await?;
            writeln!(out, "{}", pretty(&output))?;
        }
        Command::Input { run_id } => {
            let input = client.input(&run_id).await?;
            writeln!(out, "{}", pretty(&input))?;
        }
        Command::StepOutput { run_id, step_key } => {
            let output = client.step_output(&run_id, &step_key).await?;
            writeln!(out, "{}", pretty(&output))?;
        }
        Command::StepInput { run_id, step_key } => {
            let input = client.step_input(&run_id, &step_key).await?;
            writeln!(out, "{}", pretty(&input))?;
        }
        Command::Logs { run_id } => {
            for line in client.logs(&run_id).await? {
                writeln!(
                    out,
                    "{} {} {}#{} {}",
                    timestamp(ms(&line.time)),
                    level(&line),
                    line.step_key,
                    line.attempt,
                    line.message
                )?;
            }
        }
        Command::Rerun {
            run_id,
            version,
            wait,
        } => {
            let run = client.rerun_with(&run_id, version).await?;
            let mut started = format!(
                "run {} reruns {} from step {}",
                run.run_id, run.rerun_of, run.from_step
            );
            if run.from_version != 0 {
                started += &format!(
                    " with version {} (it ran {})",
                    run.version, run.from_version
                );
            }
            return started_run(&client, &run, wait, &started, &mut out).await;
        }
        Command::Cancel { run_id } => {
            let run = client.cancel(&run_id).await?;
            writeln!(out, "run {} {}", run.run_id, status_word(run.status()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn credentials(
    client: &Client,
    command: CredentialCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use v1::set_credential_request::Kind;
    match command {
        CredentialCommand::Set {
            name,
            bearer: _,
            basic,
            header,
            query,
            origins,
            allow_plain_http,
            secret_from,
        } => {
            let secret = read_secret(&secret_from)?;
            // Without --basic, --header or --query: a bearer token.
            let kind = match (basic, header, query) {
                (Some(username), _, _) => Kind::Basic(v1::BasicCredential {
                    username,
                    password: secret,
                }),
                (_, Some(header), _) => Kind::Header(v1::HeaderCredential {
                    header,
                    value: secret,
                }),
                (_, _, Some(param)) => Kind::Query(v1::QueryCredential {
                    param,
                    value: secret,
                }),
                _ => Kind::Bearer(v1::BearerCredential { token: secret }),
            };
            let info = client
                .set_credential(v1::SetCredentialRequest {
                    name,
                    kind: Some(kind),
                    origins,
                    allow_plain_http,
                })
                .await?;
            writeln!(
                out,
                "credential {} version {} ({}, key {})",
                info.name, info.version, info.kind, info.key_id
            )?;
        }
        CredentialCommand::SetOauth2 {
            name,
            token_url,
            client_id,
            grant,
            scopes,
            refresh_token_from,
            authorize_url,
            client_secret_in_body,
            origins,
            allow_plain_http,
            secret_from,
        } => {
            let client_secret = read_secret(&secret_from)?;
            let refresh_token = match refresh_token_from {
                Some(from) => read_secret(&from)?,
                None => String::new(),
            };
            let mut oauth2 = v1::OAuth2Credential {
                token_url,
                client_id,
                client_secret,
                scopes,
                refresh_token,
                authorize_url: authorize_url.unwrap_or_default(),
                client_secret_in_body,
                ..Default::default()
            };
            oauth2.set_grant(match grant {
                GrantArg::ClientCredentials => v1::Oauth2Grant::ClientCredentials,
                GrantArg::RefreshToken => v1::Oauth2Grant::RefreshToken,
                GrantArg::AuthorizationCode => v1::Oauth2Grant::AuthorizationCode,
            });
            let info = client
                .set_credential(v1::SetCredentialRequest {
                    name,
                    kind: Some(Kind::Oauth2(oauth2)),
                    origins,
                    allow_plain_http,
                })
                .await?;
            writeln!(
                out,
                "credential {} version {} ({}, key {})",
                info.name, info.version, info.kind, info.key_id
            )?;
            if let Some(uri) = info
                .oauth2
                .as_ref()
                .map(|o| o.redirect_uri.as_str())
                .filter(|u| !u.is_empty())
            {
                eprintln!("register this redirect URI with the provider: {uri}");
            }
        }
        CredentialCommand::Authorize { name } => {
            let authorization = client.authorize_credential(&name).await?;
            writeln!(out, "{}", authorization.authorize_url)?;
            eprintln!(
                "open it in a browser and sign in before {}",
                timestamp(ms(&authorization.expire_time))
            );
        }
        CredentialCommand::List => {
            let infos = client.credentials().await?;
            if infos.is_empty() {
                eprintln!("no credentials");
                return Ok(());
            }
            writeln!(
                out,
                "NAME\tKIND\tDETAIL\tVERSION\tKEY\tUPDATED\tORIGINS\tSTATE"
            )?;
            for info in infos {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    info.name,
                    info.kind,
                    if info.detail.is_empty() {
                        "-"
                    } else {
                        &info.detail
                    },
                    info.version,
                    info.key_id,
                    timestamp(ms(&info.update_time)),
                    info.origins.join(","),
                    oauth2_state(info.oauth2.as_ref())
                )?;
            }
        }
        CredentialCommand::Rotate { name, secret_from } => {
            let secret = read_secret(&secret_from)?;
            let info = client.rotate_credential(&name, &secret).await?;
            writeln!(out, "credential {} version {}", info.name, info.version)?;
        }
        CredentialCommand::Delete { name } => {
            if !client.delete_credential(&name).await? {
                anyhow::bail!("there is no credential {name:?}");
            }
            writeln!(out, "credential {name} deleted")?;
        }
    }
    Ok(())
}

/// A run just started: its id on stdout; with `wait`, `started` on stderr,
/// its steps as they finish, then its output, and the exit code its end
/// calls for.
async fn started_run(
    client: &Client,
    run: &v1::Run,
    wait: bool,
    started: &str,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if !wait {
        writeln!(out, "{}", run.run_id)?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{started}");
    let run = follow(client, &run.run_id, false, &mut std::io::stderr()).await?;
    if run.status() == RunStatus::Succeeded {
        let output = client.output(&run.run_id).await?;
        writeln!(out, "{}", pretty(&output))?;
    }
    Ok(outcome(&run))
}

/// An OAuth2 credential's state in a few words; `-` for other kinds.
fn oauth2_state(status: Option<&v1::OAuth2Status>) -> String {
    let Some(status) = status else {
        return "-".to_owned();
    };
    if !status.unhealthy.is_empty() {
        let what = if status.needs_attention {
            "needs attention"
        } else {
            "unhealthy"
        };
        return format!("{what}: {}", status.unhealthy);
    }
    if status.awaiting_authorization {
        return "awaiting authorization".to_owned();
    }
    match ms(&status.expire_time) {
        0 if status.renewals == 0 => "no token yet".to_owned(),
        0 => format!("token {}", status.renewals),
        expires => format!("token {} expires {}", status.renewals, timestamp(expires)),
    }
}

/// The admin token: from `--admin-token-file`, else `ISOFLOW_ADMIN_TOKEN`.
/// Never an argument: those show in `ps`.
fn admin_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read the admin token file {}: {e}", path.display()))?,
        None => std::env::var("ISOFLOW_ADMIN_TOKEN").map_err(|_| {
            anyhow!("no admin token: give --admin-token-file or set ISOFLOW_ADMIN_TOKEN")
        })?,
    };
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        anyhow::bail!("the admin token is empty");
    }
    Ok(token.to_owned())
}

fn parse_status(text: &str) -> anyhow::Result<RunStatus> {
    Ok(match text {
        "pending" => RunStatus::Pending,
        "running" => RunStatus::Running,
        "succeeded" => RunStatus::Succeeded,
        "failed" => RunStatus::Failed,
        "cancelled" => RunStatus::Cancelled,
        other => anyhow::bail!(
            "--status is {other:?}: use pending, running, succeeded, failed or cancelled"
        ),
    })
}

/// `--since`/`--until`: an RFC 3339 time, or a duration before `now`; as
/// ms since 1970.
fn time_ms(text: &str, now: SystemTime, flag: &str) -> anyhow::Result<u64> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                anyhow!(
                    "{flag} is {text:?}: give a time (2026-11-28T10:00:00Z) or a duration ago (2h)"
                )
            })?;
            now.checked_sub(ago)
                .ok_or_else(|| anyhow!("{flag} is {text:?}: that is before 1970"))?
        }
    };
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("{flag} is {text:?}: that is before 1970"))?
        .as_millis();
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn quotas(args: QuotaArgs) -> anyhow::Result<v1::TenantQuotas> {
    let retention_seconds = args
        .retention
        .map(|text| {
            humantime::parse_duration(&text)
                .map(|d| d.as_secs())
                .map_err(|_| anyhow!("--retention is {text:?}: give a duration (30days, 12h)"))
        })
        .transpose()?;
    Ok(v1::TenantQuotas {
        runs_in_flight: args.runs_in_flight,
        max_payload_bytes: args.max_payload_bytes,
        webhook_runs_per_minute: args.webhook_runs_per_minute,
        retention: retention_seconds.map(|seconds| prost_types::Duration {
            seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    })
}

fn quota_text<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "default".to_owned(), |v| v.to_string())
}

fn tenant_line(tenant: &v1::Tenant) -> String {
    let quotas = tenant.quotas.unwrap_or_default();
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        tenant.name,
        if tenant.disabled {
            "disabled"
        } else {
            "enabled"
        },
        if tenant.from_config {
            "config"
        } else {
            "admin"
        },
        quota_text(quotas.runs_in_flight),
        quota_text(quotas.max_payload_bytes),
        quota_text(quotas.webhook_runs_per_minute),
        quotas.retention.map_or_else(
            || "default".to_owned(),
            |d| if d.seconds <= 0 {
                "forever".to_owned()
            } else {
                humantime::format_duration(Duration::from_secs(d.seconds.unsigned_abs()))
                    .to_string()
            }
        ),
    )
}

const TENANT_HEADER: &str =
    "NAME\tSTATE\tSOURCE\tRUNS_IN_FLIGHT\tMAX_PAYLOAD_BYTES\tWEBHOOK_RUNS_PER_MINUTE\tRETENTION";

async fn admin_command(
    admin: &AdminClient,
    command: AdminCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        AdminCommand::Tenants(TenantCommand::Create { name, quotas: q }) => {
            let tenant = admin.create_tenant(&name, quotas(q)?).await?;
            writeln!(out, "{TENANT_HEADER}")?;
            writeln!(out, "{}", tenant_line(&tenant))?;
        }
        AdminCommand::Tenants(TenantCommand::List) => {
            writeln!(out, "{TENANT_HEADER}")?;
            for tenant in admin.tenants().await? {
                writeln!(out, "{}", tenant_line(&tenant))?;
            }
        }
        AdminCommand::Tenants(TenantCommand::Disable { name }) => {
            admin.set_disabled(&name, true).await?;
            writeln!(out, "tenant {name} disabled")?;
        }
        AdminCommand::Tenants(TenantCommand::Enable { name }) => {
            admin.set_disabled(&name, false).await?;
            writeln!(out, "tenant {name} enabled")?;
        }
        AdminCommand::Tenants(TenantCommand::Quotas { name, quotas: q }) => {
            let tenant = admin.set_quotas(&name, quotas(q)?).await?;
            writeln!(out, "{TENANT_HEADER}")?;
            writeln!(out, "{}", tenant_line(&tenant))?;
        }
        AdminCommand::Tokens(TokenCommand::Issue { tenant, label }) => {
            let issued = admin.issue_token(&tenant, &label).await?;
            let info = issued.info.unwrap_or_default();
            eprintln!(
                "token {} for tenant {}: shown this once, keep it now",
                info.token_id, info.tenant
            );
            writeln!(out, "{}", issued.token)?;
        }
        AdminCommand::Tokens(TokenCommand::List { tenant }) => {
            writeln!(out, "ID\tTENANT\tCREATED\tLABEL")?;
            for token in admin.tokens(tenant.as_deref()).await? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    token.token_id,
                    token.tenant,
                    timestamp(ms(&token.create_time)),
                    token.label
                )?;
            }
        }
        AdminCommand::Tokens(TokenCommand::Revoke { token_id }) => {
            let info = admin.revoke_token(&token_id).await?;
            writeln!(
                out,
                "token {} of tenant {} revoked",
                info.token_id, info.tenant
            )?;
        }
    }
    Ok(())
}

/// `--secret-from`: `stdin` (one line, its line break dropped), `env:NAME`
/// or `file:PATH`. Never an argument: those show in `ps`.
fn read_secret(from: &str) -> anyhow::Result<String> {
    let text = if from == "stdin" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .map_err(|e| anyhow!("cannot read the secret from stdin: {e}"))?;
        text
    } else if let Some(name) = from.strip_prefix("env:") {
        std::env::var(name).map_err(|_| anyhow!("environment variable {name} is not set"))?
    } else if let Some(path) = from.strip_prefix("file:") {
        std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read secret file {path}: {e}"))?
    } else {
        anyhow::bail!("--secret-from is {from:?}: use stdin, env:NAME or file:PATH");
    };
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        anyhow::bail!("the secret from {from} is empty");
    }
    Ok(secret.to_owned())
}

/// `--input`: JSON text, `@path` for a file holding it, `@-` for stdin.
/// Checked here, so that a typo is caught before a run starts, and sent as
/// written.
fn read_input(arg: &str) -> anyhow::Result<Vec<u8>> {
    let (bytes, origin) = match arg.strip_prefix('@') {
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
                .map_err(|e| anyhow!("cannot read the input from stdin: {e}"))?;
            (bytes, "the input on stdin".to_owned())
        }
        Some(path) => (
            std::fs::read(path).map_err(|e| anyhow!("cannot read input file {path}: {e}"))?,
            format!("input file {path}"),
        ),
        None => (arg.as_bytes().to_vec(), "--input".to_owned()),
    };
    serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| anyhow!("{origin} is not valid JSON: {e}"))?;
    Ok(bytes)
}

/// Prints a run's updates to `out` until it ends (the steps so far first),
/// and returns it as it ended. The run's error, if any, goes to stderr.
async fn follow(
    client: &Client,
    run_id: &str,
    logs: bool,
    out: &mut dyn Write,
) -> anyhow::Result<v1::Run> {
    let mut updates = client.watch(run_id, logs).await?;
    while let Some(update) = updates.next().await {
        match update?.update {
            Some(Update::Step(step)) => writeln!(out, "{}", step_line(&step))?,
            Some(Update::Log(log)) => writeln!(out, "{}", log_line(&log))?,
            Some(Update::Finished(run)) => {
                writeln!(
                    out,
                    "run {} {} in {}",
                    run.run_id,
                    status_word(run.status()),
                    millis(ms(&run.update_time).saturating_sub(ms(&run.create_time)))
                )?;
                if !run.error.is_empty() {
                    eprintln!("error: {}", run.error);
                }
                return Ok(run);
            }
            None => {}
        }
    }
    Err(Error::WatchEnded {
        run_id: run_id.to_owned(),
    }
    .into())
}

fn outcome(run: &v1::Run) -> ExitCode {
    if run.status() == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn step_line(step: &v1::Step) -> String {
    let mut line = format!("step {:<24} {:<9}", step.step_key, step_word(step.status()));
    if step.status() != StepStatus::Skipped {
        line.push_str(&format!(" {:>10}", step_duration(step)));
    }
    if step.attempts > 1 {
        line.push_str(&format!("  attempt {}", step.attempts));
    }
    if !step.error.is_empty() {
        line.push_str(&format!("  {}", step.error));
    }
    line
}

/// `info`, `warn`, ... (`-` for a level this CLI does not know).
fn level(log: &v1::LogLine) -> &'static str {
    match v1::LogLevel::try_from(log.level) {
        Ok(v1::LogLevel::Debug) => "debug",
        Ok(v1::LogLevel::Info) => "info",
        Ok(v1::LogLevel::Warn) => "warn",
        Ok(v1::LogLevel::Error) => "error",
        Ok(v1::LogLevel::Unspecified) | Err(_) => "-",
    }
}

fn log_line(log: &v1::LogLine) -> String {
    format!(
        "log  {:<24} {:<5} {}  {}",
        log.step_key,
        level(log),
        timestamp(ms(&log.time)),
        log.message
    )
}

fn deployed(out: &mut impl Write, integration: &v1::Integration) -> std::io::Result<()> {
    if integration.created {
        writeln!(
            out,
            "deployed {} version {}",
            integration.name, integration.version
        )
    } else {
        writeln!(
            out,
            "unchanged {} version {}: already deployed with this definition",
            integration.name, integration.version
        )
    }
}

fn integrations_table(
    out: &mut impl Write,
    integrations: &[v1::Integration],
) -> std::io::Result<()> {
    writeln!(out, "{:<32} {:>7}  {:<24}", "NAME", "VERSION", "DEPLOYED")?;
    for integration in integrations {
        writeln!(
            out,
            "{:<32} {:>7}  {:<24}",
            integration.name,
            integration.version,
            timestamp(ms(&integration.deploy_time))
        )?;
    }
    Ok(())
}

fn runs_table(out: &mut impl Write, runs: &[v1::Run]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<36}  {:<24} {:>7}  {:<9}  {:<24} {:>10}  TRIGGER",
        "RUN", "INTEGRATION", "VERSION", "STATUS", "CREATED", "DURATION"
    )?;
    for run in runs {
        let duration = if is_finished(run.status()) {
            millis(ms(&run.update_time).saturating_sub(ms(&run.create_time)))
        } else {
            "-".to_owned()
        };
        writeln!(
            out,
            "{:<36}  {:<24} {:>7}  {:<9}  {:<24} {:>10}  {}",
            run.run_id,
            run.integration,
            run.version,
            status_word(run.status()),
            timestamp(ms(&run.create_time)),
            duration,
            trigger_word(run)
        )?;
    }
    Ok(())
}

fn show(out: &mut impl Write, run: &v1::Run) -> std::io::Result<()> {
    writeln!(out, "run         {}", run.run_id)?;
    writeln!(
        out,
        "integration {} version {}",
        run.integration, run.version
    )?;
    writeln!(out, "status      {}", status_word(run.status()))?;
    writeln!(out, "created     {}", timestamp(ms(&run.create_time)))?;
    writeln!(out, "updated     {}", timestamp(ms(&run.update_time)))?;
    writeln!(out, "trigger     {}", trigger_word(run))?;
    if !run.rerun_of.is_empty() {
        writeln!(
            out,
            "rerun of    {} from step {}",
            run.rerun_of, run.from_step
        )?;
        if run.from_version != 0 {
            writeln!(
                out,
                "moved from  version {} to version {}",
                run.from_version, run.version
            )?;
        }
    }
    if !run.error.is_empty() {
        writeln!(out, "error       {}", run.error)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<32} {:<9} {:>8} {:>10} {:>12}  NODE",
        "STEP", "STATUS", "ATTEMPTS", "DURATION", "OUTPUT"
    )?;
    for step in &run.steps {
        let output = step
            .output_bytes
            .map_or_else(|| "-".to_owned(), |b| format!("{b} B"));
        writeln!(
            out,
            "{:<32} {:<9} {:>8} {:>10} {:>12}  {}",
            step.step_key,
            step_word(step.status()),
            step.attempts,
            step_duration(step),
            output,
            if step.node.is_empty() {
                "-"
            } else {
                &step.node
            }
        )?;
    }
    for step in run.steps.iter().filter(|step| !step.error.is_empty()) {
        writeln!(out, "  {}: {}", step.step_key, step.error)?;
    }
    Ok(())
}

/// What started a run; `-` for runs from before runs recorded it.
fn trigger_word(run: &v1::Run) -> &str {
    if run.trigger.is_empty() {
        "-"
    } else {
        &run.trigger
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn is_finished(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
    )
}

fn status_word(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Unspecified => "unknown",
        RunStatus::Pending => "pending",
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

fn step_word(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Unspecified => "unknown",
        StepStatus::Succeeded => "ok",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
    }
}

fn step_duration(step: &v1::Step) -> String {
    millis(ms(&step.end_time).saturating_sub(ms(&step.start_time)))
}

/// A time of the API in milliseconds since 1970; 0 for none.
fn ms(time: &Option<prost_types::Timestamp>) -> u64 {
    time::to_ms(time.as_ref())
}

fn millis(ms: u64) -> String {
    format!("{ms} ms")
}

/// RFC 3339 for any time before the year 10000 (humantime cannot write
/// later ones); the number of milliseconds past that, and `-` for none.
fn timestamp(ms: u64) -> String {
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    if ms == 0 {
        return "-".to_owned();
    }
    if ms >= YEAR_10000_MS {
        return format!("{ms} ms since 1970");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_timestamp_prints() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(timestamp(u64::MAX), format!("{} ms since 1970", u64::MAX));
    }

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn start_takes_a_version_beside_the_binarys_own_version_flag() {
        let cli = Cli::try_parse_from([
            "isoflowctl",
            "--server",
            "http://node:7700",
            "start",
            "orders",
            "--version",
            "3",
            "--input",
            r#"{"a":1}"#,
            "--wait",
        ])
        .expect("valid command line");
        assert_eq!(cli.server, "http://node:7700");
        let Command::Start {
            integration,
            version,
            input,
            wait,
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(
            (integration.as_str(), version, input.as_str(), wait),
            ("orders", Some(3), r#"{"a":1}"#, true)
        );
    }

    #[test]
    fn runs_filters_parse_times_and_statuses() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            time_ms("2h", now, "--since").expect("a duration"),
            (1_800_000_000 - 7200) * 1000
        );
        assert_eq!(
            time_ms("2026-11-28T10:00:00Z", now, "--since").expect("a time"),
            1_795_860_000_000
        );
        let error = time_ms("yesterday-ish", now, "--since").expect_err("neither");
        assert!(error.to_string().starts_with("--since is"), "{error}");
        assert_eq!(parse_status("failed").expect("valid"), RunStatus::Failed);
        assert!(parse_status("broken").is_err());
        let cli = Cli::try_parse_from([
            "isoflowctl",
            "runs",
            "--integration",
            "orders",
            "--status",
            "failed",
            "--since",
            "1h",
            "--version",
            "2",
        ])
        .expect("valid command line");
        let Command::Runs {
            integration,
            integration_version,
            ..
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(
            (integration.as_deref(), integration_version),
            (Some("orders"), Some(2))
        );
        let quotas = quotas(QuotaArgs {
            retention: Some("30days".into()),
            ..QuotaArgs::default()
        })
        .expect("valid");
        assert_eq!(quotas.retention.map(|d| d.seconds), Some(30 * 86_400));
        assert_eq!(quotas.runs_in_flight, None);
    }

    #[test]
    fn input_is_checked_and_sent_as_written() {
        assert_eq!(
            read_input(r#"{"n": 12345678901234567890123}"#).expect("valid"),
            br#"{"n": 12345678901234567890123}"#
        );
        let error = read_input("{oops").expect_err("not JSON");
        assert!(
            error.to_string().starts_with("--input is not valid JSON"),
            "{error}"
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("input.json");
        std::fs::write(&path, "[1, 2]").expect("write");
        assert_eq!(
            read_input(&format!("@{}", path.display())).expect("valid"),
            b"[1, 2]"
        );
        let missing = format!("@{}", dir.path().join("nope.json").display());
        let error = read_input(&missing).expect_err("missing");
        assert!(
            error.to_string().starts_with("cannot read input file"),
            "{error}"
        );
    }

    #[test]
    fn show_prints_status_error_and_one_line_per_step() {
        let run = v1::Run {
            run_id: "r-1".to_owned(),
            integration: "orders".to_owned(),
            version: 2,
            status: RunStatus::Failed.into(),
            create_time: time::from_ms(1_700_000_000_000),
            update_time: time::from_ms(1_700_000_000_500),
            error: "step \"post\": HTTP 500".to_owned(),
            trigger: "rerun".to_owned(),
            rerun_of: "r-0".to_owned(),
            from_step: "post".to_owned(),
            steps: vec![
                v1::Step {
                    step_key: "fetch".to_owned(),
                    status: StepStatus::Succeeded.into(),
                    attempts: 1,
                    start_time: time::from_ms(1_700_000_000_000),
                    end_time: time::from_ms(1_700_000_000_120),
                    output_bytes: Some(42),
                    node: "worker-1".to_owned(),
                    ..v1::Step::default()
                },
                v1::Step {
                    step_key: "post".to_owned(),
                    status: StepStatus::Failed.into(),
                    attempts: 3,
                    error: "HTTP 500".to_owned(),
                    ..v1::Step::default()
                },
            ],
            ..v1::Run::default()
        };
        let mut out = Vec::new();
        show(&mut out, &run).expect("writes to memory");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "status      failed");
        assert!(lines.contains(&"error       step \"post\": HTTP 500"));
        assert!(lines.contains(&"trigger     rerun"), "{text}");
        assert!(lines.contains(&"rerun of    r-0 from step post"), "{text}");
        let fetch = lines
            .iter()
            .find(|l| l.starts_with("fetch "))
            .expect("a fetch row");
        assert!(
            fetch.contains(" ok ") && fetch.contains("120 ms") && fetch.ends_with("42 B  worker-1"),
            "{fetch}"
        );
        // A step stored before nodes were recorded names none.
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("post ") && l.contains(" failed ") && l.ends_with("  -"))
        );
        assert_eq!(lines.last(), Some(&"  post: HTTP 500"));
    }

    #[test]
    fn a_log_line_names_its_level() {
        let line = v1::LogLine {
            step_key: "filter".to_owned(),
            attempt: 1,
            level: v1::LogLevel::Warn.into(),
            message: "2 of 3 orders are open".to_owned(),
            time: time::from_ms(1_700_000_000_000),
        };
        assert_eq!(
            log_line(&line),
            "log  filter                   warn  2023-11-14T22:13:20.000Z  2 of 3 orders are open"
        );
        let unknown = v1::LogLine { level: 17, ..line };
        assert_eq!(level(&unknown), "-");
    }

    #[test]
    fn a_step_line_says_attempts_and_error_only_when_there_are_some() {
        let ok = v1::Step {
            step_key: "fetch".to_owned(),
            status: StepStatus::Succeeded.into(),
            attempts: 1,
            start_time: time::from_ms(10),
            end_time: time::from_ms(25),
            ..v1::Step::default()
        };
        assert_eq!(
            step_line(&ok).split_whitespace().collect::<Vec<_>>(),
            ["step", "fetch", "ok", "15", "ms"]
        );
        let failed = v1::Step {
            status: StepStatus::Failed.into(),
            attempts: 3,
            error: "timed out".to_owned(),
            ..ok
        };
        assert!(step_line(&failed).ends_with("attempt 3  timed out"));
    }
}
