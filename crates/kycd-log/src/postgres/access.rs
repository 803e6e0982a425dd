//! Tokens, users, console sign-ins and lockouts on PostgreSQL.
