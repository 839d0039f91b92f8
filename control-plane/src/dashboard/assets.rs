//! The dashboard's own stylesheet and script, compiled into the binary: no
//! build step, no third-party file, nothing fetched from elsewhere. Their
//! paths are fixed, so they are cached only briefly (`no-cache`: revalidated
//! every use, which an upgrade then reaches at once).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::dashboard::page::PageError;
use crate::error::ApiError;

const APP_CSS: &str = include_str!("../../assets/app.css");
const APP_JS: &str = include_str!("../../assets/app.js");
const ICON_SVG: &str = include_str!("../../assets/icon.svg");

/// `GET /dashboard/assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => {
            return PageError(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "No such file.",
            ))
            .into_response()
        }
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
