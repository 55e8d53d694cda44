//! Reading the stream back (`fleet events|flows`): an ordered consumer
//! from a start time, filtered by subject on the server as far as one
//! subject can say (one node, one verdict), read to the end of what the
//! stream holds now.
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use tokio_stream::StreamExt;

use super::{NatsArgs, NatsError};

/// How long one message may take to arrive before the read gives up.
const STALL: Duration = Duration::from_secs(10);

/// What to read: events (of `verdicts`) or flows, of `nodes`.
pub enum Kind<'a> {
    Events { verdicts: &'a [String] },
    Flows,
    Checkpoints,
}

/// The one subject a consumer filters on: a node and a verdict are named
/// where exactly one is asked for, the rest is a wildcard (the caller
/// filters those client side).
pub fn subject_filter(prefix: &str, nodes: &[String], kind: &Kind<'_>) -> String {
    let one = |list: &[String]| match list {
        [one] => one.clone(),
        _ => "*".to_string(),
    };
    let node = one(nodes);
    match kind {
        Kind::Events { verdicts } => super::event_subject(prefix, &node, &one(verdicts)),
        Kind::Flows => super::flow_subject(prefix, &node),
        Kind::Checkpoints => super::checkpoint_subject(prefix, &node),
    }
}

/// What `read` hands each message to: its payload and content type.
pub type OnMessage<'a> = dyn FnMut(&[u8], Option<&str>) -> anyhow::Result<()> + 'a;

/// Reads every message on `subject` stored from `start` (Unix ns) on, in
/// stream order, handing each payload and content type to `each`; returns
/// how many were read.
pub async fn read(
    nats: &NatsArgs,
    subject: String,
    start: i64,
    each: &mut OnMessage<'_>,
) -> anyhow::Result<u64> {
    let client = nats
        .connect("egress-monitor fleet", |e: async_nats::Event| async move {
            if let async_nats::Event::ServerError(e) = e {
                log::error!("NATS server error: {e}");
            }
        })
        .await?;
    let js = jetstream::new(client);
    let name = &nats.nats_stream;
    let err = |what: String, e: &dyn std::fmt::Display| NatsError::JetStream {
        what,
        reason: e.to_string(),
        refused: None,
    };
    let stream = js.get_stream(name).await.map_err(|e| {
        err(
            format!(
                "NATS stream {name} at {} (has a daemon published there with this --nats-stream?)",
                nats.url()
            ),
            &e,
        )
    })?;
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start.max(0)))
        .map_err(|e| anyhow::anyhow!("start time {start}: {e}"))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| err(format!("reading {subject} from NATS stream {name}"), &e))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| err(format!("reading {subject} from NATS stream {name}"), &e))?;
    let mut n = 0;
    loop {
        let next = tokio::time::timeout(STALL, messages.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "NATS stream {name}: no message for {} s after {n} ({subject})",
                    STALL.as_secs()
                )
            })?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| err(format!("reading {subject} from NATS stream {name}"), &e))?;
        let left = m
            .info()
            .map_err(|e| anyhow::anyhow!("a message of {subject} without JetStream info: {e}"))?
            .pending;
        let content_type = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str());
        each(&m.payload, content_type)?;
        n += 1;
        if left == 0 {
            break;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// One node and one verdict go to the server; several become a
    /// wildcard the client filters.
    #[test]
    fn the_server_filters_what_one_subject_can_say() {
        let denied = s(&["denied"]);
        assert_eq!(
            subject_filter("egress", &s(&["n1"]), &Kind::Events { verdicts: &denied }),
            "egress.n1.event.denied"
        );
        let two = s(&["denied", "would_deny"]);
        assert_eq!(
            subject_filter(
                "egress",
                &s(&["n1", "n2"]),
                &Kind::Events { verdicts: &two }
            ),
            "egress.*.event.*"
        );
        assert_eq!(
            subject_filter("corp.eg", &[], &Kind::Flows),
            "corp.eg.*.flow"
        );
    }
}
