//! Store benchmark: what a durable checkpoint costs.
//!
//! `cargo bench -p isoflow-engine --bench store` prints, for outputs of
//! 1 KiB, 21 KiB (the seed's XML document) and 1 MiB, the latency of one
//! `checkpoint` with the write-ahead log fsynced (the default) and
//! without, on the disk that holds the temporary folder.

use std::time::{Duration, Instant};

use isoflow_engine::store::{RunRecord, RunStatus, StepRecord, StepStatus, Store, StoreConfig};

fn main() {
    let dir = std::env::temp_dir().join(format!("isoflow-store-bench-{}", std::process::id()));
    println!("store benchmark in {}", dir.display());
    for sync in [true, false] {
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&StoreConfig {
            path: dir.clone(),
            sync,
        })
        .expect("store opens");
        let mut run = RunRecord::new("bench", "bench", 1);
        store
            .create_run(&run, &serde_json::json!({}), &serde_json::Value::Null)
            .expect("run stored");
        run.status = RunStatus::Running;
        for size in [1024usize, 21 * 1024, 1024 * 1024] {
            // A JSON string of `size` bytes with its quotes.
            let output = serde_json::Value::String("x".repeat(size - 2));
            let count = if size >= 1024 * 1024 { 200 } else { 2_000 };
            let mut samples: Vec<Duration> = (0..count)
                .map(|i| {
                    let step = StepRecord {
                        step_key: format!("s{size}-{i}"),
                        status: StepStatus::Succeeded,
                        attempts: 1,
                        started_at_ms: 0,
                        finished_at_ms: 0,
                        output_bytes: Some(size as u64),
                        error: None,
                        node: None,
                    };
                    let start = Instant::now();
                    store
                        .checkpoint(&run, vec![(step, Some(&output))], &[])
                        .expect("checkpoint stored");
                    start.elapsed()
                })
                .collect();
            samples.sort();
            let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
            println!(
                "checkpoint, sync={sync:<5} output {:>7} B: p50 {:>8.1} µs  p99 {:>8.1} µs",
                size,
                at(0.5).as_secs_f64() * 1e6,
                at(0.99).as_secs_f64() * 1e6
            );
        }
        drop(store);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
