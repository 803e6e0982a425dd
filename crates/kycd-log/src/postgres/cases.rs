//! The review queue on PostgreSQL.
