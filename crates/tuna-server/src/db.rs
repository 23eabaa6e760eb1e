//! [`SqliteStore`]: the [`Store`] on SQLite (sqlx). All of the server's SQL lives in this file.
//!
//! The server and its worker processes share one database file, so it runs in WAL mode with a
//! busy timeout: readers never block the writer and short write bursts wait instead of failing.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::ids;
use crate::store::*;

/// Embedded migrations (`migrations/`), applied at startup.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
        Self::connect(opts, 4).await
    }

    /// A private in-memory database (tests).
    pub async fn open_in_memory() -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // One connection: every connection to `:memory:` would be a separate database.
        Self::connect(opts, 1).await
    }

    async fn connect(opts: SqliteConnectOptions, max: u32) -> StoreResult<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

const JOB_COLUMNS: &str = "id, user_id, model, training_file, validation_file, suffix, seed, status, hyperparameters, tuna, \
     estimate, metadata, created_at, started_at, finished_at, fine_tuned_model, trained_tokens, error, step, total_steps, \
     epoch, latest_metrics, retries, control, queue_order, device, running_seconds, run_started_at, result_files";

const FILE_COLUMNS: &str = "id, user_id, filename, purpose, bytes, created_at, status, status_details, check_report, blob_key";

const EVENT_COLUMNS: &str = "seq, id, job_id, created_at, level, message, type, data";

const CHECKPOINT_COLUMNS: &str = "id, job_id, user_id, step, created_at, fine_tuned_model_checkpoint, metrics, sample, path, kind";

fn push_statuses(qb: &mut QueryBuilder<'_, Sqlite>, statuses: &[JobStatus]) {
    qb.push("(");
    let mut sep = qb.separated(", ");
    for s in statuses {
        sep.push_bind(s.as_str());
    }
    qb.push(")");
}

/// `SET` clauses of a patch; returns whether anything was pushed.
fn push_patch(qb: &mut QueryBuilder<'_, Sqlite>, patch: &JobPatch, mut first: bool) {
    let mut set = |qb: &mut QueryBuilder<'_, Sqlite>, col: &str| {
        qb.push(if first { " " } else { ", " });
        qb.push(col);
        qb.push(" = ");
        first = false;
    };
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
        qb.push_bind(v.clone());
    }
    if let Some(v) = &patch.fine_tuned_model {
        set(qb, "fine_tuned_model");
        qb.push_bind(v.clone());
    }
    if let Some(v) = patch.trained_tokens {
        set(qb, "trained_tokens");
        qb.push_bind(v);
    }
    if let Some(v) = patch.retries {
        set(qb, "retries");
        qb.push_bind(v);
    }
    if let Some(v) = &patch.control {
        set(qb, "control");
        qb.push_bind(v.clone());
    }
    if patch.requeue {
        set(qb, "queue_order");
        qb.push("(SELECT COALESCE(MAX(queue_order), 0) + 1 FROM jobs)");
    }
    if let Some(v) = &patch.device {
        set(qb, "device");
        qb.push_bind(v.clone());
    }
    if let Some(v) = patch.run_started_at {
        set(qb, "run_started_at");
        qb.push_bind(v);
    }
    if let Some(v) = patch.add_running_seconds {
        set(qb, "running_seconds");
        qb.push("running_seconds + ").push_bind(v);
    }
    if let Some(v) = &patch.result_files {
        set(qb, "result_files");
        qb.push_bind(v.clone());
    }
    if first {
        // Nothing to set: a no-op assignment keeps the statement valid and RETURNING meaningful.
        qb.push(" status = status");
    }
}

/// The `seq` of `after` within a scope, or `Ok(None)` when it is not there.
async fn cursor_seq(
    pool: &SqlitePool,
    table: &str,
    scope_col: &str,
    scope: &str,
    after: &str,
) -> StoreResult<Option<i64>> {
    let sql = format!("SELECT seq FROM {table} WHERE id = ? AND {scope_col} = ?");
    Ok(sqlx::query_scalar::<_, i64>(&sql)
        .bind(after)
        .bind(scope)
        .fetch_optional(pool)
        .await?)
}

fn split_page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    (rows, has_more)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: &User, key_hash: &str, key_prefix: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
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
            "INSERT INTO api_keys (key_hash, user_id, key_prefix, created_at) VALUES (?, ?, ?, ?)",
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
            "INSERT INTO api_keys (key_hash, user_id, key_prefix, created_at) VALUES (?, ?, ?, ?)",
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
             WHERE api_keys.key_hash = ?",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>> {
        Ok(
            sqlx::query_as::<_, User>("SELECT id, name, created_at FROM users WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn upsert_model(&self, m: &ModelRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO models (name, path, source, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET path = excluded.path, source = excluded.source",
        )
        .bind(&m.name)
        .bind(&m.path)
        .bind(&m.source)
        .bind(m.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_models(&self) -> StoreResult<Vec<ModelRow>> {
        Ok(sqlx::query_as::<_, ModelRow>(
            "SELECT name, path, source, created_at FROM models ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_model(&self, name: &str) -> StoreResult<Option<ModelRow>> {
        Ok(sqlx::query_as::<_, ModelRow>(
            "SELECT name, path, source, created_at FROM models WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn insert_file(&self, f: &FileRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO files (id, user_id, filename, purpose, bytes, created_at, status, status_details, check_report, blob_key) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ? AND user_id = ?");
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
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
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
            format!("DELETE FROM files WHERE id = ? AND user_id = ? RETURNING {FILE_COLUMNS}");
        Ok(sqlx::query_as::<_, FileRow>(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn active_job_using_file(
        &self,
        user_id: &str,
        file_id: &str,
    ) -> StoreResult<Option<String>> {
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT id FROM jobs WHERE user_id = ");
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

    async fn insert_job(&self, j: &NewJob) -> StoreResult<JobRow> {
        let sql = format!(
            "INSERT INTO jobs (id, user_id, model, training_file, validation_file, suffix, seed, status, hyperparameters, \
             tuna, estimate, metadata, created_at, queue_order) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(queue_order), 0) + 1 FROM jobs)) \
             RETURNING {JOB_COLUMNS}"
        );
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(&j.id)
            .bind(&j.user_id)
            .bind(&j.model)
            .bind(&j.training_file)
            .bind(&j.validation_file)
            .bind(&j.suffix)
            .bind(j.seed)
            .bind(j.status.as_str())
            .bind(&j.hyperparameters)
            .bind(&j.tuna)
            .bind(&j.estimate)
            .bind(&j.metadata)
            .bind(j.created_at)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn get_job(&self, user_id: &str, id: &str) -> StoreResult<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND user_id = ?");
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn get_job_unscoped(&self, id: &str) -> StoreResult<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
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
        let rows = match &page.after {
            Some(after) => {
                let Some(seq) = cursor_seq(&self.pool, "jobs", "user_id", user_id, after).await?
                else {
                    return Ok(None);
                };
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
                );
                sqlx::query_as::<_, JobRow>(&sql)
                    .bind(user_id)
                    .bind(seq)
                    .bind(page.limit + 1)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = ? ORDER BY seq DESC LIMIT ?"
                );
                sqlx::query_as::<_, JobRow>(&sql)
                    .bind(user_id)
                    .bind(page.limit + 1)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(Some(split_page(rows, page.limit)))
    }

    async fn transition_job(
        &self,
        id: &str,
        from: &[JobStatus],
        to: JobStatus,
        patch: &JobPatch,
    ) -> StoreResult<Option<JobRow>> {
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE jobs SET status = ");
        qb.push_bind(to.as_str());
        push_patch(&mut qb, patch, false);
        qb.push(" WHERE id = ").push_bind(id);
        qb.push(" AND status IN ");
        push_statuses(&mut qb, from);
        qb.push(format!(" RETURNING {JOB_COLUMNS}"));
        Ok(qb
            .build_query_as::<JobRow>()
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn patch_job(
        &self,
        id: &str,
        when: &[JobStatus],
        patch: &JobPatch,
    ) -> StoreResult<Option<JobRow>> {
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE jobs SET");
        push_patch(&mut qb, patch, true);
        qb.push(" WHERE id = ").push_bind(id);
        qb.push(" AND status IN ");
        push_statuses(&mut qb, when);
        qb.push(format!(" RETURNING {JOB_COLUMNS}"));
        Ok(qb
            .build_query_as::<JobRow>()
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn claim_next_queued(&self, device: &str, now: f64) -> StoreResult<Option<JobRow>> {
        let sql = format!(
            "UPDATE jobs SET status = 'running', device = ?, started_at = COALESCE(started_at, ?), run_started_at = ?, \
             control = NULL \
             WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' ORDER BY queue_order LIMIT 1) AND status = 'queued' \
             RETURNING {JOB_COLUMNS}"
        );
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(device)
            .bind(now as i64)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn update_progress(&self, id: &str, p: &JobProgress) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET step = ?, total_steps = ?, epoch = ?, latest_metrics = ? WHERE id = ? AND status = 'running'",
        )
        .bind(p.step)
        .bind(p.total_steps)
        .bind(p.epoch)
        .bind(&p.latest_metrics)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn queue_snapshot(&self) -> StoreResult<Vec<QueueEntry>> {
        Ok(sqlx::query_as::<_, QueueEntry>(
            "SELECT id, status, queue_order, estimate, step, total_steps, running_seconds, run_started_at FROM jobs \
             WHERE status IN ('queued', 'running') ORDER BY queue_order",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn jobs_with_status(&self, status: JobStatus) -> StoreResult<Vec<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY queue_order");
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await?)
    }

    async fn add_event(&self, e: &NewEvent<'_>) -> StoreResult<EventRow> {
        let sql = format!(
            "INSERT INTO job_events (id, job_id, user_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             RETURNING {EVENT_COLUMNS}"
        );
        Ok(sqlx::query_as::<_, EventRow>(&sql)
            .bind(ids::new_id(ids::EVENT))
            .bind(e.job_id)
            .bind(e.user_id)
            .bind(ids::now())
            .bind(e.level)
            .bind(&e.message)
            .bind(e.r#type)
            .bind(&e.data)
            .fetch_one(&self.pool)
            .await?)
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
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
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
            "SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?"
        );
        Ok(sqlx::query_as::<_, EventRow>(&sql)
            .bind(job_id)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn insert_checkpoint(&self, c: &CheckpointRow) -> StoreResult<()> {
        // A resumed run may save the same step again: the newer files replace the row.
        sqlx::query(
            "INSERT INTO checkpoints (id, job_id, user_id, step, created_at, fine_tuned_model_checkpoint, metrics, sample, path, kind) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (job_id, step) DO UPDATE SET created_at = excluded.created_at, metrics = excluded.metrics, \
             sample = excluded.sample, path = excluded.path, kind = excluded.kind",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_checkpoints(
        &self,
        job_id: &str,
        page: &Page,
    ) -> StoreResult<Option<(Vec<CheckpointRow>, bool)>> {
        let rows = match &page.after {
            Some(after) => {
                let step = sqlx::query_scalar::<_, i64>(
                    "SELECT step FROM checkpoints WHERE id = ? AND job_id = ?",
                )
                .bind(after)
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?;
                let Some(step) = step else { return Ok(None) };
                let sql = format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = ? AND step < ? ORDER BY step DESC LIMIT ?"
                );
                sqlx::query_as::<_, CheckpointRow>(&sql)
                    .bind(job_id)
                    .bind(step)
                    .bind(page.limit + 1)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = ? ORDER BY step DESC LIMIT ?"
                );
                sqlx::query_as::<_, CheckpointRow>(&sql)
                    .bind(job_id)
                    .bind(page.limit + 1)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(Some(split_page(rows, page.limit)))
    }

    async fn checkpoint_by_model_id(
        &self,
        user_id: &str,
        model_id: &str,
    ) -> StoreResult<Option<CheckpointRow>> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE fine_tuned_model_checkpoint = ? AND user_id = ?"
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
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE job_id = ? AND user_id = ? \
             AND (id = ? OR fine_tuned_model_checkpoint = ? OR CAST(step AS TEXT) = ?)"
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
            format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE user_id = ? ORDER BY seq");
        Ok(sqlx::query_as::<_, CheckpointRow>(&sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn fine_tuned_jobs(&self, user_id: &str) -> StoreResult<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = ? AND status = 'succeeded' AND fine_tuned_model IS NOT NULL ORDER BY seq"
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
            "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = ? AND fine_tuned_model = ? AND status = 'succeeded'"
        );
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(user_id)
            .bind(model_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn upsert_metrics(&self, job_id: &str, step: i64, data: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO job_metrics (job_id, step, data) VALUES (?, ?, ?) ON CONFLICT (job_id, step) DO UPDATE SET data = excluded.data")
            .bind(job_id)
            .bind(step)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_metrics(&self, job_id: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT data FROM job_metrics WHERE job_id = ? ORDER BY step",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_throughput(
        &self,
        shape: &str,
        device: &str,
        method: &str,
    ) -> StoreResult<Option<ThroughputRow>> {
        Ok(sqlx::query_as::<_, ThroughputRow>(
            "SELECT shape, device, method, tokens_per_second, samples, source, updated_at FROM throughput \
             WHERE shape = ? AND device = ? AND method = ?",
        )
        .bind(shape)
        .bind(device)
        .bind(method)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn put_throughput(&self, r: &ThroughputRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO throughput (shape, device, method, tokens_per_second, samples, source, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_users() -> SqliteStore {
        let s = SqliteStore::open_in_memory().await.unwrap();
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
        s
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
            status: JobStatus::Queued,
            hyperparameters: "{}".into(),
            tuna: "{}".into(),
            estimate: None,
            metadata: None,
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn keys_find_their_user_and_names_are_unique() {
        let s = store_with_users().await;
        assert_eq!(
            s.user_by_key_hash("hash-u2").await.unwrap().unwrap().name,
            "ben"
        );
        assert!(s.user_by_key_hash("nope").await.unwrap().is_none());
        let dup = User {
            id: "u3".into(),
            name: "ann".into(),
            created_at: 1,
        };
        assert!(matches!(
            s.create_user(&dup, "h3", "p").await,
            Err(StoreError::Conflict(_))
        ));
        s.add_api_key("u1", "hash-u1-b", "p").await.unwrap();
        assert_eq!(
            s.user_by_key_hash("hash-u1-b").await.unwrap().unwrap().id,
            "u1"
        );
    }

    #[tokio::test]
    async fn job_pages_are_per_user_newest_first() {
        let s = store_with_users().await;
        for i in 0..5 {
            s.insert_job(&job(&format!("j{i}"), "u1")).await.unwrap();
        }
        s.insert_job(&job("other", "u2")).await.unwrap();
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
                .is_none(),
            "another user's cursor"
        );
        assert!(s.get_job("u2", "j1").await.unwrap().is_none());
        assert!(s.get_job("u1", "j1").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_queue_is_fifo_and_claims_are_conditional() {
        let s = store_with_users().await;
        for id in ["a", "b", "c"] {
            s.insert_job(&job(id, "u1")).await.unwrap();
        }
        // b goes to the back of the queue.
        s.transition_job(
            "b",
            &[JobStatus::Queued],
            JobStatus::Paused,
            &JobPatch::default(),
        )
        .await
        .unwrap()
        .unwrap();
        s.transition_job(
            "b",
            &[JobStatus::Paused],
            JobStatus::Queued,
            &JobPatch {
                requeue: true,
                ..JobPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
        let order: Vec<String> = s
            .queue_snapshot()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(order, ["a", "c", "b"]);
        let first = s.claim_next_queued("cpu:0", 100.5).await.unwrap().unwrap();
        assert_eq!(
            (
                first.id.as_str(),
                first.status.as_str(),
                first.device.as_deref()
            ),
            ("a", "running", Some("cpu:0"))
        );
        assert_eq!(
            (first.started_at, first.run_started_at),
            (Some(100), Some(100.5))
        );
        assert_eq!(
            s.claim_next_queued("cpu:1", 101.0)
                .await
                .unwrap()
                .unwrap()
                .id,
            "c"
        );
        assert_eq!(
            s.claim_next_queued("cpu:2", 102.0)
                .await
                .unwrap()
                .unwrap()
                .id,
            "b"
        );
        assert!(s.claim_next_queued("cpu:3", 103.0).await.unwrap().is_none());
        // A transition from the wrong status does nothing.
        assert!(
            s.transition_job(
                "a",
                &[JobStatus::Queued],
                JobStatus::Cancelled,
                &JobPatch::default()
            )
            .await
            .unwrap()
            .is_none()
        );
        let done = JobPatch {
            finished_at: Some(200),
            fine_tuned_model: Some("ft:x".into()),
            add_running_seconds: Some(2.5),
            run_started_at: Some(None),
            ..JobPatch::default()
        };
        let a = s
            .transition_job("a", &[JobStatus::Running], JobStatus::Succeeded, &done)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                a.finished_at,
                a.fine_tuned_model.as_deref(),
                a.running_seconds,
                a.run_started_at
            ),
            (Some(200), Some("ft:x"), 2.5, None)
        );
        assert_eq!(
            s.jobs_with_status(JobStatus::Running).await.unwrap().len(),
            2
        );
        // Progress only lands on running jobs.
        s.update_progress(
            "a",
            &JobProgress {
                step: 9,
                total_steps: 9,
                epoch: 1.0,
                latest_metrics: "{}".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(s.get_job_unscoped("a").await.unwrap().unwrap().step, 0);
    }

    #[tokio::test]
    async fn events_page_newest_first_and_stream_oldest_first() {
        let s = store_with_users().await;
        let j = s.insert_job(&job("j", "u1")).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                s.add_event(&NewEvent::info(&j, format!("e{i}")))
                    .await
                    .unwrap(),
            );
        }
        let (rows, more) = s
            .list_events(
                "j",
                &Page {
                    after: None,
                    limit: 2,
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rows.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["e4", "e3"]
        );
        assert!(more);
        let (rows, _) = s
            .list_events(
                "j",
                &Page {
                    after: Some(rows[1].id.clone()),
                    limit: 10,
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rows.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["e2", "e1", "e0"]
        );
        let since = s.events_since("j", ids[1].seq, 10).await.unwrap();
        assert_eq!(
            since.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["e2", "e3", "e4"]
        );
    }

    #[tokio::test]
    async fn a_checkpoint_saved_again_replaces_its_row() {
        let s = store_with_users().await;
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
        };
        s.insert_checkpoint(&c).await.unwrap();
        c.id = "ftckpt_2".into();
        c.path = "/b".into();
        s.insert_checkpoint(&c).await.unwrap();
        let (rows, _) = s
            .list_checkpoints(
                "j",
                &Page {
                    after: None,
                    limit: 10,
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].id.as_str(), rows[0].path.as_str()),
            ("ftckpt_1", "/b")
        );
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
    }
}
