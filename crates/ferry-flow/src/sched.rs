//! The scheduler: fires each enabled flow's cron in its time zone. The next fire time is kept in
//! the store, so fires missed while no node ran are known after a restart and handled by the
//! flow's catch-up policy; every scheduled run carries a unique fire key, so two nodes (or a
//! restart) cannot fire the same time twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use ferry_core::{Error, Result};
use ferry_meta::{FlowRecord, MetaStore, now_ms};
use tokio_util::sync::CancellationToken;

use crate::exec::{self, RunRequest};
use crate::model::{Catchup, FlowSpec, Schedule};

/// A scheduled fire this late is a missed one (the catch-up policy decides), not a due one.
const MISSED_AFTER_MS: i64 = 60_000;
/// The most missed fires `catchup = "all"` starts in one pass.
const MAX_CATCHUP: usize = 1000;

/// The first fire of `schedule` strictly after `after`, within its start and end dates.
pub fn next_fire(schedule: &Schedule, after: DateTime<Tz>) -> Result<Option<DateTime<Tz>>> {
    let cron = schedule.cron()?;
    let mut t = after;
    loop {
        let next = match cron.find_next_occurrence(&t, false) {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        let day = next.date_naive().format("%Y-%m-%d").to_string();
        if schedule
            .end
            .as_deref()
            .is_some_and(|end| day.as_str() > end)
        {
            return Ok(None);
        }
        if schedule
            .start
            .as_deref()
            .is_some_and(|start| day.as_str() < start)
        {
            t = next;
            continue;
        }
        return Ok(Some(next));
    }
}

/// One pass over the flows: fires what is due and reports runs that overran their expected
/// duration; returns how many runs it started.
pub async fn tick(store: &dyn MetaStore) -> Result<usize> {
    if let Err(e) = report_overdue(store).await {
        tracing::warn!(error = %e, "checking for overdue runs failed");
    }
    let mut started = 0;
    for flow in store.list_flows().await? {
        match fire_flow(store, &flow).await {
            Ok(n) => started += n,
            Err(e) => tracing::warn!(flow = %flow.name, error = %e, "scheduling failed"),
        }
    }
    Ok(started)
}

/// Notifies (once, whichever node sees it first) about runs going longer than expected.
async fn report_overdue(store: &dyn MetaStore) -> Result<()> {
    for run in store.list_runs(None, Some("running"), 10_000).await? {
        let Some(started) = run.started_at_ms else {
            continue;
        };
        let spec = exec::run_spec(store, &run).await?;
        let Some(notify) = &spec.notify else {
            continue;
        };
        let Some(expected) = notify.expected_duration_secs else {
            continue;
        };
        let now = now_ms();
        if now - started > (expected * 1000) as i64 && store.mark_overdue(&run.id, now).await? {
            crate::notify::send(notify, &exec::message(&run, crate::notify::Event::Overdue)).await;
        }
    }
    Ok(())
}

async fn fire_flow(store: &dyn MetaStore, flow: &FlowRecord) -> Result<usize> {
    let spec: FlowSpec = serde_json::from_str(&flow.spec)
        .map_err(|e| Error::Internal(format!("stored flow: {e}")))?;
    let Some(schedule) = spec.schedule.as_ref().filter(|s| s.enabled && flow.enabled) else {
        return Ok(0);
    };
    let tz = schedule.tz()?;
    let now = Utc::now().with_timezone(&tz);
    let as_time = |ms: i64| {
        tz.timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| Error::Internal(format!("fire time {ms} out of range")))
    };
    let Some(due_ms) = flow.next_fire_ms else {
        // First sight of this version: fire from now on.
        let next = next_fire(schedule, now)?;
        store
            .set_next_fire(&flow.name, next.map(|t| t.timestamp_millis()))
            .await?;
        return Ok(0);
    };
    if due_ms > now.timestamp_millis() {
        return Ok(0);
    }
    // Every fire from the stored one up to now.
    let mut fires = vec![as_time(due_ms)?];
    while fires.len() < MAX_CATCHUP {
        match next_fire(schedule, *fires.last().unwrap_or(&now))? {
            Some(t) if t <= now => fires.push(t),
            _ => break,
        }
    }
    let latest = *fires.last().unwrap_or(&now);
    let on_time = now.timestamp_millis() - latest.timestamp_millis() <= MISSED_AFTER_MS;
    let chosen: Vec<DateTime<Tz>> = match schedule.catchup {
        Catchup::All => fires.clone(),
        Catchup::Latest => vec![latest],
        Catchup::None if on_time => vec![latest],
        Catchup::None => {
            tracing::info!(flow = %flow.name, missed = fires.len(), "missed fires skipped (catchup = none)");
            Vec::new()
        }
    };
    let mut started = 0;
    for at in chosen {
        let req = RunRequest {
            flow: flow.name.clone(),
            trigger: "schedule".into(),
            at,
            overrides: Default::default(),
            fire_key: Some(format!("{}@{}", flow.name, at.timestamp_millis())),
        };
        match exec::start_run(store, req).await {
            Ok(Some(_)) => started += 1,
            Ok(None) => {}
            // Another node fired this time first.
            Err(Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let next = next_fire(schedule, latest.max(now))?;
    store
        .set_next_fire(&flow.name, next.map(|t| t.timestamp_millis()))
        .await?;
    Ok(started)
}

/// Runs the scheduler until `shutdown`, waking each `interval` (and when `wake` is notified).
pub async fn run(
    store: Arc<dyn MetaStore>,
    executor: Arc<exec::Executor>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match tick(store.as_ref()).await {
            Ok(n) if n > 0 => executor.wake(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str) -> Schedule {
        Schedule {
            cron: cron.into(),
            timezone: tz.into(),
            start: None,
            end: None,
            enabled: true,
            catchup: Catchup::None,
        }
    }

    #[test]
    fn daily_fires_at_five_in_the_flow_time_zone() {
        let s = schedule("0 5 * * *", "Asia/Shanghai");
        let tz = s.tz().unwrap();
        let after = tz.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap();
        let next = next_fire(&s, after).unwrap().unwrap();
        assert_eq!(next, tz.with_ymd_and_hms(2026, 11, 23, 5, 0, 0).unwrap());
        // Seconds are optional: six fields put them first.
        let s = schedule("30 0 5 * * *", "UTC");
        let next = next_fire(&s, Utc::now().with_timezone(&chrono_tz::UTC))
            .unwrap()
            .unwrap();
        assert_eq!(next.format("%H:%M:%S").to_string(), "05:00:30");
    }

    #[test]
    fn start_and_end_dates_bound_the_fires() {
        let mut s = schedule("0 5 * * *", "UTC");
        s.start = Some("2026-12-01".into());
        s.end = Some("2026-12-02".into());
        let tz = chrono_tz::UTC;
        let first = next_fire(&s, tz.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()).unwrap();
        assert_eq!(
            first,
            Some(tz.with_ymd_and_hms(2026, 12, 1, 5, 0, 0).unwrap())
        );
        let last = next_fire(&s, tz.with_ymd_and_hms(2026, 12, 2, 5, 0, 0).unwrap()).unwrap();
        assert_eq!(last, None);
    }
}
