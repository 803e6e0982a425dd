-- Outbox lanes and claim holders (issue 17).
--
-- `lane` orders actions: `session:<id>` for Didit actions, `endpoint` for
-- operator webhooks (crate::outbox::lane_of); a claim takes only a lane's
-- oldest unfinished action. `claimed_by`/`claimed_epoch` say which
-- instance run holds a running action, so a restarted instance hands back
-- its previous runs' claims and no one else's.
ALTER TABLE actions ADD COLUMN lane text;
ALTER TABLE actions ADD COLUMN claimed_by text;
ALTER TABLE actions ADD COLUMN claimed_epoch bigint;
UPDATE actions SET lane = CASE WHEN kind = 'operator.webhook' THEN 'endpoint'
     WHEN kind LIKE 'didit.%' AND session_id IS NOT NULL THEN 'session:' || session_id END;
-- What a claim probes for an earlier unfinished action of a lane: the
-- backlog only, not the history.
CREATE INDEX actions_lanes ON actions (lane, seq) WHERE state IN ('pending', 'running');
