-- API tokens, console users, console sign-ins and sign-in attempts (see
-- the SQLite schema in access.rs for what each keeps).
CREATE TABLE api_tokens (
    id            text   PRIMARY KEY,
    name          text   NOT NULL,
    scope         text   NOT NULL,
    digest        text   NOT NULL UNIQUE,
    created_at_ms bigint NOT NULL,
    revoked_at_ms bigint
);

CREATE TABLE users (
    username      text   PRIMARY KEY,
    role          text   NOT NULL,
    password_hash text   NOT NULL,
    created_at_ms bigint NOT NULL
);

CREATE TABLE console_sessions (
    digest        text   PRIMARY KEY,
    username      text   NOT NULL,
    csrf          text   NOT NULL,
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL
);

CREATE TABLE login_attempts (
    key             text    PRIMARY KEY,
    attempts        integer NOT NULL,
    last_ms         bigint  NOT NULL,
    locked_until_ms bigint
);
