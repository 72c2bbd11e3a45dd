//! One in-process reaper pass over many fresh rows and a few stale ones
//! against a pass over the stale rows alone, and whether its query searches
//! only indexes.

use std::time::{Duration, Instant};

use crate::harness::{Context, Result, figure, fill_rows, in_process_service, ms};

use chrono::Utc;
use taylored_orchestrator::db::QueryPlan;

/// Fills a stopped instance's database with `fresh` rows (fake container
/// ids, heartbeat now) and `stale` ones (heartbeat 2 h ago, containers that
/// do not exist), then times one reaper pass in-process.
async fn reaper_pass(
    cx: &Context,
    name: &str,
    fresh: usize,
    stale: usize,
) -> Result<(Duration, usize, QueryPlan)> {
    let instance = cx.instances.new_instance(&cx.prefix, name);
    let url = cx.db_url(name);
    fill_rows(&url, &instance, fresh, stale).await?;
    let service = in_process_service(cx, &url, &instance).await?;
    let plan = service.db.explain_reapable().await?;
    let reaper = service.reaper_with(Duration::from_secs(60), Duration::from_secs(3600));
    let started = Instant::now();
    let outcome = reaper.try_once(Utc::now()).await?;
    let took = started.elapsed();
    anyhow::ensure!(
        outcome.failed == 0,
        "the reaper failed to remove {outcome:?}"
    );
    Ok((took, outcome.reaped, plan))
}

pub async fn reaper(cx: &mut Context) -> Result<()> {
    let (rows, stale) = (cx.sizes.reaper_rows, cx.sizes.reaper_stale);
    println!(
        "\n[reaper] one pass over {rows} fresh + {stale} stale rows vs over {stale} stale rows alone"
    );
    let (baseline, _, _) = reaper_pass(cx, "reaper-base", 0, stale).await?;
    let (took, reaped, plan) = reaper_pass(cx, "reaper", rows, stale).await?;
    println!("  reaped {reaped}; EXPLAIN QUERY PLAN of Db::reapable:");
    for line in &plan.0 {
        println!("    {line}");
    }
    let indexed = plan.searches_only_indexes();
    cx.notes.push(format!(
        "reaper query plan ({}): {}",
        if indexed {
            "indexed, no full scan"
        } else {
            "NOT only index searches"
        },
        plan.0.join("; ")
    ));
    cx.push(figure(
        format!("reaper pass, {rows}+{stale} rows"),
        format!("{:.1} ms", ms(took)),
        format!("{:.1} ms, {stale} rows", ms(baseline)),
        ms(took) / ms(baseline),
        "index used",
        Some(indexed && reaped == stale),
    ));
    Ok(())
}
