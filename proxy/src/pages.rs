//! The small HTML pages the proxy answers with itself (building, failed,
//! gone, not found, upstream trouble), and the response body type shared by
//! pages and relayed upstream responses. It must not reveal anything about
//! previews other than the one asked for.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::ProxyError;

/// Body of every response the proxy sends: a page, or a streamed upstream body.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Seconds between reloads of the "building" page.
const BUILDING_REFRESH_SECS: u32 = 2;
/// Characters of a commit id shown on pages.
const SHORT_COMMIT: usize = 12;

/// A fixed (non-streamed) body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The page answering `err`, with the status `err` maps to.
pub(crate) fn page(err: &ProxyError) -> Response<ProxyBody> {
    let mut refresh = None;
    let (title, body) = match err {
        ProxyError::Refused(refusal) => (
            "Bad request",
            format!(
                "<p>previewd refused this request before it reached the preview: {}.</p>\n\
                 <p>The request breaks a rule of HTTP; the preview itself is fine.</p>",
                escape_html(&refusal.to_string()),
            ),
        ),
        ProxyError::Misdirected { .. } => (
            "Misdirected request",
            "<p>This connection was opened for another host. Connect again to this one.</p>"
                .to_owned(),
        ),
        ProxyError::ClientBody { reason } => (
            "Bad request",
            format!(
                "<p>The body of this request is malformed ({}); the preview did not get a \
                 complete request.</p>\n<p>The fault is in the request, not in the preview.</p>",
                escape_html(reason),
            ),
        ),
        ProxyError::ClientBodyTimeout { timeout } => (
            "Request timed out",
            format!(
                "<p>The body of this request stopped arriving: nothing came for {} seconds.</p>\n\
                 <p>The fault is in the request, not in the preview.</p>",
                timeout.as_secs()
            ),
        ),
        ProxyError::UnknownHost => (
            "No preview here",
            "<p>There is no preview at this address.</p>".to_owned(),
        ),
        ProxyError::Building { commit, since } => {
            refresh = Some(BUILDING_REFRESH_SECS);
            let elapsed = SystemTime::now()
                .duration_since(*since)
                .unwrap_or_default()
                .as_secs();
            (
                "Preview is building",
                format!(
                    "<p>Building commit <code>{}</code> for {elapsed} s. \
                     This page reloads by itself.</p>",
                    escape_html(short_commit(commit)),
                ),
            )
        }
        ProxyError::Failed { commit, log_tail } => (
            "Preview failed",
            format!(
                "<p>The build of commit <code>{}</code> failed. \
                 Push a fix to try again. End of the log:</p>\n<pre>{}</pre>",
                escape_html(short_commit(commit)),
                escape_html(log_tail),
            ),
        ),
        ProxyError::Gone => (
            "This preview is gone",
            "<p>Its branch was merged or deleted, and the preview was removed.</p>".to_owned(),
        ),
        ProxyError::UpstreamUri { .. }
        | ProxyError::UpstreamConnect { .. }
        | ProxyError::UpstreamRequest { .. }
        | ProxyError::UnexpectedUpgrade { .. } => (
            "Preview not reachable",
            "<p>The preview's app did not answer. It may be starting or may have crashed.</p>"
                .to_owned(),
        ),
        ProxyError::UpstreamStoppedReading { timeout, .. } => (
            "Preview timed out",
            format!(
                "<p>The preview's app stopped reading the request body for {} seconds.</p>",
                timeout.as_secs()
            ),
        ),
        ProxyError::UpstreamTimeout { timeout, .. } => (
            "Preview timed out",
            format!(
                "<p>The preview's app did not answer within {} seconds.</p>",
                timeout.as_secs()
            ),
        ),
    };
    let html = render(title, &body, refresh);

    let mut response = Response::new(full(html));
    *response.status_mut() = err.status();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = refresh {
        headers.insert("refresh", HeaderValue::from(secs));
        // RFC 9110 15.6.4: a 503 may say when to come back.
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn render(title: &str, body: &str, refresh: Option<u32>) -> String {
    let refresh = refresh
        .map(|secs| format!("<meta http-equiv=\"refresh\" content=\"{secs}\">\n"))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"robots\" content=\"noindex\">\n{refresh}<title>{title}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:3rem auto;\
         padding:0 1rem;color:#222}}pre{{background:#f3f3f3;padding:1rem;overflow:auto;\
         white-space:pre-wrap}}</style>\n</head>\n<body>\n<h1>{title}</h1>\n{body}\n\
         </body>\n</html>\n"
    )
}

/// The first characters of a commit id; never splits a character.
fn short_commit(commit: &str) -> &str {
    match commit.char_indices().nth(SHORT_COMMIT) {
        Some((end, _)) => &commit[..end],
        None => commit,
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::Refusal;
    use http_body_util::BodyExt;
    use std::time::Duration;

    async fn body_text(response: Response<ProxyBody>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("page body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[test]
    fn escapes_the_five_characters() {
        assert_eq!(
            escape_html(r#"<script>&"'</script>"#),
            "&lt;script&gt;&amp;&quot;&#39;&lt;/script&gt;"
        );
        assert_eq!(escape_html("plain text ✓"), "plain text ✓");
        assert_eq!(escape_html(""), "");
    }

    #[test]
    fn short_commit_never_splits_characters() {
        assert_eq!(short_commit("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_commit("abc"), "abc");
        assert_eq!(short_commit("ééééééééééééé"), "éééééééééééé");
    }

    #[tokio::test]
    async fn building_page_refreshes_and_shows_elapsed() {
        let err = ProxyError::Building {
            commit: "0123456789abcdef0123".into(),
            since: SystemTime::now() - Duration::from_secs(42),
        };
        let response = page(&err);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["refresh"], "2");
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let body = body_text(response).await;
        assert!(body.contains("0123456789ab"), "{body}");
        assert!(!body.contains("0123456789abc"), "{body}");
        assert!(body.contains("42 s"), "{body}");
        assert!(body.contains("http-equiv=\"refresh\""), "{body}");
    }

    #[tokio::test]
    async fn failed_page_escapes_the_log() {
        let err = ProxyError::Failed {
            commit: "<b>".into(),
            log_tail: "error: <script>alert(1)</script> & more".into(),
        };
        let response = page(&err);
        assert_eq!(response.status(), 502);
        let body = body_text(response).await;
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(!body.contains("<script>"));
        assert!(!body.contains("<b>"));
    }

    #[tokio::test]
    async fn client_faults_say_the_preview_is_fine_and_escape_the_reason() {
        let err = ProxyError::ClientBody {
            reason: "<bad> chunk".into(),
        };
        let response = page(&err);
        assert_eq!(response.status(), 400);
        let body = body_text(response).await;
        assert!(body.contains("&lt;bad&gt; chunk"), "{body}");
        assert!(body.contains("not in the preview"), "{body}");
        let refused = body_text(page(&ProxyError::Refused(Refusal::DuplicateHost))).await;
        assert!(refused.contains("more than one Host field"), "{refused}");
    }

    #[tokio::test]
    async fn gone_page_is_404() {
        let response = page(&ProxyError::Gone);
        assert_eq!(response.status(), 404);
        assert!(body_text(response).await.contains("This preview is gone"));
    }
}
