//! The PostgreSQL backend against every store-side conformance suite and
//! the migrations, in the server `KYCD_TEST_POSTGRES_URL` names (one
//! schema per check). Without it these print a notice and pass, except
//! under `CI=true`, where they fail.
//!
//! ```text
//! KYCD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test --workspace --locked --test postgres_store
//! ```

use kycd_log::postgres::testing::{url_or_skip, Schemas};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_apply_once_in_order_even_when_instances_start_together() {
    let Some(url) = url_or_skip("postgres_store") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let url = schemas.url_of(&schema);
    let settings = kycd_log::postgres::PoolSettings::default();
    // Three instances starting at once: the advisory lock lets one migrate.
    let (a, b, c) = tokio::join!(
        kycd_log::postgres::Database::connect(&url, &settings),
        kycd_log::postgres::Database::connect(&url, &settings),
        kycd_log::postgres::Database::connect(&url, &settings),
    );
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(
        a.applied_migrations().await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7]
    );
    // Connecting again applies nothing.
    let again = kycd_log::postgres::Database::connect(&url, &settings)
        .await
        .unwrap();
    assert_eq!(
        again.applied_migrations().await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7]
    );
    schemas.drop_all().await;
}
