//! The two ledger backends behind one type: SQLite (embedded, the default) and PostgreSQL (for
//! replicas on several machines).
//!
//! Native drivers rather than `sqlx::Any`: the no-change path loads a million-row index and the
//! per-row cost of a type-erased driver shows. Query code is written once, with `$1..$N`
//! placeholders (sqlx-sqlite binds `$N` by position) and portable SQL, and [`on_pool!`] expands it
//! for each backend; the few statements that must differ pick their text by the `pg` flag.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::SqlitePool;

/// A connection pool on one of the two backends.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    /// An SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(PgPool),
}

/// How a pool's connections are made, kept so a leader can open a second, fenced pool on the
/// same database. Its `Debug` names only the backend: the options hold the password.
#[derive(Clone)]
pub(crate) enum ConnectOptions {
    /// An SQLite file.
    Sqlite(sqlx::sqlite::SqliteConnectOptions),
    /// A PostgreSQL database.
    Postgres(PgConnectOptions),
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite(_) => "ConnectOptions::Sqlite",
            Self::Postgres(_) => "ConnectOptions::Postgres([REDACTED])",
        })
    }
}

impl ConnectOptions {
    /// A pool whose every new connection first runs `setup` (the fence of a leader's pool).
    pub(crate) async fn pool(
        &self,
        setup: Option<std::sync::Arc<Vec<String>>>,
    ) -> Result<Pool, sqlx::Error> {
        match self {
            Self::Sqlite(options) => {
                let mut pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(4);
                if let Some(setup) = setup {
                    pool = pool.after_connect(move |conn, _| {
                        let setup = setup.clone();
                        Box::pin(async move {
                            for sql in setup.iter() {
                                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                                    .execute(&mut *conn)
                                    .await?;
                            }
                            Ok(())
                        })
                    });
                }
                // Switching a brand-new file to WAL answers "database is locked" at once, without
                // the busy timeout, when another process is creating the same file: retry.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    match pool.clone().connect_with(options.clone()).await {
                        Err(sqlx::Error::Database(e))
                            if e.message().contains("database is locked")
                                && std::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                        }
                        other => return Ok(Pool::Sqlite(other?)),
                    }
                }
            }
            Self::Postgres(options) => {
                let mut pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(std::time::Duration::from_secs(30));
                if let Some(setup) = setup {
                    pool = pool.after_connect(move |conn, _| {
                        let setup = setup.clone();
                        Box::pin(async move {
                            for sql in setup.iter() {
                                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                                    .execute(&mut *conn)
                                    .await?;
                            }
                            Ok(())
                        })
                    });
                }
                Ok(Pool::Postgres(pool.connect_with(options.clone()).await?))
            }
        }
    }
}

/// Runs `$body` with `$p` bound to the backend's native pool (and `$pg` to whether it is
/// PostgreSQL), so the same query code compiles against both drivers.
macro_rules! on_pool {
    ($pool:expr, |$p:ident, $pg:ident| $body:expr) => {
        match $pool {
            $crate::ledger::db::Pool::Sqlite($p) => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::ledger::db::Pool::Postgres($p) => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
    ($pool:expr, |$p:ident| $body:expr) => {
        $crate::ledger::db::on_pool!($pool, |$p, _pg| $body)
    };
}
pub(crate) use on_pool;

/// A PostgreSQL ledger URL (`postgres://user:password@host:port/db`), kept secret: its
/// `Display` and `Debug` show it without the password.
#[derive(Clone)]
pub struct PgUrl {
    url: SecretString,
    shown: String,
}

/// The URL could not be read as a PostgreSQL connection string (the text is not repeated: it
/// may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("expected postgres://user@host:port/database: {0}")]
pub struct BadPgUrl(String);

impl PgUrl {
    /// Parses and checks a URL; the password, if any, stays inside.
    pub fn parse(url: &str) -> Result<Self, BadPgUrl> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(BadPgUrl("the URL must start with postgres://".into()));
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            // sqlx's message names the part it could not parse, never the whole URL; still,
            // only keep its first line and drop anything that echoes the input.
            let reason = e.to_string();
            BadPgUrl(if reason.contains(url) {
                "unreadable URL".into()
            } else {
                reason
            })
        })?;
        let shown = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        Ok(Self {
            url: SecretString::from(url.to_string()),
            shown,
        })
    }

    /// Connect options, with `PGPASSWORD` as the password when the URL has none.
    pub(crate) fn options(&self) -> PgConnectOptions {
        let url = self.url.expose_secret();
        let mut options =
            PgConnectOptions::from_str(url).expect("the URL was checked when it was parsed");
        let has_password = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|auth| auth.rsplit_once('@'))
            .is_some_and(|(user, _)| user.contains(':'));
        if !has_password
            && let Ok(password) = std::env::var("PGPASSWORD")
            && !password.is_empty()
        {
            options = options.password(&password);
        }
        options
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

/// Whether `host` is this machine: a loopback name or address, or a Unix socket directory.
pub(crate) fn is_local_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.starts_with('/')
        || bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Logs whether the PostgreSQL ledger's connection is encrypted (the server's own view,
/// `pg_stat_ssl`), and warns when a connection that leaves this machine is not: the default
/// `sslmode=prefer` falls back to plaintext silently.
pub(crate) async fn report_pg_security(pool: &PgPool, url: &PgUrl) {
    let row: Result<Option<(bool, Option<String>)>, sqlx::Error> =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(pool)
            .await;
    let host = url.options().get_host().to_string();
    match row {
        Ok(Some((true, version))) => tracing::info!(
            event = "ledger_connected",
            ledger = %url,
            tls = true,
            tls_version = version.as_deref().unwrap_or("unknown"),
            "PostgreSQL ledger connected over TLS"
        ),
        Ok(_) if !is_local_host(&host) => tracing::warn!(
            event = "ledger_unencrypted",
            ledger = %url,
            tls = false,
            "the PostgreSQL ledger connection is NOT encrypted and leaves this machine: add ?sslmode=verify-full&sslrootcert=/path/to/ca.crt to ledger.url"
        ),
        Ok(_) => tracing::info!(
            event = "ledger_connected",
            ledger = %url,
            tls = false,
            "PostgreSQL ledger connected (unencrypted, on this machine)"
        ),
        Err(e) => tracing::debug!(error = %e, "could not read pg_stat_ssl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_sockets_count_as_this_machine() {
        for local in [
            "127.0.0.1",
            "127.8.0.1",
            "::1",
            "[::1]",
            "localhost",
            "/run/postgresql",
        ] {
            assert!(is_local_host(local), "{local}");
        }
        for remote in [
            "db.example.com",
            "10.0.0.5",
            "192.168.1.2",
            "2001:db8::1",
            "localhost.evil",
        ] {
            assert!(!is_local_host(remote), "{remote}");
        }
    }
}
