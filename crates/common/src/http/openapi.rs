//! The parts of the OpenAPI document every service shares: the problems declared on
//! every operation they can happen to, and the 429 an operation with a rate limit lists
//! ([`RateLimited`]).

use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// The parts of the OpenAPI document every service shares: the title, the error shape
/// and the bearer scheme. Each service merges its paths into it.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Shop API",
        description = "The public REST API of the shop platform. Errors are `application/problem+json` \
            (RFC 9457) with a stable `code`; see the `Problem` schema.",
    ),
    modifiers(&BearerScheme),
    components(schemas(crate::error::Problem, crate::error::FieldErrors)),
)]
pub(super) struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Declares on every operation the problems the shared extractors and middleware answer
/// with, so that each handler's document lists only its own: a body that is malformed,
/// too large or not JSON (400, 413, 415, 422), a bad query or `Idempotency-Key` (400), a
/// missing or bad token (401), a token without the role the operation names in its
/// security requirement (`bearer = ["admin"]`: 403), a path segment that is not an id
/// (404), and the database or a dependency away (503). Runs on the merged document of
/// the process.
pub(super) struct SharedProblems;

impl utoipa::Modify for SharedProblems {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let parameters = operation.parameters.as_deref().unwrap_or_default();
                let in_path = parameters.iter().any(|p| p.parameter_in == ParameterIn::Path);
                let in_query_or_header =
                    parameters.iter().any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Header));
                let mut shared = vec![("503", "`unavailable` or `upstream_unavailable`: try again later")];
                if operation.request_body.is_some() {
                    shared.extend([
                        ("400", "`bad_request`: malformed JSON, or not an object"),
                        ("413", "`payload_too_large`: a body over 64 KiB"),
                        ("415", "`unsupported_media_type`: not `application/json`"),
                        ("422", "`validation_failed`: fields missing, unknown or invalid"),
                    ]);
                }
                if in_query_or_header {
                    shared.push(("400", "`bad_request`: a malformed parameter or header"));
                }
                if in_path {
                    shared.push(("404", "`not_found`"));
                }
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    shared.push(("401", "`unauthorized`: no valid access token"));
                }
                if requires_admin(operation) {
                    shared.push(("403", "`forbidden`: not an admin"));
                }
                for (status, description) in shared {
                    let response = || RefOr::T(problem(description).build());
                    operation.responses.responses.entry(status.to_owned()).or_insert_with(response);
                }
            }
        }
    }
}

/// Whether `operation` asks for the `admin` role (`security(("bearer" = ["admin"]))`).
fn requires_admin(operation: &utoipa::openapi::path::Operation) -> bool {
    let requirements = serde_json::to_value(&operation.security).unwrap_or_default();
    requirements.as_array().is_some_and(|all| {
        all.iter().any(|r| r["bearer"].as_array().is_some_and(|roles| roles.iter().any(|role| role == "admin")))
    })
}

/// A response with a `Problem` body.
fn problem(description: &str) -> ResponseBuilder {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    ResponseBuilder::new().description(description).content("application/problem+json", content)
}

/// The 429 of an operation with a rate limit, declared once for all of them: list it in
/// the operation's `responses(...)`.
pub struct RateLimited;

impl utoipa::IntoResponses for RateLimited {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ObjectBuilder, Type};
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
        let retry_after =
            HeaderBuilder::new().schema(seconds).description(Some("Seconds until the limit lets a request through"));
        let response = problem("`rate_limited`, with `Retry-After`").header("Retry-After", retry_after.build());
        BTreeMap::from([("429".to_owned(), RefOr::T(response.build()))])
    }
}
