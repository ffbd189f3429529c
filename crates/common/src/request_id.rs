//! `X-Request-Id`: echoed when the client sends a usable one, generated otherwise, and
//! available to everything that runs for the request (error bodies, log lines).

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied id we keep; longer ones are replaced, not truncated,
/// so that an id always means exactly what the client sent.
const MAX_LEN: usize = 128;

/// The id of the request being handled, as a request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

tokio::task_local! {
    static CURRENT: String;
}

/// Runs `work` as part of the request `id` (for work started outside the middleware,
/// such as a background job acting for a request, or a test).
pub async fn scope<F: Future>(id: String, work: F) -> F::Output {
    CURRENT.scope(id, work).await
}

/// The id of the request whose task is running, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

fn usable(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    (!bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(visible))
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Middleware: settles the id, runs the rest of the stack with it in scope and puts it on
/// the response.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = request.headers().get(&X_REQUEST_ID).and_then(usable).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let header = HeaderValue::from_str(&id).ok();
    let mut response = CURRENT.scope(id, next.run(request)).await;
    if let Some(header) = header {
        response.headers_mut().insert(X_REQUEST_ID.clone(), header);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_echoed() {
        assert_eq!(usable(&HeaderValue::from_static("abc-123")), Some("abc-123".into()));
        assert_eq!(usable(&HeaderValue::from_static("has space")), None);
        assert_eq!(usable(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(usable(&HeaderValue::from_str(&long).unwrap()), None);
        let max = "a".repeat(128);
        assert_eq!(usable(&HeaderValue::from_str(&max).unwrap()).map(|s| s.len()), Some(128));
    }
}
