//! The raw publish baseline works and leaves nothing behind. The `#[ignore]`d test prints
//! figures for this machine: `cargo test --release -p tributary-nats --test bench -- --ignored
//! --nocapture`.

mod common;

use std::time::Instant;

use futures::TryStreamExt;
use tributary_core::{Broker, EventId, OutgoingMessage, Topic};
use tributary_nats::NatsBroker;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it in release mode with --nocapture"]
async fn print_raw_and_tributary_publish_throughput() {
    let Some(url) = common::shared_server("NATS publish throughput") else {
        return;
    };
    let config = common::test_config(url);
    let (messages, size) = (200_000, 256);
    let raw = raw_publish_throughput(&config, messages, size)
        .await
        .expect("baseline runs");
    let broker = NatsBroker::connect(config.clone()).await.expect("connect");
    let _cleanup = common::DeleteStreams(broker.clone());
    let topic = Topic::new("bench").expect("topic");
    broker.ensure_topic(&topic, 4).await.expect("topic");
    let batch_size = 1_000;
    let started = Instant::now();
    for _ in 0..messages / batch_size {
        let batch: Vec<_> = (0..batch_size)
            .map(|i| OutgoingMessage {
                topic: topic.clone(),
                key: format!("key-{i}"),
                id: EventId::new(),
                payload: vec![b'x'; size],
            })
            .collect();
        broker.publish(&batch).await.expect("publish");
    }
    let tributary = messages as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "{{\"bench\":\"publish\",\"backend\":\"nats\",\"events\":{messages},\"payload_bytes\":{size},\
         \"events_per_sec\":{tributary:.0},\"baseline\":\"raw async-nats JetStream publish, \
         window {w}\",\"baseline_events_per_sec\":{raw:.0},\"ratio\":{:.3},\
         \"settings\":{{\"storage\":\"file\",\"server\":\"nats-server {v}\",\
         \"sync\":\"server default\",\"batch\":{batch_size},\"partitions\":4}}}}",
        tributary / raw,
        w = config.publish_window,
        v = broker.server_version(),
    );
}
