//! The same repository suite on both backends: the embedded SQLite store and PostgreSQL.

use ferry_meta::{
    FlowRepo, FlowRunRecord, InstanceRecord, InstanceRepo, MetaStore, PolicyActionRecord,
    QueryRecord, SqlStore, TaskRunRecord, TransferRecord, now_ms,
};

fn instance(name: &str) -> InstanceRecord {
    InstanceRecord {
        name: name.into(),
        engine: "postgres".into(),
        environment: "dev".into(),
        url_redacted: "postgres://u:***@h/db".into(),
        url_secret: "v1:sealed".into(),
        settings: "{}".into(),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
    }
}

async fn suite(store: &dyn MetaStore) {
    // Instances: insert, conflict, get, update, list, delete.
    store.insert_instance(&instance("b")).await.unwrap();
    store.insert_instance(&instance("a")).await.unwrap();
    let dup = store.insert_instance(&instance("a")).await.unwrap_err();
    assert_eq!(dup.code(), "conflict");
    assert!(
        dup.message().contains("instance \"a\" already exists"),
        "{dup}"
    );
    let mut a = store.get_instance("a").await.unwrap().expect("a exists");
    a.environment = "prod".into();
    store.update_instance(&a).await.unwrap();
    assert_eq!(
        store.get_instance("a").await.unwrap().unwrap().environment,
        "prod"
    );
    let names: Vec<_> = store
        .list_instances()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(store.delete_instance("b").await.unwrap());
    assert!(!store.delete_instance("b").await.unwrap());
    assert!(store.get_instance("b").await.unwrap().is_none());
    assert_eq!(
        store
            .update_instance(&instance("missing"))
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );

    // Policy actions: newest first, filtered by instance.
    for (i, inst) in ["a", "a", "c"].iter().enumerate() {
        store
            .insert_policy_action(&PolicyActionRecord {
                id: format!("id{i}"),
                instance: inst.to_string(),
                action: "cancel_statement".into(),
                feature: Some("console".into()),
                detail: format!("detail {i}"),
                at_ms: 1000 + i as i64,
            })
            .await
            .unwrap();
    }
    let only_a = store.list_policy_actions(Some("a"), 10).await.unwrap();
    assert_eq!(
        only_a.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>(),
        ["detail 1", "detail 0"]
    );
    assert_eq!(store.list_policy_actions(None, 2).await.unwrap().len(), 2);

    // Queries: lifecycle and recovery of unfinished ones.
    let mut q = QueryRecord {
        id: "q1".into(),
        instance: "a".into(),
        database: None,
        sql: "select 1".into(),
        status: "queued".into(),
        error: None,
        rows: 0,
        bytes: 0,
        result_path: None,
        columns: None,
        created_at_ms: now_ms(),
        started_at_ms: None,
        finished_at_ms: None,
    };
    store.insert_query(&q).await.unwrap();
    q.status = "succeeded".into();
    q.rows = 42;
    q.result_path = Some("queries/q1.arrow".into());
    store.update_query(&q).await.unwrap();
    assert_eq!(store.get_query("q1").await.unwrap().unwrap(), q);
    let q2 = QueryRecord {
        id: "q2".into(),
        status: "running".into(),
        ..q.clone()
    };
    store.insert_query(&q2).await.unwrap();
    assert_eq!(
        store
            .fail_unfinished_queries("node restarted")
            .await
            .unwrap(),
        1
    );
    let q2 = store.get_query("q2").await.unwrap().unwrap();
    assert_eq!(
        (q2.status.as_str(), q2.error.as_deref()),
        ("failed", Some("node restarted"))
    );
    assert_eq!(store.list_queries(10).await.unwrap().len(), 2);

    // Transfers and watermarks.
    let t = TransferRecord {
        id: "t1".into(),
        spec: "{}".into(),
        status: "running".into(),
        error: None,
        rows_read: 0,
        rows_written: 0,
        rows_expected: Some(10),
        report: None,
        created_at_ms: now_ms(),
        started_at_ms: Some(now_ms()),
        finished_at_ms: None,
    };
    store.insert_transfer(&t).await.unwrap();
    store
        .update_transfer_progress("t1", 3, 7, Some(10))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_transfer("t1")
            .await
            .unwrap()
            .unwrap()
            .rows_written,
        7
    );
    assert_eq!(
        store.fail_unfinished_transfers("restarted").await.unwrap(),
        1
    );
    assert_eq!(store.list_transfers(5).await.unwrap()[0].status, "failed");
    // A late progress report does not revive a finished job, nor change its counters.
    store
        .update_transfer_progress("t1", 99, 99, None)
        .await
        .unwrap();
    let late = store.get_transfer("t1").await.unwrap().unwrap();
    assert_eq!((late.status.as_str(), late.rows_written), ("failed", 7));
    assert_eq!(store.get_watermark("w").await.unwrap(), None);
    store.set_watermark("w", "10").await.unwrap();
    store.set_watermark("w", "20").await.unwrap();
    assert_eq!(
        store.get_watermark("w").await.unwrap().as_deref(),
        Some("20")
    );

    // Archives.
    store.insert_archive("arch", "{}").await.unwrap();
    assert_eq!(
        store.insert_archive("arch", "{}").await.unwrap_err().code(),
        "conflict"
    );
    assert_eq!(
        store.list_archives().await.unwrap(),
        vec![("arch".to_string(), "{}".to_string())]
    );
    assert!(store.delete_archive("arch").await.unwrap());
    assert!(store.list_archives().await.unwrap().is_empty());

    flows(store).await;
}

fn task(run: &str, node: &str, status: &str, priority: i64) -> TaskRunRecord {
    TaskRunRecord {
        id: format!("{run}:{node}"),
        run_id: run.into(),
        node: node.into(),
        status: status.into(),
        attempt: 0,
        priority,
        lease_owner: None,
        lease_until_ms: None,
        available_at_ms: now_ms(),
        started_at_ms: None,
        finished_at_ms: None,
        error: None,
        outputs: None,
        rows: 0,
    }
}

/// Flow versions, fire keys, and leases: one claimant per task, expired leases requeued.
async fn flows(store: &dyn MetaStore) {
    assert_eq!(store.apply_flow("f", "{\"v\":1}", true).await.unwrap(), 1);
    assert_eq!(store.apply_flow("f", "{\"v\":2}", true).await.unwrap(), 2);
    assert_eq!(
        store.get_flow("f").await.unwrap().unwrap().spec,
        "{\"v\":2}"
    );
    assert_eq!(
        store.get_flow_version("f", 1).await.unwrap().as_deref(),
        Some("{\"v\":1}")
    );
    let run = FlowRunRecord {
        id: "r1".into(),
        flow: "f".into(),
        version: 2,
        status: "running".into(),
        trigger: "schedule".into(),
        fire_key: Some("f@1000".into()),
        scheduled_ms: 1000,
        bizdate: "2026-11-21".into(),
        variables: "{}".into(),
        instances: Some("{\"lite\":{}}".into()),
        error: None,
        created_at_ms: now_ms(),
        started_at_ms: Some(now_ms()),
        finished_at_ms: None,
    };
    let tasks = [
        task("r1", "low", "queued", 0),
        task("r1", "high", "queued", 5),
        task("r1", "later", "waiting", 9),
    ];
    store.create_run(&run, &tasks).await.unwrap();
    // The same fire time again is refused and adds nothing.
    let twice = FlowRunRecord {
        id: "r2".into(),
        ..run.clone()
    };
    assert_eq!(
        store
            .create_run(&twice, &[task("r2", "x", "queued", 0)])
            .await
            .unwrap_err()
            .code(),
        "conflict"
    );
    assert!(store.get_run("r2").await.unwrap().is_none());
    // Claims: the most urgent ready task first, each to one worker only.
    let now = now_ms();
    let a = store
        .claim_task("worker-a", now, now + 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.node.as_str(), a.status.as_str()), ("high", "running"));
    let b = store
        .claim_task("worker-b", now, now + 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.node, "low");
    assert!(
        store
            .claim_task("worker-c", now, now + 60_000)
            .await
            .unwrap()
            .is_none(),
        "waiting tasks are not ready"
    );
    // A lease renewed only by its holder; an expired one goes back to the queue.
    assert!(
        !store
            .renew_lease(&a.id, "worker-b", now + 200)
            .await
            .unwrap()
    );
    assert_eq!(store.requeue_expired(now + 1_000).await.unwrap(), 1);
    let again = store
        .claim_task("worker-c", now + 1_000, now + 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.node.as_str(), again.lease_owner.as_deref()),
        ("high", Some("worker-c"))
    );
    // The old holder cannot finish it any more.
    let mut done = a.clone();
    done.status = "success".into();
    assert!(!store.finish_task(&done, "worker-a").await.unwrap());
    assert!(store.finish_task(&done, "worker-c").await.unwrap());
    // Moves are conditional: only from the states named.
    assert!(
        store
            .move_task("r1:later", &["waiting"], "queued", now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .move_task("r1:later", &["waiting"], "queued", now)
            .await
            .unwrap()
    );
    store.append_task_log("r1:high", "one").await.unwrap();
    store.append_task_log("r1:high", "two").await.unwrap();
    let lines: Vec<_> = store
        .task_logs("r1:high", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.seq, l.line))
        .collect();
    assert_eq!(lines, [(2, "two".to_string())]);
    let runs = store
        .list_runs(Some("f"), Some("running"), 10)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert!(
        store
            .list_runs(None, Some("failed"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_store_passes_the_suite_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    suite(&store).await;
    drop(store);
    // Reopening applies no migration twice and keeps the data.
    let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
    assert!(store.get_instance("a").await.unwrap().is_some());
}

#[tokio::test]
async fn postgres_store_passes_the_suite() {
    let Some(admin) = ferry_testkit::postgres() else {
        return;
    };
    let url = ferry_testkit::fresh_postgres_db(&admin).await;
    let store = SqlStore::open(&url).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    suite(&store).await;
    let again = SqlStore::open(&url).await.unwrap();
    assert!(again.get_instance("a").await.unwrap().is_some());
}

#[tokio::test]
async fn unreachable_store_is_explained_without_password() {
    let err = match SqlStore::open("postgres://u:s3cret@127.0.0.1:1/db").await {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert_eq!(err.code(), "connection");
    assert!(err.message().contains("127.0.0.1:1"), "{err}");
    assert!(!err.message().contains("s3cret"), "{err}");
    let err = SqlStore::open("mongodb://x").await.err().unwrap();
    assert_eq!(err.code(), "invalid_input");
}

#[tokio::test]
async fn flows_apply_while_workers_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(SqlStore::open_sqlite(dir.path()).await.unwrap());
    // Workers poll with writes all the time; applying a flow must still go through each time.
    let busy = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                store.requeue_expired(now_ms()).await.unwrap();
                store.set_next_fire("f", Some(now_ms())).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for v in 1..=40 {
        assert_eq!(store.apply_flow("f", "{}", true).await.unwrap(), v);
    }
    busy.abort();
}
