//! The framing scanner against hyper itself, on arbitrary request streams.
//!
//! previewd refuses what the scanner finds by counting request heads, so the
//! scanner's n-th head must be the request hyper hands over n-th. The
//! stream is served by hyper over the scanner, as previewd serves it; up to
//! and including the first refusal (the connection ends there), each request
//! hyper dispatched must have the scanner's head of the same index: the
//! same method and target, and (but for a refused head) the same number of
//! field lines.
#![no_main]

use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use previewd_proxy::fuzzing::scanner_against_hyper;

fuzz_target!(|stream: &[u8]| {
    let (dispatched, scanned) = scanner_against_hyper(stream);
    for (index, request) in dispatched.iter().enumerate() {
        let Some(head) = scanned.get(index) else {
            panic!(
                "hyper dispatched request {index} ({request:?}) the scanner never saw: {scanned:?}"
            );
        };
        let mut parts = head.request_line.split(|&b| b == b' ');
        let method = parts.next().and_then(|m| Method::from_bytes(m).ok());
        // The `http` crate drops a fragment; the scanner refuses it.
        let target = parts
            .next()
            .map(|t| t.split(|&b| b == b'#').next().unwrap_or_default().to_vec())
            .and_then(|t| Uri::try_from(t).ok());
        assert_eq!(
            (method.as_ref(), target.as_ref()),
            (Some(&request.method), Some(&request.uri)),
            "head {index}: the scanner read {:?}, hyper {request:?}",
            String::from_utf8_lossy(&head.request_line)
        );
        if request.refused {
            break;
        }
        assert_eq!(
            head.fields, request.fields,
            "head {index}: field lines, scanner vs hyper ({request:?})"
        );
    }
});
