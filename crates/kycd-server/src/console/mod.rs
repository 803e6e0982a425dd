//! The review console at `/console/`: server-rendered pages (askama
//! templates in `templates/`), no JavaScript.
//!
//! Access:
//! - people sign in with a username and password (argon2id hashes, see
//!   [`crate::access_api::hash_password`]); a browser without a sign-in is
//!   sent to `/console/login` with a 303;
//! - the sign-in is a random 256-bit cookie (`Secure`, `HttpOnly`,
//!   `SameSite=Strict`, path `/console`), stored as its SHA-256 with an
//!   expiry, so signing out or removing the user ends it at once;
//! - every form carries the sign-in's synchronizer token, checked in
//!   constant time by the one extractor every POST handler takes
//!   ([`Posted`]); the login form uses a double-submit cookie instead;
//!   a cross-origin `Origin` is refused too (behind a reverse proxy, the
//!   origin is `KYCD_PUBLIC_URL`'s, or `X-Forwarded-Host` from
//!   `KYCD_TRUSTED_PROXIES`: [`crate::proxy`]);
//! - [`MAX_FAILURES`] failed sign-ins in a row pause a username for
//!   [`LOCK_MS`], whether or not it exists, and every failure answers the
//!   same words, so nothing tells which usernames exist;
//! - roles: `viewer` reads, `reviewer` also assigns and decides cases,
//!   `admin` also manages tokens and users.
//!
//! Every change (sign-ins, failures, lockouts, decisions, assignments,
//! tokens, users) is in the audit trail under `user:NAME`.

// Handlers answer `Result<Response, Response>` (a page or an error page),
// the usual axum shape; the error is as large as the success.
#![allow(clippy::result_large_err)]

mod charts;
mod pages;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use kycd_log::access::{ConsoleSession, LoginAttempt};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::access_api::{digest, verify_password};
use crate::proxy::same_origin;
use crate::App;

/// Failed sign-ins in a row that pause a username.
pub const MAX_FAILURES: u32 = 5;
/// How long a paused username stays paused.
pub const LOCK_MS: i64 = 15 * 60 * 1000;
/// How long a sign-in lasts.
pub const SESSION_MS: i64 = 8 * 60 * 60 * 1000;
/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

const SESSION_COOKIE: &str = "kycd_console";
const LOGIN_CSRF_COOKIE: &str = "kycd_login_csrf";

/// A console role. Each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Reviewer,
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "reviewer" => Some(Self::Reviewer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The signed-in person, put in the request by [`require_sign_in`].
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub role: Role,
    csrf: String,
    cookie_digest: String,
}

impl User {
    /// The audit trail's name for them.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }

    /// A 403 page unless they have `role`.
    pub fn require(&self, role: Role) -> Result<(), Response> {
        if self.role >= role {
            Ok(())
        } else {
            Err(page_error(
                StatusCode::FORBIDDEN,
                "Your role does not allow this.",
            ))
        }
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The console's routes (all under `/console`).
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let signed_in = Router::new()
        .route("/console/", get(pages::queue))
        .route("/console/cases/{session_id}", get(pages::case))
        .route("/console/cases/{session_id}/decide", post(pages::decide))
        .route("/console/cases/{session_id}/assign", post(pages::assign))
        .route("/console/dashboard", get(pages::dashboard))
        .route("/console/policy", get(pages::policy))
        .route(
            "/console/tokens",
            get(pages::tokens).post(pages::create_token),
        )
        .route("/console/tokens/{id}/revoke", post(pages::revoke_token))
        .route("/console/users", get(pages::users).post(pages::add_user))
        .route("/console/users/{username}/unlock", post(pages::unlock_user))
        .route("/console/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(app, require_sign_in));
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/console.css", get(stylesheet))
        .merge(signed_in)
        .layer(middleware::map_response(security_headers))
}

/// Headers on every console answer: no framing, no caching of pages that
/// hold personal data, and a content policy that allows only our own
/// stylesheet and forms.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../../templates/console.css"),
    )
        .into_response()
}

/// A plain page saying what went wrong (never anything personal).
pub fn page_error(status: StatusCode, message: &str) -> Response {
    use askama::Template;
    let page = pages::ErrorPage {
        message: message.to_owned(),
    };
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(_) => (status, message.to_owned()).into_response(),
    }
}

/// Render a template as a 200 page, or a 500 that says nothing more.
pub fn render(t: &impl askama::Template) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            page_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be shown.",
            )
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn set_cookie(app: &App, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if app.settings.console_cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

/// Resolve the sign-in cookie, or send the browser to the login page.
async fn require_sign_in(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let Some(token) = cookie(req.headers(), SESSION_COOKIE) else {
        return to_login();
    };
    let cookie_digest = digest(&token);
    let session = match app
        .access
        .console_session(&cookie_digest, app.clock.now_millis())
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => return to_login(),
        Err(e) => {
            tracing::error!(error = %e, "console session lookup failed");
            return page_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "kycd cannot read its store right now.",
            );
        }
    };
    let Some(role) = Role::parse(&session.role) else {
        return page_error(StatusCode::FORBIDDEN, "Your account has no console role.");
    };
    req.extensions_mut().insert(User {
        username: session.username,
        role,
        csrf: session.csrf,
        cookie_digest,
    });
    next.run(req).await
}

/// A form posted by a signed-in user, with its CSRF token checked. Every
/// POST handler behind the sign-in takes one, so no form can skip the check.
pub struct Posted {
    pub user: User,
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of `name`, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The TCP peer of the request's connection, when it came over a socket.
fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn tokens_match(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(Sha256::digest(a).ct_eq(&Sha256::digest(b)))
}

async fn read_form(req: Request) -> Result<(HeaderMap, Vec<(String, String)>), Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| page_error(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
    let fields = form_urlencoded::parse(&bytes).into_owned().collect();
    Ok((parts.headers, fields))
}

impl FromRequest<Arc<App>> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let user = req
            .extensions()
            .get::<User>()
            .cloned()
            .ok_or_else(to_login)?;
        let peer = peer(&req);
        let (headers, fields) = read_form(req).await?;
        let refused = || {
            page_error(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this console. Reload the page and try again.",
            )
        };
        if !same_origin(&app.settings, &headers, peer) {
            return Err(refused());
        }
        let posted = Posted { user, fields };
        match posted.get("csrf") {
            Some(t) if tokens_match(t, &posted.user.csrf) => Ok(posted),
            _ => Err(refused()),
        }
    }
}

async fn login_form(State(app): State<Arc<App>>) -> Response {
    login_page(&app, StatusCode::OK, None)
}

fn login_page(app: &App, status: StatusCode, error: Option<&str>) -> Response {
    let csrf = random_hex();
    let mut res = render(&pages::LoginPage {
        csrf: csrf.clone(),
        error: error.map(str::to_owned),
    });
    *res.status_mut() = status;
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(app, LOGIN_CSRF_COOKIE, &csrf, 3600),
    );
    res
}

/// Password verifications running at once (each takes ~19 MiB and a core
/// for tens of milliseconds).
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// How long a sign-in waits for a turn before it is told to try again.
const VERIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A hash to verify unknown usernames against, so they take as long as
/// known ones.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| crate::access_api::hash_password(&random_hex()).unwrap_or_default())
}

const LOGIN_FAILED: &str = "Sign-in failed. Check the username and password. After 5 failed attempts in a row, sign-in for that username is paused for 15 minutes.";

async fn login(State(app): State<Arc<App>>, req: Request) -> Response {
    let peer = peer(&req);
    let (headers, fields) = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let csrf_ok = cookie(&headers, LOGIN_CSRF_COOKIE)
        .is_some_and(|c| tokens_match(field("csrf"), &c))
        && same_origin(&app.settings, &headers, peer);
    if !csrf_ok {
        return login_page(
            &app,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired. Please try again."),
        );
    }
    let username = field("username").trim().to_owned();
    let password = field("password").to_owned();
    if username.is_empty() || username.len() > 100 || password.is_empty() {
        return login_page(&app, StatusCode::UNAUTHORIZED, Some(LOGIN_FAILED));
    }
    let now = app.clock.now_millis();
    let unavailable = |e: kycd_log::store::StoreError| {
        tracing::error!(error = %e, "console sign-in: store unavailable");
        page_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "kycd cannot read its store right now.",
        )
    };
    // Password hashing is memory-hard by design: a few at once, the rest
    // wait their turn (briefly), so a flood of sign-ins cannot starve the
    // intake of cores or memory.
    let permit = tokio::time::timeout(VERIFY_WAIT, VERIFYING.acquire()).await;
    let Ok(Ok(_permit)) = permit else {
        return login_page(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("Too many sign-ins at once. Try again in a moment."),
        );
    };
    // Counted before the password is checked, so parallel guesses share
    // the same budget.
    let attempt = match app
        .access
        .begin_login(&username, now, MAX_FAILURES, LOCK_MS)
        .await
    {
        Ok(a) => a,
        Err(e) => return unavailable(e),
    };
    let user = match app.access.user_credentials(&username).await {
        Ok(u) => u,
        Err(e) => return unavailable(e),
    };
    // What was typed as a username is recorded only when it names a user:
    // a mistyped one may be an email address, or a password.
    let actor = match &user {
        Some((u, _)) => format!("user:{}", u.username),
        None => "anonymous".to_owned(),
    };
    let locks = match attempt {
        LoginAttempt::Locked { .. } => {
            app.record(&actor, "user.login_failed", None, json!({"locked": true}))
                .await;
            return login_page(&app, StatusCode::UNAUTHORIZED, Some(LOGIN_FAILED));
        }
        LoginAttempt::Allowed { locks } => locks,
    };
    // An unknown user is checked against a decoy, so it takes as long.
    let hash = user
        .as_ref()
        .map_or_else(|| decoy_hash().to_owned(), |(_, h)| h.clone());
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let role_ok = user
        .as_ref()
        .is_some_and(|(u, _)| Role::parse(&u.role).is_some());
    if !matches || !role_ok {
        app.record(&actor, "user.login_failed", None, json!({"locked": false}))
            .await;
        if locks {
            tracing::warn!("console sign-in paused after repeated failures");
            app.record(
                &actor,
                "user.locked",
                None,
                json!({"until": kycd_core::when::format_millis(now + LOCK_MS)}),
            )
            .await;
        }
        return login_page(&app, StatusCode::UNAUTHORIZED, Some(LOGIN_FAILED));
    }
    let Some((user, _)) = user else {
        return login_page(&app, StatusCode::UNAUTHORIZED, Some(LOGIN_FAILED));
    };
    let token = random_hex();
    let session = ConsoleSession {
        username: user.username.clone(),
        role: user.role.clone(),
        csrf: random_hex(),
        created_at_ms: now,
        expires_at_ms: now + SESSION_MS,
    };
    if let Err(e) = app
        .access
        .create_console_session(digest(&token), session)
        .await
    {
        return unavailable(e);
    }
    app.record(
        &format!("user:{}", user.username),
        "user.login",
        None,
        json!({"role": user.role}),
    )
    .await;
    let mut res = Redirect::to("/console/").into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(&app, SESSION_COOKIE, &token, SESSION_MS / 1000),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(&app, LOGIN_CSRF_COOKIE, "", 0),
    );
    res
}

async fn logout(State(app): State<Arc<App>>, posted: Posted) -> Response {
    if let Err(e) = app
        .access
        .delete_console_session(&posted.user.cookie_digest)
        .await
    {
        tracing::error!(error = %e, "console sign-out failed");
        return page_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "kycd cannot write its store right now.",
        );
    }
    app.record(&posted.user.actor(), "user.logout", None, json!({}))
        .await;
    let mut res = Redirect::to("/console/login").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&app, SESSION_COOKIE, "", 0));
    res
}
