//! Extractors that answer bad input with the platform's problem+json instead of axum's
//! plain-text rejections.
//!
//! - [`Json`]: wrong content type → 415, body over the limit → 413, malformed JSON → 400,
//!   unknown, missing or mistyped fields → 422 naming every such field by its path in
//!   `errors`, with the rules the other fields break ([`Body`]; a body with rules of its
//!   own implements [`Parse`], into the domain's types, and its rule errors follow).
//! - [`Path`]: a path segment that does not parse names no resource → 404.
//! - [`Query`]: a malformed query string → 400.
//! - [`ClientAddr`]: the client's IP address, for rate limits.
//! - [`integer`], [`optional_integer`]: integer fields that also take `36.0`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode, FieldErrors};

/// Request bodies over this many bytes are refused with 413 (API.md).
pub const BODY_LIMIT: usize = 64 * 1024;

mod integers;
pub use integers::{integer, optional_integer};

/// A JSON request body (or a JSON response) with the platform's error mapping.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> FromRequest<S> for Json<T>
where
    T: Body,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(ErrorCode::UnsupportedMediaType)
                .with_detail("expected a body with Content-Type: application/json"));
        }
        parse(&read_body(request, state).await?).map(Json)
    }
}

/// The whole body, within [`BODY_LIMIT`] (413 beyond it).
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge)
                .with_detail(format!("request bodies are limited to {} KiB", BODY_LIMIT / 1024))
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Parses a JSON body, telling a syntax error (400) from a well-formed body with bad
/// fields (422, naming each field by its path).
///
/// Every request body of the API is an object; anything else is refused up front, since
/// serde would otherwise happily read a struct from an array.
pub fn parse<T: Body>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(ApiError::bad_request("the request body must be a JSON object")),
        None => return Err(ApiError::bad_request("the request body is empty; expected a JSON object")),
    }
    // PostgreSQL text cannot hold NUL, so no field of ours can either; refusing it here
    // keeps it from ever reaching a query. (A literal backslash followed by `u0000` is
    // refused too, which no real client sends.)
    if contains_escaped_nul(bytes) {
        return Err(ApiError::bad_request("strings must not contain the NUL character (\\u0000)"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let at = steps(err.path());
        let inner = err.into_inner();
        if !inner.is_data() {
            return syntax_error(&inner);
        }
        // serde stops at the first bad field, which may come before a syntax error (or
        // bytes that are not UTF-8) further on; a body that is not JSON at all is a 400
        // whatever its fields. Only failing bodies pay for this second look.
        if std::str::from_utf8(bytes).is_err() {
            return ApiError::bad_request("the request body is not UTF-8");
        }
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) if !syntax.is_data() => syntax_error(&syntax),
            _ => every_error::<T>(bytes, (at, inner)),
        }
    })?;
    deserializer.end().map_err(|err| syntax_error(&err))?;
    Ok(value)
}

fn contains_escaped_nul(bytes: &[u8]) -> bool {
    bytes.windows(6).any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].iter().all(|b| *b == b'0'))
}

fn syntax_error(err: &serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("malformed JSON at line {} column {}", err.line(), err.column()))
}

/// A request body that [`Json`] and [`crate::idempotency::Idempotent`] read.
///
/// A body whose fields do not all read (a string where a number belongs, a missing field,
/// an unknown one) is answered with every such field at once, and with the rules the
/// fields that did read break: `rule_errors` names those, and is called only then (a body
/// that reads is checked by its handler, which gets the values it checked).
pub trait Body: DeserializeOwned {
    /// What of the contract's rules this body breaks, by field (a blank name, a quantity
    /// over 100); nothing by default.
    fn rule_errors(self) -> FieldErrors {
        FieldErrors::default()
    }
}

/// A body with rules of its own, checked by `parse` into what its handler works with (the
/// domain's types): its [`Body::rule_errors`] are the fields `parse` refuses.
pub trait Parse: DeserializeOwned {
    /// What the handler works with.
    type Output;
    /// The body checked against the contract's rules, every refused field named.
    fn parse(self) -> Result<Self::Output, ApiError>;
}

impl<T: Parse> Body for T {
    fn rule_errors(self) -> FieldErrors {
        self.parse().err().and_then(ApiError::into_field_errors).unwrap_or_default()
    }
}

/// The most fields one answer names.
const MAX_FIELD_ERRORS: usize = 64;

/// Stand-ins for a field serde could not read, one of which each of our field types
/// takes: an id or any string, an amount, a number, a flag, an object, a list, nothing.
fn stand_ins() -> [Value; 7] {
    [
        Value::from("00000000-0000-0000-0000-000000000000"),
        Value::from("1.00"),
        Value::from(1),
        Value::from(true),
        Value::Object(serde_json::Map::new()),
        Value::Array(Vec::new()),
        Value::Null,
    ]
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// What serde refused, and where.
struct Refusal {
    at: Vec<Step>,
    message: String,
    /// An unknown field, which is removed rather than stood in for.
    unknown: bool,
}

type Failure = (Option<Vec<Step>>, serde_json::Error);

fn steps(path: &serde_path_to_error::Path) -> Option<Vec<Step>> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|segment| match segment {
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

fn render(at: &[Step]) -> String {
    let mut out = String::new();
    for step in at {
        match step {
            Step::Key(key) if out.is_empty() => out.push_str(key),
            Step::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Step::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// serde's data errors about a missing field name it in their message (`missing field
/// `email``) with the path of the object that lacks it; an unknown field's path already
/// ends with its name. Every other error is about the value at the path itself; `None`
/// for one about the body as a whole.
fn refusal(at: Vec<Step>, err: &serde_json::Error) -> Option<Refusal> {
    let message = strip_position(&err.to_string());
    if let Some(name) = quoted_after(&message, "missing field `") {
        let mut at = at;
        at.push(Step::Key(name.to_owned()));
        return Some(Refusal { at, message: "is required".to_owned(), unknown: false });
    }
    if message.starts_with("unknown field `") {
        return Some(Refusal { at, message: "is not a known field".to_owned(), unknown: true });
    }
    (!at.is_empty()).then_some(Refusal { at, message, unknown: false })
}

fn read<T: DeserializeOwned>(value: &Value) -> Result<T, Failure> {
    serde_path_to_error::deserialize(value).map_err(|err| (steps(err.path()), err.into_inner()))
}

fn slot<'a>(value: &'a mut Value, at: &[Step]) -> Option<&'a mut Value> {
    let (last, parents) = at.split_last()?;
    let mut parent = value;
    for step in parents {
        parent = match step {
            Step::Key(key) => parent.as_object_mut()?.get_mut(key)?,
            Step::Index(index) => parent.as_array_mut()?.get_mut(*index)?,
        };
    }
    match last {
        Step::Key(key) => Some(parent.as_object_mut()?.entry(key.clone()).or_insert(Value::Null)),
        Step::Index(index) => parent.as_array_mut()?.get_mut(*index),
    }
}

fn remove(value: &mut Value, at: &[Step]) -> bool {
    let Some((Step::Key(key), parents)) = at.split_last() else { return false };
    let mut parent = value;
    for step in parents {
        let next = match step {
            Step::Key(key) => parent.as_object_mut().and_then(|o| o.get_mut(key)),
            Step::Index(index) => parent.as_array_mut().and_then(|a| a.get_mut(*index)),
        };
        let Some(next) = next else { return false };
        parent = next;
    }
    parent.as_object_mut().and_then(|o| o.remove(key)).is_some()
}

/// Reads `value` again past the field at `at`: an unknown field removed, any other given
/// the first stand-in that moves serde on. `None` when none does.
fn past<T: DeserializeOwned>(value: &mut Value, refused: &Refusal) -> Option<Result<T, Failure>> {
    if refused.unknown {
        return remove(value, &refused.at).then(|| read(value));
    }
    for stand_in in stand_ins() {
        *slot(value, &refused.at)? = stand_in;
        match read::<T>(value) {
            Err((Some(at), _)) if at == refused.at => continue,
            outcome => return Some(outcome),
        }
    }
    None
}

/// Every field of a body that did not read, and the rules its other fields break.
fn every_error<T: Body>(bytes: &[u8], first: Failure) -> ApiError {
    let Ok(mut value) = serde_json::from_slice::<Value>(bytes) else { return shape_error(&first.1) };
    let mut errors = FieldErrors::default();
    // Stood in for or removed: what serde or the rules say below them is about our stand-in.
    let mut patched: Vec<Vec<Step>> = Vec::new();
    let within = |at: &[Step], patched: &[Vec<Step>]| patched.iter().any(|p| at.starts_with(p));
    let mut failure = first;
    while errors.len() < MAX_FIELD_ERRORS {
        let (Some(at), err) = failure else { break };
        let Some(refused) = refusal(at, &err) else {
            if errors.is_empty() {
                return shape_error(&err);
            }
            break;
        };
        if !within(&refused.at, &patched) {
            errors.add(render(&refused.at), refused.message.clone());
        }
        patched.push(refused.at.clone());
        match past::<T>(&mut value, &refused) {
            Some(Ok(body)) => {
                let patched: Vec<String> = patched.iter().map(|p| render(p)).collect();
                for (field, messages) in body.rule_errors() {
                    let unpatched = !patched.iter().any(|p| {
                        field == *p || field.starts_with(&format!("{p}.")) || field.starts_with(&format!("{p}["))
                    });
                    if unpatched {
                        for message in messages {
                            errors.add(field.clone(), message);
                        }
                    }
                }
                break;
            }
            Some(Err(next)) => failure = next,
            None => break,
        }
    }
    ApiError::validation(errors)
}

fn shape_error(err: &serde_json::Error) -> ApiError {
    ApiError::bad_request(format!(
        "the request body does not have the expected shape: {}",
        strip_position(&err.to_string())
    ))
}

fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Path parameters; a segment that does not parse (say, an id that is not a UUID) names
/// no resource, so it is a 404 like any other unknown resource.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(axum::extract::rejection::PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::not_found())
            }
            Err(other) => Err(ApiError::internal(anyhow::anyhow!("path extraction: {other}"))),
        }
    }
}

/// Query parameters; a malformed query string is a 400 `bad_request` that says what is wrong.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // As in JSON bodies: no parameter of ours may hold NUL, which PostgreSQL refuses.
        if parts.uri.query().is_some_and(|q| q.to_ascii_lowercase().contains("%00")) {
            return Err(ApiError::bad_request("query parameters must not contain the NUL character (%00)"));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The client's IP address: the TCP peer, or, behind a trusted gateway, the address the
/// gateway appended to `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Whether [`client_addr`] believes `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub struct TrustForwardedFor(pub bool);

/// The request's [`ClientAddr`] when it is not the TCP peer: the address our gateway
/// forwarded, when trusted. The HTTP shell records it in the request; the extractor takes
/// the peer otherwise (so that most requests carry one extension less, a share of a cached
/// read's instructions).
pub fn forwarded_client(request: &Request, trust: TrustForwardedFor) -> Option<ClientAddr> {
    trust.0.then(|| forwarded_for(request.headers())).flatten().map(ClientAddr)
}

/// The right-most address of `X-Forwarded-For`: the one our own gateway appended, which
/// a client cannot forge (the left-most entries are whatever the client sent).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| ClientAddr(c.0.ip())))
            .unwrap_or(ClientAddr(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

#[cfg(test)]
mod tests;
