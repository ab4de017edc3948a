//! The database and its schema: created when missing, then brought to the
//! newest version by the embedded migrations (`migrations/postgres/`), one
//! transaction under an advisory lock so that replicas starting together
//! take turns.

use tokio_postgres::error::SqlState;

use super::super::StoreError;
use super::options::{Connect, Tls};

/// The migrations, by version, in order. A version is never edited once
/// released: a change is a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_records.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_commit_function.sql"),
    ),
];

/// The advisory lock the migrations run under (any constant shared by every
/// acmeproxy: "acmeprox" in ASCII).
const MIGRATION_LOCK: i64 = 0x6163_6d65_7072_6f78;

/// One connection (outside the pool), its connection task spawned.
pub(super) async fn connect_one(
    config: &tokio_postgres::Config,
    tls: &Tls,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match tls {
        Tls::Off => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
        Tls::VerifyFull(make) => {
            let (client, conn) = config.connect(make.clone()).await?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}

/// A connection to the database, which is created first when it does not
/// exist (through the server's `postgres` database).
pub(super) async fn open_database(c: &Connect) -> Result<tokio_postgres::Client, StoreError> {
    match connect_one(&c.config, &c.tls).await {
        Ok(client) => return Ok(client),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => {
            return Err(StoreError::backend(
                format!("connecting to PostgreSQL at {}", c.target),
                e,
            ));
        }
    }
    let database = c.config.get_dbname().unwrap_or("acmeproxy");
    let mut admin = c.config.clone();
    admin.dbname("postgres");
    let cannot_create = |e| {
        StoreError::backend(
            format!(
                "the database at {} does not exist, and it cannot be created \
                 (through the server's \"postgres\" database); create it, or give \
                 the user the CREATEDB privilege",
                c.target
            ),
            e,
        )
    };
    let client = connect_one(&admin, &c.tls).await.map_err(cannot_create)?;
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
        .await
    {
        Ok(()) => tracing::info!(target = %c.target, "created the PostgreSQL database"),
        // Another replica created it meanwhile.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
        Err(e) => return Err(cannot_create(e)),
    }
    drop(client);
    connect_one(&c.config, &c.tls)
        .await
        .map_err(|e| StoreError::backend(format!("connecting to PostgreSQL at {}", c.target), e))
}

/// Brings the schema to the newest version; returns the versions applied.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, StoreError> {
    let fail = |what: &'static str| move |e| StoreError::backend(what, e);
    let tx = client
        .transaction()
        .await
        .map_err(fail("migrating the PostgreSQL schema"))?;
    // No NOTICE ("already exists, skipping") in the server's log at every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(fail("migrating the PostgreSQL schema"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(fail("creating schema_migrations"))?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(fail("reading schema_migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(v) = done.iter().find(|v| **v > newest) {
        return Err(StoreError::backend(
            "checking the PostgreSQL schema",
            format!(
                "the database has schema version {v}, newer than this acmeproxy knows ({newest}): \
                 run a newer acmeproxy"
            ),
        ));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(fail("applying a PostgreSQL schema migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(fail("recording a PostgreSQL schema migration"))?;
        applied.push(*version);
    }
    tx.commit()
        .await
        .map_err(fail("committing the PostgreSQL schema migrations"))?;
    Ok(applied)
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("acmeproxy"), "\"acmeproxy\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn migrations_are_in_order() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(MIGRATIONS.first().map(|m| m.0), Some(1));
    }
}
