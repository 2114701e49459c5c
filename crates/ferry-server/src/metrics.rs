//! Prometheus metrics: connections per instance (open, in use, idle, queued, cap), statements
//! and their errors and durations, and policy actions.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabel {
    instance: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    instance: String,
    action: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The server's metrics registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    open: Family<InstanceLabel, Gauge>,
    in_use: Family<InstanceLabel, Gauge>,
    idle: Family<InstanceLabel, Gauge>,
    queued: Family<InstanceLabel, Gauge>,
    cap: Family<InstanceLabel, Gauge>,
    statements: Family<StatementLabel, Counter>,
    durations: Family<InstanceLabel, Histogram, fn() -> Histogram>,
    actions: Family<ActionLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            open: Family::default(),
            in_use: Family::default(),
            idle: Family::default(),
            queued: Family::default(),
            cap: Family::default(),
            statements: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            actions: Family::default(),
        };
        registry.register(
            "connections_open",
            "Server-side connections open per instance",
            m.open.clone(),
        );
        registry.register(
            "connections_in_use",
            "Connections leased per instance",
            m.in_use.clone(),
        );
        registry.register(
            "connections_idle",
            "Pooled idle connections per instance",
            m.idle.clone(),
        );
        registry.register(
            "connections_queued",
            "Requests waiting at the connection cap per instance",
            m.queued.clone(),
        );
        registry.register(
            "connections_max",
            "Connection cap per instance",
            m.cap.clone(),
        );
        registry.register(
            "statements",
            "Console statements run, by outcome (ok, error)",
            m.statements.clone(),
        );
        registry.register(
            "statement_duration_seconds",
            "Console statement durations",
            m.durations.clone(),
        );
        registry.register(
            "policy_actions",
            "Actions taken by connection policies",
            m.actions.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }

    pub fn statement(&self, instance: &str, ok: bool, duration: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.statements
            .get_or_create(&StatementLabel {
                instance: instance.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.durations
            .get_or_create(&InstanceLabel {
                instance: instance.into(),
            })
            .observe(duration.as_secs_f64());
    }

    pub fn policy_action(&self, instance: &str, action: &str) {
        self.actions
            .get_or_create(&ActionLabel {
                instance: instance.into(),
                action: action.into(),
            })
            .inc();
    }

    /// The metrics in Prometheus text format, with connection gauges read from the pools now.
    pub fn render(&self, state: &AppState) -> String {
        for pool in state.instances.cached() {
            let label = InstanceLabel {
                instance: pool.name().to_string(),
            };
            let s = pool.stats();
            self.open.get_or_create(&label).set(s.open as i64);
            self.in_use.get_or_create(&label).set(s.in_use as i64);
            self.idle.get_or_create(&label).set(s.idle as i64);
            self.queued.get_or_create(&label).set(s.waiting as i64);
            self.cap.get_or_create(&label).set(s.max_connections as i64);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
