//! The console over real HTTP, as a browser speaks it (forms, cookies,
//! redirects): sign-in and its cookie, the queue, a reviewer's decision,
//! and every refusal: no sign-in, a viewer deciding, a form without its
//! CSRF token or from another origin, repeated failed sign-ins, tokens
//! revoked from the console. And behind a reverse proxy that rewrites
//! Host: the public URL, and forwarded headers from trusted peers only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use didit::signature::Secret;
use kycd_core::FixedClock;
use kycd_log::access::UserInfo;
use kycd_server::settings::{PublicUrl, TrustedProxies};
use kycd_server::{Running, Settings};
use reqwest::header::{HeaderMap, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{json, Value};

mod deliveries;

const NOW: i64 = 1_774_970_000;
const TOKEN: &str = "console-test-token";
const SECRET: &str = "console-test-secret";
const PASSWORD: &str = "a long enough password";

/// Every case goes to a person, so every delivery makes a case.
const REVIEW_ALL: &str = include_str!("fixtures/review-all.toml");

struct Console {
    running: Running,
    clock: Arc<FixedClock>,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A signed-in browser: its cookie and the page's CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

/// The value of the (first) input named `name` in the page.
fn input_value(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field"))
        + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

fn csrf_in(html: &str) -> String {
    input_value(html, "csrf")
}

/// `name=value` of the `Set-Cookie` for `name`, and the whole header.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| (v.split(';').next().unwrap().to_owned(), v.to_owned()))
}

async fn login_form_at(http: &reqwest::Client, base: &str) -> (String, String) {
    let r = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (cookie, _) = set_cookie(r.headers(), "kycd_login_csrf").expect("a login cookie");
    (cookie, csrf_in(&r.text().await.unwrap()))
}

async fn try_login_at(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let (cookie, csrf) = login_form_at(http, base).await;
    http.post(format!("{base}/console/login"))
        .header(COOKIE, cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

impl Console {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The console with settings of the test's own on top.
    async fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("review-all.toml");
        std::fs::write(&policy, REVIEW_ALL).unwrap();
        let clock = Arc::new(FixedClock::at_secs(NOW));
        let mut settings = Settings {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            webhook_secrets: vec![Secret::new(SECRET)],
            api_token: Some(Secret::new(TOKEN)),
            policy: Some(policy),
            ..Settings::default()
        };
        configure(&mut settings);
        let running = kycd_server::start(settings, clock.clone()).await.unwrap();
        for (name, role) in [("rita", "reviewer"), ("vic", "viewer"), ("ada", "admin")] {
            let user = UserInfo {
                username: name.into(),
                role: role.into(),
                created_at_ms: NOW * 1000,
            };
            let hash = kycd_server::access_api::hash_password(PASSWORD).unwrap();
            assert!(running.app.access.add_user(user, hash).await.unwrap());
        }
        Self {
            base: format!("http://{}", running.addr),
            running,
            clock,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// Deliver a signed approval for `session`; the policy sends it to review.
    async fn case(&self, session: &str, subject: &str) {
        let payload = deliveries::approved(session, subject, &format!("D-{session}"));
        let resp = deliveries::deliver(&self.http, &self.base, SECRET, &payload).await;
        assert_eq!(resp.status(), 200);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.outcome(session).await.as_deref() != Some("review") {
            assert!(Instant::now() < deadline, "{session} never reached review");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn session(&self, session: &str) -> Value {
        self.http
            .get(format!("{}/api/v1/sessions/{session}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn outcome(&self, session: &str) -> Option<String> {
        self.session(session).await["decision"]["outcome"]
            .as_str()
            .map(str::to_owned)
    }

    /// The login page's form token and its cookie.
    async fn login_form(&self) -> (String, String) {
        login_form_at(&self.http, &self.base).await
    }

    async fn try_login(&self, user: &str, password: &str) -> reqwest::Response {
        try_login_at(&self.http, &self.base, user, password).await
    }

    async fn login(&self, user: &str) -> Browser {
        let r = self.try_login(user, PASSWORD).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()[LOCATION], "/console/");
        let (cookie, _) = set_cookie(r.headers(), "kycd_console").expect("a sign-in cookie");
        let mut b = Browser {
            cookie,
            csrf: String::new(),
        };
        let (status, page) = self.page(&b, "/console/").await;
        assert_eq!(status, 200);
        b.csrf = csrf_in(&page);
        b
    }

    async fn page(&self, b: &Browser, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &b.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, b: &Browser, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &b.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn queued(&self, b: &Browser) -> Vec<String> {
        let (_, page) = self.page(b, "/console/").await;
        page.match_indices(r#"data-session=""#)
            .map(|(i, _)| page[i + 14..].split('"').next().unwrap().to_owned())
            .collect()
    }

    async fn audit(&self) -> Vec<kycd_log::audit::AuditRecord> {
        self.running.app.audit.list_audit(0, 0, 1000).await.unwrap()
    }
}

#[tokio::test]
async fn a_browser_without_a_sign_in_is_sent_to_the_login_form() {
    let c = Console::start().await;
    c.case("s-1", "u-1").await;
    for path in [
        "/console/",
        "/console/cases/s-1",
        "/console/dashboard",
        "/console/tokens",
    ] {
        let r = c
            .http
            .get(format!("{}{path}", c.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()[LOCATION], "/console/login", "{path}");
    }
    let r = c
        .http
        .get(format!("{}/console", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/console/");
    // A form posted without a sign-in changes nothing.
    let r = c
        .http
        .post(format!("{}/console/cases/s-1/decide", c.base))
        .form(&[("outcome", "approve"), ("comment", "x"), ("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(c.outcome("s-1").await.as_deref(), Some("review"));
    // A made-up cookie is no sign-in either.
    let fake = Browser {
        cookie: "kycd_console=00ff".into(),
        csrf: String::new(),
    };
    assert_eq!(c.page(&fake, "/console/").await.0, 303);

    let r = c
        .http
        .get(format!("{}/console/login", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let (_, header) = set_cookie(r.headers(), "kycd_login_csrf").unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(header.contains(attr), "{header}");
    }
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"<form id="login""#), "{page}");
}

#[tokio::test]
async fn a_reviewer_signs_in_works_the_queue_and_decides_with_a_comment() {
    let c = Console::start().await;
    c.case("s-old", "u-1").await;
    c.clock.advance_millis(60_000);
    c.case("s-new", "u-2").await;

    let r = c.try_login("rita", PASSWORD).await;
    let (_, header) = set_cookie(r.headers(), "kycd_console").unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(header.contains(attr), "{header}");
    }
    let b = c.login("rita").await;
    assert_eq!(c.queued(&b).await, ["s-old", "s-new"], "oldest first");
    let (_, page) = c.page(&b, "/console/").await;
    assert!(page.contains(r#"<span id="queue-total">2</span>"#));
    assert!(
        page.contains("always_review</a> <span class=\"count\">2</span>"),
        "reason counts"
    );
    let (_, page) = c.page(&b, "/console/?reason=no_such_rule").await;
    assert!(page.contains(r#"<span id="queue-total">0</span>"#));

    // Taking a case shows under its assignee.
    let r = c
        .post(
            &b,
            "/console/cases/s-new/assign",
            &[("csrf", &b.csrf), ("action", "take")],
        )
        .await;
    assert_eq!(r.status(), 303);
    let (_, page) = c.page(&b, "/console/?assignee=rita").await;
    assert!(page.contains(r#"data-session="s-new""#) && !page.contains(r#"data-session="s-old""#));

    // The case page shows Didit's results and the decide form.
    let (status, page) = c.page(&b, "/console/cases/s-old").await;
    assert_eq!(status, 200);
    for needle in [
        r#"id="decision-outcome" class="outcome outcome-review">review<"#,
        "Face match",
        "AML screening",
        "always_review",
        r#"<form id="decide""#,
    ] {
        assert!(page.contains(needle), "case page lacks {needle}");
    }

    // Without a comment: back to the case with the reason, nothing decided.
    let r = c
        .post(
            &b,
            "/console/cases/s-old/decide",
            &[("csrf", &b.csrf), ("outcome", "approve"), ("comment", "  ")],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/console/cases/s-old?error=comment");
    assert_eq!(c.outcome("s-old").await.as_deref(), Some("review"));

    let r = c
        .post(
            &b,
            "/console/cases/s-old/decide",
            &[
                ("csrf", &b.csrf),
                ("outcome", "approve"),
                ("comment", "Documents checked by hand"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/console/?decided=s-old");
    let (_, page) = c.page(&b, "/console/?decided=s-old").await;
    assert!(page.contains(r#"id="flash""#));
    assert_eq!(
        c.queued(&b).await,
        ["s-new"],
        "the decided case left the queue"
    );
    let d = c.session("s-old").await["decision"].clone();
    assert_eq!(d["outcome"], "approve");
    assert_eq!(d["policy_version"], "reviewer");

    let audit = c.audit().await;
    let rec = audit
        .iter()
        .find(|r| {
            r.actor == "user:rita"
                && r.target.as_deref() == Some("s-old")
                && r.action.contains("decision")
        })
        .unwrap_or_else(|| panic!("the decision is audited under the reviewer: {audit:?}"));
    assert_eq!(rec.details["previous_outcome"], "review");
    assert!(audit
        .iter()
        .any(|r| r.actor == "user:rita" && r.action == "user.login"));
    assert!(audit
        .iter()
        .any(|r| r.actor == "user:rita" && r.action == "case.assigned"));
    assert!(c
        .running
        .app
        .audit
        .verify_audit()
        .await
        .unwrap()
        .first_broken
        .is_none());
}

#[tokio::test]
async fn a_viewer_sees_cases_but_cannot_decide_or_assign() {
    let c = Console::start().await;
    c.case("s-1", "u-1").await;
    let b = c.login("vic").await;
    assert_eq!(c.queued(&b).await, ["s-1"]);
    let (status, page) = c.page(&b, "/console/cases/s-1").await;
    assert_eq!(status, 200);
    assert!(
        !page.contains(r#"<form id="decide""#),
        "no decide form for a viewer"
    );
    let r = c
        .post(
            &b,
            "/console/cases/s-1/decide",
            &[("csrf", &b.csrf), ("outcome", "approve"), ("comment", "ok")],
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = c
        .post(
            &b,
            "/console/cases/s-1/assign",
            &[("csrf", &b.csrf), ("action", "take")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(c.page(&b, "/console/tokens").await.0, 403);
    assert_eq!(c.outcome("s-1").await.as_deref(), Some("review"));
    assert!(!c
        .audit()
        .await
        .iter()
        .any(|r| r.target.as_deref() == Some("s-1") && r.actor == "user:vic"));
}

#[tokio::test]
async fn a_form_without_its_csrf_token_or_from_another_origin_is_refused() {
    let c = Console::start().await;
    c.case("s-1", "u-1").await;
    let b = c.login("rita").await;
    let decide = |csrf: &'static str| {
        [
            ("outcome", "approve"),
            ("comment", "looks fine"),
            ("csrf", csrf),
        ]
    };
    let r = c
        .post(
            &b,
            "/console/cases/s-1/decide",
            &[("outcome", "approve"), ("comment", "looks fine")],
        )
        .await;
    assert_eq!(r.status(), 403, "no token");
    let r = c.post(&b, "/console/cases/s-1/decide", &decide("")).await;
    assert_eq!(r.status(), 403, "an empty token");
    let r = c
        .post(&b, "/console/cases/s-1/decide", &decide("0123abcd"))
        .await;
    assert_eq!(r.status(), 403, "a wrong token");
    // Another sign-in's token is not this one's.
    let other = c.login("ada").await;
    let r = c
        .post(
            &b,
            "/console/cases/s-1/decide",
            &[
                ("outcome", "approve"),
                ("comment", "x"),
                ("csrf", &other.csrf),
            ],
        )
        .await;
    assert_eq!(r.status(), 403, "a token of another sign-in");
    // The right token, from another origin.
    let r = c
        .http
        .post(format!("{}/console/cases/s-1/decide", c.base))
        .header(COOKIE, &b.cookie)
        .header("origin", "https://evil.example")
        .form(&[("outcome", "approve"), ("comment", "x"), ("csrf", &b.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "cross-origin");
    let r = c.post(&b, "/console/logout", &[]).await;
    assert_eq!(r.status(), 403, "signing out needs the token too");
    assert_eq!(
        c.outcome("s-1").await.as_deref(),
        Some("review"),
        "nothing was decided"
    );

    // The login form needs its own token and cookie.
    let (_, csrf) = c.login_form().await;
    let r = c
        .http
        .post(format!("{}/console/login", c.base))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "rita"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "login without its cookie");
    assert!(set_cookie(r.headers(), "kycd_console").is_none());
}

/// Headers as a reverse proxy passes a browser's request on: `Host`
/// rewritten to kycd's own address, the browser's `Origin` kept, and the
/// forwarded headers given.
fn proxied(
    req: reqwest::RequestBuilder,
    forwarded: &[(&'static str, &'static str)],
) -> reqwest::RequestBuilder {
    let mut req = req
        .header(HOST, "internal:8080")
        .header(ORIGIN, "https://kyc.example.com");
    for (name, value) in forwarded {
        req = req.header(*name, *value);
    }
    req
}

impl Console {
    /// The login form posted through a proxy (`proxied`).
    async fn proxied_login(&self, forwarded: &[(&'static str, &'static str)]) -> reqwest::Response {
        let (cookie, csrf) = self.login_form().await;
        let req = self
            .http
            .post(format!("{}/console/login", self.base))
            .header(COOKIE, cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", "rita"),
                ("password", PASSWORD),
            ]);
        proxied(req, forwarded).send().await.unwrap()
    }

    /// A reviewer's approval of `session` posted through a proxy.
    async fn proxied_decide(
        &self,
        b: &Browser,
        session: &str,
        forwarded: &[(&'static str, &'static str)],
    ) -> reqwest::Response {
        let req = self
            .http
            .post(format!("{}/console/cases/{session}/decide", self.base))
            .header(COOKIE, &b.cookie)
            .form(&[
                ("csrf", b.csrf.as_str()),
                ("outcome", "approve"),
                ("comment", "checked by hand"),
            ]);
        proxied(req, forwarded).send().await.unwrap()
    }
}

#[tokio::test]
async fn behind_a_proxy_that_rewrites_host_forms_are_refused_until_the_public_url_is_set() {
    // Without KYCD_PUBLIC_URL the browser's origin is not the Host kycd
    // sees, so the sign-in and a decision are refused as cross-origin.
    let c = Console::start().await;
    c.case("s-1", "u-1").await;
    let r = c.proxied_login(&[]).await;
    assert_eq!(r.status(), 403);
    assert!(set_cookie(r.headers(), "kycd_console").is_none());
    let b = c.login("rita").await;
    assert_eq!(c.proxied_decide(&b, "s-1", &[]).await.status(), 403);
    assert_eq!(c.outcome("s-1").await.as_deref(), Some("review"));

    // With it, the same requests are accepted. (The peer, 127.0.0.1, is a
    // trusted proxy too, to show below that the public URL wins.)
    let c = Console::start_with(|s| {
        s.public_url = Some(PublicUrl::parse("https://kyc.example.com").unwrap());
        s.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await;
    c.case("s-1", "u-1").await;
    let r = c.proxied_login(&[]).await;
    assert_eq!(r.status(), 303, "signed in through the proxy");
    let (cookie, _) = set_cookie(r.headers(), "kycd_console").expect("a sign-in cookie");
    let mut b = Browser {
        cookie,
        csrf: String::new(),
    };
    b.csrf = csrf_in(&c.page(&b, "/console/").await.1);
    let r = c.proxied_decide(&b, "s-1", &[]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/console/?decided=s-1");
    assert_eq!(c.outcome("s-1").await.as_deref(), Some("approve"));

    // Only that origin: another one, or Host's own, is refused now, even
    // when the trusted proxy's forwarded headers name it.
    c.case("s-2", "u-2").await;
    for (scheme, host) in [
        ("https", "evil.example"),
        ("http", "kyc.example.com"),
        ("http", "internal:8080"),
    ] {
        let r = c
            .http
            .post(format!("{}/console/cases/s-2/decide", c.base))
            .header(COOKIE, &b.cookie)
            .header(HOST, "internal:8080")
            .header(ORIGIN, format!("{scheme}://{host}"))
            .header("x-forwarded-host", host)
            .header("x-forwarded-proto", scheme)
            .form(&[
                ("csrf", b.csrf.as_str()),
                ("outcome", "approve"),
                ("comment", "x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{scheme}://{host}");
    }
    assert_eq!(c.outcome("s-2").await.as_deref(), Some("review"));
}

#[tokio::test]
async fn x_forwarded_host_counts_only_from_a_trusted_proxy() {
    let forwarded = [
        ("x-forwarded-host", "kyc.example.com"),
        ("x-forwarded-proto", "https"),
    ];
    // The test's connections come from 127.0.0.1: listed here...
    let trusted = Console::start_with(|s| {
        s.trusted_proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
    })
    .await;
    // ...and not here.
    let untrusted = Console::start_with(|s| {
        s.trusted_proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
    })
    .await;
    for c in [&trusted, &untrusted] {
        c.case("s-1", "u-1").await;
    }

    let r = untrusted.proxied_login(&forwarded).await;
    assert_eq!(
        r.status(),
        403,
        "an untrusted peer's X-Forwarded-Host is ignored"
    );
    let b = untrusted.login("rita").await;
    assert_eq!(
        untrusted
            .proxied_decide(&b, "s-1", &forwarded)
            .await
            .status(),
        403
    );
    assert_eq!(untrusted.outcome("s-1").await.as_deref(), Some("review"));

    assert_eq!(trusted.proxied_login(&forwarded).await.status(), 303);
    let b = trusted.login("rita").await;
    // The proxy's scheme must be the origin's.
    let plain = [
        ("x-forwarded-host", "kyc.example.com"),
        ("x-forwarded-proto", "http"),
    ];
    assert_eq!(
        trusted.proxied_decide(&b, "s-1", &plain).await.status(),
        403
    );
    // Without forwarded headers, even a trusted peer is held to Host.
    assert_eq!(trusted.proxied_decide(&b, "s-1", &[]).await.status(), 403);
    assert_eq!(trusted.outcome("s-1").await.as_deref(), Some("review"));
    let r = trusted.proxied_decide(&b, "s-1", &forwarded).await;
    assert_eq!(r.status(), 303);
    assert_eq!(trusted.outcome("s-1").await.as_deref(), Some("approve"));
}

#[tokio::test]
async fn repeated_failed_sign_ins_pause_the_username_and_say_nothing_more() {
    let c = Console::start().await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let r = c.try_login("rita", "wrong password").await;
        assert_eq!(r.status(), 401);
        answers.push(r.text().await.unwrap());
    }
    let r = c.try_login("rita", PASSWORD).await;
    assert_eq!(r.status(), 401, "paused, even with the right password");
    assert!(set_cookie(r.headers(), "kycd_console").is_none());
    let paused = r.text().await.unwrap();
    let unknown = c
        .try_login("nobody", "whatever")
        .await
        .text()
        .await
        .unwrap();
    let error = |page: &str| {
        page[page.find("login-error").unwrap()..]
            .split('<')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        error(&paused),
        error(&answers[0]),
        "a pause reads like any failure"
    );
    assert_eq!(
        error(&unknown),
        error(&answers[0]),
        "an unknown user reads the same"
    );
    // Another user is not affected.
    c.login("ada").await;
    c.clock.advance_millis(15 * 60 * 1000 + 1);
    c.login("rita").await;
    let audit = c.audit().await;
    assert!(audit
        .iter()
        .any(|r| r.actor == "user:rita" && r.action == "user.locked"));
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.actor == "user:rita" && r.action == "user.login_failed")
            .count(),
        6
    );
    // What an unknown user typed is not kept: it may be an email address.
    let anonymous: Vec<_> = audit.iter().filter(|r| r.actor == "anonymous").collect();
    assert_eq!(anonymous.len(), 1);
    assert!(!format!("{anonymous:?}").contains("nobody"));
}

#[tokio::test]
async fn parallel_guesses_share_one_budget_and_an_admin_can_lift_the_pause() {
    let c = Console::start().await;
    let guesses: Vec<_> = (0..8)
        .map(|_| {
            let (http, base) = (c.http.clone(), c.base.clone());
            tokio::spawn(async move {
                try_login_at(&http, &base, "rita", "wrong password")
                    .await
                    .status()
            })
        })
        .collect();
    for g in guesses {
        assert_eq!(g.await.unwrap(), 401);
    }
    assert_eq!(c.try_login("rita", PASSWORD).await.status(), 401, "paused");
    let audit = c.audit().await;
    let checked = audit
        .iter()
        .filter(|r| r.action == "user.login_failed" && r.details["locked"] == false)
        .count();
    assert_eq!(checked, 5, "only five passwords were checked");
    assert_eq!(
        audit.iter().filter(|r| r.action == "user.locked").count(),
        1
    );

    let ada = c.login("ada").await;
    let r = c
        .post(&ada, "/console/users/rita/unlock", &[("csrf", &ada.csrf)])
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("no longer paused"));
    c.login("rita").await;
    assert!(c
        .audit()
        .await
        .iter()
        .any(|r| r.actor == "user:ada" && r.action == "user.unlocked"));
}

#[tokio::test]
async fn a_decision_on_a_case_that_changed_meanwhile_is_refused() {
    let c = Console::start().await;
    c.case("s-1", "u-1").await;
    let rita = c.login("rita").await;
    let (_, page) = c.page(&rita, "/console/cases/s-1").await;
    let seen = input_value(&page, "decision_id");
    assert!(seen.starts_with("dec_"), "{seen}");
    // Someone else decides first (through the API, with what they saw).
    let session = c.session("s-1").await;
    let r = c
        .http
        .post(format!("{}/api/v1/sessions/s-1/review", c.base))
        .bearer_auth(TOKEN)
        .json(&json!({"outcome": "decline", "comment": "second look", "decision_id": session["decision"]["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Rita's page is now stale: nothing she did not see is overruled.
    let r = c
        .post(
            &rita,
            "/console/cases/s-1/decide",
            &[
                ("csrf", &rita.csrf),
                ("decision_id", &seen),
                ("outcome", "approve"),
                ("comment", "fine"),
            ],
        )
        .await;
    assert_eq!(r.headers()[LOCATION], "/console/cases/s-1?error=changed");
    assert_eq!(c.outcome("s-1").await.as_deref(), Some("decline"));
    // The API refuses the same way.
    let r = c
        .http
        .post(format!("{}/api/v1/sessions/s-1/review", c.base))
        .bearer_auth(TOKEN)
        .json(&json!({"outcome": "approve", "comment": "x", "decision_id": seen}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn an_admin_creates_and_revokes_api_tokens_and_signing_out_ends_the_sign_in() {
    let c = Console::start().await;
    let rita = c.login("rita").await;
    assert_eq!(
        c.page(&rita, "/console/tokens").await.0,
        403,
        "reviewers do not manage tokens"
    );
    let b = c.login("ada").await;
    let r = c
        .post(
            &b,
            "/console/tokens",
            &[("csrf", &b.csrf), ("name", "ci reader"), ("scope", "read")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let at = page
        .find(r#"<pre id="token-secret">"#)
        .expect("the secret, once")
        + 23;
    let secret = page[at..].split('<').next().unwrap().to_owned();
    let api = |secret: String| {
        let c = &c;
        async move {
            c.http
                .get(format!("{}/api/v1/sessions", c.base))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(api(secret.clone()).await, 200);
    let (_, listing) = c.page(&b, "/console/tokens").await;
    assert!(!listing.contains(&secret), "the secret is shown once");
    let id_at = listing.find("/console/tokens/tok_").unwrap() + 16;
    let id = listing[id_at..].split('/').next().unwrap().to_owned();
    let r = c
        .post(
            &b,
            &format!("/console/tokens/{id}/revoke"),
            &[("csrf", &b.csrf)],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(api(secret).await, 401, "a revoked token stops working");

    // Users: added by an admin, refused when weak.
    let r = c
        .post(
            &b,
            "/console/users",
            &[
                ("csrf", &b.csrf),
                ("username", "newbie"),
                ("role", "viewer"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = c
        .post(
            &b,
            "/console/users",
            &[
                ("csrf", &b.csrf),
                ("username", "newbie"),
                ("role", "viewer"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    c.login("newbie").await;

    let r = c.post(&b, "/console/logout", &[("csrf", &b.csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        c.page(&b, "/console/").await.0,
        303,
        "the cookie no longer signs in"
    );
    let audit = c.audit().await;
    for action in [
        "token.created",
        "token.revoked",
        "user.created",
        "user.logout",
    ] {
        assert!(
            audit
                .iter()
                .any(|r| r.actor == "user:ada" && r.action == action),
            "{action}"
        );
    }
}

#[tokio::test]
async fn the_dashboard_and_policy_pages_render_for_every_role() {
    let c = Console::start().await;
    c.case("s-1", "u-1").await;
    let b = c.login("vic").await;
    let (status, page) = c.page(&b, "/console/dashboard").await;
    assert_eq!(status, 200);
    assert!(
        page.matches("<svg class=\"chart\"").count() >= 4,
        "charts, not tables"
    );
    assert!(
        page.contains(r#"<p class="big" id="backlog">1</p>"#),
        "one case waits"
    );
    // The intake chart's legend has every result the intake counts, slow
    // bodies (408) among them.
    for result in kycd_server::intake::DeliveryResult::ALL {
        let legend = format!(">{}</text>", result.as_str());
        assert!(
            page.contains(&legend),
            "{legend} missing from the dashboard"
        );
    }
    let (status, page) = c.page(&b, "/console/policy").await;
    assert_eq!(status, 200);
    assert!(page.contains("review-everything"));
    assert!(page.contains("No replay yet"));
    // The report `kycd replay` leaves in the data directory.
    let report = json!({"at": "2026-11-22T10:00:00Z", "candidate": "candidate.toml",
        "report": {"candidate_version": "v9", "compared": 7, "changed": 2, "identical": 5,
                   "matrix": {"approve": {"approve": 5, "review": 2}}, "examples": []}});
    std::fs::write(
        c.running
            .app
            .settings
            .data_dir
            .join(kycd_server::REPLAY_REPORT_FILE),
        report.to_string(),
    )
    .unwrap();
    let (_, page) = c.page(&b, "/console/policy").await;
    assert!(
        page.contains("candidate candidate.toml; 7 decisions compared, 2 changed."),
        "{page}"
    );
    assert!(page.contains(r#"<table id="replay-matrix">"#));
    let r = c
        .http
        .get(format!("{}/console/console.css", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
}
