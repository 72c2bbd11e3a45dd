//! A burst of first loads (issue 21): N browsers opening the page together,
//! each from its own client, against the engine's own best for the same N
//! starts, measured in the same run.
//!
//! The engine's best: N create+start+inspect calls with bollard at each
//! concurrency of 1, 2, 4, ... up to N; the fastest concurrency wins. One
//! burst's total varies by about 10% from run to run on this machine, so
//! the fastest of that sweep is a lucky draw; the comparison is made after
//! it, in `BENCH_BURST_ROUNDS` (3) rounds that each run the service's burst
//! and the engine's N starts at its best concurrency (alternating which
//! goes first), and holds the service's median to the engine's median. The
//! fair queue model: at the engine's best throughput, served in arrival
//! order, the k-th of N requests is answered at k/N of the best total, so
//! the p50 and p95 a fair service can give are 0.50 and 0.95 of it. The
//! service's figures are its own answers' times to `201`, from the moment
//! the burst was sent (each the median over the rounds).

use std::time::{Duration, Instant};

use crate::cold::{raw_engine, raw_starts};
use crate::harness::{
    Context, Result, figure, ms, percentile, provision_request, remove_instance_containers,
};

/// The engine's total for `n` starts at `concurrency` at once.
async fn engine_total(cx: &Context, n: usize, concurrency: usize, label: &str) -> Result<Duration> {
    let instance = cx
        .instances
        .new_instance(&cx.prefix, &format!("raw-{n}-{concurrency}-{label}"));
    let raw = raw_engine(&cx.image, &instance)?;
    let (total, started) = raw_starts(&cx.docker, &raw, "raw", n, concurrency).await;
    remove_instance_containers(&instance).await;
    started?;
    Ok(total)
}

/// The engine's total for `n` starts at each concurrency tried, and the
/// fastest concurrency.
async fn engine_sweep(cx: &Context, n: usize) -> Result<(usize, Vec<(usize, Duration)>)> {
    let mut totals = Vec::new();
    let mut concurrency = 1;
    loop {
        totals.push((
            concurrency,
            engine_total(cx, n, concurrency, "sweep").await?,
        ));
        if concurrency >= n {
            break;
        }
        concurrency = (concurrency * 2).min(n);
    }
    let (best_at, _) = *totals.iter().min_by_key(|(_, total)| *total).unwrap();
    Ok((best_at, totals))
}

/// The middle value (the upper of the two middle ones).
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// `n` first provisions sent at once, each on a client (a connection) of
/// its own; each one's time to its `201`.
async fn service_burst(cx: &Context, n: usize, label: &str) -> Result<Vec<Duration>> {
    let env: Vec<(&str, String)> = starts_at_once()
        .map(|value| ("RUNNER_STARTS_AT_ONCE", value))
        .into_iter()
        .collect();
    let service = cx.part_service(&format!("burst-{n}-{label}"), &env).await?;
    let times = timed_burst(&service.base, n).await;
    service.finish().await?;
    times
}

/// `BENCH_STARTS_AT_ONCE`, passed on as the service's `RUNNER_STARTS_AT_ONCE`.
fn starts_at_once() -> Option<String> {
    std::env::var("BENCH_STARTS_AT_ONCE").ok()
}

pub async fn burst(cx: &mut Context) -> Result<()> {
    for n in cx.sizes.burst_sizes.clone() {
        println!(
            "\n[burst] {n} simultaneous first provisions, each its own client, against the engine's best for {n} starts"
        );
        let (best_at, totals) = engine_sweep(cx, n).await?;
        let tried: Vec<String> = totals
            .iter()
            .map(|(c, total)| format!("{c}: {:.2} s", total.as_secs_f64()))
            .collect();
        println!(
            "  the engine, {n} create+start at each concurrency: {}",
            tried.join(", ")
        );
        let rounds = cx.sizes.burst_rounds;
        let (mut engine, mut service) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let label = format!("round-{round}");
            if round % 2 == 0 {
                service.push(service_burst(cx, n, &label).await?);
                engine.push(engine_total(cx, n, best_at, &label).await?);
            } else {
                engine.push(engine_total(cx, n, best_at, &label).await?);
                service.push(service_burst(cx, n, &label).await?);
            }
        }
        let answered: Vec<Duration> = service
            .iter()
            .map(|times| *times.iter().max().unwrap())
            .collect();
        println!(
            "  {rounds} rounds at concurrency {best_at}: the engine {}; the service {}",
            engine
                .iter()
                .map(|total| format!("{:.2} s", total.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
            answered
                .iter()
                .map(|total| format!("{:.2} s", total.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let best = median(engine);
        let total = median(answered);
        let ratio = ms(total) / ms(best);
        cx.push(figure(
            format!("burst of {n}: all answered"),
            format!("{:.2} s", total.as_secs_f64()),
            format!(
                "{:.2} s engine at {best_at}, median of {rounds}",
                best.as_secs_f64()
            ),
            ratio,
            "<= 1.1x",
            Some(ratio <= 1.1),
        ));
        for (q, name) in [(0.5, "p50"), (0.95, "p95")] {
            let measured = median(service.iter().map(|times| percentile(times, q)).collect());
            let fair = best.mul_f64(q);
            let ratio = ms(measured) / ms(fair);
            cx.push(figure(
                format!("burst of {n}: {name} to 201"),
                format!("{:.2} s", measured.as_secs_f64()),
                format!("{:.2} s fair", fair.as_secs_f64()),
                ratio,
                if q == 0.95 { "<= 1.1x" } else { "-" },
                (q == 0.95).then_some(ratio <= 1.1),
            ));
        }
        cx.notes.push(format!(
            "burst of {n}: the engine's totals by concurrency {}; the service at RUNNER_STARTS_AT_ONCE={}",
            tried.join(", "),
            starts_at_once().unwrap_or_else(|| "its default".to_owned())
        ));
    }
    let largest = cx.sizes.burst_sizes.iter().copied().max().unwrap_or(0);
    warm_bursts(cx, largest.min(50)).await
}

/// The `auto` pool through two bursts of `n` (issue 21): the first, cold,
/// grows it; once it has refilled, the second is served from it. Then,
/// quiet, it goes back to its minimum.
pub async fn warm_bursts(cx: &mut Context, n: usize) -> Result<()> {
    println!(
        "\n[auto warm pool] a burst of {n} first provisions, the pool's refill, a second burst of {n}, the return to its minimum"
    );
    let quiet = 5;
    let service = cx
        .part_service(
            &format!("auto-pool-{n}"),
            &[
                ("WARM_POOL_SIZE", "auto".to_owned()),
                ("WARM_POOL_MAX", n.to_string()),
                ("WARM_POOL_QUIET_SECONDS", quiet.to_string()),
            ],
        )
        .await?;
    let first = timed_burst(&service.base, n).await?;
    let refill_started = Instant::now();
    wait_for_metric(
        &service,
        &format!("orchestrator_runners{{state=\"warm_running\"}} {n}"),
        Duration::from_secs(300),
    )
    .await?;
    let refilled = refill_started.elapsed();
    let second = timed_burst(&service.base, n).await?;
    let quiet_started = Instant::now();
    wait_for_metric(
        &service,
        "orchestrator_warm_pool_target 1",
        Duration::from_secs(120),
    )
    .await?;
    let back = quiet_started.elapsed();
    service.finish().await?;

    let cold_p95 = percentile(&first, 0.95);
    let warm_p95 = percentile(&second, 0.95);
    cx.push(figure(
        format!("second burst of {n}, auto pool: p95 to 201"),
        format!("{:.1} ms", ms(warm_p95)),
        format!("{:.0} ms first burst", ms(cold_p95)),
        ms(warm_p95) / ms(cold_p95),
        "<= 50 ms",
        Some(ms(warm_p95) <= 50.0),
    ));
    cx.push(figure(
        format!("second burst of {n}, auto pool: p50 to 201"),
        format!("{:.1} ms", ms(percentile(&second, 0.5))),
        format!("{:.0} ms first burst", ms(percentile(&first, 0.5))),
        ms(percentile(&second, 0.5)) / ms(percentile(&first, 0.5)),
        "-",
        None,
    ));
    cx.notes.push(format!(
        "auto warm pool: refilled to {n} in {:.1} s after the first burst; back at its minimum {:.1} s \
         after the second (WARM_POOL_QUIET_SECONDS={quiet}, checked every 5 s)",
        refilled.as_secs_f64(),
        back.as_secs_f64()
    ));
    Ok(())
}

/// `n` first provisions at once, each on a client of its own; each one's
/// time to its `201`.
async fn timed_burst(base: &str, n: usize) -> Result<Vec<Duration>> {
    let clients: Vec<reqwest::Client> = (0..n)
        .map(|_| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
        })
        .collect::<std::result::Result<_, _>>()?;
    let started = Instant::now();
    let answers = futures_util::future::join_all(clients.iter().map(|client| {
        let request = provision_request(client, base, None);
        async move {
            let response = request.send().await?;
            let status = response.status();
            anyhow::ensure!(
                status.as_u16() == 201,
                "a first provision answered {status}"
            );
            Ok(started.elapsed())
        }
    }))
    .await;
    answers.into_iter().collect()
}

/// Waits until the service's `/metrics` holds `line`.
async fn wait_for_metric(
    service: &crate::harness::Service,
    line: &str,
    limit: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let text = service
            .client
            .get(format!("{}/metrics", service.base))
            .send()
            .await?
            .text()
            .await?;
        if text.contains(line) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < limit, "no `{line}` within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
