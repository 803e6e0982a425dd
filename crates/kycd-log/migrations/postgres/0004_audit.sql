-- The audit chain. `audit_head` is the chain's end, one row: an append
-- locks it (SELECT ... FOR UPDATE), so appends from any number of
-- connections or instances form one chain; a waiter reads the head its
-- predecessor committed.
CREATE TABLE audit (
    seq       bigint PRIMARY KEY,
    at_ms     bigint NOT NULL,
    actor     text   NOT NULL,
    action    text   NOT NULL,
    target    text,
    details   text   NOT NULL,
    prev_hash text   NOT NULL,
    hash      text   NOT NULL,
    alg       text   NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);

CREATE TABLE audit_head (
    id   smallint PRIMARY KEY CHECK (id = 1),
    seq  bigint   NOT NULL,
    hash text     NOT NULL,
    -- NULL while the chain is empty.
    alg  text
);
INSERT INTO audit_head (id, seq, hash, alg)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL);
