//! The outbox, step-ups and the operator's endpoints on PostgreSQL.

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::store::PgStore;
use super::{signed, store_error, unsigned};
use crate::outbox::{
    lane_of, ActionQuery, ActionRecord, ActionState, EndpointState, Finish, Holder, NewAction,
    Outbox, StepUpRecord,
};

use crate::store::StoreError;

/// The class of the advisory locks that serialise enqueues into one lane
/// (the other key is the lane's hash); no other lock uses it.
const LANE_LOCK_CLASS: i32 = 0x6b6c_616e; // "klan"

/// Enqueue `actions` inside a transaction; a key already enqueued is not
/// enqueued again. Returns how many were new.
///
/// Each lane written to is locked first (a transaction-scoped advisory
/// lock, taken in one order so two enqueues cannot deadlock), so enqueues
/// into one lane commit one after the other and `seq` order is commit
/// order: a claim that sees an action of a lane sees every earlier one,
/// and cannot take a later action while an earlier one is still to
/// commit. A hash collision only serialises two lanes' enqueues.
pub(crate) async fn insert_actions(
    tx: &mut PgConnection,
    actions: &[NewAction],
) -> Result<usize, StoreError> {
    let mut lanes: Vec<String> = actions
        .iter()
        .filter_map(|a| lane_of(&a.kind, a.session_id.as_deref()))
        .collect();
    lanes.sort();
    lanes.dedup();
    if !lanes.is_empty() {
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1, h)
             FROM (SELECT DISTINCT hashtext(l) AS h FROM unnest($2::text[]) AS l) x ORDER BY h",
        )
        .bind(LANE_LOCK_CLASS)
        .bind(&lanes)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    let mut n = 0;
    for a in actions {
        let id = format!("act_{}", kycd_core::id::ulid_body(a.created_at_ms));
        let done = sqlx::query(
            "INSERT INTO actions (id, idempotency_key, kind, session_id, decision_id, payload,
               state, attempts, next_at_ms, created_at_ms, updated_at_ms, lane)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7, $8)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(id)
        .bind(&a.idempotency_key)
        .bind(&a.kind)
        .bind(&a.session_id)
        .bind(&a.decision_id)
        .bind(a.payload.to_string())
        .bind(a.created_at_ms)
        .bind(lane_of(&a.kind, a.session_id.as_deref()))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        n += done.rows_affected() as usize;
    }
    Ok(n)
}

/// Create or move step-ups inside a transaction: a known step-up keeps its
/// URL unless a new one is given.
pub(crate) async fn upsert_step_ups(
    tx: &mut PgConnection,
    rows: &[StepUpRecord],
) -> Result<(), StoreError> {
    for s in rows {
        sqlx::query(
            "INSERT INTO step_ups (step_up_session_id, original_session_id, checks, state, url,
               workflow_id, requested_at_ms, expires_at_ms, finished_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (step_up_session_id) DO UPDATE SET state = excluded.state,
               url = coalesce(excluded.url, step_ups.url), finished_at_ms = excluded.finished_at_ms",
        )
        .bind(&s.step_up_session_id)
        .bind(&s.original_session_id)
        .bind(serde_json::to_string(&s.checks).unwrap_or_else(|_| "[]".into()))
        .bind(&s.state)
        .bind(&s.url)
        .bind(&s.workflow_id)
        .bind(s.requested_at_ms)
        .bind(s.expires_at_ms)
        .bind(s.finished_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    Ok(())
}

const ACTION_COLUMNS: &str =
    "seq, id, idempotency_key, kind, session_id, decision_id, payload, state,
    attempts, next_at_ms, last_error, result, created_at_ms, updated_at_ms,
    lane, claimed_by, claimed_epoch";

fn corrupt(what: &str) -> impl Fn(serde_json::Error) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn action_of(r: &PgRow) -> Result<ActionRecord, StoreError> {
    let get = |e: sqlx::Error| store_error(e);
    let payload: String = r.try_get(6).map_err(get)?;
    let state: String = r.try_get(7).map_err(get)?;
    let result: Option<String> = r.try_get(11).map_err(get)?;
    let attempts: i32 = r.try_get(8).map_err(get)?;
    Ok(ActionRecord {
        seq: unsigned(r.try_get(0).map_err(get)?, "action seq")?,
        id: r.try_get(1).map_err(get)?,
        idempotency_key: r.try_get(2).map_err(get)?,
        kind: r.try_get(3).map_err(get)?,
        session_id: r.try_get(4).map_err(get)?,
        decision_id: r.try_get(5).map_err(get)?,
        payload: serde_json::from_str(&payload).map_err(corrupt("action payload"))?,
        state: ActionState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown action state {state:?}")))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("negative attempts {attempts}")))?,
        next_at_ms: r.try_get(9).map_err(get)?,
        last_error: r.try_get(10).map_err(get)?,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(corrupt("action result"))?,
        created_at_ms: r.try_get(12).map_err(get)?,
        updated_at_ms: r.try_get(13).map_err(get)?,
        lane: r.try_get(14).map_err(get)?,
        claimed_by: match (
            r.try_get::<Option<String>, _>(15).map_err(get)?,
            r.try_get::<Option<i64>, _>(16).map_err(get)?,
        ) {
            (Some(instance), Some(epoch)) => Some(Holder { instance, epoch }),
            _ => None,
        },
    })
}

async fn action_by_id(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<ActionRecord>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {ACTION_COLUMNS} FROM actions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(store_error)?;
    row.as_ref().map(action_of).transpose()
}

const STEP_UP_COLUMNS: &str =
    "step_up_session_id, original_session_id, checks, state, url, workflow_id,
    requested_at_ms, expires_at_ms, finished_at_ms";

fn step_up_of(r: &PgRow) -> Result<StepUpRecord, StoreError> {
    let get = |e: sqlx::Error| store_error(e);
    let checks: String = r.try_get(2).map_err(get)?;
    Ok(StepUpRecord {
        step_up_session_id: r.try_get(0).map_err(get)?,
        original_session_id: r.try_get(1).map_err(get)?,
        checks: serde_json::from_str(&checks).map_err(corrupt("step-up checks"))?,
        state: r.try_get(3).map_err(get)?,
        url: r.try_get(4).map_err(get)?,
        workflow_id: r.try_get(5).map_err(get)?,
        requested_at_ms: r.try_get(6).map_err(get)?,
        expires_at_ms: r.try_get(7).map_err(get)?,
        finished_at_ms: r.try_get(8).map_err(get)?,
    })
}

fn endpoint_of(url: &str, r: Option<&PgRow>) -> Result<EndpointState, StoreError> {
    let Some(r) = r else {
        return Ok(EndpointState {
            url: url.to_owned(),
            ..EndpointState::default()
        });
    };
    let get = |e: sqlx::Error| store_error(e);
    let failures: i32 = r.try_get(0).map_err(get)?;
    Ok(EndpointState {
        url: url.to_owned(),
        consecutive_failures: u32::try_from(failures).unwrap_or(0),
        disabled_at_ms: r.try_get(1).map_err(get)?,
        last_success_ms: r.try_get(2).map_err(get)?,
        last_failure_ms: r.try_get(3).map_err(get)?,
        last_error: r.try_get(4).map_err(get)?,
    })
}

async fn endpoint_row(conn: &mut PgConnection, url: &str) -> Result<EndpointState, StoreError> {
    let row = sqlx::query(
        "SELECT consecutive_failures, disabled_at_ms, last_success_ms, last_failure_ms, last_error
         FROM endpoints WHERE url = $1",
    )
    .bind(url)
    .fetch_optional(&mut *conn)
    .await
    .map_err(store_error)?;
    endpoint_of(url, row.as_ref())
}

#[async_trait::async_trait]
impl Outbox for PgStore {
    async fn enqueue(&self, actions: Vec<NewAction>) -> Result<usize, StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        let n = insert_actions(&mut tx, &actions).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(n)
    }

    /// One statement: the due rows are locked `FOR UPDATE SKIP LOCKED`, so
    /// concurrent claims (other workers, other instances) pass over each
    /// other's rows instead of waiting for them or taking them twice.
    ///
    /// The lane rule reads the statement's snapshot, not locks: an earlier
    /// row another claim has locked (and is making running) is still
    /// unfinished in that snapshot, so skipping it never lets its lane's
    /// later row through. A row finished after the snapshot is re-read
    /// when locked (`state` no longer matches, it is passed over), and an
    /// enqueue cannot slip an earlier row in after the snapshot (lanes
    /// commit in `seq` order, [`insert_actions`]).
    async fn claim(
        &self,
        holder: &Holder,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
        exclude_kinds: Vec<String>,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "WITH due AS (
                 SELECT a.seq FROM actions a
                 WHERE ((a.state = 'pending' AND a.next_at_ms <= $1)
                        OR (a.state = 'running' AND a.lease_until_ms <= $1))
                   AND NOT (a.kind = ANY($3))
                   AND {}
                 ORDER BY a.next_at_ms, a.seq LIMIT $2
                 FOR UPDATE OF a SKIP LOCKED)
             UPDATE actions a SET state = 'running', attempts = a.attempts + 1,
               lease_until_ms = $1 + $4, updated_at_ms = $1,
               claimed_by = $5, claimed_epoch = $6
             FROM due WHERE a.seq = due.seq
             RETURNING {}",
            crate::outbox::claimable("$1"),
            ACTION_COLUMNS
                .split(',')
                .map(|c| format!("a.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(now_ms)
        .bind(signed(limit as u64))
        .bind(&exclude_kinds)
        .bind(lease_ms)
        .bind(&holder.instance)
        .bind(holder.epoch)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        let mut out = rows.iter().map(action_of).collect::<Result<Vec<_>, _>>()?;
        // In the order the SQLite claim hands them out.
        out.sort_by_key(|a| (a.next_at_ms, a.seq));
        Ok(out)
    }

    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        finish: Finish,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (state, next_at, error, result) = crate::outbox::finish_fields(&finish);
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        let n = sqlx::query(
            "UPDATE actions SET state = $3, next_at_ms = coalesce($4, next_at_ms),
               last_error = coalesce($5, last_error), result = coalesce($6, result),
               lease_until_ms = NULL, updated_at_ms = $7, claimed_by = NULL, claimed_epoch = NULL
             WHERE id = $1 AND attempts = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(state)
        .bind(next_at)
        .bind(error)
        .bind(result)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?
        .rows_affected();
        let mut appended = None;
        if n == 1 && state == "done" {
            let done = action_by_id(&mut tx, id).await?;
            if let Some(record) = done.and_then(|a| crate::outbox::audit_of_done(&a, now_ms)) {
                appended = super::audit::append(&mut tx, &[record], &self.chain).await?;
            }
        }
        tx.commit().await.map_err(store_error)?;
        self.chain.committed(appended);
        Ok(n == 1)
    }

    async fn release_running(&self, now_ms: i64) -> Result<usize, StoreError> {
        let n = sqlx::query(
            "UPDATE actions SET state = 'pending', next_at_ms = $1, lease_until_ms = NULL,
               updated_at_ms = $1, claimed_by = NULL, claimed_epoch = NULL
             WHERE state = 'running'",
        )
        .bind(now_ms)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(n.rows_affected() as usize)
    }

    async fn release_claims_of(&self, holder: &Holder, now_ms: i64) -> Result<usize, StoreError> {
        let n = sqlx::query(
            "UPDATE actions SET state = 'pending', next_at_ms = $1, lease_until_ms = NULL,
               updated_at_ms = $1, claimed_by = NULL, claimed_epoch = NULL
             WHERE state = 'running' AND claimed_by = $2 AND claimed_epoch <= $3",
        )
        .bind(now_ms)
        .bind(&holder.instance)
        .bind(holder.epoch)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(n.rows_affected() as usize)
    }

    async fn get_action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        let mut conn = self.db.pool().acquire().await.map_err(store_error)?;
        action_by_id(&mut conn, id).await
    }

    async fn list_actions(&self, q: ActionQuery) -> Result<Vec<ActionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ACTION_COLUMNS} FROM actions
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR session_id = $2)
               AND ($3::text IS NULL OR kind = $3)
               AND created_at_ms >= $4 AND created_at_ms < $5 AND seq < $6
             ORDER BY seq DESC LIMIT $7"
        ))
        .bind(q.state.map(ActionState::as_str))
        .bind(&q.session_id)
        .bind(&q.kind)
        .bind(q.created_from_ms.unwrap_or(i64::MIN))
        .bind(q.created_until_ms.unwrap_or(i64::MAX))
        .bind(q.before_seq.map(signed).unwrap_or(i64::MAX))
        .bind(signed(q.limit as u64))
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(action_of).collect()
    }

    async fn retry_action(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<(ActionRecord, bool)>, StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        let changed = sqlx::query(
            "UPDATE actions SET state = 'pending', attempts = 0, next_at_ms = $2, updated_at_ms = $2
             WHERE id = $1 AND state IN ('dead', 'skipped')",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?
        .rows_affected()
            == 1;
        let found = action_by_id(&mut tx, id).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(found.map(|a| (a, changed)))
    }

    async fn action_counts(&self) -> Result<BTreeMap<(String, String), u64>, StoreError> {
        let rows = sqlx::query("SELECT kind, state, count(*) FROM actions GROUP BY kind, state")
            .fetch_all(self.db.pool())
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get(2).map_err(store_error)?;
                Ok((
                    (
                        r.try_get(0).map_err(store_error)?,
                        r.try_get(1).map_err(store_error)?,
                    ),
                    unsigned(n, "action count")?,
                ))
            })
            .collect()
    }

    async fn backlog(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, count(*) FROM actions WHERE state IN ('pending', 'running') GROUP BY kind",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get(1).map_err(store_error)?;
                Ok((r.try_get(0).map_err(store_error)?, unsigned(n, "backlog")?))
            })
            .collect()
    }

    async fn step_ups_due(&self, now_ms: i64) -> Result<Vec<StepUpRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_UP_COLUMNS} FROM step_ups
             WHERE state IN ('requested', 'in_progress') AND expires_at_ms <= $1
             ORDER BY requested_at_ms"
        ))
        .bind(now_ms)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(step_up_of).collect()
    }

    async fn step_ups_of(&self, original: &str) -> Result<Vec<StepUpRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_UP_COLUMNS} FROM step_ups WHERE original_session_id = $1
             ORDER BY requested_at_ms"
        ))
        .bind(original)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter().map(step_up_of).collect()
    }

    async fn endpoint(&self, url: &str) -> Result<EndpointState, StoreError> {
        let mut conn = self.db.pool().acquire().await.map_err(store_error)?;
        endpoint_row(&mut conn, url).await
    }

    /// The count moves in one statement, so concurrent results (several
    /// instances) all count.
    async fn record_endpoint(
        &self,
        url: &str,
        error: Option<String>,
        now_ms: i64,
        disable_after: u32,
    ) -> Result<(EndpointState, bool), StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        let q = match &error {
            None => sqlx::query(
                "INSERT INTO endpoints (url, consecutive_failures, last_success_ms) VALUES ($1, 0, $2)
                 ON CONFLICT (url) DO UPDATE SET consecutive_failures = 0, last_success_ms = $2",
            )
            .bind(url)
            .bind(now_ms),
            Some(e) => sqlx::query(
                "INSERT INTO endpoints (url, consecutive_failures, last_failure_ms, last_error)
                 VALUES ($1, 1, $2, $3)
                 ON CONFLICT (url) DO UPDATE SET
                   consecutive_failures = endpoints.consecutive_failures + 1,
                   last_failure_ms = $2, last_error = $3",
            )
            .bind(url)
            .bind(now_ms)
            .bind(e),
        };
        q.execute(&mut *tx).await.map_err(store_error)?;
        let disabled = sqlx::query(
            "UPDATE endpoints SET disabled_at_ms = $2
             WHERE url = $1 AND disabled_at_ms IS NULL AND consecutive_failures >= $3",
        )
        .bind(url)
        .bind(now_ms)
        .bind(i32::try_from(disable_after).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?
        .rows_affected()
            == 1;
        let state = endpoint_row(&mut tx, url).await?;
        tx.commit().await.map_err(store_error)?;
        Ok((state, disabled))
    }

    async fn enable_endpoint(&self, url: &str) -> Result<EndpointState, StoreError> {
        let mut tx = self.db.pool().begin().await.map_err(store_error)?;
        sqlx::query(
            "INSERT INTO endpoints (url, consecutive_failures) VALUES ($1, 0)
             ON CONFLICT (url) DO UPDATE SET consecutive_failures = 0, disabled_at_ms = NULL",
        )
        .bind(url)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let state = endpoint_row(&mut tx, url).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(state)
    }
}
