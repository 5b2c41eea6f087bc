//! `GET /ui`: the console, one self-contained page (inline style and script, no external asset)
//! that reads the server's own JSON endpoints: the models served, the last minutes from
//! `/v1/stats`, and today's spend per tenant and project against the budgets. Read-only, and
//! behind the same API key rules as everything else: the page asks for a key when its reads
//! answer 401, and a key sees only its own tenant's spend.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, with the reports' shared style put in.
fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        include_str!("console.html").replace("/*STYLE*/", crate::charts::page::STYLE)
    })
}

/// What the page may load: nothing but itself and this server's own endpoints.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /ui`.
pub async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_whole_and_self_contained() {
        let p = page();
        assert!(!p.contains("/*STYLE*/") && p.contains("svg.ws-chart"));
        for external in ["<script src", "<link", "http://", "https://"] {
            let allowed = p.matches(external).count()
                == p.matches("http://www.w3.org/2000/svg").count()
                    * usize::from(external == "http://");
            assert!(allowed, "{external} in the page");
        }
        for endpoint in ["/v1/models", "/v1/stats", "/v1/usage", "/v1/budgets"] {
            assert!(p.contains(endpoint), "{endpoint}");
        }
    }
}
