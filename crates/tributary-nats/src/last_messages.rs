//! The newest message of each partition of a topic (see [`Broker::last_messages`]), read with
//! the stream's "last message by subject" request: nothing is consumed or created.
//!
//! [`Broker::last_messages`]: tributary_core::Broker::last_messages

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessage;
use serde::Deserialize;
use serde_json::json;
use tributary_core::{Error, LastMessage, Offset, Partition, Result, Topic};

use crate::broker::Inner;
use crate::naming;

#[derive(Deserialize)]
struct MessageGet {
    message: RawMessage,
}

/// The newest message of every partition of `topic` that retains one; nothing if its stream
/// is gone.
pub(crate) async fn of_topic(inner: &Inner, topic: &Topic) -> Result<Vec<LastMessage>> {
    let prefix = &inner.config.stream_prefix;
    let stream = naming::stream_name(prefix, topic);
    let Some(info) = inner.stream_info(&stream).await? else {
        return Ok(Vec::new());
    };
    let partitions = inner.check_stream(topic, &info)?;
    let mut last = Vec::new();
    for p in 0..partitions {
        let partition = Partition::new(p);
        let subject = naming::subject(prefix, topic, partition);
        let what = format!("reading the last message of {subject} in JetStream stream {stream}");
        let answer = inner
            .api::<MessageGet>(
                &what,
                format!("STREAM.MSG.GET.{stream}"),
                &json!({ "last_by_subj": subject }),
            )
            .await?;
        let raw = match answer {
            Ok(get) => get.message,
            Err(e) if e.error_code() == ErrorCode::NO_MESSAGE_FOUND => continue,
            Err(e) => return Err(inner.api_failure(&what, e)),
        };
        let message = StreamMessage::try_from(raw).map_err(|e| Error::decode(what.clone(), e))?;
        last.push(LastMessage {
            topic: topic.clone(),
            partition,
            offset: Offset::new(message.sequence),
            payload: message.payload.to_vec(),
        });
    }
    Ok(last)
}
