-- Several instances on one database: who is alive, and who holds what.
-- Times are the database's clock (now()), never an instance's.
CREATE TABLE cluster_instances (
    instance_id  text        PRIMARY KEY,
    -- Bumped by every start of this id: a stale process with the same id
    -- fails its next heartbeat and stops.
    epoch        bigint      NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    version      text        NOT NULL
);

-- A lease: the projection of a partition (`partition/<k>`) or a
-- cluster-wide task (`timers`). `epoch` is the fencing token, +1 per
-- acquisition: a commit made under a lease checks it in its own
-- transaction, so a former owner (paused, cut off) writes nothing.
CREATE TABLE cluster_leases (
    name       text        PRIMARY KEY,
    owner      text,
    -- The owner's instance epoch: a restart of the same id (a higher
    -- epoch) takes its leases back at once instead of waiting them out.
    owner_epoch bigint     NOT NULL DEFAULT 0,
    epoch      bigint      NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
