//! The raw publish baseline works and leaves nothing behind. Figures come from
//! `tributary bench pipeline --db postgres://… --broker nats://…`, which reports this baseline
//! beside the relay's rate.

mod common;

use futures::TryStreamExt;
use tributary_nats::bench::raw_publish_throughput;

async fn streams_named_like(url: &str, head: &str) -> Vec<String> {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
    names.into_iter().filter(|n| n.starts_with(head)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_publish_baseline_reports_a_rate_and_deletes_its_stream() {
    let Some(url) = common::shared_server("NATS raw publish baseline") else {
        return;
    };
    let config = common::test_config(url.clone());
    let rate = raw_publish_throughput(&config, 2_000, 256)
        .await
        .expect("baseline runs");
    assert!(rate.is_finite() && rate > 0.0, "rate {rate}");
    let left = streams_named_like(&url, &format!("{}_BENCH_", config.stream_prefix)).await;
    assert!(left.is_empty(), "scratch streams left behind: {left:?}");
}
