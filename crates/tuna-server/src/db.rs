//! The [`Store`] on SQL: [`SqliteStore`] (one machine: a file next to the data) and [`PgStore`]
//! (many machines: PostgreSQL holds the state and the queue). All of the server's SQL lives in
//! this file, written once for both engines (see [`sql_store!`]).
//!
//! SQLite: the server and its worker processes share one database file, so it runs in WAL mode
//! with a busy timeout: readers never block the writer and short write bursts wait instead of
//! failing.
//!
//! PostgreSQL: claims lock the row they take with `FOR UPDATE SKIP LOCKED`, so competing workers
//! on other machines never wait for each other nor take the same job. Migrations run at start-up
//! under sqlx's advisory lock: several nodes starting together apply each one exactly once.
//!
//! Every write that returns rows runs inside an explicit transaction whose commit is checked:
//! in autocommit mode SQLite commits when a statement is reset, and an `UPDATE … RETURNING` read
//! with `fetch_optional` would hand back its row even when that commit failed (a full disk).
//!
//! A commit that fails (a full disk) can leave sqlx and SQLite disagreeing about whether the
//! connection is inside a transaction: sqlx's `ROLLBACK` then fails, and later "transactions" on
//! that connection become savepoints inside one that never ends — reads from an old snapshot,
//! writes never committed. A file database's pool therefore closes any connection that comes
//! back still inside a transaction. (`faults::disk_full_fails_only_the_job_that_cannot_write` read
//! a failed job back as `running` in 2 of 10 runs without this, in none of 12 with it.)

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::SqlitePool;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{Connection, QueryBuilder};

use crate::ids;
use crate::lifecycle::JobTransition;
use crate::store::*;

/// Embedded SQLite migrations (`migrations/`), applied at startup.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Embedded PostgreSQL migrations (`migrations-postgres/`): the same schema in PostgreSQL's
/// types (`BIGINT`, `DOUBLE PRECISION`, `JSONB`, `BIGSERIAL`).
pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-postgres");

/// Where the state lives: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses an operator's `--database` value; the error names what was wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!(
                    "`{url}`: sqlite:// needs a file path (sqlite:///var/lib/tuna/tuna.db)"
                ));
            }
            return Ok(DatabaseUrl::Sqlite(path.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            PgConnectOptions::from_str(url).map_err(|e| format!("`{}`: {e}", redact(url)))?;
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        Err(format!(
            "`{}`: the database must be sqlite://PATH or postgres://USER@HOST:PORT/DB",
            redact(url)
        ))
    }

    /// The URL itself (with its password, if any).
    pub fn url(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            DatabaseUrl::Postgres(u) => u.clone(),
        }
    }

    /// The URL with its password hidden (for logs and errors).
    pub fn display(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            DatabaseUrl::Postgres(u) => redact(u),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) if auth.contains(':') => {
            let user = auth.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

/// The variable `tuna serve` passes `--database` to its workers in, and every command reads
/// `--database` from.
pub const DATABASE_ENV: &str = "TUNA_DATABASE";

/// Opens the store `url` names, applying its migrations.
pub async fn open_store(url: &DatabaseUrl) -> StoreResult<Arc<dyn Store>> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
        DatabaseUrl::Postgres(url) => Arc::new(PgStore::connect(url).await?),
    })
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `path` and applies the migrations. Four connections: SQLite
    /// copies every column value under a global allocator mutex, so more connections than cores
    /// mostly add lock contention (measured with `examples/load_jobs.rs`).
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_release(|conn, _| {
                Box::pin(async move {
                    // Runs the rollback a dropped transaction queued, then looks.
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            });
        Self::connect(pool, opts).await
    }

    /// A private in-memory database (tests).
    pub async fn open_in_memory() -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // One connection, never closed: every connection to `:memory:` is a separate database.
        Self::connect(SqlitePoolOptions::new().max_connections(1), opts).await
    }

    async fn connect(pool: SqlitePoolOptions, opts: SqliteConnectOptions) -> StoreResult<Self> {
        let pool = pool.connect_with(opts).await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pub pool: PgPool,
    signals: Arc<crate::signals::PgSignals>,
}

/// How long a session may sit inside a transaction without sending anything. Tuna's
/// transactions never wait on anything but the database, so a session idle inside one this long
/// belongs to a frozen process (a stopped worker, a machine paused past its lease): PostgreSQL
/// ends it, which frees the job rows it locked. Without this, a worker frozen between `BEGIN` and
/// `COMMIT` of a step's report held its job's row lock for as long as it stayed frozen, and every
/// reaper's `UPDATE` of that row waited behind it: the job could not be taken over.
pub const PG_IDLE_IN_TRANSACTION: &str = "10s";

/// The connection options of every PostgreSQL connection Tuna opens.
pub fn pg_connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.options([(
        "idle_in_transaction_session_timeout",
        PG_IDLE_IN_TRANSACTION,
    )]))
}

impl PgStore {
    /// Connects to `url` and applies the migrations (under sqlx's advisory lock, so nodes
    /// starting together apply each migration once). A pool of 8: PostgreSQL serves each
    /// connection with its own process, and claims hold theirs only for one statement.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts = pg_connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await?;
        PG_MIGRATOR.run(&pool).await?;
        Ok(PgStore {
            pool,
            signals: Arc::default(),
        })
    }

    fn subscribe_signals(&self) -> crate::signals::Subscription {
        self.signals.subscribe(&self.pool)
    }
}

impl SqliteStore {
    /// SQLite has no `NOTIFY`: its nodes and workers poll.
    fn subscribe_signals(&self) -> crate::signals::Subscription {
        crate::signals::Subscription::none()
    }
}

const JOB_COLUMNS: &str = "id, user_id, model, training_file, validation_file, suffix, seed, status, control, spec, model_id, \
     estimate, metadata, created_at, started_at, finished_at, fine_tuned_model, trained_tokens, error, step, total_steps, \
     epoch, latest_metrics, retries, attempt, queue_order, claimed_at, device, running_seconds, run_started_at, result_files, \
     lease_expires_at, worker, memory_bytes, compute, ran_on";

const FILE_COLUMNS: &str = "id, user_id, filename, purpose, bytes, created_at, status, status_details, check_report, blob_key";

const EVENT_COLUMNS: &str = "seq, id, job_id, created_at, level, message, type, data";

const CHECKPOINT_COLUMNS: &str = "id, job_id, user_id, step, created_at, fine_tuned_model_checkpoint, metrics, sample, path, kind, bytes, blob_files";

/// The next place at the back of the queue.
const BACK_OF_QUEUE: &str = "(SELECT COALESCE(MAX(queue_order), 0) + 1 FROM jobs)";

fn split_page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    (rows, has_more)
}

/// The [`Store`] implementation, written once for both engines: every statement uses numbered
/// placeholders (`$1`), which SQLite and PostgreSQL both read, and portable SQL; the only
/// difference, the row lock a claim takes, is an argument.
macro_rules! sql_store {
    ($module:ident, $store:ty, $db:ty, $claim_lock:expr, $begin_write:expr) => {
mod $module {
    use super::*;
    type Db = $db;
    /// How every transaction (all of them write) begins.
    const BEGIN_WRITE: &str = $begin_write;

    fn push_statuses(qb: &mut QueryBuilder<'_, Db>, statuses: &[JobStatus]) {
        qb.push("(");
        let mut sep = qb.separated(", ");
        for s in statuses {
            sep.push_bind(*s);
        }
        qb.push(")");
    }

    /// The `SET` clauses of a transition (status first when it changes).
    fn push_set(qb: &mut QueryBuilder<'_, Db>, t: &JobTransition) -> StoreResult<()> {
        let patch = &t.patch;
        let mut first = true;
        let mut set = |qb: &mut QueryBuilder<'_, Db>, col: &str| {
            qb.push(if first { " " } else { ", " });
            qb.push(col);
            qb.push(" = ");
            first = false;
        };
        if let Some(to) = t.to {
            set(qb, "status");
            qb.push_bind(to);
        }
        if let Some(v) = patch.started_at {
            set(qb, "started_at");
            qb.push("COALESCE(started_at, ").push_bind(v).push(")");
        }
        if let Some(v) = patch.finished_at {
            set(qb, "finished_at");
            qb.push_bind(v);
        }
        if let Some(v) = &patch.error {
            set(qb, "error");
            qb.push_bind(v.clone().map(Json));
        }
        if let Some(v) = &patch.fine_tuned_model {
            set(qb, "fine_tuned_model");
            qb.push_bind(v.clone());
        }
        if let Some(v) = patch.trained_tokens {
            set(qb, "trained_tokens");
            qb.push_bind(v);
        }
        if patch.add_retry {
            set(qb, "retries");
            qb.push("retries + 1");
        }
        if let Some(v) = patch.control {
            set(qb, "control");
            qb.push_bind(v);
        }
        if patch.requeue {
            set(qb, "queue_order");
            qb.push(BACK_OF_QUEUE);
        }
        if let Some(v) = &patch.device {
            set(qb, "device");
            qb.push_bind(v.clone());
        }
        if let Some(now) = patch.close_run_at {
            // Both read the row as it was before this statement.
            set(qb, "running_seconds");
            // Portable `max(now - run_started_at, 0)` (PostgreSQL has no two-argument MAX).
            qb.push("running_seconds + CASE WHEN run_started_at IS NULL OR ")
                .push_bind(now)
                .push(" < run_started_at THEN 0 ELSE ")
                .push_bind(now)
                .push(" - run_started_at END");
            set(qb, "run_started_at");
            qb.push("NULL");
            set(qb, "lease_expires_at");
            qb.push("NULL");
        }
        if let Some(v) = &patch.result_files {
            set(qb, "result_files");
            qb.push_bind(Json(v.clone()));
        }
        if first {
            // Nothing to set: a no-op assignment keeps the statement valid and RETURNING meaningful.
            qb.push(" status = status");
        }
        Ok(())
    }

    async fn insert_event(conn: &mut <Db as sqlx::Database>::Connection, e: &NewEvent) -> StoreResult<EventRow> {
        let sql = format!(
            "INSERT INTO job_events (id, job_id, user_id, created_at, level, message, type, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING {EVENT_COLUMNS}"
        );
        Ok(sqlx::query_as::<_, EventRow>(&sql)
            .bind(ids::new_id(ids::EVENT))
            .bind(&e.job_id)
            .bind(&e.user_id)
            .bind(ids::now())
            .bind(e.level)
            .bind(&e.message)
            .bind(e.kind)
            .bind(e.data.as_ref().map(Json))
            .fetch_one(&mut *conn)
            .await?)
    }

    /// Whether `job` is still under claim `attempt` (and, when `running`, still running).
    async fn claim_holds(
        conn: &mut <Db as sqlx::Database>::Connection,
        job_id: &str,
        attempt: i64,
        running: bool,
    ) -> StoreResult<bool> {
        let sql = if running {
            "SELECT attempt FROM jobs WHERE id = $1 AND attempt = $2 AND status = 'running'"
        } else {
            "SELECT attempt FROM jobs WHERE id = $1 AND attempt = $2"
        };
        Ok(sqlx::query_scalar::<_, i64>(sql)
            .bind(job_id)
            .bind(attempt)
            .fetch_optional(&mut *conn)
            .await?
            .is_some())
    }

    /// The `seq` of `after` within a scope, or `Ok(None)` when it is not there.
    async fn cursor_seq(
        pool: &sqlx::Pool<Db>,
        table: &str,
        scope_col: &str,
        scope: &str,
        after: &str,
    ) -> StoreResult<Option<i64>> {
        let sql = format!("SELECT seq FROM {table} WHERE id = $1 AND {scope_col} = $2");
        Ok(sqlx::query_scalar::<_, i64>(&sql)
            .bind(after)
            .bind(scope)
            .fetch_optional(pool)
            .await?)
    }


    #[async_trait]
    impl Store for $store {
        fn signals(&self) -> crate::signals::Subscription {
            self.subscribe_signals()
        }

        async fn create_user(&self, user: &User, key_hash: &str, key_prefix: &str) -> StoreResult<()> {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let inserted = sqlx::query(
                "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&user.id)
            .bind(&user.name)
            .bind(user.created_at)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("user {}", user.name)));
            }
            sqlx::query(
                "INSERT INTO api_keys (key_hash, user_id, key_prefix, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(key_hash)
            .bind(&user.id)
            .bind(key_prefix)
            .bind(user.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }

        async fn add_api_key(
            &self,
            user_id: &str,
            key_hash: &str,
            key_prefix: &str,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO api_keys (key_hash, user_id, key_prefix, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(key_hash)
            .bind(user_id)
            .bind(key_prefix)
            .bind(ids::now())
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn user_by_key_hash(&self, key_hash: &str) -> StoreResult<Option<User>> {
            Ok(sqlx::query_as::<_, User>(
                "SELECT users.id, users.name, users.created_at FROM api_keys JOIN users ON users.id = api_keys.user_id \
                 WHERE api_keys.key_hash = $1",
            )
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?)
        }

        async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>> {
            Ok(
                sqlx::query_as::<_, User>("SELECT id, name, created_at FROM users WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        }

        async fn list_users(&self) -> StoreResult<Vec<User>> {
            Ok(sqlx::query_as::<_, User>(
                "SELECT id, name, created_at FROM users ORDER BY created_at, name",
            )
            .fetch_all(&self.pool)
            .await?)
        }

        async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyInfo>> {
            Ok(sqlx::query_as::<_, ApiKeyInfo>(
                "SELECT user_id, key_prefix, created_at FROM api_keys ORDER BY created_at, key_prefix",
            )
            .fetch_all(&self.pool)
            .await?)
        }

        async fn revoke_api_keys(&self, user_id: &str, prefix: Option<&str>) -> StoreResult<u64> {
            let mut qb = QueryBuilder::<Db>::new("DELETE FROM api_keys WHERE user_id = ");
            qb.push_bind(user_id);
            if let Some(p) = prefix {
                qb.push(" AND key_prefix = ").push_bind(p);
            }
            Ok(qb.build().execute(&self.pool).await?.rows_affected())
        }

        async fn usage(&self, user_id: &str) -> StoreResult<Usage> {
            let (files, file_bytes, checkpoint_bytes, queued_jobs, running_jobs) =
                sqlx::query_as::<_, (i64, i64, i64, i64, i64)>(
                    "SELECT (SELECT COUNT(*) FROM files WHERE user_id = $1), \
                            (SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM files WHERE user_id = $1), \
                            (SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM checkpoints WHERE user_id = $1), \
                            (SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND status = 'queued'), \
                            (SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND status = 'running')",
                )
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?;
            Ok(Usage {
                files,
                file_bytes,
                checkpoint_bytes,
                queued_jobs,
                running_jobs,
            })
        }

        async fn upsert_model(&self, m: &ModelRow) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO models (name, path, source, created_at, blob_files) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET path = excluded.path, source = excluded.source, \
                 blob_files = excluded.blob_files",
            )
            .bind(&m.name)
            .bind(&m.path)
            .bind(&m.source)
            .bind(m.created_at)
            .bind(&m.blob_files)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn list_models(&self) -> StoreResult<Vec<ModelRow>> {
            Ok(sqlx::query_as::<_, ModelRow>(
                "SELECT name, path, source, created_at, blob_files FROM models ORDER BY created_at, name",
            )
            .fetch_all(&self.pool)
            .await?)
        }

        async fn get_model(&self, name: &str) -> StoreResult<Option<ModelRow>> {
            Ok(sqlx::query_as::<_, ModelRow>(
                "SELECT name, path, source, created_at, blob_files FROM models WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
        }

        async fn insert_file(&self, f: &FileRow) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO files (id, user_id, filename, purpose, bytes, created_at, status, status_details, check_report, blob_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&f.id)
            .bind(&f.user_id)
            .bind(&f.filename)
            .bind(&f.purpose)
            .bind(f.bytes)
            .bind(f.created_at)
            .bind(&f.status)
            .bind(&f.status_details)
            .bind(&f.check_report)
            .bind(&f.blob_key)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn get_file(&self, user_id: &str, id: &str) -> StoreResult<Option<FileRow>> {
            let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND user_id = $2");
            Ok(sqlx::query_as::<_, FileRow>(&sql)
                .bind(id)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn list_files(
            &self,
            user_id: &str,
            purpose: Option<&str>,
            ascending: bool,
            page: &Page,
        ) -> StoreResult<Option<(Vec<FileRow>, bool)>> {
            let cursor = match &page.after {
                Some(after) => {
                    match cursor_seq(&self.pool, "files", "user_id", user_id, after).await? {
                        Some(seq) => Some(seq),
                        None => return Ok(None),
                    }
                }
                None => None,
            };
            let mut qb = QueryBuilder::<Db>::new(format!(
                "SELECT {FILE_COLUMNS} FROM files WHERE user_id = "
            ));
            qb.push_bind(user_id);
            if let Some(p) = purpose {
                qb.push(" AND purpose = ").push_bind(p);
            }
            if let Some(seq) = cursor {
                qb.push(if ascending {
                    " AND seq > "
                } else {
                    " AND seq < "
                })
                .push_bind(seq);
            }
            qb.push(if ascending {
                " ORDER BY seq ASC LIMIT "
            } else {
                " ORDER BY seq DESC LIMIT "
            });
            qb.push_bind(page.limit + 1);
            let rows = qb.build_query_as::<FileRow>().fetch_all(&self.pool).await?;
            Ok(Some(split_page(rows, page.limit)))
        }

        async fn delete_file(&self, user_id: &str, id: &str) -> StoreResult<Option<FileRow>> {
            let sql =
                format!("DELETE FROM files WHERE id = $1 AND user_id = $2 RETURNING {FILE_COLUMNS}");
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let row = sqlx::query_as::<_, FileRow>(&sql)
                .bind(id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row)
        }

        async fn active_job_using_file(
            &self,
            user_id: &str,
            file_id: &str,
        ) -> StoreResult<Option<String>> {
            let mut qb = QueryBuilder::<Db>::new("SELECT id FROM jobs WHERE user_id = ");
            qb.push_bind(user_id);
            qb.push(" AND (training_file = ").push_bind(file_id);
            qb.push(" OR validation_file = ").push_bind(file_id);
            qb.push(") AND status IN ");
            push_statuses(&mut qb, &JobStatus::ACTIVE);
            qb.push(" LIMIT 1");
            Ok(qb
                .build_query_scalar::<String>()
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn create_job(&self, j: &NewJob, events: &[NewEvent]) -> StoreResult<JobRow> {
            let sql = format!(
                "INSERT INTO jobs (id, user_id, model, training_file, validation_file, suffix, seed, status, spec, model_id, \
                 estimate, metadata, created_at, memory_bytes, compute, queue_order) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11, $12, $13, $14, {BACK_OF_QUEUE}) \
                 RETURNING {JOB_COLUMNS}"
            );
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let row = sqlx::query_as::<_, JobRow>(&sql)
                .bind(&j.id)
                .bind(&j.user_id)
                .bind(&j.model)
                .bind(&j.training_file)
                .bind(&j.validation_file)
                .bind(&j.suffix)
                .bind(j.seed)
                .bind(Json(&j.spec))
                .bind(&j.model_id)
                .bind(j.estimate.as_ref().map(Json))
                .bind(j.metadata.as_ref().map(Json))
                .bind(j.created_at)
                .bind(j.memory_bytes)
                .bind(j.compute)
                .fetch_one(&mut *tx)
                .await?;
            for e in events {
                insert_event(&mut tx, e).await?;
            }
            tx.commit().await?;
            Ok(row)
        }

        async fn get_job(&self, user_id: &str, id: &str) -> StoreResult<Option<JobRow>> {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND user_id = $2");
            Ok(sqlx::query_as::<_, JobRow>(&sql)
                .bind(id)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn get_job_unscoped(&self, id: &str) -> StoreResult<Option<JobRow>> {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
            Ok(sqlx::query_as::<_, JobRow>(&sql)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn list_jobs(
            &self,
            user_id: &str,
            page: &Page,
        ) -> StoreResult<Option<(Vec<JobRow>, bool)>> {
            let before = match &page.after {
                Some(after) => match cursor_seq(&self.pool, "jobs", "user_id", user_id, after).await? {
                    Some(seq) => seq,
                    None => return Ok(None),
                },
                None => i64::MAX,
            };
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            );
            let rows = sqlx::query_as::<_, JobRow>(&sql)
                .bind(user_id)
                .bind(before)
                .bind(page.limit + 1)
                .fetch_all(&self.pool)
                .await?;
            Ok(Some(split_page(rows, page.limit)))
        }

        async fn apply(&self, t: &JobTransition) -> StoreResult<Option<JobRow>> {
            let mut qb = QueryBuilder::<Db>::new("UPDATE jobs SET");
            push_set(&mut qb, t)?;
            qb.push(" WHERE id = ").push_bind(&t.job_id);
            qb.push(" AND status IN ");
            push_statuses(&mut qb, &t.from);
            if let Some(attempt) = t.attempt {
                qb.push(" AND attempt = ").push_bind(attempt);
            }
            if let Some(now) = t.lease_expired_before {
                qb.push(" AND COALESCE(lease_expires_at, 0) < ").push_bind(now);
            }
            qb.push(format!(" RETURNING {JOB_COLUMNS}"));
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let Some(row) = qb
                .build_query_as::<JobRow>()
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            for e in &t.events {
                insert_event(&mut tx, e).await?;
            }
            tx.commit().await?;
            Ok(Some(row))
        }

        async fn claim_next_queued(
            &self,
            c: &ClaimRequest<'_>,
            started: &ClaimEvent,
        ) -> StoreResult<Option<JobRow>> {
            // Fair share: among users with queued jobs that fit (and below their running quota),
            // the one with the fewest running jobs, then the one whose jobs started least
            // recently, then the oldest waiting job; within the user, queue order. Each user's
            // numbers are index look-ups (`jobs_by_user_queue`, `jobs_by_user_claim`) instead of
            // a pass over every waiting job (`examples/claims.rs` measures both).
            let sql = format!(
                "WITH waiting AS ( \
                     SELECT u.id AS user_id, \
                         (SELECT MIN(q.queue_order) FROM jobs q WHERE q.user_id = u.id AND q.status = 'queued' \
                             AND COALESCE(q.memory_bytes, 0) <= $5 AND q.compute = $8) AS first, \
                         (SELECT COUNT(*) FROM jobs r WHERE r.user_id = u.id AND r.status = 'running') AS running, \
                         (SELECT COALESCE(MAX(c.claimed_at), 0) FROM jobs c WHERE c.user_id = u.id) AS last_claim \
                     FROM users u \
                 ), next_user AS ( \
                     SELECT user_id FROM waiting WHERE first IS NOT NULL AND running < $4 \
                     ORDER BY running, last_claim, first LIMIT 1 \
                 ) \
                 UPDATE jobs SET status = 'running', device = $1, started_at = COALESCE(started_at, $2), \
                     run_started_at = $3, claimed_at = $3, attempt = attempt + 1, control = NULL, \
                     lease_expires_at = $6, worker = $7 \
                 WHERE id = (SELECT q.id FROM jobs q WHERE q.status = 'queued' AND COALESCE(q.memory_bytes, 0) <= $5 \
                             AND q.compute = $8 AND q.user_id = (SELECT user_id FROM next_user) ORDER BY q.queue_order LIMIT 1{lock}) \
                   AND status = 'queued' \
                 RETURNING {JOB_COLUMNS}",
                lock = $claim_lock
            );
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let Some(row) = sqlx::query_as::<_, JobRow>(&sql)
                .bind(c.device)
                .bind(c.now as i64)
                .bind(c.now)
                .bind(c.max_running_per_user.unwrap_or(i64::MAX))
                .bind(c.memory_bytes.unwrap_or(i64::MAX))
                .bind(c.lease_until)
                .bind(c.worker)
                .bind(c.compute)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            insert_event(&mut tx, &started(&row)).await?;
            tx.commit().await?;
            Ok(Some(row))
        }

        async fn heartbeat(&self, job_id: &str, attempt: i64, lease_until: f64) -> StoreResult<Lease> {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let held = sqlx::query_as::<_, (Option<JobControl>,)>(
                "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND attempt = $3 AND status = 'running' \
                 RETURNING control",
            )
            .bind(lease_until)
            .bind(job_id)
            .bind(attempt)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(match held {
                Some((control,)) => Lease::Held(control),
                None => Lease::Lost,
            })
        }

        async fn expired_leases(&self, now: f64) -> StoreResult<Vec<JobRow>> {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running' AND COALESCE(lease_expires_at, 0) < $1 \
                 ORDER BY queue_order"
            );
            Ok(sqlx::query_as::<_, JobRow>(&sql)
                .bind(now)
                .fetch_all(&self.pool)
                .await?)
        }

        async fn upsert_worker(&self, w: &WorkerRow) -> StoreResult<()> {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            sqlx::query(
                "INSERT INTO workers (name, devices, memory_bytes, started_at, last_heartbeat, device_info) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (name) DO UPDATE SET devices = excluded.devices, memory_bytes = excluded.memory_bytes, \
                 device_info = excluded.device_info, \
                 started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat",
            )
            .bind(&w.name)
            .bind(&w.devices)
            .bind(w.memory_bytes)
            .bind(w.started_at)
            .bind(w.last_heartbeat)
            .bind(w.device_info.as_ref().map(Json))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }

        async fn list_workers(&self) -> StoreResult<Vec<WorkerInfo>> {
            let workers = sqlx::query_as::<_, WorkerRow>(
                "SELECT name, devices, memory_bytes, started_at, last_heartbeat, device_info FROM workers ORDER BY name",
            )
            .fetch_all(&self.pool)
            .await?;
            let running = sqlx::query_as::<_, (String, String, String)>(
                "SELECT worker, id, user_id FROM jobs WHERE status = 'running' AND worker IS NOT NULL ORDER BY queue_order",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(workers
                .into_iter()
                .map(|worker| {
                    let jobs = running
                        .iter()
                        .filter(|(w, _, _)| *w == worker.name)
                        .map(|(_, id, user)| (id.clone(), user.clone()))
                        .collect();
                    WorkerInfo { worker, jobs }
                })
                .collect())
        }

        async fn report(&self, r: &StepReport) -> StoreResult<bool> {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let holds = match &r.progress {
                Some(p) => {
                    let latest = r
                        .metrics
                        .iter()
                        .rev()
                        .find(|m| m.kind == MetricsKind::Train)
                        .map(|m| Json(&m.data));
                    sqlx::query(
                        "UPDATE jobs SET step = $1, total_steps = $2, epoch = $3, latest_metrics = COALESCE($4, latest_metrics) \
                         WHERE id = $5 AND attempt = $6 AND status = 'running'",
                    )
                    .bind(p.step)
                    .bind(p.total_steps)
                    .bind(p.epoch)
                    .bind(latest)
                    .bind(&r.job_id)
                    .bind(r.attempt)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1
                }
                None => claim_holds(&mut tx, &r.job_id, r.attempt, true).await?,
            };
            if !holds {
                return Ok(false);
            }
            if let Some(ran_on) = &r.ran_on {
                sqlx::query("UPDATE jobs SET ran_on = $1 WHERE id = $2 AND attempt = $3")
                    .bind(Json(ran_on))
                    .bind(&r.job_id)
                    .bind(r.attempt)
                    .execute(&mut *tx)
                    .await?;
            }
            for m in &r.metrics {
                sqlx::query(
                    "INSERT INTO job_metrics (job_id, kind, step, data) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (job_id, step, kind) DO UPDATE SET data = excluded.data",
                )
                .bind(&r.job_id)
                .bind(m.kind)
                .bind(m.step)
                .bind(Json(&m.data))
                .execute(&mut *tx)
                .await?;
            }
            for e in &r.events {
                insert_event(&mut tx, e).await?;
            }
            tx.commit().await?;
            Ok(true)
        }

        async fn queue_snapshot(&self) -> StoreResult<Vec<QueueEntry>> {
            Ok(sqlx::query_as::<_, QueueEntry>(
                "SELECT id, user_id, status, queue_order, estimate, step, total_steps, running_seconds, run_started_at, claimed_at, compute \
                 FROM jobs WHERE status IN ('queued', 'running') ORDER BY queue_order",
            )
            .fetch_all(&self.pool)
            .await?)
        }

        async fn jobs_with_status(&self, statuses: &[JobStatus]) -> StoreResult<Vec<JobRow>> {
            let mut qb =
                QueryBuilder::<Db>::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status IN "));
            push_statuses(&mut qb, statuses);
            qb.push(" ORDER BY queue_order");
            Ok(qb.build_query_as::<JobRow>().fetch_all(&self.pool).await?)
        }

        async fn add_event(&self, e: &NewEvent) -> StoreResult<EventRow> {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let row = insert_event(&mut tx, e).await?;
            tx.commit().await?;
            Ok(row)
        }

        async fn list_events(
            &self,
            job_id: &str,
            page: &Page,
        ) -> StoreResult<Option<(Vec<EventRow>, bool)>> {
            let before = match &page.after {
                Some(after) => {
                    match cursor_seq(&self.pool, "job_events", "job_id", job_id, after).await? {
                        Some(seq) => seq,
                        None => return Ok(None),
                    }
                }
                None => i64::MAX,
            };
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            );
            let rows = sqlx::query_as::<_, EventRow>(&sql)
                .bind(job_id)
                .bind(before)
                .bind(page.limit + 1)
                .fetch_all(&self.pool)
                .await?;
            Ok(Some(split_page(rows, page.limit)))
        }

        async fn events_since(
            &self,
            job_id: &str,
            after_seq: i64,
            limit: i64,
        ) -> StoreResult<Vec<EventRow>> {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
            );
            Ok(sqlx::query_as::<_, EventRow>(&sql)
                .bind(job_id)
                .bind(after_seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
        }

        async fn insert_checkpoint(
            &self,
            c: &CheckpointRow,
            attempt: i64,
            event: &NewEvent,
        ) -> StoreResult<bool> {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            if !claim_holds(&mut tx, &c.job_id, attempt, false).await? {
                return Ok(false);
            }
            // A resumed run may save the same step again: the newer files replace the row.
            sqlx::query(
                "INSERT INTO checkpoints (id, job_id, user_id, step, created_at, fine_tuned_model_checkpoint, metrics, sample, path, kind, bytes, blob_files) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (job_id, step) DO UPDATE SET created_at = excluded.created_at, metrics = excluded.metrics, \
                 sample = excluded.sample, path = excluded.path, kind = excluded.kind, bytes = excluded.bytes, \
                 blob_files = excluded.blob_files",
            )
            .bind(&c.id)
            .bind(&c.job_id)
            .bind(&c.user_id)
            .bind(c.step)
            .bind(c.created_at)
            .bind(&c.fine_tuned_model_checkpoint)
            .bind(&c.metrics)
            .bind(&c.sample)
            .bind(&c.path)
            .bind(&c.kind)
            .bind(c.bytes)
            .bind(&c.blob_files)
            .execute(&mut *tx)
            .await?;
            insert_event(&mut tx, event).await?;
            tx.commit().await?;
            Ok(true)
        }

        async fn list_checkpoints(
            &self,
            job_id: &str,
            page: &Page,
        ) -> StoreResult<Option<(Vec<CheckpointRow>, bool)>> {
            let below = match &page.after {
                Some(after) => {
                    let step = sqlx::query_scalar::<_, i64>(
                        "SELECT step FROM checkpoints WHERE id = $1 AND job_id = $2",
                    )
                    .bind(after)
                    .bind(job_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    let Some(step) = step else { return Ok(None) };
                    step
                }
                None => i64::MAX,
            };
            let sql = format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = $1 AND step < $2 ORDER BY step DESC LIMIT $3"
            );
            let rows = sqlx::query_as::<_, CheckpointRow>(&sql)
                .bind(job_id)
                .bind(below)
                .bind(page.limit + 1)
                .fetch_all(&self.pool)
                .await?;
            Ok(Some(split_page(rows, page.limit)))
        }

        async fn job_checkpoints(&self, job_id: &str) -> StoreResult<Vec<CheckpointRow>> {
            let sql = format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = $1 ORDER BY step DESC"
            );
            Ok(sqlx::query_as::<_, CheckpointRow>(&sql)
                .bind(job_id)
                .fetch_all(&self.pool)
                .await?)
        }

        async fn checkpoint_by_model_id(
            &self,
            user_id: &str,
            model_id: &str,
        ) -> StoreResult<Option<CheckpointRow>> {
            let sql = format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE fine_tuned_model_checkpoint = $1 AND user_id = $2"
            );
            Ok(sqlx::query_as::<_, CheckpointRow>(&sql)
                .bind(model_id)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn get_checkpoint(
            &self,
            user_id: &str,
            job_id: &str,
            id_or_step: &str,
        ) -> StoreResult<Option<CheckpointRow>> {
            let sql = format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = $1 AND user_id = $2 \
                 AND (id = $3 OR fine_tuned_model_checkpoint = $4 OR CAST(step AS TEXT) = $5)"
            );
            Ok(sqlx::query_as::<_, CheckpointRow>(&sql)
                .bind(job_id)
                .bind(user_id)
                .bind(id_or_step)
                .bind(id_or_step)
                .bind(id_or_step)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn user_checkpoints(&self, user_id: &str) -> StoreResult<Vec<CheckpointRow>> {
            let sql =
                format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE user_id = $1 ORDER BY seq");
            Ok(sqlx::query_as::<_, CheckpointRow>(&sql)
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?)
        }

        async fn delete_checkpoints(
            &self,
            job_id: &str,
            ids: &[String],
            event: Option<&NewEvent>,
        ) -> StoreResult<Vec<CheckpointRow>> {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut qb = QueryBuilder::<Db>::new("DELETE FROM checkpoints WHERE job_id = ");
            qb.push_bind(job_id).push(" AND id IN (");
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id);
            }
            qb.push(format!(") RETURNING {CHECKPOINT_COLUMNS}"));
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let rows = qb
                .build_query_as::<CheckpointRow>()
                .fetch_all(&mut *tx)
                .await?;
            if let Some(e) = event {
                insert_event(&mut tx, e).await?;
            }
            tx.commit().await?;
            Ok(rows)
        }

        async fn fine_tuned_jobs(&self, user_id: &str) -> StoreResult<Vec<JobRow>> {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND status = 'succeeded' AND fine_tuned_model IS NOT NULL ORDER BY seq"
            );
            Ok(sqlx::query_as::<_, JobRow>(&sql)
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?)
        }

        async fn job_by_fine_tuned_model(
            &self,
            user_id: &str,
            model_id: &str,
        ) -> StoreResult<Option<JobRow>> {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND fine_tuned_model = $2 AND status = 'succeeded'"
            );
            Ok(sqlx::query_as::<_, JobRow>(&sql)
                .bind(user_id)
                .bind(model_id)
                .fetch_optional(&self.pool)
                .await?)
        }

        async fn list_metrics(
            &self,
            job_id: &str,
            after_step: i64,
            limit: i64,
        ) -> StoreResult<(Vec<MetricsRow>, bool)> {
            // A page holds whole steps (a step's train and eval rows stay together).
            let steps = sqlx::query_scalar::<_, i64>(
                "SELECT DISTINCT step FROM job_metrics WHERE job_id = $1 AND step > $2 ORDER BY step LIMIT $3",
            )
            .bind(job_id)
            .bind(after_step)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
            let (steps, has_more) = split_page(steps, limit);
            let Some(last) = steps.last() else {
                return Ok((Vec::new(), false));
            };
            let rows = sqlx::query_as::<_, MetricsRow>(
                "SELECT kind, step, data FROM job_metrics WHERE job_id = $1 AND step > $2 AND step <= $3 \
                 ORDER BY step, kind DESC",
            )
            .bind(job_id)
            .bind(after_step)
            .bind(last)
            .fetch_all(&self.pool)
            .await?;
            Ok((rows, has_more))
        }

        async fn get_throughput(
            &self,
            shape: &str,
            device: &str,
            method: &str,
        ) -> StoreResult<Option<ThroughputRow>> {
            Ok(sqlx::query_as::<_, ThroughputRow>(
                "SELECT shape, device, method, tokens_per_second, samples, source, updated_at FROM throughput \
                 WHERE shape = $1 AND device = $2 AND method = $3",
            )
            .bind(shape)
            .bind(device)
            .bind(method)
            .fetch_optional(&self.pool)
            .await?)
        }

        async fn put_throughput(&self, r: &ThroughputRow) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO throughput (shape, device, method, tokens_per_second, samples, source, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (shape, device, method) DO UPDATE SET tokens_per_second = excluded.tokens_per_second, \
                 samples = excluded.samples, source = excluded.source, updated_at = excluded.updated_at",
            )
            .bind(&r.shape)
            .bind(&r.device)
            .bind(&r.method)
            .bind(r.tokens_per_second)
            .bind(r.samples)
            .bind(&r.source)
            .bind(r.updated_at)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        async fn list_throughput(&self) -> StoreResult<Vec<ThroughputRow>> {
            Ok(sqlx::query_as::<_, ThroughputRow>(
                "SELECT shape, device, method, tokens_per_second, samples, source, updated_at FROM throughput ORDER BY shape, method",
            )
            .fetch_all(&self.pool)
            .await?)
        }
    }
}
    };
}

// SQLite: `BEGIN IMMEDIATE` takes the write lock first (waiting under the busy timeout). A
// deferred transaction that reads before it writes (a claim check, then an insert) fails at once
// with `SQLITE_BUSY_SNAPSHOT` when another process committed in between, which heartbeats of
// workers in other processes make common.
sql_store!(
    sqlite_store,
    SqliteStore,
    sqlx::Sqlite,
    "",
    "BEGIN IMMEDIATE"
);
sql_store!(
    postgres_store,
    PgStore,
    sqlx::Postgres,
    " FOR UPDATE SKIP LOCKED",
    "BEGIN"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle;
    use crate::spec::{
        Compute, Hyperparameters, JobSpec, MethodSpec, SupervisedSpec, TunaSettings, Tuning,
    };

    async fn add_users(s: &dyn Store) {
        for (id, name) in [("u1", "ann"), ("u2", "ben")] {
            let user = User {
                id: id.into(),
                name: name.into(),
                created_at: 1,
            };
            s.create_user(&user, &format!("hash-{id}"), "sk-tuna-xxxx")
                .await
                .unwrap();
        }
    }

    async fn store_with_users() -> SqliteStore {
        let s = SqliteStore::open_in_memory().await.unwrap();
        add_users(&s).await;
        s
    }

    /// The same store on both engines: the tests below run on each.
    #[derive(Clone)]
    enum Engine {
        Sqlite(SqliteStore),
        Postgres(PgStore),
    }

    impl std::ops::Deref for Engine {
        type Target = dyn Store;
        fn deref(&self) -> &(dyn Store + 'static) {
            match self {
                Engine::Sqlite(s) => s,
                Engine::Postgres(p) => p,
            }
        }
    }

    impl Engine {
        async fn execute(&self, sql: &str) {
            match self {
                Engine::Sqlite(s) => sqlx::query(sql).execute(&s.pool).await.map(drop),
                Engine::Postgres(p) => sqlx::query(sql).execute(&p.pool).await.map(drop),
            }
            .unwrap()
        }
    }

    /// SQLite in memory and a fresh PostgreSQL database, each with two users.
    async fn engines() -> Vec<Engine> {
        let pg = PgStore::connect(&crate::test_services::fresh_postgres_database().await)
            .await
            .unwrap();
        let all = vec![
            Engine::Sqlite(store_with_users().await),
            Engine::Postgres(pg),
        ];
        add_users(&*all[1]).await;
        all
    }

    pub fn spec() -> JobSpec {
        JobSpec {
            method: MethodSpec::Supervised {
                supervised: SupervisedSpec {
                    hyperparameters: Hyperparameters {
                        n_epochs: 1,
                        batch_size: 1,
                        learning_rate_multiplier: 1.0,
                    },
                },
            },
            tuna: TunaSettings {
                name: None,
                method: Tuning::Lora,
                lora: None,
                max_seq_len: 64,
                checkpoint_interval: None,
                eval_interval: None,
                max_steps: Some(2),
                learning_rate: 1e-4,
                warmup_ratio: 0.0,
                validation_fraction: None,
                sample_prompts: 0,
                sample_max_tokens: 1,
                keep_checkpoints: None,
                precision: Default::default(),
                compute: Default::default(),
            },
        }
    }

    fn job(id: &str, user: &str) -> NewJob {
        NewJob {
            id: id.into(),
            user_id: user.into(),
            model: "demo".into(),
            training_file: "file-1".into(),
            validation_file: None,
            suffix: None,
            seed: 1,
            spec: spec(),
            model_id: format!("ft:demo:x::{id}"),
            estimate: None,
            metadata: None,
            created_at: 1,
            memory_bytes: None,
            compute: Compute::Cpu,
        }
    }

    fn request<'a>(device: &'a str, lease_seconds: f64) -> ClaimRequest<'a> {
        let now = ids::now_f64();
        ClaimRequest {
            device,
            compute: Compute::of_slot(device).unwrap_or_default(),
            worker: "test-worker",
            memory_bytes: None,
            now,
            lease_until: now + lease_seconds,
            max_running_per_user: None,
        }
    }

    /// A claim with an hour's lease.
    async fn claim(s: &dyn Store, device: &str) -> Option<JobRow> {
        lifecycle::claim(s, &request(device, 3600.0)).await.unwrap()
    }

    #[tokio::test]
    async fn the_migration_keeps_jobs_written_by_the_old_schema() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::raw_sql(include_str!(
            "../migrations/20261125000000_create-schema.sql"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let old_tuna = r#"{"name":null,"method":"lora","lora":{"rank":4,"alpha":8.0,"dropout":0.0,"target_modules":["q_proj"]},"max_seq_len":64,"checkpoint_interval":2,"eval_interval":null,"max_steps":4,"learning_rate":0.001,"warmup_ratio":0.0,"validation_fraction":null,"sample_prompts":1,"sample_max_tokens":8,"model_id":"ft:demo:ann::x"}"#;
        sqlx::query("INSERT INTO users (id, name, created_at) VALUES ('u1', 'ann', 1)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO jobs (id, user_id, model, training_file, seed, status, hyperparameters, tuna, created_at, \
             step, control, queue_order, run_started_at) \
             VALUES ('j', 'u1', 'demo', 'f', 7, 'running', '{\"n_epochs\":2,\"batch_size\":1,\"learning_rate_multiplier\":10.0}', ?, 1, 2, 'pause', 5, 100.0)",
        )
        .bind(old_tuna)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO job_metrics (job_id, step, data) VALUES \
             ('j', 1, '{\"step\":1,\"train_loss\":2.5,\"learning_rate\":0.001,\"tokens\":10}'), \
             ('j', 2, '{\"step\":2,\"train_loss\":2.0,\"valid_loss\":2.2,\"tokens\":12}')",
        )
        .execute(&pool)
        .await
        .unwrap();
        for later in [
            include_str!("../migrations/20261201000000_typed-job-lifecycle.sql"),
            include_str!("../migrations/20261210000000_leases-and-workers.sql"),
            include_str!("../migrations/20261220000000_checkpoints-in-blob-store.sql"),
            include_str!("../migrations/20261222000000_compute-choice.sql"),
            include_str!("../migrations/20261223000000_models-in-blob-store.sql"),
        ] {
            sqlx::raw_sql(later).execute(&pool).await.unwrap();
        }
        let s = SqliteStore { pool };
        let j = s.get_job_unscoped("j").await.unwrap().unwrap();
        assert_eq!(
            (j.status, j.control, j.model_id.as_str(), j.queue_order),
            (
                JobStatus::Running,
                Some(JobControl::Pause),
                "ft:demo:ann::x",
                5
            )
        );
        assert_eq!(j.spec.hyperparameters().n_epochs, 2);
        assert_eq!(j.spec.hyperparameters().learning_rate_multiplier, 10.0);
        assert_eq!(
            j.spec.tuna.lora.as_ref().unwrap().target_modules,
            ["q_proj"]
        );
        assert_eq!(j.spec.tuna.keep_checkpoints, None);
        assert_eq!(j.claimed_at, Some(100.0));
        assert_eq!(j.latest_metrics.unwrap()["loss"], 2.0);
        let (rows, _) = s.list_metrics("j", 0, 10).await.unwrap();
        let shape: Vec<(i64, MetricsKind, f64)> = rows
            .iter()
            .map(|r| (r.step, r.kind, r.data["loss"].as_f64().unwrap()))
            .collect();
        assert_eq!(
            shape,
            [
                (1, MetricsKind::Train, 2.5),
                (2, MetricsKind::Train, 2.0),
                (2, MetricsKind::Eval, 2.2)
            ]
        );
        assert_eq!(rows[0].data["lr"], 0.001);
        // The new constraints hold: a status or pause outside the enums is refused.
        assert!(
            sqlx::query("UPDATE jobs SET status = 'exploded' WHERE id = 'j'")
                .execute(&s.pool)
                .await
                .is_err()
        );
        assert!(
            sqlx::query("UPDATE jobs SET status = 'queued' WHERE id = 'j'")
                .execute(&s.pool)
                .await
                .is_err(),
            "a pause request only exists on a running job"
        );
    }

    #[tokio::test]
    async fn keys_find_their_user_and_can_be_revoked() {
        for s in engines().await {
            assert_eq!(
                s.user_by_key_hash("hash-u2").await.unwrap().unwrap().name,
                "ben"
            );
            let dup = User {
                id: "u3".into(),
                name: "ann".into(),
                created_at: 1,
            };
            assert!(matches!(
                s.create_user(&dup, "h3", "p").await,
                Err(StoreError::Conflict(_))
            ));
            s.add_api_key("u1", "hash-u1-b", "sk-tuna-bbbb")
                .await
                .unwrap();
            assert_eq!(s.list_api_keys().await.unwrap().len(), 3);
            assert_eq!(
                s.revoke_api_keys("u1", Some("sk-tuna-bbbb")).await.unwrap(),
                1
            );
            assert!(s.user_by_key_hash("hash-u1-b").await.unwrap().is_none());
            assert!(s.user_by_key_hash("hash-u1").await.unwrap().is_some());
            assert_eq!(s.revoke_api_keys("u1", None).await.unwrap(), 1);
            assert!(s.user_by_key_hash("hash-u1").await.unwrap().is_none());
            assert_eq!(s.list_users().await.unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn job_pages_are_per_user_newest_first() {
        for s in engines().await {
            for i in 0..5 {
                lifecycle::create(&*s, &job(&format!("j{i}"), "u1"))
                    .await
                    .unwrap();
            }
            lifecycle::create(&*s, &job("other", "u2")).await.unwrap();
            let page = |after: Option<&str>, limit| Page {
                after: after.map(str::to_string),
                limit,
            };
            let (rows, more) = s.list_jobs("u1", &page(None, 2)).await.unwrap().unwrap();
            assert_eq!(
                rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                ["j4", "j3"]
            );
            assert!(more);
            let (rows, more) = s
                .list_jobs("u1", &page(Some("j3"), 10))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                ["j2", "j1", "j0"]
            );
            assert!(!more);
            assert!(
                s.list_jobs("u1", &page(Some("other"), 10))
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(s.get_job("u2", "j1").await.unwrap().is_none());
            // Creation wrote the job queued with its three events, in one transaction.
            let j = s.get_job("u1", "j1").await.unwrap().unwrap();
            assert_eq!(j.status, JobStatus::Queued);
            assert_eq!(j.spec, spec());
            assert_eq!(s.events_since("j1", 0, 10).await.unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn claims_are_fair_between_users_and_fenced_by_attempt() {
        for s in engines().await {
            for i in 0..5 {
                lifecycle::create(&*s, &job(&format!("a{i}"), "u1"))
                    .await
                    .unwrap();
            }
            lifecycle::create(&*s, &job("b0", "u2")).await.unwrap();
            lifecycle::create(&*s, &job("b1", "u2")).await.unwrap();
            // Ann's first job starts; then Ben has no running job, so his comes before Ann's rest.
            let first = claim(&*s, "cpu:0").await.unwrap();
            assert_eq!((first.id.as_str(), first.attempt), ("a0", 1));
            assert_eq!(first.device.as_deref(), Some("cpu:0"));
            assert_eq!(claim(&*s, "cpu:1").await.unwrap().id, "b0");
            // Both run one: the user whose jobs started least recently (Ann) goes next.
            assert_eq!(claim(&*s, "cpu:2").await.unwrap().id, "a1");
            assert_eq!(claim(&*s, "cpu:3").await.unwrap().id, "b1");
            // A running-jobs quota of 2 holds Ann's next job back.
            let quota = ClaimRequest {
                max_running_per_user: Some(2),
                ..request("cpu:4", 60.0)
            };
            assert!(lifecycle::claim(&*s, &quota).await.unwrap().is_none());
            assert_eq!(claim(&*s, "cpu:4").await.unwrap().id, "a2");

            // A crash puts a0 back in its place; its old worker's claim no longer holds.
            lifecycle::worker_crashed(&*s, &first, "signal 9", "", 2)
                .await
                .unwrap()
                .unwrap();
            let report = StepReport {
                job_id: "a0".into(),
                attempt: 1,
                progress: Some(JobProgress {
                    step: 1,
                    total_steps: 2,
                    epoch: 0.5,
                }),
                metrics: vec![],
                events: vec![],
                ran_on: None,
            };
            assert!(!s.report(&report).await.unwrap(), "not running any more");
            let again = claim(&*s, "cpu:0").await.unwrap();
            assert_eq!(
                (again.id.as_str(), again.attempt, again.retries),
                ("a0", 2, 1)
            );
            assert!(
                !s.report(&report).await.unwrap(),
                "an earlier claim's report is dropped"
            );
            assert!(
                lifecycle::fail(
                    &*s,
                    &first,
                    Some(1),
                    crate::openai::types::JobError {
                        code: "x".into(),
                        message: "stale".into(),
                        param: None
                    }
                )
                .await
                .unwrap()
                .is_none(),
                "a stale worker cannot fail the new run"
            );
            let fresh = StepReport {
                attempt: 2,
                ..report
            };
            assert!(s.report(&fresh).await.unwrap());
            assert_eq!(s.get_job_unscoped("a0").await.unwrap().unwrap().step, 1);
        }
    }

    #[tokio::test]
    async fn a_write_that_cannot_commit_is_an_error_and_changes_nothing() {
        let s = store_with_users().await;
        let j = lifecycle::create(&s, &job("j", "u1")).await.unwrap();
        // SQLite's own "disk full": the database may not grow past its current pages.
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&s.pool)
            .await
            .unwrap();
        let mut failed = None;
        for i in 0..500 {
            if let Err(e) = lifecycle::create(&s, &job(&format!("k{i}"), "u1")).await {
                failed = Some((i, e));
                break;
            }
        }
        let (i, e) = failed.expect("the database never filled up");
        assert!(matches!(e, StoreError::Full(_)), "{e:?}");
        // Nothing of the failed creation is there: no job, no event.
        let k = format!("k{i}");
        assert!(s.get_job_unscoped(&k).await.unwrap().is_none());
        assert!(s.events_since(&k, 0, 10).await.unwrap().is_empty());
        // Fill the last free bytes, then a cancel cannot be stored: it says so, and the job is
        // still queued (never a "cancelled" that did not happen).
        while s.add_event(&NewEvent::info(&j, "x")).await.is_ok() {}
        match lifecycle::cancel(&s, &j).await {
            Err(lifecycle::LifecycleError::Store(StoreError::Full(_))) => {}
            other => panic!("expected a full-disk error, got {other:?}"),
        }
        assert_eq!(
            s.get_job_unscoped("j").await.unwrap().unwrap().status,
            JobStatus::Queued
        );
        sqlx::query("PRAGMA max_page_count = 1073741823")
            .execute(&s.pool)
            .await
            .unwrap();
        let c = lifecycle::cancel(&s, &j).await.unwrap();
        assert_eq!(c.status, JobStatus::Cancelled);
    }

    /// A worker frozen between `BEGIN` and `COMMIT` (SIGSTOP, a paused VM) holds its job's row
    /// lock; PostgreSQL ends its session after `PG_IDLE_IN_TRANSACTION`, and the reaper, which
    /// waited behind that lock, takes the job back. Without the setting it waits forever.
    #[tokio::test]
    async fn a_session_frozen_inside_a_transaction_does_not_block_the_reaper() {
        let url = crate::test_services::fresh_postgres_database().await;
        let s = PgStore::connect(&url).await.unwrap();
        add_users(&s).await;
        lifecycle::create(&s, &job("run", "u1")).await.unwrap();
        lifecycle::claim(&s, &request("cpu:0", -5.0))
            .await
            .unwrap()
            .unwrap();
        let mut frozen = sqlx::PgConnection::connect_with(&pg_connect_options(&url).unwrap())
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN; UPDATE jobs SET step = step WHERE id = 'run'")
            .execute(&mut frozen)
            .await
            .unwrap();
        let reaped = tokio::time::timeout(
            Duration::from_secs(120),
            lifecycle::reap_expired(&s, ids::now_f64(), 2),
        )
        .await
        .expect("the reaper still waits behind the frozen session")
        .unwrap();
        assert_eq!(
            reaped.iter().map(|j| j.status).collect::<Vec<_>>(),
            [JobStatus::Queued]
        );
        assert!(
            sqlx::query("SELECT 1").execute(&mut frozen).await.is_err(),
            "the frozen session was ended"
        );
    }

    /// PostgreSQL notifies on commit: a queued job, then a claim's end (cancel) with its job id.
    #[tokio::test]
    async fn postgres_notifies_queued_jobs_and_claim_changes() {
        use crate::signals::Signal;
        let s = PgStore::connect(&crate::test_services::fresh_postgres_database().await)
            .await
            .unwrap();
        add_users(&s).await;
        let mut signals = s.signals();
        async fn wait_for(signals: &mut crate::signals::Subscription, expected: Signal) {
            tokio::time::timeout(Duration::from_secs(60), async {
                while signals.next().await != expected {}
            })
            .await
            .unwrap_or_else(|_| panic!("no {expected:?}"));
        }
        wait_for(&mut signals, Signal::Resync).await;
        lifecycle::create(&s, &job("a", "u1")).await.unwrap();
        wait_for(&mut signals, Signal::Queued).await;
        let a = claim(&s, "cpu:0").await.unwrap();
        lifecycle::cancel(&s, &a).await.unwrap();
        wait_for(&mut signals, Signal::Job("a".into())).await;
        // SQLite has none.
        let lite = store_with_users().await;
        let mut none = lite.signals();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), none.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn expired_leases_requeue_pause_or_fail_and_live_ones_stay() {
        for s in engines().await {
            for id in [
                "run",
                "pausing",
                "alive",
                "spent",
                "waiting",
                "validating",
                "held",
                "done",
            ] {
                lifecycle::create(&*s, &job(id, "u1")).await.unwrap();
            }
            // `validating_files` can only come from a database of the old creation path.
            s.execute("UPDATE jobs SET status = 'validating_files' WHERE id = 'validating'")
                .await;
            let run = lifecycle::claim(&*s, &request("cpu:0", -5.0))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (run.id.as_str(), run.worker.as_deref()),
                ("run", Some("test-worker"))
            );
            let pausing = lifecycle::claim(&*s, &request("cpu:1", -5.0))
                .await
                .unwrap()
                .unwrap();
            lifecycle::request_pause(&*s, &pausing).await.unwrap();
            let alive = claim(&*s, "cpu:2").await.unwrap();
            assert_eq!(alive.id, "alive");
            let spent = lifecycle::claim(&*s, &request("cpu:3", -5.0))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(spent.id, "spent");
            s.execute("UPDATE jobs SET retries = 2 WHERE id = 'spent'")
                .await;
            let held = s.get_job_unscoped("held").await.unwrap().unwrap();
            lifecycle::request_pause(&*s, &held).await.unwrap();
            let done = s.get_job_unscoped("done").await.unwrap().unwrap();
            lifecycle::cancel(&*s, &done).await.unwrap();

            // A live claim's heartbeat extends its lease and carries a pending pause; an expired
            // one still holds until a reaper acts.
            assert_eq!(
                s.heartbeat("alive", alive.attempt, ids::now_f64() + 60.0)
                    .await
                    .unwrap(),
                Lease::Held(None)
            );
            assert_eq!(
                s.heartbeat("pausing", pausing.attempt, ids::now_f64() - 5.0)
                    .await
                    .unwrap(),
                Lease::Held(Some(JobControl::Pause))
            );

            lifecycle::recover(&*s).await.unwrap();
            // Two nodes reaping at once change each job once.
            let now = ids::now_f64();
            let (a, b) = tokio::join!(
                lifecycle::reap_expired(&*s, now, 2),
                lifecycle::reap_expired(&*s, now, 2)
            );
            let mut reaped: Vec<String> = a
                .unwrap()
                .into_iter()
                .chain(b.unwrap())
                .map(|j| j.id)
                .collect();
            reaped.sort();
            assert_eq!(reaped, ["pausing", "run", "spent"]);
            let status = |id: &'static str| {
                let s = s.clone();
                async move { s.get_job_unscoped(id).await.unwrap().unwrap() }
            };
            let r = status("run").await;
            assert_eq!(
                (r.status, r.retries, r.device.clone(), r.lease_expires_at),
                (JobStatus::Queued, 1, None, None)
            );
            assert!(r.run_started_at.is_none() && r.running_seconds >= 0.0);
            // The reaped claim is fenced: its heartbeats and reports are refused.
            assert_eq!(
                s.heartbeat("run", run.attempt, ids::now_f64() + 60.0)
                    .await
                    .unwrap(),
                Lease::Lost
            );
            assert_eq!(status("pausing").await.status, JobStatus::Paused);
            let f = status("spent").await;
            assert_eq!(f.status, JobStatus::Failed);
            assert_eq!(f.error.unwrap().code, "lease_expired");
            let a = status("alive").await;
            assert_eq!((a.status, a.attempt), (JobStatus::Running, alive.attempt));
            assert_eq!(status("validating").await.status, JobStatus::Queued);
            assert_eq!(status("held").await.status, JobStatus::Paused);
            assert_eq!(status("done").await.status, JobStatus::Cancelled);
            let events = s.events_since("run", 0, 100).await.unwrap();
            assert!(
                events.iter().any(|e| e
                    .message
                    .starts_with("Worker test-worker stopped answering")),
                "{events:?}"
            );
            // The interrupted job keeps its place ahead of the ones that were waiting.
            let order: Vec<String> = s
                .queue_snapshot()
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect();
            assert_eq!(order, ["run", "alive", "waiting", "validating"]);
            // A cancelled job's worker loses its lease at its next heartbeat.
            let alive = status("alive").await;
            lifecycle::cancel(&*s, &alive).await.unwrap();
            assert_eq!(
                s.heartbeat("alive", alive.attempt, ids::now_f64() + 60.0)
                    .await
                    .unwrap(),
                Lease::Lost
            );
        }
    }

    #[tokio::test]
    async fn claims_take_only_jobs_that_fit_and_workers_list_their_jobs() {
        for s in engines().await {
            let mut big = job("big", "u1");
            big.memory_bytes = Some(8 << 30);
            lifecycle::create(&*s, &big).await.unwrap();
            let mut small = job("small", "u1");
            small.memory_bytes = Some(1 << 30);
            lifecycle::create(&*s, &small).await.unwrap();
            let two_gib = ClaimRequest {
                memory_bytes: Some(2 << 30),
                worker: "small-box",
                ..request("cpu:0", 60.0)
            };
            // The big job is first in the queue, but only the small one fits.
            let got = lifecycle::claim(&*s, &two_gib).await.unwrap().unwrap();
            assert_eq!(got.id, "small");
            assert!(lifecycle::claim(&*s, &two_gib).await.unwrap().is_none());
            let got = lifecycle::claim(&*s, &request("cpu:0", 60.0))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.id, "big");
            for (name, devices) in [("small-box", "cpu:0"), ("test-worker", "cpu:0,cpu:1")] {
                s.upsert_worker(&WorkerRow {
                    name: name.into(),
                    devices: devices.into(),
                    memory_bytes: Some(2 << 30),
                    started_at: 1,
                    last_heartbeat: 2.0,
                    device_info: None,
                })
                .await
                .unwrap();
            }
            let workers = s.list_workers().await.unwrap();
            let jobs: Vec<(&str, Vec<&str>)> = workers
                .iter()
                .map(|w| {
                    (
                        w.worker.name.as_str(),
                        w.jobs.iter().map(|(id, _)| id.as_str()).collect(),
                    )
                })
                .collect();
            assert_eq!(
                jobs,
                [("small-box", vec!["small"]), ("test-worker", vec!["big"])]
            );
        }
    }

    #[tokio::test]
    async fn claims_match_the_slot_kind_and_the_device_that_ran_is_kept() {
        for s in engines().await {
            let mut gpu_job = job("g", "u1");
            gpu_job.compute = Compute::Gpu;
            gpu_job.spec.tuna.compute = Compute::Gpu;
            lifecycle::create(&*s, &gpu_job).await.unwrap();
            lifecycle::create(&*s, &job("c", "u1")).await.unwrap();
            // The GPU job is first in the queue, but a CPU slot takes the CPU job…
            assert_eq!(claim(&*s, "cpu:0").await.unwrap().id, "c");
            assert!(claim(&*s, "cpu:1").await.is_none(), "never the GPU job");
            // …and only a GPU slot takes the GPU job.
            let g = claim(&*s, "gpu:0").await.unwrap();
            assert_eq!((g.id.as_str(), g.compute), ("g", Compute::Gpu));
            assert!(claim(&*s, "gpu:1").await.is_none());
            let ran_on = crate::openai::types::RanOn {
                device: "gpu:0".into(),
                backend: "vulkan".into(),
                name: "llvmpipe".into(),
                software: true,
                worker: "test-worker".into(),
            };
            let r = StepReport {
                job_id: "g".into(),
                attempt: g.attempt,
                progress: Some(JobProgress {
                    step: 0,
                    total_steps: 2,
                    epoch: 0.0,
                }),
                metrics: vec![],
                events: vec![],
                ran_on: Some(ran_on.clone()),
            };
            assert!(s.report(&r).await.unwrap());
            // The run ends (a crash puts it back): the slot is cleared, what ran it is kept.
            lifecycle::worker_crashed(&*s, &g, "signal 9", "", 2)
                .await
                .unwrap()
                .unwrap();
            let after = s.get_job_unscoped("g").await.unwrap().unwrap();
            assert_eq!(after.device, None);
            assert_eq!(after.ran_on, Some(ran_on));
            let queue = s.queue_snapshot().await.unwrap();
            assert_eq!(
                queue.iter().find(|e| e.id == "g").map(|e| e.compute),
                Some(Compute::Gpu)
            );
        }
    }

    #[tokio::test]
    async fn metrics_pages_keep_steps_whole() {
        for s in engines().await {
            lifecycle::create(&*s, &job("j", "u1")).await.unwrap();
            let j = claim(&*s, "cpu:0").await.unwrap();
            for step in 1..=5 {
                let mut metrics = vec![MetricsRow {
                    kind: MetricsKind::Train,
                    step,
                    data: serde_json::json!({"type": "train", "step": step, "loss": 1.0}),
                }];
                if step % 2 == 0 {
                    metrics.push(MetricsRow {
                        kind: MetricsKind::Eval,
                        step,
                        data: serde_json::json!({"type": "eval", "step": step, "loss": 2.0}),
                    });
                }
                let r = StepReport {
                    job_id: "j".into(),
                    attempt: j.attempt,
                    progress: Some(JobProgress {
                        step,
                        total_steps: 5,
                        epoch: 0.0,
                    }),
                    metrics,
                    events: vec![],
                    ran_on: None,
                };
                assert!(s.report(&r).await.unwrap());
            }
            let (rows, more) = s.list_metrics("j", 0, 2).await.unwrap();
            assert!(more);
            assert_eq!(
                rows.iter().map(|r| (r.step, r.kind)).collect::<Vec<_>>(),
                [
                    (1, MetricsKind::Train),
                    (2, MetricsKind::Train),
                    (2, MetricsKind::Eval)
                ]
            );
            let (rows, more) = s.list_metrics("j", 2, 10).await.unwrap();
            assert!(!more);
            assert_eq!(rows.len(), 4);
            let latest = s
                .get_job_unscoped("j")
                .await
                .unwrap()
                .unwrap()
                .latest_metrics;
            assert_eq!(latest.unwrap()["step"], 5);
        }
    }

    #[tokio::test]
    async fn a_checkpoint_saved_again_replaces_its_row() {
        for s in engines().await {
            lifecycle::create(&*s, &job("j", "u1")).await.unwrap();
            let j = claim(&*s, "cpu:0").await.unwrap();
            let mut c = CheckpointRow {
                id: "ftckpt_1".into(),
                job_id: "j".into(),
                user_id: "u1".into(),
                step: 2,
                created_at: 1,
                fine_tuned_model_checkpoint: "ft:demo:ann::j:ckpt-step-2".into(),
                metrics: "{}".into(),
                sample: None,
                path: "/a".into(),
                kind: "lora".into(),
                bytes: 10,
                blob_files: None,
            };
            let ev = NewEvent::info(&j, "c");
            assert!(s.insert_checkpoint(&c, j.attempt, &ev).await.unwrap());
            c.id = "ftckpt_2".into();
            c.path = "/b".into();
            c.bytes = 30;
            c.blob_files = Some("{}".into());
            assert!(s.insert_checkpoint(&c, j.attempt, &ev).await.unwrap());
            assert!(!s.insert_checkpoint(&c, j.attempt + 1, &ev).await.unwrap());
            let rows = s.job_checkpoints("j").await.unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(
                (rows[0].id.as_str(), rows[0].path.as_str()),
                ("ftckpt_1", "/b")
            );
            assert_eq!(s.usage("u1").await.unwrap().checkpoint_bytes, 30);
            assert!(
                s.checkpoint_by_model_id("u2", "ft:demo:ann::j:ckpt-step-2")
                    .await
                    .unwrap()
                    .is_none()
            );
            for key in ["ftckpt_1", "2", "ft:demo:ann::j:ckpt-step-2"] {
                assert!(
                    s.get_checkpoint("u1", "j", key).await.unwrap().is_some(),
                    "{key}"
                );
            }
            let gone = s
                .delete_checkpoints("j", &["ftckpt_1".into()], Some(&ev))
                .await
                .unwrap();
            assert_eq!(gone.len(), 1);
            assert!(s.job_checkpoints("j").await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn competing_claims_take_each_job_exactly_once() {
        for s in engines().await {
            for i in 0..40 {
                let user = if i % 3 == 0 { "u2" } else { "u1" };
                lifecycle::create(&*s, &job(&format!("j{i}"), user))
                    .await
                    .unwrap();
            }
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        while let Some(j) = claim(&*s, &format!("cpu:{w}")).await {
                            got.push(j.id);
                        }
                        got
                    })
                })
                .collect();
            let mut claimed = Vec::new();
            for w in workers {
                claimed.extend(w.await.unwrap());
            }
            claimed.sort();
            let mut want: Vec<String> = (0..40).map(|i| format!("j{i}")).collect();
            want.sort();
            assert_eq!(claimed, want, "every job claimed once, none twice");
            for id in &want {
                assert_eq!(s.get_job_unscoped(id).await.unwrap().unwrap().attempt, 1);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_together_migrate_once() {
        let url = crate::test_services::fresh_postgres_database().await;
        let nodes: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::connect(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for n in nodes {
            stores.push(n.await.unwrap().expect("every node starts"));
        }
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
            .fetch_all(&stores[0].pool)
            .await
            .unwrap();
        assert_eq!(applied.len(), PG_MIGRATOR.iter().count());
        add_users(&stores[0]).await;
        assert_eq!(stores[3].list_users().await.unwrap().len(), 2);
    }

    #[test]
    fn database_urls_are_checked_and_passwords_never_shown() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/tuna/tuna.db").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/tuna/tuna.db".into())
        );
        let pg = DatabaseUrl::parse("postgres://tuna:s3cret@db.internal:5432/tuna").unwrap();
        assert_eq!(pg.display(), "postgres://tuna:***@db.internal:5432/tuna");
        let err = DatabaseUrl::parse("mysql://root:hunter2@x/db").unwrap_err();
        assert!(
            err.contains("sqlite://PATH or postgres://") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        assert!(DatabaseUrl::parse("postgres://tuna@host:notaport/db").is_err());
    }
}
