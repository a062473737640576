//! The overview's broker section (with `--broker`): every consumer group the broker knows, how
//! far behind it is on each partition, and the topology — which services publish each topic
//! and which groups consume it. Read through [`tributary::Broker::group_lags`] and
//! [`tributary::Broker::last_messages`], which create nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tributary::{Broker, Envelope, GroupLag, LastMessage};

use super::esc;

/// How long the overview reuses who publishes what: finding out costs a request per partition
/// on NATS, the page refreshes every 2 s, and a deployment's publishers rarely change.
const PUBLISHERS_FOR: Duration = Duration::from_secs(15);

/// Per topic, the services whose messages it retains (from the newest message of each
/// partition), and when that was read.
pub(super) type Publishers = tokio::sync::Mutex<Option<(Instant, BTreeMap<String, Vec<String>>)>>;

/// The broker section of the overview.
pub(super) async fn section(
    broker: &dyn Broker,
    publishers: &Publishers,
) -> tributary::Result<String> {
    let lags = broker.group_lags().await?;
    let publishers = cached_publishers(broker, publishers).await?;
    let mut html = String::from("<h2>Consumer groups</h2>");
    match &lags {
        None => html.push_str("<p>This broker cannot tell its groups' lag.</p>"),
        Some(lags) if lags.is_empty() => {
            html.push_str("<p>The broker knows no consumer group yet.</p>");
        }
        Some(lags) => html.push_str(&lag_table(lags)),
    }
    let lags = lags.unwrap_or_default();
    if !lags.is_empty() || publishers.as_ref().is_some_and(|p| !p.is_empty()) {
        html.push_str(&topology(&lags, publishers.as_ref()));
    }
    Ok(html)
}

async fn cached_publishers(
    broker: &dyn Broker,
    cache: &Publishers,
) -> tributary::Result<Option<BTreeMap<String, Vec<String>>>> {
    let mut cached = cache.lock().await;
    if let Some((at, publishers)) = cached.as_ref()
        && at.elapsed() < PUBLISHERS_FOR
    {
        return Ok(Some(publishers.clone()));
    }
    let Some(last) = broker.last_messages().await? else {
        return Ok(None);
    };
    let publishers = publishers_of(&last);
    *cached = Some((Instant::now(), publishers.clone()));
    Ok(Some(publishers))
}

/// Per topic, the sources of the envelopes among `last`, sorted; a message that is not a
/// Tributary envelope counts as published by "?".
fn publishers_of(last: &[LastMessage]) -> BTreeMap<String, Vec<String>> {
    let mut by_topic: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in last {
        let source = Envelope::from_json(&m.payload).map_or_else(|_| "?".to_owned(), |e| e.source);
        by_topic
            .entry(m.topic.as_str().to_owned())
            .or_default()
            .insert(source);
    }
    by_topic
        .into_iter()
        .map(|(topic, sources)| (topic, sources.into_iter().collect()))
        .collect()
}

/// One row per group and topic: the total lag, then each partition's.
fn lag_table(lags: &[GroupLag]) -> String {
    let mut rows: BTreeMap<(&str, &str), Vec<&GroupLag>> = BTreeMap::new();
    for l in lags {
        rows.entry((l.group.as_str(), l.topic.as_str()))
            .or_default()
            .push(l);
    }
    let mut html = String::from(
        "<table><tr><th>consumer group</th><th>topic</th><th>behind</th>\
         <th>per partition</th></tr>",
    );
    for ((group, topic), partitions) in rows {
        let total: u64 = partitions.iter().map(|l| l.lag).sum();
        let each: Vec<String> = partitions
            .iter()
            .map(|l| {
                format!(
                    "<span data-lag=\"{g}/{t}/{p}\">{p}: {}</span>",
                    l.lag,
                    g = esc(group),
                    t = esc(topic),
                    p = l.partition,
                )
            })
            .collect();
        let _ = write!(
            html,
            "<tr><td>{g}</td><td>{t}</td>\
             <td class=\"{class}\" data-total-lag=\"{g}/{t}\">{total}</td><td>{}</td></tr>",
            each.join(" · "),
            g = esc(group),
            t = esc(topic),
            class = if total == 0 { "ok" } else { "bad" },
        );
    }
    html.push_str("</table>");
    html
}

/// The deployment's picture as the broker sees it: per topic, the services that publish it
/// (as far as the messages it retains tell) and the groups that consume it.
fn topology(lags: &[GroupLag], publishers: Option<&BTreeMap<String, Vec<String>>>) -> String {
    let mut by_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in lags {
        let groups = by_topic.entry(l.topic.as_str()).or_default();
        if !groups.contains(&l.group.as_str()) {
            groups.push(l.group.as_str());
        }
    }
    for topic in publishers.into_iter().flat_map(|p| p.keys()) {
        by_topic.entry(topic).or_default();
    }
    let mut html = String::from("<h2>Topology</h2><ul id=\"topology\">");
    for (topic, groups) in by_topic {
        let from = match publishers.and_then(|p| p.get(topic)) {
            Some(sources) => sources
                .iter()
                .map(|s| format!("<i>{}</i>", esc(s)))
                .collect::<Vec<_>>()
                .join(", "),
            None => "<i>nobody yet</i>".to_owned(),
        };
        let to = if groups.is_empty() {
            "no consumer group".to_owned()
        } else {
            groups
                .iter()
                .map(|g| format!("<b>{}</b>", esc(g)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            html,
            "<li data-topic=\"{t}\"><span data-publishers=\"{t}\">{from}</span> → {t} → {to}</li>",
            t = esc(topic)
        );
    }
    html.push_str("</ul>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::{GroupName, Partition, Topic};

    fn lag(group: &str, topic: &str, partition: u32, lag: u64) -> GroupLag {
        GroupLag {
            group: GroupName::new(group).unwrap(),
            topic: Topic::new(topic).unwrap(),
            partition: Partition::new(partition),
            lag,
        }
    }

    #[test]
    fn groups_are_summed_per_topic_and_the_topology_lists_each_group_once() {
        let lags = [
            lag("billing", "orders", 0, 2),
            lag("billing", "orders", 1, 3),
            lag("history", "orders", 0, 0),
            lag("history", "customers", 0, 1),
        ];
        let table = lag_table(&lags);
        assert!(
            table.contains("data-total-lag=\"billing/orders\">5<"),
            "{table}"
        );
        assert!(
            table.contains("data-lag=\"billing/orders/1\">1: 3<"),
            "{table}"
        );
        assert!(
            table.contains("class=\"ok\" data-total-lag=\"history/orders\">0<"),
            "{table}"
        );
        let last = [
            last(
                "orders",
                0,
                Envelope::new("order-service", "OrderCreated", json(1)).to_json(),
            ),
            last(
                "orders",
                1,
                Envelope::new("order-service", "OrderCreated", json(2)).to_json(),
            ),
            last(
                "orders",
                2,
                Envelope::new("<admin>", "OrderFixed", json(3)).to_json(),
            ),
            last("audit", 0, "not an envelope".into()),
        ];
        let publishers = publishers_of(&last);
        let picture = topology(&lags, Some(&publishers));
        assert!(
            picture.contains(
                "<li data-topic=\"orders\"><span data-publishers=\"orders\"><i>&lt;admin&gt;</i>, \
                 <i>order-service</i></span> → orders → <b>billing</b>, <b>history</b></li>"
            ),
            "{picture}"
        );
        assert!(
            picture.contains("<i>nobody yet</i></span> → customers → <b>history</b>"),
            "{picture}"
        );
        assert!(
            picture.contains("<i>?</i></span> → audit → no consumer group"),
            "{picture}"
        );
    }

    fn last(topic: &str, partition: u32, payload: String) -> LastMessage {
        LastMessage {
            topic: Topic::new(topic).unwrap(),
            partition: Partition::new(partition),
            offset: tributary::Offset::new(1),
            payload: payload.into_bytes(),
        }
    }

    fn json(n: u32) -> tributary::Payload {
        tributary::Payload::from_value(&serde_json::json!({ "n": n })).unwrap()
    }
}
