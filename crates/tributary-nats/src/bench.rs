//! A raw baseline for publish benchmarks: plain async-nats JetStream publishing with pipelined
//! acknowledgements, without Tributary's abstraction (no topics, partitions or key headers).
//! Benchmarks report Tributary's publish path as a ratio of this figure, measured in the same
//! run against the same server.

use std::collections::VecDeque;
use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use tributary_core::{Error, EventId, Result};

use crate::config::{NatsBrokerConfig, NatsStorage};

/// Publishes `messages` messages of `payload_bytes` bytes each to a scratch stream and returns
/// how many were acknowledged per second.
///
/// Uses the server at `config.url`, a stream `<stream_prefix>_BENCH_<id>` with the configured
/// storage, replicas and duplicate window (deleted afterwards) and keeps up to
/// `config.publish_window` acknowledgements outstanding. Every message carries a unique
/// `Nats-Msg-Id`, as Tributary's do, so the server pays for deduplication in both figures.
///
/// # Errors
/// [`Error::InvalidInput`] for an invalid configuration; [`Error::Unavailable`] when the
/// server cannot be reached or does not acknowledge a message.
pub async fn raw_publish_throughput(
    config: &NatsBrokerConfig,
    messages: usize,
    payload_bytes: usize,
) -> Result<f64> {
    config.validate()?;
    let client = async_nats::ConnectOptions::new()
        .name("tributary-nats-bench")
        .connection_timeout(config.connect_timeout)
        .connect(config.url.as_str())
        .await
        .map_err(|e| Error::unavailable(format!("NATS server at {}", config.url), e))?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(config.request_timeout)
        .max_ack_inflight(1 << 24)
        .build(client.clone());
    let id = EventId::new().as_uuid().simple().to_string();
    let name = format!("{}_BENCH_{id}", config.stream_prefix);
    // Outside `<prefix>.>`, so the scratch stream is never mistaken for a topic.
    let subject = format!("{}_BENCH.{id}", config.stream_prefix);
    js.create_stream(StreamConfig {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: match config.storage {
            NatsStorage::File => StorageType::File,
            NatsStorage::Memory => StorageType::Memory,
        },
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        ..Default::default()
    })
    .await
    .map_err(|e| Error::unavailable(format!("creating JetStream stream {name}"), e))?;
    let run = publish_all(
        &js,
        &subject,
        messages,
        payload_bytes,
        config.publish_window,
    )
    .await;
    let deleted = js
        .delete_stream(&name)
        .await
        .map_err(|e| Error::unavailable(format!("deleting JetStream stream {name}"), e));
    let seconds = run?;
    deleted?;
    Ok(messages as f64 / seconds.max(f64::MIN_POSITIVE))
}

async fn publish_all(
    js: &async_nats::jetstream::Context,
    subject: &str,
    messages: usize,
    payload_bytes: usize,
    window: usize,
) -> Result<f64> {
    let payload = bytes_of(payload_bytes);
    let what = "NATS JetStream (raw publish benchmark)";
    let mut in_flight = VecDeque::with_capacity(window);
    let started = Instant::now();
    for _ in 0..messages {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            EventId::new().to_string().as_str(),
        );
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, payload.clone())
            .await
            .map_err(|e| Error::unavailable(what, e))?;
        in_flight.push_back(ack.into_future());
        if in_flight.len() >= window {
            // Awaiting the oldest polls only it; the others' replies wait in their channels.
            if let Some(oldest) = in_flight.pop_front() {
                oldest.await.map_err(|e| Error::unavailable(what, e))?;
            }
        }
    }
    for ack in in_flight {
        ack.await.map_err(|e| Error::unavailable(what, e))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn bytes_of(n: usize) -> bytes::Bytes {
    vec![b'x'; n].into()
}
