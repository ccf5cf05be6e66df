//! The framing scanner against hyper itself, on arbitrary request streams.
//!
//! previewd refuses what the scanner finds by counting request heads, so the
//! scanner's n-th head must be the request hyper hands over n-th. The
//! stream is served by hyper over the scanner, as previewd serves it; up to
//! the first refusal (the connection ends there), each request hyper
//! dispatched must have the scanner's request line for the same index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use previewd_proxy::fuzzing::scanner_against_hyper;

fuzz_target!(|stream: &[u8]| {
    let (dispatched, lines) = scanner_against_hyper(stream);
    for (index, request) in dispatched.iter().enumerate() {
        // The connection ends at a refusal; a refused head's target may
        // hold what hyper drops (a fragment).
        if request.refused {
            break;
        }
        let Some(line) = lines.get(index) else {
            panic!("hyper dispatched request {index} ({request:?}) the scanner never saw; it saw {lines:?}");
        };
        let line = String::from_utf8_lossy(line);
        let parts: Vec<&str> = line.splitn(3, ' ').collect();
        let scanned = parts.get(..2).map(|p| p.join(" ")).unwrap_or_default();
        assert_eq!(
            scanned, request.method_and_target,
            "head {index}: the scanner read {line:?}, hyper {request:?}"
        );
    }
});
