//! The dashboard: pages under `/ui/`, embedded in the binary.
//!
//! Pages are served only to a browser with a live session cookie; anyone
//! else is redirected to the login page. The assets (one stylesheet, one
//! script) hold no data and are served to all, so the login page can use
//! them. Everything the pages show or change goes through `/api/v1`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use keel_web_core::auth::{check_bearer, session_cookie};
use keel_web_core::{now, ControlPlane};

const APP_HTML: &str = include_str!("../assets/app.html");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const ICON_SVG: &str = include_str!("../assets/icon.svg");

/// Every asset the dashboard loads, by name: (content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", APP_JS),
    ("app.css", "text/css; charset=utf-8", APP_CSS),
    ("icon.svg", "image/svg+xml", ICON_SVG),
];

/// No inline scripts or styles, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The `/ui/` pages and assets (and redirects to them) over a control plane.
pub fn router<C: ControlPlane>(control: Arc<C>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login_page::<C>))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/", get(page::<C>))
        .route("/ui/{*page}", get(page::<C>))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(control)
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn signed_in<C: ControlPlane>(control: &C, headers: &HeaderMap) -> bool {
    session_cookie(headers)
        .is_some_and(|token| check_bearer(&control.state().1, &token, now()).is_some())
}

fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Any dashboard page: the same shell, whose script draws the page the
/// path names. Without a session, the login page.
async fn page<C: ControlPlane>(State(control): State<Arc<C>>, headers: HeaderMap) -> Response {
    if signed_in(&*control, &headers) {
        html(APP_HTML)
    } else {
        Redirect::to("/ui/login").into_response()
    }
}

async fn login_page<C: ControlPlane>(
    State(control): State<Arc<C>>,
    headers: HeaderMap,
) -> Response {
    if signed_in(&*control, &headers) {
        Redirect::to("/ui/").into_response()
    } else {
        html(LOGIN_HTML)
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
