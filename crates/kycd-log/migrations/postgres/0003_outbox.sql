-- The outbox (actions), step-ups and the operator's endpoints.
CREATE TABLE actions (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text    NOT NULL UNIQUE,
    idempotency_key text   NOT NULL UNIQUE,
    kind           text    NOT NULL,
    session_id     text,
    decision_id    text,
    payload        text    NOT NULL,
    state          text    NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    next_at_ms     bigint  NOT NULL,
    lease_until_ms bigint,
    last_error     text,
    result         text,
    created_at_ms  bigint  NOT NULL,
    updated_at_ms  bigint  NOT NULL
);
CREATE INDEX actions_due ON actions (state, next_at_ms);
CREATE INDEX actions_by_session ON actions (session_id, seq);

CREATE TABLE step_ups (
    step_up_session_id  text   PRIMARY KEY,
    original_session_id text   NOT NULL,
    checks              text   NOT NULL,
    state               text   NOT NULL,
    url                 text,
    workflow_id         text,
    requested_at_ms     bigint NOT NULL,
    expires_at_ms       bigint NOT NULL,
    finished_at_ms      bigint
);
CREATE INDEX step_ups_open ON step_ups (state, expires_at_ms);
CREATE INDEX step_ups_by_original ON step_ups (original_session_id);

CREATE TABLE endpoints (
    url                  text    PRIMARY KEY,
    consecutive_failures integer NOT NULL DEFAULT 0,
    disabled_at_ms       bigint,
    last_success_ms      bigint,
    last_failure_ms      bigint,
    last_error           text
);
