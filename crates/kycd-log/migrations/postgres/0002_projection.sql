-- Projections: sessions, decisions, the identity graph, subjects' attributes
-- and declines, and each consumer's position, committed together.
CREATE TABLE sessions (
    seq           bigint  PRIMARY KEY,
    session_id    text    NOT NULL UNIQUE,
    vendor_data   text,
    status        text    NOT NULL,
    workflow_id   text,
    created_at_ms bigint  NOT NULL,
    updated_at_ms bigint  NOT NULL,
    doc           text    NOT NULL,
    -- kycd_log::store::awaiting_result of the record, computed by the
    -- writer: the one definition of "still waiting for Didit".
    awaiting      boolean NOT NULL
);
CREATE INDEX sessions_by_vendor ON sessions (vendor_data, seq);
CREATE INDEX sessions_by_status ON sessions (status, seq);
CREATE INDEX sessions_awaiting ON sessions (seq) WHERE awaiting;

CREATE TABLE decisions (
    -- Insertion order, for "the latest shadow decision on an event".
    rank           bigint GENERATED ALWAYS AS IDENTITY,
    id             text             PRIMARY KEY,
    event_offset   bigint           NOT NULL,
    session_id     text             NOT NULL,
    subject        text,
    policy_version text             NOT NULL,
    shadow         boolean          NOT NULL,
    outcome        text             NOT NULL,
    score          double precision NOT NULL,
    decided_at_ms  bigint           NOT NULL,
    doc            text             NOT NULL,
    UNIQUE (event_offset, session_id, policy_version, shadow)
);
CREATE INDEX decisions_by_offset ON decisions (shadow, event_offset);
CREATE INDEX decisions_by_outcome ON decisions (shadow, outcome, event_offset);
CREATE INDEX decisions_by_session ON decisions (session_id, event_offset);
CREATE INDEX decisions_by_time ON decisions (shadow, decided_at_ms);

CREATE TABLE identity_values (
    kind         text   NOT NULL,
    value        text   NOT NULL,
    subject      text   NOT NULL,
    first_offset bigint NOT NULL,
    last_at_ms   bigint NOT NULL,
    PRIMARY KEY (kind, value, subject)
);
CREATE INDEX identity_values_by_recency ON identity_values (kind, value, last_at_ms);

CREATE TABLE subjects (
    subject      text   NOT NULL,
    event_offset bigint NOT NULL,
    at_ms        bigint NOT NULL,
    attributes   text   NOT NULL,
    PRIMARY KEY (subject, event_offset)
);

CREATE TABLE declines (
    subject      text   NOT NULL,
    session_id   text   NOT NULL,
    event_offset bigint NOT NULL,
    PRIMARY KEY (subject, session_id)
);

CREATE TABLE consumer_offsets (
    consumer text   PRIMARY KEY,
    pos      bigint NOT NULL
);
