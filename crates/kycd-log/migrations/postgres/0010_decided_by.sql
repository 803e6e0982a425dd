-- Which instance decided: the owner of the lease the projection batch was
-- committed under (its fence), written in the same transaction as the
-- decision. NULL for a decision committed without a fence (none of
-- kycd's own, today) and for decisions made before this column existed.
ALTER TABLE decisions ADD COLUMN decided_by text;
