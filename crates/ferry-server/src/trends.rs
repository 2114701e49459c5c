//! Data trends: a periodic collector of each instance's table row counts and sizes (from the
//! catalog's estimates), stored as time series in the metadata store, and their API.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use ferry_core::{Engine, Feature, Result};
use ferry_meta::{TableStat, now_ms};
use serde::Deserialize;

use crate::SharedState;
use crate::api::ApiQuery;
use crate::error::ApiResult;

/// One pass: a sample of every table of every registered SQL instance.
pub async fn collect(state: &SharedState) -> Result<usize> {
    let interval = state.config.trend_interval.as_millis().max(1) as i64;
    let bucket = now_ms() / interval;
    let mut samples = 0;
    for instance in state.meta.list_instances().await? {
        if matches!(instance.engine.parse::<Engine>(), Ok(Engine::Redis)) {
            continue;
        }
        let tables = async {
            let pool = state.pool(&instance.name).await?;
            let mut lease = pool.acquire(Feature::System, None, "trends").await?;
            lease.conn().tables().await
        }
        .await;
        let tables = match tables {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(instance = %instance.name, error = %e, "could not sample table sizes");
                continue;
            }
        };
        let at_ms = now_ms();
        let stats: Vec<TableStat> = tables
            .into_iter()
            .filter(|t| t.kind == "table")
            .map(|t| TableStat {
                instance: instance.name.clone(),
                table: match &t.schema {
                    Some(s) if s != "public" && s != "main" => format!("{s}.{}", t.name),
                    _ => t.name.clone(),
                },
                at_ms,
                row_estimate: t.row_estimate,
                size_bytes: t.size_bytes,
            })
            .collect();
        samples += stats.len();
        state.meta.record_table_stats(bucket, &stats).await?;
    }
    Ok(samples)
}

/// Collects every `trend_interval` until the server stops.
pub async fn run(state: SharedState) {
    let mut tick =
        tokio::time::interval(state.config.trend_interval.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        match collect(&state).await {
            Ok(n) => tracing::debug!(samples = n, "table sizes sampled"),
            Err(e) => tracing::warn!(error = %e, "sampling table sizes failed"),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct TrendFilter {
    pub table: Option<String>,
    /// Samples since this time (ms since the epoch); the last 30 days by default.
    pub since_ms: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/instances/{name}/trends", params(("table" = Option<String>, Query), ("since_ms" = Option<i64>, Query)),
    responses((status = 200, description = "Samples oldest first: instance, table, at_ms, row_estimate, size_bytes"), (status = 404)))]
pub async fn trends(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    ApiQuery(f): ApiQuery<TrendFilter>,
) -> ApiResult<Json<Vec<TableStat>>> {
    state.instance_record(&name).await?;
    let since = f.since_ms.unwrap_or_else(|| now_ms() - 30 * 86_400_000);
    Ok(Json(
        state
            .meta
            .table_stats(&name, f.table.as_deref(), since)
            .await?,
    ))
}
