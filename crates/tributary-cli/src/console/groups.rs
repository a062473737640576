//! The overview's broker section (with `--broker`): every consumer group the broker knows, how
//! far behind it is on each partition, and the topology that follows from it — which groups
//! consume each topic. Read through [`tributary::Broker::group_lags`], which creates nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tributary::{Broker, GroupLag};

use super::esc;

/// The broker section of the overview.
pub(super) async fn section(broker: &dyn Broker) -> tributary::Result<String> {
    let Some(lags) = broker.group_lags().await? else {
        return Ok(
            "<h2>Consumer groups</h2><p>This broker cannot tell its groups' lag.</p>".into(),
        );
    };
    let mut html = String::from("<h2>Consumer groups</h2>");
    if lags.is_empty() {
        html.push_str("<p>The broker knows no consumer group yet.</p>");
        return Ok(html);
    }
    html.push_str(&lag_table(&lags));
    html.push_str(&topology(&lags));
    Ok(html)
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

/// Which groups consume each topic: the deployment's picture as the broker sees it (who
/// publishes a topic is the service whose outbox or event store names it).
fn topology(lags: &[GroupLag]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in lags {
        let groups = by_topic.entry(l.topic.as_str()).or_default();
        if !groups.contains(&l.group.as_str()) {
            groups.push(l.group.as_str());
        }
    }
    let mut html = String::from("<h2>Topology</h2><ul id=\"topology\">");
    for (topic, groups) in by_topic {
        let groups: Vec<String> = groups
            .iter()
            .map(|g| format!("<b>{}</b>", esc(g)))
            .collect();
        let _ = write!(
            html,
            "<li data-topic=\"{t}\">{t} → {}</li>",
            groups.join(", "),
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
        let picture = topology(&lags);
        assert!(
            picture
                .contains("<li data-topic=\"orders\">orders → <b>billing</b>, <b>history</b></li>"),
            "{picture}"
        );
        assert!(picture.contains("customers → <b>history</b>"), "{picture}");
    }
}
