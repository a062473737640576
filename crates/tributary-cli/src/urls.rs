//! The databases of the toolkit's own multi-database commands (benchmarks, crash-test
//! children): one base URL names where several databases live, each by name.

use tributary::DatabaseUrl;

/// The database called `name` under `base`: the file `DIR/<name>.db` for `sqlite://DIR`, the
/// schema `<P><name>` for `postgres://…?schema_prefix=P` (default `tributary_`).
///
/// # Errors
/// When `base` is not a database URL, or names a backend with one database only.
pub fn named_database(base: &str, name: &str) -> anyhow::Result<DatabaseUrl> {
    let (url, query) = base.split_once('?').unwrap_or((base, ""));
    let mut prefix = "tributary_";
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("schema_prefix", p)) => prefix = p,
            _ => rest.push(kv),
        }
    }
    let url = if rest.is_empty() {
        url.to_owned()
    } else {
        format!("{url}?{}", rest.join("&"))
    };
    match url.parse::<DatabaseUrl>()? {
        DatabaseUrl::Sqlite { path } => Ok(DatabaseUrl::Sqlite {
            path: path.join(format!("{name}.db")),
        }),
        DatabaseUrl::Postgres { url, .. } => Ok(DatabaseUrl::Postgres {
            url,
            schema: format!("{prefix}{name}"),
        }),
        other => {
            anyhow::bail!("{other} holds one database only; give sqlite://DIR or postgres://…")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_databases_live_under_their_base() -> anyhow::Result<()> {
        assert_eq!(
            named_database("postgres://u@h/db?schema_prefix=b_&sslmode=disable", "sink")?,
            DatabaseUrl::Postgres {
                url: "postgres://u@h/db?sslmode=disable".into(),
                schema: "b_sink".into()
            }
        );
        assert_eq!(
            named_database("sqlite://d", "source")?,
            DatabaseUrl::Sqlite {
                path: "d/source.db".into()
            }
        );
        assert!(named_database("memory://", "x").is_err());
        Ok(())
    }
}
