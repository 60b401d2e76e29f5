//! A fleet of runtime records written straight into a SQLite file before
//! `berth serve` starts on it: the list and console benchmarks need
//! 10,000 to 100,000 of them, and one commit each would take minutes.

use std::time::Duration;

use berth::adapters::store::sqlite::SqliteStore;
use berth_core::runtime::RuntimeRecord;
use berth_core::status::RuntimeStatus;
use sqlx::{Connection, Executor};

/// The id of the i-th record: `rt-000042`.
pub fn id(i: usize) -> String {
    format!("rt-{i:06}")
}

pub fn record(i: usize) -> RuntimeRecord {
    let mut rec = RuntimeRecord::new(
        &id(i),
        &format!("t{}", i % 5),
        Default::default(),
        1_000 + i as i64,
    );
    rec.status = RuntimeStatus::Stopped;
    rec.image_ref = Some("registry.example/acme/engine:latest".into());
    rec.image_digest = Some(format!("sha256:{i:064x}"));
    rec.engine_endpoint = Some(format!("http://t-{}:8080", id(i)));
    rec.generation = 1;
    rec
}

/// Creates the schema through the store, then writes `n` records in one
/// transaction (one commit each would take minutes for 100,000).
pub async fn seed(file: &std::path::Path, n: usize) {
    SqliteStore::open(file).await.unwrap().close().await;
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    conn.execute("BEGIN").await.unwrap();
    for i in 0..n {
        let r = record(i);
        sqlx::query(
            "INSERT INTO runtimes (id, template, status, container_id, image_ref, image_digest, \
             engine_endpoint, generation, env, created_at_ms, updated_at_ms, last_error_code, \
             last_error_message, run_id) \
             VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, '{}', $8, $8, NULL, NULL, NULL)",
        )
        .bind(&r.id)
        .bind(&r.template)
        .bind(r.status.as_str())
        .bind(&r.image_ref)
        .bind(&r.image_digest)
        .bind(&r.engine_endpoint)
        .bind(r.generation)
        .bind(r.created_at_ms)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.execute("COMMIT").await.unwrap();
    conn.close().await.unwrap();
}

/// The p-th percentile (0 to 1) in milliseconds.
pub fn pct(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    times[((times.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}
