//! The API client against an in-process mock of Didit: request shapes for
//! every call, typed errors, retries, `Retry-After` and the rate limiter.

use std::time::Duration;

use didit::client::{
    ApiError, BlocklistAdd, BlocklistRemove, ClientConfig, CreateSessionRequest,
    CreateWebhookDestination, CreateWorkflowRequest, DiditClient, ListSessionsQuery, NewStatus,
    NodeToResubmit, UpdateStatusRequest, WorkflowType,
};
use serde_json::{json, Value};
use tokio::time::Instant;

use mock::{MockServer, Reply};

/// A mock Didit: records every request and answers from a script, then `200 {}`.
mod mock {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::Response;
    use axum::Router;
    use serde_json::Value;
    use tokio::time::Instant;

    /// One request as the mock saw it.
    #[derive(Clone, Debug)]
    pub struct Recorded {
        pub method: Method,
        pub path: String,
        pub query: Option<String>,
        pub headers: HeaderMap,
        pub body: Vec<u8>,
        pub at: Instant,
    }

    impl Recorded {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }

        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("request body is json")
        }

        pub fn query_pairs(&self) -> Vec<(String, String)> {
            let query = self.query.clone().unwrap_or_default();
            let url = reqwest::Url::parse(&format!("http://x/?{query}")).expect("query parses");
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        }
    }

    /// A scripted answer.
    #[derive(Clone, Debug)]
    pub struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    }

    impl Reply {
        pub fn json(status: u16, body: Value) -> Self {
            Self {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::to_vec(&body).expect("json"),
                delay: Duration::ZERO,
            }
        }

        pub fn bytes(status: u16, content_type: &str, body: &[u8]) -> Self {
            Self {
                status,
                headers: vec![("content-type".into(), content_type.into())],
                body: body.to_vec(),
                delay: Duration::ZERO,
            }
        }

        pub fn empty(status: u16) -> Self {
            Self {
                status,
                headers: Vec::new(),
                body: Vec::new(),
                delay: Duration::ZERO,
            }
        }

        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.into(), value.into()));
            self
        }

        /// Answers only after `delay`, to simulate a slow Didit.
        pub fn delayed(mut self, delay: Duration) -> Self {
            self.delay = delay;
            self
        }
    }

    #[derive(Default)]
    struct Shared {
        requests: Mutex<Vec<Recorded>>,
        script: Mutex<VecDeque<Reply>>,
    }

    pub struct MockServer {
        addr: SocketAddr,
        shared: Arc<Shared>,
    }

    impl MockServer {
        pub async fn start() -> Self {
            let shared = Arc::new(Shared::default());
            let app = Router::new().fallback(handle).with_state(shared.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("local addr");
            tokio::spawn(async move {
                axum::serve(listener, app).await.expect("mock server");
            });
            Self { addr, shared }
        }

        pub fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// Queues answers, served in order to the next requests.
        pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
            self.shared.script.lock().unwrap().extend(replies);
        }

        pub fn requests(&self) -> Vec<Recorded> {
            self.shared.requests.lock().unwrap().clone()
        }

        pub fn only_request(&self) -> Recorded {
            let requests = self.requests();
            assert_eq!(requests.len(), 1, "expected one request, got {requests:#?}");
            requests.into_iter().next().unwrap()
        }
    }

    async fn handle(
        State(shared): State<Arc<Shared>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        shared.requests.lock().unwrap().push(Recorded {
            method,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers,
            body: body.to_vec(),
            at: Instant::now(),
        });
        let reply = shared
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Reply::json(200, serde_json::json!({})));
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
        for (name, value) in &reply.headers {
            response = response.header(name, value);
        }
        response.body(Body::from(reply.body)).unwrap()
    }
}

const API_KEY: &str = "test-key-5f2b";
const SESSION_ID: &str = "11111111-2222-3333-4444-555555555555";

/// Fast retries so that tests spend no time in backoff.
fn config(server: &MockServer) -> ClientConfig {
    let mut config = ClientConfig::new(API_KEY).with_base_url(server.url());
    config.timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(2);
    config.backoff_base = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(20);
    config
}

fn client(config: ClientConfig) -> DiditClient {
    DiditClient::new(config).expect("valid config")
}

async fn started() -> (MockServer, DiditClient) {
    let server = MockServer::start().await;
    let client = client(config(&server));
    (server, client)
}

fn created_session_body() -> Value {
    json!({
        "session_id": SESSION_ID,
        "session_number": 1234,
        "session_token": "tok",
        "url": "https://verify.didit.me/session/tok",
        "status": "Not Started",
        "workflow_id": "wf-1",
        "callback": "https://example.com/done",
    })
}

fn assert_common_headers(request: &mock::Recorded) {
    assert_eq!(request.header("x-api-key"), Some(API_KEY));
    let agent = request.header("user-agent").unwrap_or_default();
    assert!(agent.starts_with("kycd/"), "user agent {agent}");
}

#[tokio::test]
async fn create_session_posts_the_body_and_reads_the_created_session() {
    let (server, client) = started().await;
    server.script([Reply::json(201, created_session_body())]);
    let mut request = CreateSessionRequest::new("wf-1");
    request.vendor_data = Some("user-42".into());
    request.callback = Some("https://example.com/done".into());
    request.metadata = Some(json!({"plan": "gold"}));
    request.language = Some("en".into());
    request.contact_details = Some(json!({"email": "a@example.com"}));
    request.expected_details = Some(json!({"first_name": "Alice"}));

    let created = client.create_session(&request).await.unwrap();

    assert_eq!(created.session_id, SESSION_ID);
    assert_eq!(created.session_number, Some(1234));
    assert_eq!(created.session_token, "tok");
    assert_eq!(created.url, "https://verify.didit.me/session/tok");
    assert_eq!(created.status, "Not Started");
    assert_eq!(created.workflow_id.as_deref(), Some("wf-1"));
    assert_eq!(
        created.extra.get("callback"),
        Some(&json!("https://example.com/done"))
    );

    let sent = server.only_request();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v3/session/");
    assert_common_headers(&sent);
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(
        sent.json(),
        json!({
            "workflow_id": "wf-1",
            "vendor_data": "user-42",
            "callback": "https://example.com/done",
            "metadata": {"plan": "gold"},
            "language": "en",
            "contact_details": {"email": "a@example.com"},
            "expected_details": {"first_name": "Alice"},
        })
    );
}

#[tokio::test]
async fn create_session_leaves_unset_fields_out() {
    let (server, client) = started().await;
    server.script([Reply::json(201, created_session_body())]);
    client
        .create_session(&CreateSessionRequest::new("wf-1"))
        .await
        .unwrap();
    assert_eq!(server.only_request().json(), json!({"workflow_id": "wf-1"}));
}

#[tokio::test]
async fn get_decision_returns_the_raw_json() {
    let (server, client) = started().await;
    let decision = json!({"session_id": SESSION_ID, "status": "Approved", "id_verifications": null, "big": 12345678901234567u64});
    server.script([Reply::json(200, decision.clone())]);

    assert_eq!(client.get_decision(SESSION_ID).await.unwrap(), decision);

    let sent = server.only_request();
    assert_eq!(sent.method, "GET");
    assert_eq!(sent.path, format!("/v3/session/{SESSION_ID}/decision/"));
    assert_common_headers(&sent);
    assert_eq!(sent.header("accept"), Some("application/json"));
}

#[tokio::test]
async fn update_status_patches_with_nodes_to_resubmit() {
    let (server, client) = started().await;
    server.script([Reply::json(200, json!({"session_id": SESSION_ID}))]);
    let mut request = UpdateStatusRequest::new(NewStatus::Resubmitted);
    request.comment = Some("blurry document".into());
    request.nodes_to_resubmit = vec![NodeToResubmit {
        node_id: "node-1".into(),
        feature: "ID_VERIFICATION".into(),
    }];
    request.send_email = Some(true);
    request.email_address = Some("a@example.com".into());

    let updated = client.update_status(SESSION_ID, &request).await.unwrap();

    assert_eq!(updated.session_id.as_deref(), Some(SESSION_ID));
    let sent = server.only_request();
    assert_eq!(sent.method, "PATCH");
    assert_eq!(
        sent.path,
        format!("/v3/session/{SESSION_ID}/update-status/")
    );
    assert_common_headers(&sent);
    assert_eq!(
        sent.json(),
        json!({
            "new_status": "Resubmitted",
            "comment": "blurry document",
            "nodes_to_resubmit": [{"node_id": "node-1", "feature": "ID_VERIFICATION"}],
            "send_email": true,
            "email_address": "a@example.com",
        })
    );
}

#[tokio::test]
async fn update_status_sends_approved_and_declined_spelled_as_didit_expects() {
    let (server, client) = started().await;
    client
        .update_status(SESSION_ID, &UpdateStatusRequest::new(NewStatus::Approved))
        .await
        .unwrap();
    client
        .update_status(SESSION_ID, &UpdateStatusRequest::new(NewStatus::Declined))
        .await
        .unwrap();
    let bodies: Vec<Value> = server.requests().iter().map(|r| r.json()).collect();
    assert_eq!(
        bodies,
        vec![
            json!({"new_status": "Approved"}),
            json!({"new_status": "Declined"})
        ]
    );
}

#[tokio::test]
async fn blocklist_add_and_remove_post_the_boolean_fields() {
    let (server, client) = started().await;
    client
        .blocklist_add(&BlocklistAdd {
            session_id: SESSION_ID.into(),
            blocklist_face: true,
            blocklist_document: true,
            ..BlocklistAdd::default()
        })
        .await
        .unwrap();
    client
        .blocklist_remove(&BlocklistRemove {
            session_id: SESSION_ID.into(),
            unblock_email: true,
            ..BlocklistRemove::default()
        })
        .await
        .unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v3/blocklist/add/");
    assert_common_headers(&requests[0]);
    assert_eq!(
        requests[0].json(),
        json!({"session_id": SESSION_ID, "blocklist_face": true, "blocklist_document": true, "blocklist_phone": false, "blocklist_email": false})
    );
    assert_eq!(requests[1].method, "POST");
    assert_eq!(requests[1].path, "/v3/blocklist/remove/");
    assert_eq!(
        requests[1].json(),
        json!({"session_id": SESSION_ID, "unblock_face": false, "unblock_document": false, "unblock_phone": false, "unblock_email": true})
    );
}

#[tokio::test]
async fn list_sessions_sends_filters_as_query_parameters() {
    let (server, client) = started().await;
    server.script([Reply::json(
        200,
        json!({"count": 3, "next": "https://verification.didit.me/v3/sessions/?offset=2", "previous": null,
               "results": [{"session_id": "a"}, {"session_id": "b"}]}),
    )]);
    let query = ListSessionsQuery {
        limit: Some(2),
        offset: Some(0),
        vendor_data: Some("user 42&x".into()),
        status: Some("In Review".into()),
        workflow_id: Some("wf-1".into()),
        date_from: Some("2026-03-01".into()),
        date_to: Some("2026-03-31".into()),
    };

    let page = client.list_sessions(&query).await.unwrap();

    assert_eq!(page.count, 3);
    assert_eq!(page.results.len(), 2);
    assert!(page.next.is_some() && page.previous.is_none());
    let sent = server.only_request();
    assert_eq!(sent.method, "GET");
    assert_eq!(sent.path, "/v3/sessions/");
    assert_common_headers(&sent);
    let pairs = sent.query_pairs();
    let expected: Vec<(String, String)> = [
        ("limit", "2"),
        ("offset", "0"),
        ("vendor_data", "user 42&x"),
        ("status", "In Review"),
        ("workflow_id", "wf-1"),
        ("date_from", "2026-03-01"),
        ("date_to", "2026-03-31"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(pairs, expected);
}

#[tokio::test]
async fn list_sessions_without_filters_sends_no_query() {
    let (server, client) = started().await;
    server.script([Reply::json(
        200,
        json!({"count": 0, "next": null, "previous": null, "results": []}),
    )]);
    client
        .list_sessions(&ListSessionsQuery::default())
        .await
        .unwrap();
    assert_eq!(server.only_request().query, None);
}

#[tokio::test]
async fn delete_session_sends_delete_and_accepts_204() {
    let (server, client) = started().await;
    server.script([Reply::empty(204)]);
    client.delete_session(SESSION_ID).await.unwrap();
    let sent = server.only_request();
    assert_eq!(sent.method, "DELETE");
    assert_eq!(sent.path, format!("/v3/session/{SESSION_ID}/delete/"));
    assert_common_headers(&sent);
}

#[tokio::test]
async fn generate_pdf_returns_the_bytes() {
    let (server, client) = started().await;
    let pdf = b"%PDF-1.7\n\x00\x01binary";
    server.script([Reply::bytes(200, "application/pdf", pdf)]);

    assert_eq!(client.generate_pdf(SESSION_ID).await.unwrap(), pdf.to_vec());

    let sent = server.only_request();
    assert_eq!(sent.method, "GET");
    assert_eq!(sent.path, format!("/v3/session/{SESSION_ID}/generate-pdf/"));
    assert_eq!(sent.header("accept"), Some("application/pdf"));
    assert_common_headers(&sent);
}

#[tokio::test]
async fn create_workflow_posts_type_and_feature_switches() {
    let (server, client) = started().await;
    server.script([Reply::json(201, json!({"uuid": "wf-9", "workflow_label": "Onboarding", "workflow_type": "kyc", "features": []}))]);
    let mut request =
        CreateWorkflowRequest::new("Onboarding", WorkflowType::BiometricAuthentication);
    request.is_liveness_enabled = Some(true);
    request.is_face_match_enabled = Some(true);
    request.face_match_score_decline_threshold = Some(50.0);
    request.is_aml_enabled = Some(false);
    request.max_retry_attempts = Some(3);
    request
        .extra
        .insert("is_ip_analysis_enabled".into(), json!(true));

    let workflow = client.create_workflow(&request).await.unwrap();

    assert_eq!(workflow.id(), Some("wf-9"));
    assert_eq!(workflow.extra.get("features"), Some(&json!([])));
    let sent = server.only_request();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v3/workflows/");
    assert_common_headers(&sent);
    assert_eq!(
        sent.json(),
        json!({
            "workflow_label": "Onboarding",
            "workflow_type": "biometric_authentication",
            "is_liveness_enabled": true,
            "is_face_match_enabled": true,
            "face_match_score_decline_threshold": 50.0,
            "is_aml_enabled": false,
            "max_retry_attempts": 3,
            "is_ip_analysis_enabled": true,
        })
    );
}

#[tokio::test]
async fn webhook_destinations_are_listed_and_created_with_a_redacted_secret() {
    let (server, client) = started().await;
    let secret = "tno2NTeRC1ZK3sBOYlBJDyEzBVENl3pQ1AcZyAW0xnQ";
    server.script([
        Reply::json(200, json!([{"uuid": "d-1", "label": "prod", "url": "https://kycd.example/webhooks/didit",
                                 "enabled": true, "webhook_version": "v3", "subscribed_events": ["status.updated"],
                                 "deliveries_count": 3}])),
        Reply::json(201, json!({"uuid": "d-2", "label": "kycd", "url": "https://kycd.example/webhooks/didit",
                                "enabled": true, "webhook_version": "v3", "secret_shared_key": secret,
                                "subscribed_events": ["status.updated", "data.updated"]})),
    ]);

    let listed = client.list_webhook_destinations().await.unwrap();
    let created = client
        .create_webhook_destination(&CreateWebhookDestination {
            label: "kycd".into(),
            url: "https://kycd.example/webhooks/didit".into(),
            webhook_version: Some("v3".into()),
            subscribed_events: vec!["status.updated".into(), "data.updated".into()],
            enabled: None,
        })
        .await
        .unwrap();

    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].uuid.as_deref(), Some("d-1"));
    assert_eq!(listed[0].extra.get("deliveries_count"), Some(&json!(3)));
    assert!(listed[0].secret_shared_key.is_none());
    assert_eq!(
        created.secret_shared_key.as_ref().map(|s| s.expose()),
        Some(secret)
    );
    assert!(
        !format!("{created:?}").contains(secret),
        "debug shows the secret"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", "/v3/webhook/destinations/")
    );
    assert_eq!(
        (requests[1].method.as_str(), requests[1].path.as_str()),
        ("POST", "/v3/webhook/destinations/")
    );
    assert_common_headers(&requests[0]);
    assert_common_headers(&requests[1]);
    assert_eq!(
        requests[1].json(),
        json!({"label": "kycd", "url": "https://kycd.example/webhooks/didit", "webhook_version": "v3",
               "subscribed_events": ["status.updated", "data.updated"]})
    );
}

#[tokio::test]
async fn bad_request_detail_becomes_a_typed_error() {
    let (server, client) = started().await;
    server.script([Reply::json(
        400,
        json!({"detail": "The new status is the same as the current status."}),
    )]);

    let error = client
        .update_status(
            SESSION_ID,
            &UpdateStatusRequest::new(NewStatus::Resubmitted),
        )
        .await
        .unwrap_err();

    assert!(matches!(error, ApiError::BadRequest { .. }), "{error:?}");
    assert_eq!(error.status(), Some(400));
    assert!(!error.is_retryable());
    assert_eq!(
        error.detail().and_then(|d| d.as_str()),
        Some("The new status is the same as the current status.")
    );
    assert_eq!(server.requests().len(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn structured_detail_is_kept_as_json() {
    let (server, client) = started().await;
    server.script([Reply::json(
        400,
        json!({"detail": {"new_status": ["\"Pending\" is not a valid choice."]}}),
    )]);
    let error = client
        .update_status(SESSION_ID, &UpdateStatusRequest::new(NewStatus::Approved))
        .await
        .unwrap_err();
    assert_eq!(
        error.detail().map(|d| d.value().clone()),
        Some(json!({"new_status": ["\"Pending\" is not a valid choice."]}))
    );
}

#[tokio::test]
async fn forbidden_and_unauthorized_are_unauthorized_errors() {
    let (server, client) = started().await;
    server.script([
        Reply::json(
            403,
            json!({"detail": "You do not have permission to perform this action."}),
        ),
        Reply::json(401, json!({"detail": "Invalid API key."})),
    ]);
    let forbidden = client.get_decision(SESSION_ID).await.unwrap_err();
    let unauthorized = client.get_decision(SESSION_ID).await.unwrap_err();
    assert!(
        matches!(forbidden, ApiError::Unauthorized { status: 403, .. }),
        "{forbidden:?}"
    );
    assert!(
        matches!(unauthorized, ApiError::Unauthorized { status: 401, .. }),
        "{unauthorized:?}"
    );
    assert_eq!(
        forbidden.to_string(),
        "didit refused the api key (http 403): You do not have permission to perform this action."
    );
    assert_eq!(server.requests().len(), 2, "neither is retried");
}

#[tokio::test]
async fn not_found_is_typed_and_not_retried() {
    let (server, client) = started().await;
    server.script([Reply::json(404, json!({"detail": "Session not found."}))]);
    let error = client.get_decision(SESSION_ID).await.unwrap_err();
    assert!(matches!(error, ApiError::NotFound { .. }), "{error:?}");
    assert_eq!(error.status(), Some(404));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn errors_do_not_repeat_the_request_body() {
    let (server, client) = started().await;
    server.script([Reply::json(400, json!({"detail": "Invalid workflow_id."}))]);
    let mut request = CreateSessionRequest::new("wf-x");
    request.expected_details = Some(json!({"first_name": "Alicia", "date_of_birth": "1990-01-02"}));
    request.portrait_image = Some("UE9SVFJBSVQ=".into());

    let error = client.create_session(&request).await.unwrap_err();

    for text in [
        error.to_string(),
        format!("{error:?}"),
        format!("{request:?}"),
    ] {
        assert!(
            !text.contains("Alicia")
                && !text.contains("1990-01-02")
                && !text.contains("UE9SVFJBSVQ="),
            "{text}"
        );
    }
}

#[tokio::test]
async fn server_errors_on_a_get_are_retried_until_it_succeeds() {
    let (server, client) = started().await;
    server.script([
        Reply::json(503, json!({"detail": "Service unavailable"})),
        Reply::empty(502),
        Reply::json(200, json!({"status": "Approved"})),
    ]);
    assert_eq!(
        client.get_decision(SESSION_ID).await.unwrap(),
        json!({"status": "Approved"})
    );
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let server = MockServer::start().await;
    let mut config = config(&server);
    config.max_retries = 2;
    let client = client(config);
    server.script((0..5).map(|_| Reply::json(500, json!({"detail": "boom"}))));

    let error = client
        .list_sessions(&ListSessionsQuery::default())
        .await
        .unwrap_err();

    assert!(
        matches!(error, ApiError::Server { status: 500, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(server.requests().len(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn server_error_on_workflow_creation_is_not_retried() {
    let (server, client) = started().await;
    server.script([Reply::json(500, json!({"detail": "boom"}))]);
    let error = client
        .create_workflow(&CreateWorkflowRequest::new("x", WorkflowType::Kyc))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::Server { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn session_creation_is_retried_only_with_vendor_data() {
    let (server, client) = started().await;
    server.script([Reply::empty(502)]);
    let error = client
        .create_session(&CreateSessionRequest::new("wf-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::Server { status: 502, .. }),
        "{error:?}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "without vendor_data a repeat may duplicate"
    );

    let (server, client) = started().await;
    server.script([Reply::empty(502), Reply::json(201, created_session_body())]);
    let mut request = CreateSessionRequest::new("wf-1");
    request.vendor_data = Some("user-42".into());
    client.create_session(&request).await.unwrap();
    assert_eq!(server.requests().len(), 2, "didit dedupes on vendor_data");
}

#[tokio::test]
async fn resubmission_is_not_retried_but_approval_is() {
    let (server, client) = started().await;
    server.script([Reply::empty(500)]);
    let error = client
        .update_status(
            SESSION_ID,
            &UpdateStatusRequest::new(NewStatus::Resubmitted),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ApiError::Server { .. }), "{error:?}");
    assert_eq!(server.requests().len(), 1);

    let (server, client) = started().await;
    server.script([
        Reply::empty(500),
        Reply::json(200, json!({"session_id": SESSION_ID})),
    ]);
    client
        .update_status(SESSION_ID, &UpdateStatusRequest::new(NewStatus::Approved))
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn delete_that_finds_the_session_gone_after_an_ambiguous_attempt_succeeds() {
    let (server, client) = started().await;
    server.script([
        Reply::empty(502),
        Reply::json(404, json!({"detail": "Not found."})),
    ]);
    client.delete_session(SESSION_ID).await.unwrap();
    assert_eq!(server.requests().len(), 2);

    let (server, client) = started().await;
    server.script([Reply::json(404, json!({"detail": "Not found."}))]);
    let error = client.delete_session(SESSION_ID).await.unwrap_err();
    assert!(
        matches!(error, ApiError::NotFound { .. }),
        "a first-attempt 404 is reported: {error:?}"
    );
}

#[tokio::test]
async fn rate_limited_call_waits_for_retry_after_then_succeeds() {
    let (server, client) = started().await;
    // Even a non-idempotent call is repeated: a 429 was not processed.
    server.script([
        Reply::json(
            429,
            json!({"detail": "Request was throttled. Expected available in 1 second."}),
        )
        .header("retry-after", "1")
        .header("x-ratelimit-remaining", "0"),
        Reply::json(201, json!({"uuid": "wf-9"})),
    ]);
    let start = Instant::now();

    let workflow = client
        .create_workflow(&CreateWorkflowRequest::new("x", WorkflowType::Kyc))
        .await
        .unwrap();

    assert_eq!(workflow.id(), Some("wf-9"));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        start.elapsed()
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test]
async fn retry_after_pauses_the_whole_scope() {
    let server = MockServer::start().await;
    let mut config = config(&server);
    config.max_retries = 0;
    let client = client(config);
    server.script([Reply::json(429, json!({"detail": "throttled"})).header("retry-after", "1")]);

    let error = client
        .list_sessions(&ListSessionsQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::RateLimited { retry_after: Some(wait) } if wait == Duration::from_secs(1)),
        "{error:?}"
    );
    // Another caller in the same scope (a clone shares the limiter) waits out the pause.
    client
        .clone()
        .list_webhook_destinations()
        .await
        .unwrap_or_default();

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "second call went out after {gap:?}"
    );
}

#[tokio::test]
async fn rate_limit_without_retry_after_is_retried_with_backoff() {
    let (server, client) = started().await;
    server.script([
        Reply::json(429, json!({"detail": "throttled"})),
        Reply::json(200, json!({"ok": true})),
    ]);
    assert_eq!(
        client.get_decision(SESSION_ID).await.unwrap(),
        json!({"ok": true})
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    let mut config = config(&server);
    config.timeout = Duration::from_millis(300);
    config.max_retries = 0;
    let client = client(config);
    server.script([Reply::json(200, json!({})).delayed(Duration::from_secs(5))]);

    let error = client.get_decision(SESSION_ID).await.unwrap_err();

    assert!(matches!(error, ApiError::Timeout), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(error.status(), None);
}

#[tokio::test]
async fn a_timed_out_get_is_retried() {
    let server = MockServer::start().await;
    let mut config = config(&server);
    config.timeout = Duration::from_millis(300);
    let client = client(config);
    server.script([
        Reply::json(200, json!({"late": true})).delayed(Duration::from_secs(5)),
        Reply::json(200, json!({"status": "Approved"})),
    ]);

    assert_eq!(
        client.get_decision(SESSION_ID).await.unwrap(),
        json!({"status": "Approved"})
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_timed_out_workflow_creation_is_not_retried() {
    let server = MockServer::start().await;
    let mut config = config(&server);
    config.timeout = Duration::from_millis(300);
    let client = client(config);
    server.script([Reply::json(201, json!({"uuid": "wf"})).delayed(Duration::from_secs(5))]);

    let error = client
        .create_workflow(&CreateWorkflowRequest::new("x", WorkflowType::Kyc))
        .await
        .unwrap_err();

    assert!(matches!(error, ApiError::Timeout), "{error:?}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = ClientConfig::new(API_KEY).with_base_url(format!("http://{addr}"));
    config.max_retries = 1;
    config.backoff_base = Duration::from_millis(1);
    let client = client(config);

    let error = client
        .create_workflow(&CreateWorkflowRequest::new("x", WorkflowType::Kyc))
        .await
        .unwrap_err();

    assert!(matches!(error, ApiError::Transport { .. }), "{error:?}");
    assert!(error.is_retryable());
    // What is recorded on an action names the cause, not only the failure,
    // and never the URL.
    let text = error.with_causes();
    assert!(
        text.starts_with("didit call failed in transport: "),
        "{text}"
    );
    assert!(text.to_lowercase().contains("connect"), "{text}");
    assert!(!text.contains(&addr.port().to_string()), "{text}");
}

#[tokio::test]
async fn the_limiter_never_lets_more_than_the_limit_through_in_a_window() {
    let server = MockServer::start().await;
    let window = Duration::from_millis(400);
    let limit = 2;
    let mut config = config(&server);
    config.rate_limits.window = window;
    config.rate_limits.reads = limit;
    let client = client(config);
    let calls = 6;
    server.script((0..calls).map(|_| {
        Reply::json(
            200,
            json!({"count": 0, "next": null, "previous": null, "results": []}),
        )
    }));

    let start = Instant::now();
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.list_sessions(&ListSessionsQuery::default()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    // Six calls at two per window need at least two full windows.
    assert!(
        start.elapsed() >= window * 2,
        "finished after {:?}",
        start.elapsed()
    );
    let mut arrivals: Vec<Instant> = server.requests().iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), calls);
    // Any `limit + 1` consecutive arrivals span a window; the slack covers
    // the network hop between the client's admission and the mock's clock.
    let slack = Duration::from_millis(100);
    for pair in arrivals.windows(limit as usize + 1) {
        let span = pair[limit as usize] - pair[0];
        assert!(
            span + slack >= window,
            "{} calls within {span:?}",
            limit + 1
        );
    }
}

#[tokio::test]
async fn scopes_have_separate_budgets() {
    let server = MockServer::start().await;
    let mut config = config(&server);
    config.rate_limits.window = Duration::from_secs(3600);
    config.rate_limits.decision_reads = 1;
    let client = client(config);

    client.get_decision(SESSION_ID).await.unwrap();
    // The decision budget is spent for an hour, but reads are a different scope.
    server.script([Reply::json(
        200,
        json!({"count": 0, "next": null, "previous": null, "results": []}),
    )]);
    client
        .list_sessions(&ListSessionsQuery::default())
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    let server = MockServer::start().await;
    let config = config(&server).with_base_url(format!("{}/didit/", server.url()));
    let client = client(config);
    client.get_decision(SESSION_ID).await.unwrap();
    assert_eq!(
        server.only_request().path,
        format!("/didit/v3/session/{SESSION_ID}/decision/")
    );
}

#[tokio::test]
async fn an_empty_session_id_is_refused_before_sending() {
    let (server, client) = started().await;
    let error = client.get_decision("").await.unwrap_err();
    assert!(
        matches!(error, ApiError::InvalidArgument { .. }),
        "{error:?}"
    );
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn an_undecodable_answer_is_a_decode_error() {
    let (server, client) = started().await;
    server.script([Reply::json(201, json!({"session_id": "s", "url": "u"}))]);
    let error = client
        .create_session(&CreateSessionRequest::new("wf"))
        .await
        .unwrap_err();
    assert!(matches!(error, ApiError::Decode { .. }), "{error:?}");
}

#[test]
fn config_debug_does_not_show_the_api_key() {
    let config = ClientConfig::new("sk_live_very_secret_key");
    let debug = format!("{config:?}");
    assert!(!debug.contains("sk_live_very_secret_key"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
    let client = client(config);
    assert!(!format!("{client:?}").contains("sk_live_very_secret_key"));
}

#[test]
fn defaults_follow_the_protocol() {
    let config = ClientConfig::new("k");
    assert_eq!(config.base_url, "https://verification.didit.me");
    assert_eq!(config.timeout, Duration::from_secs(10));
    assert_eq!(config.max_retries, 3);
    let limits = &config.rate_limits;
    assert_eq!(limits.window, Duration::from_secs(60));
    assert_eq!(
        (
            limits.reads,
            limits.writes,
            limits.session_creation,
            limits.decision_reads,
            limits.pdf,
            limits.data_corrections
        ),
        (600, 300, 600, 100, 50, 10)
    );
}
