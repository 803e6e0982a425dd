-- The review queue: one case per decided session, and who works on it.
CREATE TABLE cases (
    session_id    text             PRIMARY KEY,
    subject       text,
    outcome       text             NOT NULL,
    score         double precision NOT NULL,
    -- JSON array of the rule ids behind the outcome.
    reasons       text             NOT NULL,
    decision_id   text             NOT NULL,
    decided_at_ms bigint           NOT NULL,
    by_reviewer   boolean          NOT NULL,
    didit_status  text             NOT NULL
);
CREATE INDEX cases_open ON cases (by_reviewer, outcome, decided_at_ms);

CREATE TABLE case_assignments (
    session_id     text   PRIMARY KEY,
    assignee       text   NOT NULL,
    assigned_at_ms bigint NOT NULL
);
