-- The audit chain's anchors (`kycd.audit.anchor`, kycd's own events) are
-- few among the log's events and are read at every start, every readiness
-- check and every anchoring pass: the newest is one probe of this index
-- however many events came after it. Queries spell out the same predicate.
CREATE INDEX events_audit_anchors ON events (pos)
    WHERE kind = 'kycd.audit.anchor' AND source = 'internal';
