-- Partitions (docs/cluster-design.md, section 1). How many the log has,
-- fixed when it is created; each event's partition (NULL: every partition
-- reads it); and each session's home, chosen by its first event and kept,
-- so that a `vendor_data` only a later delivery carries does not move it.
CREATE TABLE log_partitions (
    id         smallint PRIMARY KEY CHECK (id = 1),
    partitions int      NOT NULL CHECK (partitions BETWEEN 1 AND 1024)
);
-- A log that already holds events was made with one partition.
INSERT INTO log_partitions (id, partitions)
SELECT 1, 1 WHERE EXISTS (SELECT 1 FROM events);

ALTER TABLE events ADD COLUMN partition int;
CREATE INDEX events_by_partition ON events (partition, pos);

CREATE TABLE session_routes (
    session_id text   PRIMARY KEY,
    partition  int    NOT NULL,
    -- The event that chose it.
    first_pos  bigint NOT NULL
);
