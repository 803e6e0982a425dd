//! Schemas of a database for tools that make a kycd database of their own
//! beside others (`kycd demo --cluster`, the tests' fresh schemas): a name
//! made here, created and dropped whole, and the URL whose connections use
//! it.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;

use super::{redact, store_error};
use crate::store::StoreError;

/// `url` with `search_path` set to `schema` (libpq's `options`, added to
/// any the URL has), as an operator writes it in `KYCD_DATABASE_URL`.
pub fn url_with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// Whether `url` chooses its schema itself (a `search_path` in its
/// options).
pub fn names_a_schema(url: &str) -> bool {
    url.to_ascii_lowercase().contains("search_path")
}

/// A small pool (two connections) on the database `url` names, for the
/// statements here.
pub async fn admin(url: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("database URL: {}", redact(&e))))?;
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.disable_statement_logging())
        .await
        .map_err(store_error)
}

/// A schema name of letters, digits and underscores only: it is quoted
/// into statements.
fn checked(name: &str) -> Result<&str, StoreError> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name)
    } else {
        Err(StoreError::Corrupt(
            "a schema name is letters, digits and underscores".into(),
        ))
    }
}

pub async fn create(admin: &PgPool, name: &str) -> Result<(), StoreError> {
    sqlx::query(&format!("CREATE SCHEMA \"{}\"", checked(name)?))
        .execute(admin)
        .await
        .map(drop)
        .map_err(store_error)
}

/// Drop the schema and everything in it.
pub async fn drop_schema(admin: &PgPool, name: &str) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        checked(name)?
    ))
    .execute(admin)
    .await
    .map(drop)
    .map_err(store_error)
}

/// Whether the schema `admin`'s connections use already holds a kycd
/// database (its migrations table).
pub async fn holds_kycd(admin: &PgPool) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT to_regclass('kycd_migrations') IS NOT NULL")
        .fetch_one(admin)
        .await
        .map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_path_joins_the_urls_parameters() {
        assert_eq!(
            url_with_search_path("postgres://u@h/db", "s1"),
            "postgres://u@h/db?options=-csearch_path%3Ds1"
        );
        let url = url_with_search_path("postgres://u@h/db?sslmode=disable", "s1");
        assert_eq!(
            url,
            "postgres://u@h/db?sslmode=disable&options=-csearch_path%3Ds1"
        );
        assert!(names_a_schema(&url));
        assert!(!names_a_schema("postgres://u@h/db?sslmode=disable"));
    }

    #[test]
    fn only_plain_names_are_quoted_into_statements() {
        assert!(checked("kycd_demo_1").is_ok());
        for bad in ["", "a\"b", "a;b", "a b"] {
            assert!(checked(bad).is_err(), "{bad:?}");
        }
    }
}
