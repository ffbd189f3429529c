//! `X-Request-Id`: echoed when the client sends a usable one, generated otherwise, and
//! available to everything that runs for the request (error bodies, log lines).

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied id we keep; longer ones are replaced, not truncated,
/// so that an id always means exactly what the client sent.
const MAX_LEN: usize = 128;

tokio::task_local! {
    /// Kept as the header value it is answered with: the request's own bytes when it
    /// came with a usable id, so settling it copies nothing.
    static CURRENT: HeaderValue;
}

/// Runs `work` as part of the request `id` (for work started outside the middleware,
/// such as a background job acting for a request, or a test).
pub fn scope<F: Future>(id: HeaderValue, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, work)
}

/// Runs `f` as part of the request `id`, synchronously.
pub fn sync_scope<R>(id: HeaderValue, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(id, f)
}

/// The id of the request whose task is running, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.to_str().map(str::to_owned).ok()).ok().flatten()
}

fn usable(value: &HeaderValue) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    (!bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(visible)).then(|| value.clone())
}

/// The request's id: the one it carries when usable, a new one otherwise. The HTTP shell
/// (`common::http`) settles it once, runs the request in its [`scope`] and puts it on
/// the response.
pub fn of(request: &Request) -> HeaderValue {
    request.headers().get(&X_REQUEST_ID).and_then(usable).unwrap_or_else(generate)
}

/// A UUIDv7 from the thread's id generator: `Uuid::now_v7` asks the kernel for its
/// random bits (a system call on every request that comes without an id).
fn generate() -> HeaderValue {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let random: [u8; 10] = crate::trace::id_bits();
    let uuid = uuid::Builder::from_unix_timestamp_millis(millis as u64, &random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_version_7_uuids() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.to_str().unwrap().parse::<uuid::Uuid>().unwrap().get_version_num(), 7);
    }

    #[test]
    fn only_short_visible_ascii_ids_are_echoed() {
        assert_eq!(usable(&HeaderValue::from_static("abc-123")), Some(HeaderValue::from_static("abc-123")));
        assert_eq!(usable(&HeaderValue::from_static("has space")), None);
        assert_eq!(usable(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(usable(&HeaderValue::from_str(&long).unwrap()), None);
        let max = "a".repeat(128);
        assert_eq!(usable(&HeaderValue::from_str(&max).unwrap()).map(|s| s.len()), Some(128));
    }
}
