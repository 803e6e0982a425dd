//! Access to `/api/v1`: who is calling and what they may do, and the token
//! endpoints (`/api/v1/tokens`, admin only).
//!
//! `KYCD_API_TOKEN` is a full-access bootstrap token. Other tokens are
//! created by an admin (here or with `kycd token create`), stored as their
//! SHA-256 digest, scoped (`read` for every GET, `review` for decisions and
//! subject writes, `admin` for users, tokens and actions) and revocable. A
//! request without a valid token is a 401; one whose token lacks the scope
//! is a 403. Neither says more than that.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kycd_core::when::format_millis;
use kycd_log::access::{Access, Scope, TokenInfo};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::store_err;
use crate::error::{ApiError, Code};
use crate::App;

/// Who is calling, for the audit trail: `bootstrap` or a token's id.
#[derive(Debug, Clone)]
pub struct Principal(pub String);

/// The digest a token is stored and looked up by.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Mint a token: 256 random bits, shown once. Returns its record and the
/// secret; the store gets only [`digest`] of the secret.
pub async fn create_token(
    access: &dyn Access,
    name: &str,
    scope: Scope,
    now_ms: i64,
) -> Result<(TokenInfo, String), kycd_log::store::StoreError> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("kycd_{}", hex::encode(bytes));
    let info = TokenInfo {
        id: format!("tok_{}", kycd_core::id::ulid_body(now_ms)),
        name: name.to_owned(),
        scope,
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    access.create_token(info.clone(), digest(&secret)).await?;
    Ok((info, secret))
}

/// The console roles.
pub const ROLES: [&str; 3] = ["admin", "reviewer", "viewer"];

/// An argon2id hash of `password` in PHC form, with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches a hash made by [`hash_password`].
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// The write routes a `review` token may use, as route templates under
/// `/api/v1`; every other write needs `admin`.
const REVIEW_ROUTES: [(&str, &str); 2] = [
    ("PUT", "/subjects/{vendor_data}"),
    ("POST", "/sessions/{session_id}/review"),
];

/// The scope a request to `route` (the matched route template, not the
/// path: an id in the path must not change the scope) needs: reads need
/// `read`, the [`REVIEW_ROUTES`] `review`, every other write `admin`, and
/// so does a request with no matched route (fail closed).
fn required(method: &Method, route: Option<&str>) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        return Scope::Read;
    }
    let Some(route) = route else {
        return Scope::Admin;
    };
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    if REVIEW_ROUTES
        .iter()
        .any(|(m, r)| method.as_str() == *m && route == *r)
    {
        Scope::Review
    } else {
        Scope::Admin
    }
}

/// The middleware in front of every `/api/v1` route.
pub async fn authorize(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let unauthorized =
        || ApiError::new(Code::Unauthorized, "missing or invalid bearer token").into_response();
    let Some(presented) = presented else {
        return unauthorized();
    };
    // The bootstrap token, compared in constant time over digests so
    // neither its content nor its length shows in the timing.
    let presented_digest = Sha256::digest(presented.as_bytes());
    let bootstrap = app.settings.api_token.as_ref().is_some_and(|t| {
        bool::from(presented_digest.ct_eq(&Sha256::digest(t.expose().as_bytes())))
    });
    let (principal, scope) = if bootstrap {
        ("bootstrap".to_owned(), Scope::Admin)
    } else {
        match app
            .access
            .token_by_digest(&hex::encode(presented_digest))
            .await
        {
            Ok(Some(t)) if t.revoked_at_ms.is_none() => (t.id, t.scope),
            Ok(_) => return unauthorized(),
            Err(e) => return store_err(e).into_response(),
        }
    };
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let needed = required(req.method(), route.as_deref());
    if !scope.allows(needed) {
        return ApiError::new(
            Code::Forbidden,
            format!(
                "this token's scope does not allow this request (needs {})",
                needed.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Principal(principal));
    next.run(req).await
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "scope": t.scope,
        "created_at": format_millis(t.created_at_ms),
        "revoked_at": t.revoked_at_ms.map(format_millis),
    })
}

/// `POST /api/v1/tokens {"name": ..., "scope": "read"|"review"|"admin"}`:
/// the token's secret is in this answer and nowhere else.
pub async fn post_token(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::new(Code::BadRequest, "body must be a JSON object"))?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() <= 100)
        .ok_or_else(|| ApiError::new(Code::BadRequest, "name is required (1 to 100 characters)"))?;
    let scope = v
        .get("scope")
        .and_then(Value::as_str)
        .and_then(Scope::parse)
        .ok_or_else(|| ApiError::new(Code::BadRequest, "scope must be read, review or admin"))?;
    let (info, secret) = create_token(app.access.as_ref(), name, scope, app.clock.now_millis())
        .await
        .map_err(store_err)?;
    app.record(
        &who.0,
        "token.created",
        Some(&info.id),
        json!({"scope": scope, "name": name}),
    )
    .await;
    let mut out = token_json(&info);
    out["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub async fn list_tokens(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let tokens = app.access.list_tokens().await.map_err(store_err)?;
    let items: Vec<Value> = tokens.iter().map(token_json).collect();
    Ok(Json(json!({"items": items, "next_cursor": null})).into_response())
}

pub async fn delete_token(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match app
        .access
        .revoke_token(&id, app.clock.now_millis())
        .await
        .map_err(store_err)?
    {
        Some(t) => {
            app.record(
                &who.0,
                "token.revoked",
                Some(&t.id),
                json!({"scope": t.scope}),
            )
            .await;
            Ok(Json(token_json(&t)).into_response())
        }
        None => Err(ApiError::new(Code::NotFound, "no such token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_a_fresh_salt_and_verify() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$") && a != b);
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("correct horsE", &a));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn reads_need_read_subject_writes_review_and_the_rest_admin() {
        let r = |m: Method, route: &str| required(&m, Some(route));
        assert_eq!(r(Method::GET, "/api/v1/actions"), Scope::Read);
        assert_eq!(
            r(Method::PUT, "/api/v1/subjects/{vendor_data}"),
            Scope::Review
        );
        assert_eq!(
            r(Method::POST, "/api/v1/sessions/{session_id}/review"),
            Scope::Review
        );
        assert_eq!(r(Method::POST, "/api/v1/actions/{id}/retry"), Scope::Admin);
        assert_eq!(r(Method::POST, "/api/v1/tokens"), Scope::Admin);
        assert_eq!(r(Method::DELETE, "/api/v1/tokens/{id}"), Scope::Admin);
        // The template decides, whatever the id: these paths once passed
        // for review routes by their text.
        assert_eq!(r(Method::DELETE, "/tokens/review"), Scope::Admin);
        assert_eq!(r(Method::DELETE, "/api/v1/subjects/"), Scope::Admin);
        assert_eq!(required(&Method::POST, None), Scope::Admin);
        assert!(Scope::Admin.allows(Scope::Review) && !Scope::Read.allows(Scope::Review));
    }
}
