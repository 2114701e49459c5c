//! Statement latency through a Ferry SQL window against the same statement on a direct
//! connection, both from this process, interleaved so both see the same machine load.
//!
//! `ferry-bench latency FERRY_URL INSTANCE PG_URL [ROUNDS]` prints p50/p99 of each side and the
//! latency Ferry adds.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, ferry, instance, pg, rest @ ..] = args.as_slice() else {
        bail!("usage: ferry-bench latency FERRY_URL INSTANCE PG_URL [ROUNDS]");
    };
    if mode != "latency" {
        bail!("unknown benchmark {mode:?}; try latency");
    }
    let rounds: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(2000);

    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .context("direct connection")?;
    tokio::spawn(conn);
    // Signed in with the token `start_ferry` (bench/common.sh) exports.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("FERRY_TOKEN") {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().context("FERRY_TOKEN")?,
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let session: serde_json::Value = http
        .post(format!("{ferry}/api/v1/sessions"))
        .json(&json!({ "instance": instance }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = session["id"].as_str().context("no session id")?.to_string();
    let url = format!("{ferry}/api/v1/sessions/{id}/sql");
    let body = json!({ "sql": "SELECT 1" });

    let (mut direct, mut via_ferry) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds + 100 {
        let t = Instant::now();
        client.simple_query("SELECT 1").await?;
        let d = t.elapsed();
        let t = Instant::now();
        let v: serde_json::Value = http.post(&url).json(&body).send().await?.json().await?;
        let f = t.elapsed();
        if v["results"][0]["error"].is_object() {
            bail!("SELECT 1 failed through Ferry: {v}");
        }
        if i >= 100 {
            direct.push(d);
            via_ferry.push(f);
        }
    }
    http.delete(format!("{ferry}/api/v1/sessions/{id}"))
        .send()
        .await?;
    direct.sort();
    via_ferry.sort();
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (f50, f99) = (percentile(&via_ferry, 0.5), percentile(&via_ferry, 0.99));
    println!("rounds\t{rounds}");
    println!("direct_p50_ms\t{:.3}", ms(d50));
    println!("direct_p99_ms\t{:.3}", ms(d99));
    println!("ferry_p50_ms\t{:.3}", ms(f50));
    println!("ferry_p99_ms\t{:.3}", ms(f99));
    println!("added_p50_ms\t{:.3}", ms(f50) - ms(d50));
    println!("added_p99_ms\t{:.3}", ms(f99) - ms(d99));
    Ok(())
}
