//! The overview's part of one service database: its relays (backlog and who holds each
//! lease), its consumer groups' rates (messages handled in the last minute, from the inbox),
//! and, on PostgreSQL, its replication slots — the same figures as `tributary status`.

use std::fmt::Write as _;

use tributary::{Database, LeaseState};

use super::esc;
use crate::ops::status::{self, RelayStatus};

/// The relays, rates and slots of service `n`.
pub(super) async fn activity(
    n: usize,
    db: &dyn Database,
    url: Option<&str>,
) -> anyhow::Result<String> {
    let mut html = relays(n, &status::relays(db).await?);
    match status::handled_last_minute(db).await? {
        None => {}
        Some(groups) if groups.is_empty() => {
            html.push_str("<p>No message handled in the last minute.</p>");
        }
        Some(groups) => {
            html.push_str(
                "<table><tr><th>consumer group</th><th>handled, last minute</th>\
                 <th>per second</th></tr>",
            );
            for g in groups {
                let _ = write!(
                    html,
                    "<tr><td>{g}</td><td data-handled=\"{n}/{g}\">{}</td><td>{:.1}</td></tr>",
                    g.messages,
                    g.messages as f64 / 60.0,
                    g = esc(g.group.as_str()),
                );
            }
            html.push_str("</table>");
        }
    }
    let slots = match url {
        Some(url) => status::cdc_slots(url).await?,
        None => None,
    };
    if let Some(slots) = slots
        && !slots.is_empty()
    {
        html.push_str(
            "<table><tr><th>replication slot</th><th>behind (bytes)</th><th>confirmed</th>\
             <th>capture</th><th>WAL</th></tr>",
        );
        for s in slots {
            let lost = matches!(s.wal_status.as_deref(), Some("unreserved" | "lost"));
            let _ = write!(
                html,
                "<tr><td>{}</td><td data-slot-lag=\"{n}/{0}\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"{}\">{}</td></tr>",
                esc(&s.slot),
                s.lag_bytes,
                esc(s.confirmed_flush_lsn.as_deref().unwrap_or("nothing")),
                s.active_pid
                    .map(|p| format!("streaming (server pid {p})"))
                    .unwrap_or_else(|| "none connected".into()),
                if lost { "bad" } else { "ok" },
                esc(s.wal_status.as_deref().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    Ok(html)
}

fn relays(n: usize, relays: &[RelayStatus]) -> String {
    let mut html = String::from(
        "<table><tr><th>relay source</th><th>pending</th><th>oldest</th><th>lease</th></tr>",
    );
    for r in relays {
        let lease = match &r.lease {
            None => "<td>unknown</td>".to_owned(),
            Some(LeaseState::Free) => {
                let class = if r.pending.unwrap_or(0) > 0 {
                    "bad"
                } else {
                    ""
                };
                format!("<td class=\"{class}\">no relay holds it</td>")
            }
            Some(LeaseState::Held { holder, since }) => format!(
                "<td class=\"ok\">held by {}{}</td>",
                esc(holder),
                since
                    .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default()
            ),
        };
        let _ = write!(
            html,
            "<tr><td>{s}</td><td data-pending=\"{n}/{s}\">{}</td><td>{}</td>{lease}</tr>",
            r.pending
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into()),
            r.oldest_age_seconds
                .map(|a| format!("{a:.1} s"))
                .unwrap_or_default(),
            s = esc(&r.source),
        );
    }
    html.push_str("</table>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_with_a_backlog_and_no_relay_stands_out() {
        let html = relays(
            0,
            &[
                RelayStatus {
                    source: "outbox".into(),
                    pending: Some(4),
                    oldest_age_seconds: Some(2.5),
                    lease: Some(LeaseState::Free),
                },
                RelayStatus {
                    source: "events:<x>".into(),
                    pending: Some(0),
                    oldest_age_seconds: None,
                    lease: Some(LeaseState::Held {
                        holder: "pid 7".into(),
                        since: None,
                    }),
                },
            ],
        );
        assert!(html.contains("data-pending=\"0/outbox\">4<"), "{html}");
        assert!(
            html.contains("<td class=\"bad\">no relay holds it</td>"),
            "{html}"
        );
        assert!(html.contains("events:&lt;x&gt;"), "{html}");
        assert!(html.contains("held by pid 7</td>"), "{html}");
    }
}
