//! [`PgLog`]: the event log on PostgreSQL.
