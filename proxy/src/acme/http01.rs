//! HTTP-01 answers (RFC 8555 section 8.3): the key authorizations of pending
//! challenges, published by the per-host issuer while an order is open and
//! answered by the plain-HTTP listener at `/.well-known/acme-challenge/<token>`.
//! It knows nothing of orders, accounts or when to issue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::host::request_host;
use crate::pages::{self, ProxyBody};

/// Where validators fetch the key authorization of a token.
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The pending HTTP-01 challenges, shared by the per-host issuer (which
/// publishes them) and the plain-HTTP listener (which answers with them).
/// Cloning shares the same set. Only mode "acme" with HTTP-01 makes one
/// ([`crate::CertSource::http01`]).
#[derive(Clone)]
pub struct Http01Responder {
    /// Token to the challenge it answers.
    pending: Arc<Mutex<HashMap<String, Challenge>>>,
}

/// One pending challenge.
#[derive(Debug)]
struct Challenge {
    /// Normalized host being validated; requests for other hosts get 404.
    host: String,
    /// `<token>.<account key thumbprint>`, the body of the answer.
    key_authorization: String,
}

impl std::fmt::Debug for Http01Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http01Responder")
            .field("pending", &self.lock().len())
            .finish()
    }
}

/// A published challenge; dropping it withdraws the answer, so a failed or
/// abandoned order never leaves one behind.
#[derive(Debug)]
pub(crate) struct Pending {
    responder: Http01Responder,
    token: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.responder.lock().remove(&self.token);
    }
}

impl Http01Responder {
    /// No challenge pending yet.
    pub(crate) fn new() -> Self {
        Self {
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Answers `token` with `key_authorization` to requests for `host` until
    /// the returned [`Pending`] is dropped.
    pub(crate) fn publish(&self, host: &str, token: &str, key_authorization: &str) -> Pending {
        self.lock().insert(
            token.to_owned(),
            Challenge {
                host: host.to_ascii_lowercase(),
                key_authorization: key_authorization.to_owned(),
            },
        );
        Pending {
            responder: self.clone(),
            token: token.to_owned(),
        }
    }

    /// The answer to `req` if it is a challenge request (`GET` of
    /// `/.well-known/acme-challenge/<token>`): 200 with the key authorization
    /// when that token is pending for the request's host, 404 otherwise.
    /// `None` for every other request, which the caller redirects.
    pub(crate) fn answer<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        if req.method() != Method::GET {
            return None;
        }
        let token = challenge_token(req.uri().path())?;
        let host = request_host(req).map(|host| host.name);
        let key_authorization = self
            .lock()
            .get(token)
            .filter(|challenge| host.as_deref() == Some(challenge.host.as_str()))
            .map(|challenge| challenge.key_authorization.clone());
        let mut response = match key_authorization {
            Some(body) => {
                tracing::debug!(host = ?host, token, "answering HTTP-01 challenge");
                let mut response = Response::new(pages::full(body));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                response
            }
            None => {
                tracing::debug!(host = ?host, token, "no pending HTTP-01 challenge");
                let mut response = Response::new(pages::empty());
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            }
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(response)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Challenge>> {
        // The map is consistent after every statement; a panic elsewhere
        // while holding the lock does not make it wrong.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The token of a challenge path: one non-empty segment of base64url
/// characters (RFC 8555 section 8.3) after the well-known prefix.
fn challenge_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix(CHALLENGE_PREFIX)?;
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;
    use http_body_util::BodyExt;

    #[test]
    fn challenge_paths_are_parsed_strictly() {
        for (path, expect) in [
            (
                "/.well-known/acme-challenge/abc-DEF_123",
                Some("abc-DEF_123"),
            ),
            ("/.well-known/acme-challenge/", None),
            ("/.well-known/acme-challenge/a/b", None),
            ("/.well-known/acme-challenge/a.b", None),
            ("/.well-known/acme-challenge/%41", None),
            ("/.well-known/acme-challenge", None),
            ("/.WELL-KNOWN/acme-challenge/abc", None),
            ("/x/.well-known/acme-challenge/abc", None),
            ("/", None),
        ] {
            assert_eq!(challenge_token(path), expect, "{path}");
        }
    }

    fn get(responder: &Http01Responder, method: Method, host: &str, uri: &str) -> Option<u16> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, host)
            .body(())
            .expect("request");
        responder.answer(&req).map(|r| r.status().as_u16())
    }

    #[tokio::test]
    async fn pending_tokens_are_answered_for_their_host_only() {
        let responder = Http01Responder::new();
        let pending = responder.publish("a.preview.test", "tok", "tok.thumb");
        let path = "/.well-known/acme-challenge/tok";

        let req = Request::get(path)
            .header(HOST, "A.preview.test:80")
            .body(())
            .expect("request");
        let response = responder.answer(&req).expect("a challenge request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "tok.thumb");

        assert_eq!(
            get(&responder, Method::GET, "b.preview.test", path),
            Some(404)
        );
        let other = "/.well-known/acme-challenge/other";
        assert_eq!(
            get(&responder, Method::GET, "a.preview.test", other),
            Some(404)
        );
        // Not challenge requests: the caller redirects them.
        assert_eq!(get(&responder, Method::POST, "a.preview.test", path), None);
        assert_eq!(get(&responder, Method::GET, "a.preview.test", "/tok"), None);

        drop(pending);
        assert_eq!(
            get(&responder, Method::GET, "a.preview.test", path),
            Some(404)
        );
    }
}
