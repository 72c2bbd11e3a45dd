//! Provisions from a full warm pool against the cold provision p50 of the
//! same run (when the cold part ran first), with an absolute target.

use std::time::{Duration, Instant};

use crate::harness::{Context, Result, figure, ms, percentile};
use crate::support::wait::poll_until;

use taylored_orchestrator::db::Db;

/// Warm-pool provisions; the pool is full before each sample.
pub async fn warm_pool(cx: &mut Context) -> Result<()> {
    let cold_p50 = cx.cold_p50;
    let pool = cx.sizes.warm_pool;
    let samples = cx.sizes.warm_samples;
    println!(
        "\n[warm pool] WARM_POOL_SIZE={pool}, {samples} provisions without a session id, pool full before each"
    );
    let service = cx
        .part_service("warm", &[("WARM_POOL_SIZE", pool.to_string())])
        .await?;
    let reader = Db::connect_read_only(&service.db_url()).await?;
    let wait_full = async || -> Result<()> {
        let full = poll_until(Duration::from_secs(120), "the warm pool filled", || async {
            let warm: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM runners WHERE pooled = 1 AND state = 'running'",
            )
            .fetch_one(reader.pool())
            .await
            .unwrap_or(0);
            (warm as usize >= pool).then_some(())
        });
        full.await.map_err(anyhow::Error::msg)
    };
    let mut times = Vec::new();
    for _ in 0..samples {
        wait_full().await?;
        let started = Instant::now();
        service.provision(None).await?;
        times.push(started.elapsed());
    }
    for (q, name) in [(0.5, "p50"), (0.95, "p95")] {
        let measured = percentile(&times, q);
        let (baseline, ratio) = match cold_p50 {
            Some(cold) => (
                format!("{:.1} ms cold p50", ms(cold)),
                ms(measured) / ms(cold),
            ),
            None => ("-".to_owned(), f64::NAN),
        };
        let (target, met) = if q == 0.5 {
            ("<= 10 ms", Some(ms(measured) <= 10.0))
        } else {
            ("-", None)
        };
        cx.push(figure(
            format!("warm-pool provision {name}"),
            format!("{:.1} ms", ms(measured)),
            baseline,
            ratio,
            target,
            met,
        ));
    }
    drop(reader);
    service.finish().await
}
