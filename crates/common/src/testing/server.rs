//! The application served on a real port for a test, its requests, and the problem
//! bodies tests expect.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The application served on `127.0.0.1:0`, stopped when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn spawn(app: Router) -> Self {
        Self::spawn_at(SocketAddr::from(([127, 0, 0, 1], 0)), app).await
    }

    /// Serves on a given address: a fixed port, to bring a server back where its clients
    /// expect it after [`TestServer::shutdown`].
    pub async fn spawn_at(addr: SocketAddr, app: Router) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the address");
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::http::serve(listener, app, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().build().expect("a reqwest client");
        Self { addr, client, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks the server to shut down gracefully and waits until it has.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestServer {
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, None, token).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, Some(body), token).await
    }

    pub async fn patch(&self, path: &str, body: &serde_json::Value, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::PATCH, path, Some(body), token).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, None, token).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    /// POSTs a JSON body, as text (a client's own spelling of it), with a bearer token and
    /// an `Idempotency-Key`.
    pub async fn post_keyed(
        &self,
        path: &str,
        token: &str,
        key: &str,
        json: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let req = self.client.post(self.url(path)).bearer_auth(token).header("idempotency-key", key);
        req.header("content-type", "application/json").body(json).send().await.expect("request sent")
    }

    /// POSTs raw bytes with the given content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("request sent")
    }
}

/// The problem body of an error response, checked to be problem+json, with the
/// per-request `request_id` checked against `X-Request-Id` and removed so the rest can be
/// pinned.
pub async fn problem(res: reqwest::Response) -> serde_json::Value {
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("content-type").as_deref(), Some("application/problem+json"), "status {}", res.status());
    let request_id = header("x-request-id");
    let mut body: serde_json::Value = res.json().await.expect("a JSON problem");
    let id = body.as_object_mut().expect("an object").remove("request_id");
    assert_eq!(id.and_then(|v| v.as_str().map(str::to_owned)), request_id, "request_id matches X-Request-Id");
    body
}

/// The pinned shape of a problem with no `errors`.
pub fn expected(status: u16, code: &str, title: &str, detail: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::json!({
        "type": format!("https://errors.shop.example/{code}"),
        "title": title,
        "status": status,
        "code": code,
    });
    if let Some(detail) = detail {
        body["detail"] = serde_json::json!(detail);
    }
    body
}

/// The pinned shape of a 422 with the given field errors.
pub fn validation(errors: serde_json::Value) -> serde_json::Value {
    let mut body =
        expected(422, "validation_failed", "Validation failed", Some("the request has invalid fields; see `errors`"));
    body["errors"] = errors;
    body
}

/// The bodies of the 201s among answers to requests that raced: every other answer must
/// be a 409 problem with `code`, the loser told why (`insufficient_stock`,
/// `request_in_progress`, …).
pub async fn created_or_conflict(answers: Vec<reqwest::Response>, code: &str) -> Vec<serde_json::Value> {
    let mut created = Vec::new();
    for res in answers {
        match res.status().as_u16() {
            201 => created.push(res.json().await.expect("a JSON body")),
            409 => assert_eq!(problem(res).await["code"], code),
            other => panic!("unexpected {other}"),
        }
    }
    created
}

/// [`created_or_conflict`] for requests that shared one `Idempotency-Key`: one resource
/// was created, however many of them were answered 201.
pub async fn created_once(answers: Vec<reqwest::Response>) {
    let created = created_or_conflict(answers, "request_in_progress").await;
    let ids: std::collections::BTreeSet<&str> =
        created.iter().map(|body| body["id"].as_str().expect("a created resource's id")).collect();
    assert_eq!(ids.len(), 1, "{created:?}");
}
