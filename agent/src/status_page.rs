//! The status page at `/`: the instances (state, reasons, lag, utilization, pressure), SVG
//! charts of the kept history with episodes as bands, the last incidents, and the routes worst
//! first. It reads `/v1/status` and `/v1/history` (every second; `/?interval=MS` changes it,
//! `/?minutes=N` the charts' span). Assets are embedded in the binary (no CDN, no external
//! requests).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page.
pub(crate) const INDEX_HTML: &str = include_str!("../assets/status.html");
/// Its script.
pub(crate) const STATUS_JS: &str = include_str!("../assets/status.js");

fn with_type(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    with_type("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /status.js`.
pub(crate) async fn script() -> Response {
    with_type("text/javascript; charset=utf-8", STATUS_JS)
}
