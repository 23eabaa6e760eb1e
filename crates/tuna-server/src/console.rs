//! The web console: a few static files (HTML, CSS, JavaScript modules, an SVG icon) compiled into
//! the binary with `include_str!`, served at `/` and `/assets/{file}`.
//!
//! The console is a single page that talks to the OpenAI-compatible API with the user's API key
//! (kept in the browser's localStorage); it has no server-side state and needs no build step.
//! Navigation uses the URL fragment (`/#/tasks/ftjob-…`), so `/` is the only HTML route.
//!
//! Caching: the asset names carry no content hash, so every response says `Cache-Control:
//! no-cache` (the browser may keep a copy but must revalidate) with a strong `ETag` (a SHA-256 of
//! the bytes); a matching `If-None-Match` is answered `304 Not Modified` with no body. A new binary
//! therefore never serves a stale console, and an unchanged one costs a round trip, not a download.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// One embedded file: its name under `/assets/`, its `Content-Type` and its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file of the console. `index.html` is served at `/`; the others under `/assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../console/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../console/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/api.js"),
    },
    Asset {
        name: "charts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/charts.js"),
    },
    Asset {
        name: "ui.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/ui.js"),
    },
    Asset {
        name: "chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/chat.js"),
    },
    Asset {
        name: "i18n.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/i18n.js"),
    },
    Asset {
        name: "zh.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/zh.js"),
    },
    Asset {
        name: "router.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/router.js"),
    },
    Asset {
        name: "jobs.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/jobs.js"),
    },
    Asset {
        name: "tasks.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/tasks.js"),
    },
    Asset {
        name: "wizard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/wizard.js"),
    },
    Asset {
        name: "task.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/task.js"),
    },
    Asset {
        name: "files.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/files.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../console/icon.svg"),
    },
];

/// Strong ETags, computed once on first use (hashing ~100 KB takes well under a millisecond).
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            // Hex digits and quotes are always a valid header value.
            HeaderValue::from_str(&format!("\"{hex}\""))
                .unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// The console's routes: `GET /` and `GET /assets/{file}`. Stateless, so it merges into a router
/// of any state: `router.merge(console::routes())`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

/// Answers one embedded file, `304` when the client's copy is current, `404` for unknown names.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found\n",
        )
            .into_response();
    };
    let asset = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag.clone()),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if if_none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let mut resp = (common, asset.body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if asset.name == "index.html" {
        // The page only loads its own scripts and styles and only talks to this origin.
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        );
        resp.headers_mut().insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    resp
}

/// True when `If-None-Match` lists `etag` (or is `*`); weak comparison, as RFC 9110 asks for GET.
fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let ours = etag.to_str().unwrap_or_default();
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(uri: &str, etag: Option<&str>) -> Response {
        let mut req = Request::builder().uri(uri);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn index_and_assets_have_their_types_and_revalidate() {
        let index = get("/", None).await;
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(
            index.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(
            index
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY)
        );
        let etag = index.headers()[header::ETAG].to_str().unwrap().to_string();
        let body = to_bytes(index.into_body(), 1 << 20).await.unwrap();
        let html = std::str::from_utf8(&body).unwrap();
        // Every asset the page names must be served.
        for name in ["style.css", "app.js", "icon.svg"] {
            assert!(
                html.contains(&format!("/assets/{name}")),
                "index.html does not load {name}"
            );
        }

        for (name, ty) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("api.js", "text/javascript; charset=utf-8"),
            ("charts.js", "text/javascript; charset=utf-8"),
            ("ui.js", "text/javascript; charset=utf-8"),
            ("chat.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("icon.svg", "image/svg+xml"),
        ] {
            let r = get(&format!("/assets/{name}"), None).await;
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], ty, "{name}");
        }

        let cached = get("/", Some(&etag)).await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert!(
            to_bytes(cached.into_body(), 1 << 20)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            get("/", Some("W/\"other\", ")).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            get("/", Some(&format!("\"x\", W/{etag}"))).await.status(),
            StatusCode::NOT_MODIFIED
        );
    }

    /// Every module a console script imports (`from "./x.js"`) is one of the served assets.
    #[test]
    fn every_imported_module_is_served() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for part in a.body.split("from \"./").skip(1) {
                let module = part.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|b| b.name == module),
                    "{} imports ./{module}, which is not served",
                    a.name
                );
            }
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_404() {
        for uri in ["/assets/nope.js", "/assets/..%2Fsrc%2Flib.rs", "/assets/"] {
            assert_eq!(
                get(uri, None).await.status(),
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
    }

    #[test]
    fn module_imports_name_embedded_files() {
        // Each `import ... from "./x.js"` in a module must be an embedded asset, or the page breaks.
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for part in asset.body.split("from \"./").skip(1) {
                let file = part.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|a| a.name == file),
                    "{} imports unknown ./{file}",
                    asset.name
                );
            }
        }
    }
}
