//! A plain SQL session for the capture's side work: the lease (an advisory lock), the slot
//! record, heartbeats, snapshot reads and outbox deletes.
//!
//! It runs over the same wire code as the replication connection, with the simple query
//! protocol. That protocol has no bind parameters, so every value is written into the text
//! with [`literal`] and every name with [`ident`]; the session pins
//! `standard_conforming_strings = on`, under which doubling quotes is the whole escaping.

use crate::replication::{
    PgReplicationConfig, QueryResult, ReplicationConnection, ReplicationError, Result,
};

/// One plain SQL session.
pub(crate) struct SqlSession {
    connection: ReplicationConnection,
    /// Set while a query is in flight. A query future dropped half-way leaves the protocol in
    /// an unknown state; the session then refuses further use instead of misreading answers.
    busy: bool,
}

impl std::fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSession")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl SqlSession {
    /// Connects and authenticates.
    pub(crate) async fn connect(config: &PgReplicationConfig) -> Result<Self> {
        Ok(SqlSession {
            connection: ReplicationConnection::connect_sql(config).await?,
            busy: false,
        })
    }

    /// Runs `sql` (one or more statements) and returns all rows as text.
    pub(crate) async fn query(&mut self, sql: &str) -> Result<QueryResult> {
        if self.busy {
            return Err(ReplicationError::Io {
                source: std::io::Error::other(
                    "an earlier query on this session was interrupted; reconnect",
                ),
            });
        }
        self.busy = true;
        let result = self.connection.query_described(sql, None).await;
        // An I/O failure leaves the session unusable; a server error does not.
        self.busy = matches!(&result, Err(ReplicationError::Io { .. }));
        result
    }

    /// The first column of the first row, if any (NULL reads as `None`).
    pub(crate) async fn value(&mut self, sql: &str) -> Result<Option<String>> {
        let result = self.query(sql).await?;
        Ok(result
            .rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten()))
    }

    /// Says goodbye; the server ends the session (releasing its advisory locks).
    pub(crate) async fn close(self) {
        let _ = self.connection.close().await;
    }
}

/// `text` as an SQL string literal.
///
/// NUL cannot be stored in PostgreSQL text; it is dropped rather than ending the literal.
pub(crate) fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `name` as a double-quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' => out.push_str("\"\""),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Fills `$1`, `$2`, … in an SQL file with already-quoted values, in one pass, so that text
/// inside a value is never taken for a placeholder. Comment lines (`--`) are dropped first:
/// a value with a line break must not end a comment early. A placeholder without a value is
/// left as it is (the server then rejects the statement).
pub(crate) fn fill(sql: &str, values: &[&str]) -> String {
    let code: Vec<&str> = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect();
    let code = code.join("\n");
    let mut out = String::with_capacity(code.len() + values.iter().map(|v| v.len()).sum::<usize>());
    let mut rest = code.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let value = after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| values.get(i));
        match value {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[at..at + 1 + digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_double_their_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "'a\\b'");
        assert_eq!(literal("x\0y"), "'xy'");
        assert_eq!(ident("Order \"v2\""), "\"Order \"\"v2\"\"\"");
    }

    #[test]
    fn fill_replaces_each_placeholder_once() {
        let sql = "SELECT $1, $10, $2, $$, $11";
        let values: Vec<String> = (1..=10).map(|i| format!("v{i}")).collect();
        let mut values: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(fill(sql, &values), "SELECT v1, v10, v2, $$, $11");
        // A value that looks like a placeholder stays as it is.
        values[0] = "'$2'";
        assert_eq!(fill("$1 $2", &values), "'$2' v2");
        assert_eq!(fill("-- $1\nSELECT $2", &values), "SELECT v2");
    }
}
