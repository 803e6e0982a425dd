-- The event log. `pos` is the event's offset: dense, handed out by the
-- one-row `log_head` inside the append's transaction, whose row lock
-- serialises appends until commit, so no snapshot ever sees an offset
-- before a smaller one is visible (a bigserial would not keep that order).
CREATE TABLE log_head (
    id   smallint PRIMARY KEY CHECK (id = 1),
    head bigint   NOT NULL
);
INSERT INTO log_head (id, head) VALUES (1, 0);

CREATE TABLE events (
    pos            bigint  PRIMARY KEY,
    id             text    NOT NULL UNIQUE,
    received_at_ms bigint  NOT NULL,
    source         text    NOT NULL,
    kind           text    NOT NULL,
    session_id     text,
    didit_event_id text,
    -- JSON array of the event's dedupe keys, as the SQLite log keeps them.
    dedupe_keys    text    NOT NULL,
    body           bytea   NOT NULL,
    meta           text    NOT NULL
);

CREATE TABLE dedupe (
    key       text   PRIMARY KEY,
    event_pos bigint NOT NULL
);

CREATE TABLE quarantine (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text   NOT NULL UNIQUE,
    received_at_ms bigint NOT NULL,
    reason         text   NOT NULL,
    body           bytea  NOT NULL,
    meta           text   NOT NULL
);
