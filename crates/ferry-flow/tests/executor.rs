//! The executor and scheduler over a real metadata store (embedded SQLite) and a real SQLite
//! instance: a dead worker's task returns to the queue and another worker finishes it; missed
//! fires after downtime follow the catch-up policy and never fire twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_connect::InstancePool;
use ferry_core::{ConnectionUrl, Error, InstanceName, InstanceSettings, Result};
use ferry_flow::exec::{self, RunRequest};
use ferry_flow::{Executor, FlowSpec, Resources};
use ferry_meta::{MetaStore, SqlStore, now_ms};
use ferry_move::WatermarkStore;
use tokio_util::sync::CancellationToken;

struct Local {
    pool: Arc<InstancePool>,
    store: Arc<dyn MetaStore>,
}

struct Marks(Arc<dyn MetaStore>);

#[async_trait]
impl WatermarkStore for Marks {
    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.0.get_watermark(key).await
    }
    async fn set(&self, key: &str, value: &str) -> Result<()> {
        self.0.set_watermark(key, value).await
    }
}

#[async_trait]
impl Resources for Local {
    async fn pool(&self, instance: &str) -> Result<Arc<InstancePool>> {
        match instance {
            "lite" => Ok(self.pool.clone()),
            other => Err(Error::NotFound(other.to_string())),
        }
    }
    fn watermarks(&self) -> Arc<dyn WatermarkStore> {
        Arc::new(Marks(self.store.clone()))
    }
}

async fn setup(dir: &tempfile::TempDir) -> (Arc<dyn MetaStore>, Arc<Local>) {
    let store: Arc<dyn MetaStore> = Arc::new(SqlStore::open_sqlite(dir.path()).await.unwrap());
    let url = ConnectionUrl::parse(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("lite.db").display()
    ))
    .unwrap();
    let connector = ferry_connect::connector_for(&url, &Default::default()).unwrap();
    let pool = InstancePool::new(
        InstanceName::new("lite").unwrap(),
        connector,
        InstanceSettings::default(),
        Arc::new(|_| {}),
    );
    let local = Arc::new(Local {
        pool,
        store: store.clone(),
    });
    (store, local)
}

/// Starts a manual run of `flow` now.
async fn start_now(store: &dyn MetaStore, flow: &str) -> ferry_meta::FlowRunRecord {
    exec::start_run(
        store,
        RunRequest {
            flow: flow.into(),
            trigger: "manual".into(),
            at: chrono::Utc::now().with_timezone(&chrono_tz::UTC),
            overrides: Default::default(),
            fire_key: None,
        },
    )
    .await
    .unwrap()
    .unwrap()
}

async fn apply(store: &dyn MetaStore, toml: &str) -> FlowSpec {
    let spec = FlowSpec::from_toml(toml).unwrap();
    spec.validate(&|i| i == "lite").unwrap();
    store
        .apply_flow(&spec.name, &serde_json::to_string(&spec).unwrap(), true)
        .await
        .unwrap();
    spec
}

#[tokio::test]
async fn a_dead_workers_task_is_taken_over_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (store, local) = setup(&dir).await;
    apply(
        store.as_ref(),
        r#"
name = "once"
[[nodes]]
id = "write"
kind = "sql"
params = { instance = "lite", sql = "create table if not exists marks (run text); insert into marks values (${run_id})" }
"#,
    )
    .await;
    let run = start_now(store.as_ref(), "once").await;
    // A worker takes the task and dies without a word: its lease runs out in 300 ms.
    let now = now_ms();
    let taken = store
        .claim_task("dead-worker", now, now + 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.node, "write");
    // A live worker finds nothing to do until the lease expires, then runs the task to the end.
    let executor = Executor::new(
        store.clone(),
        local.clone(),
        "live".into(),
        2,
        Duration::from_secs(5),
    );
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(executor.clone().run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = store.get_run(&run.id).await.unwrap().unwrap();
        if r.status != "running" {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    worker.await.unwrap();
    assert_eq!(done.status, "success", "{done:?}");
    let task = &store.list_tasks(&run.id).await.unwrap()[0];
    assert_eq!(task.status, "success");
    assert!(
        task.finished_at_ms.unwrap() >= now + 300,
        "finished before the dead lease expired"
    );
    // The dead worker can no longer report anything for it.
    let mut late = taken.clone();
    late.status = "failed".into();
    assert!(!store.finish_task(&late, "dead-worker").await.unwrap());
    let mut lease = local
        .pool
        .acquire(ferry_core::Feature::Task, None, "check")
        .await
        .unwrap();
    let rows = ferry_connect::query_strings(lease.conn(), "select run from marks")
        .await
        .unwrap();
    assert_eq!(rows, [[Some(run.id.clone())]], "the task ran exactly once");
}

#[tokio::test]
async fn missed_fires_follow_the_catchup_policy_and_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = setup(&dir).await;
    let flow = |name: &str, catchup: &str| {
        format!(
            "name = \"{name}\"\n[schedule]\ncron = \"* * * * * *\"\ncatchup = \"{catchup}\"\n[[nodes]]\nid = \"n\"\nkind = \"sql\"\nparams = {{ instance = \"lite\", sql = \"select 1\" }}\n"
        )
    };
    for (name, catchup) in [("all", "all"), ("latest", "latest"), ("none", "none")] {
        apply(store.as_ref(), &flow(name, catchup)).await;
    }
    // The first pass sets each flow's next fire; then the node is "down" for a while: the
    // stored next fire is moved into the past, as if no scheduler ran since.
    ferry_flow::sched::tick(store.as_ref()).await.unwrap();
    let second = 1000;
    let whole = now_ms() / second * second;
    store
        .set_next_fire("all", Some(whole - 5 * second))
        .await
        .unwrap();
    store
        .set_next_fire("latest", Some(whole - 5 * second))
        .await
        .unwrap();
    store
        .set_next_fire("none", Some(whole - 300 * second))
        .await
        .unwrap();
    ferry_flow::sched::tick(store.as_ref()).await.unwrap();
    let runs = |flow: &'static str| {
        let store = store.clone();
        async move { store.list_runs(Some(flow), None, 1000).await.unwrap() }
    };
    let all = runs("all").await;
    assert!(
        (6..=8).contains(&all.len()),
        "every missed second ran: {}",
        all.len()
    );
    let latest = runs("latest").await;
    assert_eq!(latest.len(), 1, "only the latest missed fire ran");
    // `none` skips the 300 missed seconds; only the fire that is due now (under a minute late)
    // runs.
    let none = runs("none").await;
    assert_eq!(none.len(), 1, "missed fires were run");
    assert!(none[0].scheduled_ms >= now_ms() - 60 * second);
    // Each fire time once, and the next fire is in the future again.
    let mut times: Vec<i64> = all.iter().map(|r| r.scheduled_ms).collect();
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), all.len());
    assert!(times.windows(2).all(|w| w[1] - w[0] == second), "{times:?}");
    for f in ["all", "latest", "none"] {
        let next = store
            .get_flow(f)
            .await
            .unwrap()
            .unwrap()
            .next_fire_ms
            .unwrap();
        assert!(
            next > now_ms() - second,
            "{f}: next fire {next} is in the past"
        );
    }
    // Replaying a fire that already ran (another node, or a restart) adds nothing.
    store.set_next_fire("all", Some(times[0])).await.unwrap();
    ferry_flow::sched::tick(store.as_ref()).await.unwrap();
    let again = runs("all").await;
    let mut replayed: Vec<i64> = again.iter().map(|r| r.scheduled_ms).collect();
    let n = replayed.len();
    replayed.sort_unstable();
    replayed.dedup();
    assert_eq!(replayed.len(), n, "a fire time ran twice");
}

#[tokio::test]
async fn half_done_bookkeeping_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = setup(&dir).await;
    apply(
        store.as_ref(),
        "name = \"two\"\n[[nodes]]\nid = \"a\"\nkind = \"sql\"\nparams = { instance = \"lite\", sql = \"select 1\" }\n[[nodes]]\nid = \"b\"\nkind = \"sql\"\nupstream = [\"a\"]\nparams = { instance = \"lite\", sql = \"select 2\" }\n",
    )
    .await;
    let run = start_now(store.as_ref(), "two").await;
    // A worker ended `a` and then lost the store before queueing `b`.
    let now = now_ms();
    let mut a = store
        .claim_task("w", now, now + 60_000)
        .await
        .unwrap()
        .unwrap();
    a.status = "success".into();
    a.finished_at_ms = Some(now_ms());
    assert!(store.finish_task(&a, "w").await.unwrap());
    let status = |store: Arc<dyn MetaStore>, id: String| async move {
        store
            .list_tasks(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.node, t.status))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status(store.clone(), run.id.clone()).await,
        [
            ("a".to_string(), "success".to_string()),
            ("b".to_string(), "waiting".to_string())
        ]
    );
    exec::reconcile(store.as_ref()).await.unwrap();
    assert_eq!(
        status(store.clone(), run.id.clone()).await[1],
        ("b".to_string(), "queued".to_string())
    );
    // The same after `b`: the run is ended by the next pass.
    let mut b = store
        .claim_task("w", now_ms(), now_ms() + 60_000)
        .await
        .unwrap()
        .unwrap();
    b.status = "success".into();
    assert!(store.finish_task(&b, "w").await.unwrap());
    assert_eq!(
        store.get_run(&run.id).await.unwrap().unwrap().status,
        "running"
    );
    exec::reconcile(store.as_ref()).await.unwrap();
    assert_eq!(
        store.get_run(&run.id).await.unwrap().unwrap().status,
        "success"
    );
}
