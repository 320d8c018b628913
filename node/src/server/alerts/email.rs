//! Alert emails: plain text through the node's `[smtp]` server (lettre,
//! STARTTLS with rustls unless configured off for a relay on this machine).
//!
//! What a message says is [`subject`] and [`body`], pure functions of the
//! run: the subject names the tenant, integration, version and cause; the
//! body the run id and its error sentence, with no links. [`Mailer::send`]
//! tries [`super::ATTEMPTS`] times unless the server refuses for good (a 5xx
//! answer); it returns why it gave up, and the caller logs it. Nothing here
//! ever touches a run: an unreachable server costs a warning.

use std::time::Duration;

use isoflow_engine::model::EmailAddress;
use isoflow_engine::store::RunRecord;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::Smtp;

/// The longest error text an email quotes, in characters: the rest is in
/// the run's record.
const MAX_ERROR_CHARS: usize = 2000;

/// Sends alert emails through one SMTP server.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for messages.
    server: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// The mailer `config` describes; `None` when `[smtp]` is not set.
    ///
    /// # Errors
    /// A `from` that is not an address, or TLS parameters that cannot be
    /// made (`config` was checked when it was loaded, so neither happens).
    pub fn new(config: &Smtp) -> anyhow::Result<Option<Mailer>> {
        let Some(host) = &config.host else {
            return Ok(None);
        };
        let from: Mailbox = config
            .from
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow::anyhow!("smtp.from: {e}"))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(config.port())
            .timeout(Some(config.timeout));
        if config.starttls {
            let tls = TlsParameters::new(host.clone())
                .map_err(|e| anyhow::anyhow!("smtp: cannot set up TLS for {host}: {e}"))?;
            builder = builder.tls(Tls::Required(tls));
        }
        if let (Some(username), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(username.clone(), password.0.clone()));
        }
        Ok(Some(Mailer {
            transport: builder.build(),
            from,
            server: format!("{host}:{}", config.port()),
        }))
    }

    /// Sends one message to every address in `to`, trying again after a
    /// connection error or a 4xx answer.
    ///
    /// # Errors
    /// Why the last attempt failed, one sentence.
    pub async fn send(&self, to: &[EmailAddress], subject: &str, body: &str) -> Result<(), String> {
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for address in to {
            let mailbox: Mailbox = address
                .as_str()
                .parse()
                .map_err(|e| format!("recipient {address}: {e}"))?;
            message = message.to(mailbox);
        }
        let message = message
            .body(body.to_owned())
            .map_err(|e| format!("cannot build the message: {e}"))?;
        let mut attempt = 1;
        loop {
            match self.transport.send(message.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < super::ATTEMPTS && !e.is_permanent() => {
                    tracing::debug!(server = %self.server, attempt, "alert email not sent yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(format!(
                        "SMTP server {} after {attempt} attempt{}: {e}",
                        self.server,
                        if attempt == 1 { "" } else { "s" }
                    ));
                }
            }
        }
    }
}

/// `[prefix ]isoflow: <integration> version <v> failed|was slow (tenant <t>)`.
pub fn subject(prefix: Option<&str>, run: &RunRecord, cause: &str) -> String {
    let what = match cause {
        "slow" => "was slow",
        other => other,
    };
    let subject = format!(
        "isoflow: {} version {} {what} (tenant {})",
        run.integration, run.version, run.tenant
    );
    match prefix.filter(|p| !p.is_empty()) {
        Some(prefix) => format!("{prefix} {subject}"),
        None => subject,
    }
}

/// The subject of an alert on a credential that went unhealthy.
pub fn credential_subject(
    tenant: &str,
    integration: &str,
    version: u32,
    credential: &str,
) -> String {
    format!(
        "isoflow: credential {credential} of {integration} version {version} cannot be renewed (tenant {tenant})"
    )
}

/// The message of an alert on a credential that went unhealthy.
pub fn credential_body(
    tenant: &str,
    integration: &str,
    version: u32,
    credential: &str,
    reason: &str,
    suppressed: u64,
) -> String {
    letter(
        format!(
            "Credential {credential}, which integration {integration} version {version} sends, \
             cannot be renewed: its runs' requests that need it fail until it is fixed."
        ),
        &[
            ("tenant", tenant.to_owned()),
            ("integration", integration.to_owned()),
            ("version", version.to_string()),
            ("credential", credential.to_owned()),
        ],
        Some(reason),
        suppressed,
        "`isoflowctl credentials list` shows its state; set, rotate or authorize it again.",
    )
}

/// The message: what happened, then one field a line. Plain text, no links.
pub fn body(run: &RunRecord, cause: &str, suppressed: u64) -> String {
    let what = match cause {
        "slow" => "took longer than its alert's threshold",
        _ => "failed",
    };
    let duration = run.updated_at_ms.saturating_sub(run.created_at_ms);
    let mut fields = vec![
        ("tenant", run.tenant.clone()),
        ("integration", run.integration.clone()),
        ("version", run.version.to_string()),
        ("run", run.run_id.clone()),
        ("status", run.status.as_str().to_owned()),
        ("duration", format!("{duration} ms")),
    ];
    if let Some(trigger) = &run.trigger {
        fields.push(("trigger", trigger.to_string()));
    }
    letter(
        format!(
            "A run of integration {} version {} {what}.",
            run.integration, run.version
        ),
        &fields,
        run.error.as_deref(),
        suppressed,
        &format!("`isoflowctl show {}` shows its steps.", run.run_id),
    )
}

/// An alert's text: the opening sentence, one field a line, the error cut
/// to [`MAX_ERROR_CHARS`], how many were held back, the closing line.
fn letter(
    opening: String,
    fields: &[(&str, String)],
    error: Option<&str>,
    suppressed: u64,
    closing: &str,
) -> String {
    let mut text = format!("{opening}\n\n");
    let mut field = |name: &str, value: &str| {
        text.push_str(&format!("{name:<12} {value}\n"));
    };
    for (name, value) in fields {
        field(name, value);
    }
    if let Some(error) = error {
        let mut quoted: String = error.chars().take(MAX_ERROR_CHARS).collect();
        if quoted.len() < error.len() {
            quoted.push_str(" (cut)");
        }
        field("error", &quoted);
    }
    if suppressed > 0 {
        field(
            "held back",
            &format!("{suppressed} earlier alert(s) of this cause, in the last minute"),
        );
    }
    text.push_str(&format!("\n{closing}\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use isoflow_engine::store::{RunStatus, RunTrigger};

    fn run() -> RunRecord {
        let mut run = RunRecord::new("acme", "orders-to-erp", 3).started_by(RunTrigger::Api);
        run.status = RunStatus::Failed;
        run.updated_at_ms = run.created_at_ms + 1500;
        run.error = Some("step \"post\": HTTP 500 from https://erp.example.com/orders".into());
        run
    }

    #[test]
    fn the_subject_names_tenant_integration_version_and_cause() {
        let run = run();
        assert_eq!(
            subject(None, &run, "failed"),
            "isoflow: orders-to-erp version 3 failed (tenant acme)"
        );
        assert_eq!(
            subject(Some("[ERP]"), &run, "slow"),
            "[ERP] isoflow: orders-to-erp version 3 was slow (tenant acme)"
        );
    }

    #[test]
    fn the_body_has_the_run_id_and_the_error_sentence() {
        let run = run();
        let text = body(&run, "failed", 2);
        assert!(
            text.contains(&format!("run          {}\n", run.run_id)),
            "{text}"
        );
        assert!(
            text.contains(
                "error        step \"post\": HTTP 500 from https://erp.example.com/orders\n"
            ),
            "{text}"
        );
        assert!(text.contains("held back    2 earlier"), "{text}");
        assert!(text.contains("duration     1500 ms"), "{text}");
        let mut long = run.clone();
        long.error = Some("x".repeat(10_000));
        let text = body(&long, "failed", 0);
        assert!(text.contains(&format!("{} (cut)", "x".repeat(MAX_ERROR_CHARS))));
        assert!(!text.contains("held back"));
    }

    #[test]
    fn every_address_the_model_takes_is_one_lettre_takes() {
        for address in [
            "ops@example.com",
            "a.b+alerts@mail.example.co.uk",
            "x!#$%&'*+/=?^_`{|}~-@a-b.io",
            "1@2.3",
        ] {
            let model = EmailAddress::new(address).expect("the model takes it");
            let parsed: Mailbox = model.as_str().parse().expect("lettre takes it");
            assert_eq!(parsed.email.to_string(), address);
        }
    }
}
