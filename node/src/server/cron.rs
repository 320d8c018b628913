//! Cron triggers: the coordinator that leads (or the `all` node) starts a
//! run at each tick of each `type: cron` trigger of each tenant's latest
//! deployed integration.
//!
//! # Each tick once
//!
//! A tick is a request key (`cron␁<integration>␁<trigger>`, the tick's
//! time in milliseconds, zero-padded) stored in the same write that creates
//! its run ([`Coordinator::start_run`]); a tick skipped is stored without a
//! run. The last stored tick is where the schedule continues from, so a
//! coordinator restarted, or a standby that takes over on the same volume,
//! neither repeats a tick nor loses the count. A schedule seen for the
//! first time counts from that moment.
//!
//! # Policies
//!
//! - `catch_up: skip` (default): of the ticks due since the last stored,
//!   only the latest runs, and only if it is at most [`GRACE`] late; the
//!   others are skipped. `once`: the latest runs however late. Never more
//!   than one run per pass, so downtime is not replayed tick by tick.
//! - `overlap: skip` (default): a tick due while the trigger's previous run
//!   has not ended is skipped; `queue`: the latest such tick waits
//!   (unrecorded) and runs when that run ends; `allow` starts it anyway.
//! - `jitter`: each tick fires up to this much later, by an amount derived
//!   from the tenant, integration, trigger and tick, so every node agrees.
//! - Paused (`SetTriggerPaused`): ticks pass as skipped, so resuming does
//!   not catch up on the paused time.
//!
//! A disabled tenant's triggers do not fire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use isoflow_engine::model::{CatchUp, CronTrigger, Integration, Overlap, Trigger};
use isoflow_engine::store::{RunTrigger, Store};
use serde_json::json;

use super::coordinator::Coordinator;

/// How late a tick may fire under `catch_up: skip`.
pub const GRACE: Duration = Duration::from_secs(60);
/// How often the schedules are looked at.
const PASS: Duration = Duration::from_millis(250);
/// The most ticks one pass looks at for one trigger (a schedule every
/// second after a long stop is not walked tick by tick beyond this).
const MAX_TICKS: usize = 10_000;

/// The ticks of `schedule` in `tz` after `last`, up to `now` inclusive.
pub fn due(
    schedule: &croner::Cron,
    tz: chrono_tz::Tz,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut ticks = Vec::new();
    let mut at = last.with_timezone(&tz);
    while ticks.len() < MAX_TICKS {
        let Ok(next) = schedule.find_next_occurrence(&at, false) else {
            break;
        };
        let next_utc = next.with_timezone(&Utc);
        if next_utc > now {
            break;
        }
        ticks.push(next_utc);
        at = next;
    }
    if ticks.len() == MAX_TICKS {
        // Far behind: only the latest due tick matters.
        if let Ok(previous) = schedule.find_previous_occurrence(&now.with_timezone(&tz), true) {
            ticks.push(previous.with_timezone(&Utc));
        }
    }
    ticks
}

/// What to do with the ticks due: the tick to record as the last one, and
/// whether it runs.
pub fn decide(
    ticks: &[DateTime<Utc>],
    now: DateTime<Utc>,
    catch_up: CatchUp,
) -> Option<(DateTime<Utc>, bool)> {
    let latest = *ticks.last()?;
    let late = (now - latest).to_std().unwrap_or_default();
    let runs = match catch_up {
        CatchUp::Skip => late <= GRACE,
        CatchUp::Once => true,
    };
    Some((latest, runs))
}

/// The delay of one tick under `jitter`: the same on every node.
pub fn jitter_of(jitter: Duration, key: &str) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let millis = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(hash % millis)
}

/// The request scope of a cron trigger's ticks.
pub fn scope(integration: &str, trigger: &str) -> String {
    format!("cron\u{1}{integration}\u{1}{trigger}")
}

/// A cron trigger as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronState {
    pub paused: bool,
    /// The last tick recorded (run or passed).
    pub last_tick: Option<DateTime<Utc>>,
    /// The next tick after now (before jitter).
    pub next_tick: Option<DateTime<Utc>>,
}

/// The state of `cron`, a trigger of `tenant`'s `integration`, at `now`.
pub fn state(
    store: &isoflow_engine::store::Store,
    tenant: &str,
    integration: &str,
    cron: &CronTrigger,
    now: DateTime<Utc>,
) -> anyhow::Result<CronState> {
    let scope = scope(integration, cron.id.as_str());
    let last_tick = store
        .last_request(tenant, &scope)?
        .and_then(|(key, _)| tick_from_key(&key));
    let next_tick = match (
        isoflow_engine::model::parse_schedule(&cron.schedule),
        cron.timezone.parse::<chrono_tz::Tz>(),
    ) {
        (Ok(schedule), Ok(tz)) => schedule
            .find_next_occurrence(&now.with_timezone(&tz), false)
            .ok()
            .map(|next| next.with_timezone(&Utc)),
        _ => None,
    };
    Ok(CronState {
        paused: store.paused(tenant, &scope)?,
        last_tick,
        next_tick,
    })
}

fn tick_key(tick: DateTime<Utc>) -> String {
    format!("{:016}", tick.timestamp_millis().max(0))
}

fn tick_from_key(key: &str) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(key.parse().ok()?).single()
}

/// Fires due ticks until `stop`.
pub async fn run(coordinator: Arc<Coordinator>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut pass = tokio::time::interval(PASS);
    pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut schedules = Schedules::default();
    loop {
        tokio::select! {
            _ = pass.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = fire_due(&coordinator, &mut schedules, Utc::now()).await {
            tracing::error!("cron: {e:#}");
        }
    }
}

/// The cron triggers of each deployed version seen, by (tenant, name,
/// version): a version's definition never changes, so it is parsed once.
#[derive(Debug, Default)]
pub struct Schedules(HashMap<(String, String, u32), Arc<Vec<CronTrigger>>>);

impl Schedules {
    fn of(
        &mut self,
        store: &Store,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> anyhow::Result<Arc<Vec<CronTrigger>>> {
        let key = (tenant.to_owned(), name.to_owned(), version);
        if let Some(crons) = self.0.get(&key) {
            return Ok(crons.clone());
        }
        let crons: Vec<CronTrigger> = store
            .integration(tenant, name, Some(version))?
            .and_then(|record| serde_json::from_value::<Integration>(record.definition).ok())
            .map(|definition| {
                definition
                    .triggers
                    .into_iter()
                    .filter_map(|trigger| match trigger {
                        Trigger::Cron(cron) => Some(cron),
                        Trigger::Webhook(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let crons = Arc::new(crons);
        self.0.insert(key, crons.clone());
        Ok(crons)
    }
}

/// One pass over every cron trigger at `now`.
pub async fn fire_due(
    coordinator: &Arc<Coordinator>,
    schedules: &mut Schedules,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let store = coordinator.store.clone();
    let latest = tokio::task::spawn_blocking(move || store.latest_versions()).await??;
    // Versions no longer latest are not looked at again.
    let live: std::collections::HashSet<_> = latest.iter().cloned().collect();
    schedules.0.retain(|key, _| live.contains(key));
    for (tenant, name, version) in latest {
        // A disabled tenant's ticks do not fire (nor are they recorded: an
        // enabled tenant's schedule goes on as `catch_up` says).
        if coordinator.tenants.is_disabled(&tenant) {
            continue;
        }
        let crons = schedules.of(&coordinator.store, &tenant, &name, version)?;
        for cron in crons.iter() {
            if let Err(e) = fire(coordinator, &tenant, &name, cron, now).await {
                tracing::error!(
                    tenant,
                    integration = name,
                    trigger = cron.id.as_str(),
                    "cron: {e:#}"
                );
            }
        }
    }
    Ok(())
}

async fn fire(
    coordinator: &Arc<Coordinator>,
    tenant: &str,
    integration: &str,
    cron: &CronTrigger,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let scope = scope(integration, cron.id.as_str());
    let store = coordinator.store.clone();
    let last = store.last_request(tenant, &scope)?;
    let Some((last_key, last_run)) = last else {
        // First sight of this schedule: it counts from now.
        store.mark_request(tenant, &scope, &tick_key(now))?;
        return Ok(());
    };
    let last = tick_from_key(&last_key).unwrap_or(now);
    let schedule = isoflow_engine::model::parse_schedule(&cron.schedule)
        .map_err(|e| anyhow::anyhow!("schedule {:?}: {e}", cron.schedule))?;
    let tz: chrono_tz::Tz = cron
        .timezone
        .parse()
        .map_err(|_| anyhow::anyhow!("timezone {:?} is unknown", cron.timezone))?;
    // A tick fires once its jitter has passed; the jitter of the next tick
    // is only known once it is, so ticks are taken as due up to `now`
    // less the most jitter, then each waits its own.
    let ticks = due(&schedule, tz, last, now);
    let ticks: Vec<_> = ticks
        .into_iter()
        .filter(|tick| {
            let key = format!("{tenant}\u{1}{scope}\u{1}{}", tick_key(*tick));
            let at = *tick
                + chrono::Duration::from_std(jitter_of(cron.jitter, &key)).unwrap_or_default();
            at <= now
        })
        .collect();
    let Some((tick, mut runs)) = decide(&ticks, now, cron.catch_up) else {
        return Ok(());
    };
    if runs && cron.overlap == Overlap::Skip && !last_run.is_empty() {
        let previous = store.run(tenant, &last_run)?;
        if previous.is_some_and(|run| !run.status.is_finished()) {
            tracing::info!(tenant, integration, trigger = cron.id.as_str(), %tick, "cron tick skipped: the previous run is still going");
            runs = false;
        }
    }
    if cron.overlap == Overlap::Queue
        && !last_run.is_empty()
        && let Some(previous) = store.run(tenant, &last_run)?
    {
        if !previous.status.is_finished() {
            // Unrecorded, the latest due tick stays due until it ends.
            return Ok(());
        }
        // It waited for a run that ended after it came due: it runs
        // however late that made it.
        if u64::try_from(tick.timestamp_millis()).unwrap_or(0) <= previous.updated_at_ms {
            runs = true;
        }
    }
    if runs && store.paused(tenant, &scope)? {
        runs = false;
    }
    if !runs {
        store.mark_request(tenant, &scope, &tick_key(tick))?;
        return Ok(());
    }
    let input = json!({ "trigger": cron.id.as_str(), "tick": tick.to_rfc3339() });
    let started = coordinator
        .start_run(
            tenant,
            integration,
            None,
            input,
            Some((scope, tick_key(tick))),
            RunTrigger::Cron(cron.id.as_str().to_owned()),
        )
        .await?;
    if let Some((run, true)) = started {
        tracing::info!(tenant, integration, trigger = cron.id.as_str(), %tick, run_id = %run.run_id, "cron tick fired");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn schedule(text: &str) -> croner::Cron {
        isoflow_engine::model::parse_schedule(text).expect("a schedule")
    }

    #[test]
    fn ticks_follow_the_zone_across_daylight_saving_time() {
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().expect("a zone");
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer;
        // summer time began on 29 March 2026.
        let ticks = due(
            &schedule("0 9 * * *"),
            berlin,
            at("2026-03-27T00:00:00Z"),
            at("2026-03-31T00:00:00Z"),
        );
        assert_eq!(
            ticks,
            [
                at("2026-03-27T08:00:00Z"),
                at("2026-03-28T08:00:00Z"),
                at("2026-03-29T07:00:00Z"),
                at("2026-03-30T07:00:00Z"),
            ]
        );
        // Every hour through the night the clocks went forward: one tick
        // per real hour, none for the hour that did not exist.
        let hourly = due(
            &schedule("0 * * * *"),
            berlin,
            at("2026-03-28T23:30:00Z"),
            at("2026-03-29T02:30:00Z"),
        );
        assert_eq!(
            hourly,
            [
                at("2026-03-29T00:00:00Z"),
                at("2026-03-29T01:00:00Z"),
                at("2026-03-29T02:00:00Z"),
            ]
        );
    }

    #[test]
    fn missed_ticks_run_once_at_most_and_late_ones_only_when_asked() {
        let ticks = [
            at("2026-11-28T10:00:00Z"),
            at("2026-11-28T10:05:00Z"),
            at("2026-11-28T10:10:00Z"),
        ];
        let soon = at("2026-11-28T10:10:30Z");
        let late = at("2026-11-28T11:00:00Z");
        assert_eq!(decide(&ticks, soon, CatchUp::Skip), Some((ticks[2], true)));
        assert_eq!(decide(&ticks, late, CatchUp::Skip), Some((ticks[2], false)));
        assert_eq!(decide(&ticks, late, CatchUp::Once), Some((ticks[2], true)));
        assert_eq!(decide(&[], late, CatchUp::Once), None);
    }

    #[test]
    fn jitter_is_the_same_for_a_tick_everywhere_and_within_bounds() {
        let jitter = Duration::from_secs(30);
        let a = jitter_of(jitter, "acme/orders/nightly/1");
        assert_eq!(a, jitter_of(jitter, "acme/orders/nightly/1"));
        assert!(a < jitter);
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|i| jitter_of(jitter, &format!("tick-{i}")))
            .collect();
        assert!(spread.len() > 40, "ticks are spread: {}", spread.len());
        assert_eq!(jitter_of(Duration::ZERO, "x"), Duration::ZERO);
    }
}
