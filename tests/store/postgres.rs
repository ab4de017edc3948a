//! PostgreSQL only: what the battery cannot say about a server store.
//! Records survive a new pool; migrations run once even when two stores
//! start together; the database is created, or a clear error says why it
//! cannot be; a password given outside the URL works and never shows in an
//! error; a stopped server gives `Backend` errors and the store works again
//! once it is back; the key-value form of the data source works; TLS with
//! `sslmode=verify-full` checks the server's certificate.

use std::time::{Duration, Instant};

use super::*;

/// Skips (or, under CI, fails) when PostgreSQL is missing.
macro_rules! need_postgres {
    () => {
        if kit::postgres::skip("a PostgreSQL store test") {
            return Ok(());
        }
    };
}

#[tokio::test]
async fn reopen_keeps_every_committed_record() -> TestResult {
    need_postgres!();
    let server = PgServer::shared().map_err(anyhow::Error::msg)?;
    let db = unique_database("reopen");
    let acct = account("durable");
    {
        let s: Arc<dyn Store> = Arc::new(PgStore::open(&pg_options(server, &db)).await?);
        write_for_reopen(&s, &acct, 20).await?;
    }
    let s: Arc<dyn Store> = Arc::new(PgStore::open(&pg_options(server, &db)).await?);
    check_after_reopen(&s, &acct, 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_once_when_stores_start_together() -> TestResult {
    need_postgres!();
    let server = PgServer::shared().map_err(anyhow::Error::msg)?;
    let db = unique_database("together");
    // Four stores start at once on a database that does not exist yet: one
    // creates it, one migrates it, all open.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let options = pg_options(server, &db);
            tokio::spawn(async move { PgStore::open(&options).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await??);
    }
    let versions = server
        .psql(
            &db,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
        )
        .map_err(anyhow::Error::msg)?;
    assert_eq!(versions, "1,2");
    // Opening again applies nothing.
    drop(stores);
    let s = PgStore::open(&pg_options(server, &db)).await?;
    s.commit(vec![put(Table::Meta, "k", b"v", Expect::Absent)])
        .await?;
    let versions = server
        .psql(&db, "SELECT count(*) FROM schema_migrations")
        .map_err(anyhow::Error::msg)?;
    assert_eq!(versions, "2");
    // The keys sort by their bytes whatever the database's locale.
    let key_type = server
        .psql(
            &db,
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = 'records' AND column_name = 'key'",
        )
        .map_err(anyhow::Error::msg)?;
    assert_eq!(key_type, "bytea");
    Ok(())
}

#[tokio::test]
async fn password_outside_the_url_works_and_never_shows() -> TestResult {
    need_postgres!();
    let server = PgServer::shared().map_err(anyhow::Error::msg)?;
    let db = unique_database("password");
    // The password apart (from passwordFile or ACMEPROXY_DB_PASSWORD).
    let mut options = pg_options(server, &db);
    options.data_source = server.url();
    options.password = Some(server.password().to_owned());
    let s = PgStore::open(&options).await?;
    s.check_writable().await?;
    // A wrong one, apart or in the URL: an error that names the server and
    // holds neither password.
    for (source, password) in [
        (server.url(), Some("wrong-pass-apart")),
        (
            format!(
                "postgresql://postgres:wrong-pass-url@127.0.0.1:{}/",
                server.port
            ),
            None,
        ),
    ] {
        let options = PgOptions {
            data_source: source,
            database: db.clone(),
            password: password.map(str::to_owned),
            max_connections: 2,
        };
        let shown = match PgStore::open(&options).await {
            Ok(_) => anyhow::bail!("a wrong password was accepted"),
            Err(e) => {
                let shown = format!("{e} {e:?}");
                format!("{shown} {:#}", anyhow::Error::from(e))
            }
        };
        assert!(
            shown.contains(&format!("127.0.0.1:{}", server.port)),
            "{shown}"
        );
        for secret in ["wrong-pass", server.password()] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        assert!(!format!("{options:?}").contains("wrong-pass"));
    }
    Ok(())
}

#[tokio::test]
async fn a_database_that_cannot_be_created_says_so() -> TestResult {
    need_postgres!();
    let server = PgServer::shared().map_err(anyhow::Error::msg)?;
    let role = unique_database("nocreate");
    server
        .psql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN PASSWORD 'role-secret' NOCREATEDB"),
        )
        .map_err(anyhow::Error::msg)?;
    let options = PgOptions {
        data_source: format!("postgresql://{role}@127.0.0.1:{}/", server.port),
        database: unique_database("never"),
        password: Some("role-secret".to_owned()),
        max_connections: 2,
    };
    let shown = match PgStore::open(&options).await {
        Ok(_) => anyhow::bail!("a role without CREATEDB created a database"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    assert!(shown.contains("does not exist"), "{shown}");
    assert!(shown.contains("CREATEDB"), "{shown}");
    assert!(!shown.contains("role-secret"), "{shown}");
    Ok(())
}

/// Retries `check_writable` until it succeeds or `limit` passes.
async fn writable_within(s: &PgStore, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        match s.check_writable().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > limit => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gives_backend_errors_and_the_store_recovers() -> TestResult {
    need_postgres!();
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await?
        .map_err(anyhow::Error::msg)?;
    let s = PgStore::open(&pg_options(&server, "outage")).await?;
    s.commit(vec![put(Table::Orders, "before", b"1", Expect::Absent)])
        .await?;
    s.check_writable().await?;

    let stop = Instant::now();
    server.stop().map_err(anyhow::Error::msg)?;
    let down = [
        s.get(Table::Orders, "before").await.map(|_| ()),
        s.commit(vec![put(Table::Orders, "during", b"1", Expect::Absent)])
            .await,
        s.check_writable().await,
        s.scan(Table::Orders, "", None, 10).await.map(|_| ()),
        s.snapshot().await.map(|_| ()),
    ];
    for result in down {
        match result {
            Err(StoreError::Backend { context, .. }) => {
                assert!(context.contains("PostgreSQL"), "{context}");
                assert!(!context.contains(server.password()), "{context}");
            }
            other => panic!("expected a backend error while PostgreSQL is down, got {other:?}"),
        }
    }
    assert!(s.failure().is_none());
    assert!(
        stop.elapsed() < Duration::from_secs(30),
        "errors took {:?}",
        stop.elapsed()
    );

    server.start_again().map_err(anyhow::Error::msg)?;
    let took = writable_within(&s, Duration::from_secs(20)).await?;
    println!("postgresql: writable again {took:?} after the restart");
    assert_eq!(s.get(Table::Orders, "before").await?, Some(b"1".to_vec()));
    assert_eq!(s.get(Table::Orders, "during").await?, None);
    s.commit(vec![put(Table::Orders, "after", b"1", Expect::Absent)])
        .await?;
    Ok(())
}

/// Prints commits/s with 1 and 64 concurrent committers on PostgreSQL (no
/// timing asserted; the shared server runs with its defaults, fsync on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_commit_rate() -> TestResult {
    need_postgres!();
    let server = PgServer::shared().map_err(anyhow::Error::msg)?;
    let mut options = pg_options(server, &unique_database("rate"));
    options.max_connections = 16;
    let s: Arc<dyn Store> = Arc::new(PgStore::open(&options).await?);
    for (committers, per_task) in [(1, 100), (64, 10)] {
        let (n, elapsed) = run_committers(s.clone(), committers, per_task).await?;
        println!(
            "postgresql: {committers:>2} committers, {n} commits in {elapsed:?}: {:.0} commits/s",
            n as f64 / elapsed.as_secs_f64()
        );
        s.commit(
            s.scan(Table::Jobs, "", None, usize::MAX)
                .await?
                .into_iter()
                .map(|(k, _)| Op::delete(Table::Jobs, k, Expect::Present))
                .collect(),
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_key_value_data_source_works() -> TestResult {
    need_postgres!();
    let server = PgServer::shared().map_err(anyhow::Error::msg)?;
    let options = PgOptions {
        data_source: format!(
            "host=127.0.0.1 port={} user=postgres password={} connect_timeout=5",
            server.port,
            server.password()
        ),
        database: unique_database("keyvalue"),
        password: None,
        max_connections: 2,
    };
    let s = PgStore::open(&options).await?;
    s.commit(vec![put(Table::Meta, "k", b"v", Expect::Absent)])
        .await?;
    assert_eq!(s.get(Table::Meta, "k").await?, Some(b"v".to_vec()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_server_certificate() -> TestResult {
    need_postgres!();
    let server = tokio::task::spawn_blocking(PgServer::start_tls)
        .await?
        .map_err(anyhow::Error::msg)?;
    let ca = server.tls_ca.clone().expect("a TLS server has a CA");
    let url = |query: &str| {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/?{query}",
            server.password(),
            server.port
        )
    };
    let options = |source: String| PgOptions {
        data_source: source,
        database: "tls".to_owned(),
        password: None,
        max_connections: 2,
    };
    // Against the server's CA: TLS, and the store works.
    let s = PgStore::open(&options(url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca.display()
    ))))
    .await?;
    s.commit(vec![put(Table::Meta, "k", b"v", Expect::Absent)])
        .await?;
    let tls = server
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'acmeproxy' AND ssl",
        )
        .map_err(anyhow::Error::msg)?;
    assert_ne!(tls, "0", "no acmeproxy connection uses TLS");
    // Against the system's roots, which do not hold the test CA: refused.
    let shown = match PgStore::open(&options(url("sslmode=verify-full"))).await {
        Ok(_) => anyhow::bail!("an untrusted server certificate was accepted"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    assert!(
        shown.contains(&format!("127.0.0.1:{}", server.port)),
        "{shown}"
    );
    assert!(!shown.contains(server.password()), "{shown}");
    // sslmode=require (TLS without checks) is refused before connecting.
    let shown = match PgStore::open(&options(url("sslmode=require"))).await {
        Ok(_) => anyhow::bail!("sslmode=require was accepted"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    assert!(shown.contains("verify-full"), "{shown}");
    Ok(())
}
