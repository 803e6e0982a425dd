//! Passive WAL checkpoints, run by a connection of their own on a thread of
//! their own (the event log's and the store's checkpointers), so the
//! writers never copy the WAL into the database inside a commit.

use rusqlite::Connection;

/// One `PRAGMA wal_checkpoint(PASSIVE)` (it never blocks writers or
/// readers). `Ok(true)` when it copied every frame in the WAL; one that
/// stopped short (a reader still needs old frames, or another checkpoint
/// was busy) is `Ok(false)` and worth trying again.
pub(crate) fn passive(conn: &Connection) -> rusqlite::Result<bool> {
    // (busy, frames in the WAL, frames checkpointed)
    let (busy, frames, copied) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    Ok(busy == 0 && copied >= frames)
}
