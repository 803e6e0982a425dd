-- Named cursors (how far reconciliation walked Didit's session listing)
-- and reconciliation's fetch throttle, shared by whichever instance holds
-- the `timers` lease (crates/kycd-log/src/cursors.rs).
CREATE TABLE cursors (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- When each session's decision was last asked of Didit; a fetch stays
-- unconfirmed (unconfirmed_since_ms set) until it succeeded, and is then
-- retried.
CREATE TABLE reconcile_fetches (
    session_id           text   PRIMARY KEY,
    fetched_at_ms        bigint NOT NULL,
    unconfirmed_since_ms bigint
);
CREATE INDEX reconcile_fetches_unconfirmed
    ON reconcile_fetches (fetched_at_ms) WHERE unconfirmed_since_ms IS NOT NULL;
