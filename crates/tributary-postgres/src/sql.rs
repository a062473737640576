//! The SQL of this crate, rendered once per database for its schema.
//!
//! Every statement lives in a `.sql` file next to the code that runs it and names its tables
//! as `__SCHEMA__.table`. Rendering replaces `__SCHEMA__` with the quoted schema name (checked
//! to be a plain identifier by the config), so statements work whatever the connection's
//! `search_path` is — including in a caller's own transaction.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlStr};

const PLACEHOLDER: &str = "__SCHEMA__";

/// `sql` with every `__SCHEMA__` replaced by the quoted `schema`.
pub(crate) fn render(sql: &str, schema: &str) -> String {
    sql.replace(PLACEHOLDER, &format!("\"{schema}\""))
}

/// A rendered statement: cheap to clone (sqlx caches the prepared statement per connection by
/// its text).
#[derive(Clone, Debug)]
pub(crate) struct Statement(Arc<str>);

impl Statement {
    fn new(sql: &str, schema: &str) -> Self {
        Self(render(sql, schema).into())
    }

    /// The statement for `sqlx::query*`. The only dynamic part is the schema name, which the
    /// config restricts to `[a-z_][a-z0-9_]*`.
    pub(crate) fn sql(&self) -> SqlStr {
        sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(self.0.clone()))
    }
}

macro_rules! statements {
    ($($name:ident => $file:literal,)*) => {
        /// Every statement, rendered for one schema.
        pub(crate) struct Statements {
            $(pub(crate) $name: Statement,)*
        }

        impl Statements {
            pub(crate) fn for_schema(schema: &str) -> Self {
                Self {
                    $($name: Statement::new(include_str!($file), schema),)*
                }
            }
        }
    };
}

statements! {
    get_document => "unit_of_work/get_document.sql",
    lock_documents => "unit_of_work/lock_documents.sql",
    write_documents => "unit_of_work/write_documents.sql",
    delete_documents => "unit_of_work/delete_documents.sql",
    put_documents => "unit_of_work/put_documents.sql",
    put_documents_and_publish => "unit_of_work/put_documents_and_publish.sql",
    clear_collection => "unit_of_work/clear_collection.sql",
    insert_outbox => "unit_of_work/insert_outbox.sql",
    insert_outbox_all => "unit_of_work/insert_outbox_all.sql",
    inbox_contains => "unit_of_work/inbox_contains.sql",
    inbox_insert => "unit_of_work/inbox_insert.sql",
    inbox_seen => "unit_of_work/inbox_seen.sql",
    inbox_insert_all => "unit_of_work/inbox_insert_all.sql",
    clear_inbox => "unit_of_work/clear_inbox.sql",
    blocking_dead_letter => "unit_of_work/blocking_dead_letter.sql",
    blocking_dead_letters => "unit_of_work/blocking_dead_letters.sql",
    insert_dead_letter => "unit_of_work/insert_dead_letter.sql",
    resolve_dead_letter => "unit_of_work/resolve_dead_letter.sql",
    dead_letter_failure => "unit_of_work/dead_letter_failure.sql",
    get_checkpoint => "unit_of_work/get_checkpoint.sql",
    lock_checkpoint => "unit_of_work/lock_checkpoint.sql",
    set_checkpoint => "unit_of_work/set_checkpoint.sql",
    append_check => "event_store/append_check.sql",
    find_events => "event_store/find_events.sql",
    insert_events => "event_store/insert_events.sql",
    insert_events_expecting => "event_store/insert_events_expecting.sql",
    stream_version => "event_store/stream_version.sql",
    read_stream => "event_store/read_stream.sql",
    read_all => "event_store/read_all.sql",
    events_held_back => "event_store/events_held_back.sql",
    load_snapshot => "event_store/load_snapshot.sql",
    save_snapshot => "event_store/save_snapshot.sql",
    events_lag => "event_store/events_lag.sql",
    read_outbox => "service/read_outbox.sql",
    outbox_held_back => "service/outbox_held_back.sql",
    delete_outbox => "service/delete_outbox.sql",
    outbox_lag => "service/outbox_lag.sql",
    get_cursor => "service/get_cursor.sql",
    set_cursor => "service/set_cursor.sql",
    read_document => "service/read_document.sql",
    list_documents => "service/list_documents.sql",
    get_dead_letter => "service/get_dead_letter.sql",
    list_dead_letters => "service/list_dead_letters.sql",
    dead_letter_summary => "service/dead_letter_summary.sql",
    prune_inbox => "service/prune_inbox.sql",
    horizon => "service/horizon.sql",
    horizon_holder => "service/horizon_holder.sql",
    lease => "service/lease.sql",
    unlease => "service/unlease.sql",
    lease_shared => "service/lease_shared.sql",
    unlease_shared => "service/unlease_shared.sql",
    lease_holder => "service/lease_holder.sql",
    relay_cursor_names => "service/relay_cursor_names.sql",
    handled_since => "service/handled_since.sql",
    notify => "service/notify.sql",
    inbox_applied => "service/inbox_applied.sql",
    inbox_follow_ups => "service/inbox_follow_ups.sql",
    inbox_mark_applied => "unit_of_work/inbox_mark_applied.sql",
    transaction_status => "service/transaction_status.sql",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_qualifies_every_table_with_the_schema() {
        let s = Statements::for_schema("orders");
        assert!(s.read_all.sql().as_str().contains("FROM \"orders\".events"));
        assert!(!s.insert_events.sql().as_str().contains(PLACEHOLDER));
    }
}
