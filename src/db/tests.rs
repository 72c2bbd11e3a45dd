//! The database's query plans.

use super::{Db, QueryPlan};

async fn scratch() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect_unlocked(&dir.path().join("plan.db").display().to_string())
        .await
        .unwrap();
    (dir, db)
}

#[tokio::test]
async fn the_reapers_query_only_searches_indexes() {
    let (_dir, db) = scratch().await;

    let plan = db.explain_reapable().await.unwrap();

    assert!(plan.searches_only_indexes(), "{plan:?}");
}

#[tokio::test]
async fn the_heartbeat_write_finds_each_row_by_its_key() {
    let (_dir, db) = scratch().await;

    let plan = db.explain_heartbeats_write().await.unwrap();

    let on_runners: Vec<&String> = plan
        .0
        .iter()
        .filter(|step| step.contains(" runners"))
        .collect();
    assert_eq!(on_runners.len(), 1, "{plan:?}");
    assert!(
        on_runners[0].starts_with("SEARCH runners USING")
            && on_runners[0].contains("(session_id=?)"),
        "{plan:?}"
    );
}

#[test]
fn a_scan_or_no_access_is_not_an_indexed_plan() {
    let plan = |steps: &[&str]| QueryPlan(steps.iter().map(|s| s.to_string()).collect());
    assert!(plan(&["SEARCH runners USING INDEX by_state (state=?)"]).searches_only_indexes());
    assert!(
        !plan(&[
            "MULTI-INDEX OR",
            "SEARCH runners USING INDEX by_state (state=?)",
            "SCAN runners",
        ])
        .searches_only_indexes()
    );
    assert!(!plan(&["MULTI-INDEX OR"]).searches_only_indexes());
}
