//! The live page the ingress serves at `GET /`: components, dead letters and the lattice,
//! updated every second.
//!
//! Plain HTML, CSS and JavaScript from `src/dashboard/`, compiled into the binary with
//! `include_str!`: no build step, nothing fetched from another site, so the page works on a
//! machine without a network and shows only what this runner's own JSON routes
//! (`GET /components`, `/dead-letters`, `/lattice`) say. The script polls them once a
//! second, computes rates from the counters' differences, and writes every string it got from
//! them (ids, reasons, payload previews, which guests control) as text, never as markup.
//!
//! Every asset is sent with a Content-Security-Policy that allows nothing but this origin's
//! own files (no inline script, no `eval`, no other site to load from or send to, no framing),
//! so that even a mistake in the script that let a guest's text be read as markup could not
//! run it, and with `X-Content-Type-Options: nosniff`.
//!
//! The assets hold no data, so they are served without the token even when the ingress asks
//! for one on its data routes; the page then asks for the token and sends it with every call.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// The page.
const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// Its script.
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
/// Its style sheet.
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// The policy every asset is served with: this origin's own files and calls, and nothing
/// else; no `<base>` to redirect relative paths, no form posting anywhere, no framing (so no
/// other page can overlay the restart button).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'; object-src 'none'";

/// The paths of the page's assets, which need no token.
pub const ASSET_PATHS: [&str; 3] = ["/", "/dashboard.js", "/dashboard.css"];

/// Whether `path` is one of the page's assets.
pub fn is_asset(path: &str) -> bool {
    ASSET_PATHS.contains(&path)
}

/// The routes of the page and its assets, to merge into the ingress's router.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
}

/// One asset with its type and the headers that keep a browser from doing more with it than
/// the policy allows.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // Compiled in, so a new binary is the only thing that changes them; no-cache makes a
        // browser that kept the old page ask again after an upgrade of `courier`.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_never_writes_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout(\"",
        ] {
            assert!(
                !DASHBOARD_JS.contains(sink),
                "dashboard.js uses `{sink}`, which would read a guest's text as markup or code"
            );
        }
    }

    #[test]
    fn the_page_loads_nothing_from_another_site() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("dashboard.js", DASHBOARD_JS),
            ("dashboard.css", DASHBOARD_CSS),
        ] {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace is a name, not something fetched.
                let found = text
                    .match_indices(scheme)
                    .any(|(at, _)| !text[at..].starts_with("http://www.w3.org/2000/svg"));
                assert!(!found, "{name} refers to `{scheme}…`");
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_the_policy_would_block() {
        assert!(INDEX_HTML.contains(r#"<script src="/dashboard.js""#));
        assert_eq!(
            INDEX_HTML.matches("<script").count(),
            1,
            "one script, by URL"
        );
        assert!(
            !INDEX_HTML.contains("<style"),
            "styles live in dashboard.css"
        );
        assert!(
            !INDEX_HTML.contains("style="),
            "styles live in dashboard.css"
        );
        let handler = INDEX_HTML
            .split(|c: char| c.is_whitespace() || c == '<')
            .find(|word| word.starts_with("on") && word.contains('='));
        assert_eq!(handler, None, "no inline event handlers");
    }
}
