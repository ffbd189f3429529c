//! The storefront (`storefront/` at the repository's root), served at `/`: a reference
//! client of the public API, built into the binary so that `shop` alone shows it. Any web
//! server can serve the same folder from another origin (`?api=` then names the API).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../../../storefront/index.html");
const SCRIPT: &str = include_str!("../../../storefront/app.js");
const STYLE: &str = include_str!("../../../storefront/style.css");

/// `/`, `/app.js` and `/style.css`.
pub fn router() -> Router {
    let file = |content_type: &'static str, body: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, content_type)], body).into_response() })
    };
    Router::new()
        .route("/", file("text/html; charset=utf-8", INDEX))
        .route("/app.js", file("text/javascript; charset=utf-8", SCRIPT))
        .route("/style.css", file("text/css; charset=utf-8", STYLE))
}
