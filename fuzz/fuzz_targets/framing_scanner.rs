//! The HTTP/1.1 framing scanner under arbitrary request streams.
//!
//! The first bytes pick how the stream is split into reads; the rest is the
//! stream. Besides "never panics", it checks what the proxy relies on: the
//! scanner's verdicts and its cut do not depend on how the bytes arrived
//! (whole, byte by byte, or in the fuzzer's pieces); a cut never keeps more
//! than was read, and everything before it reads clean; once a head is
//! refused, every later one is too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use previewd_proxy::fuzzing::scan_framing;

/// Request heads whose verdicts are compared.
const HEADS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let pieces: Vec<usize> = [split, split.rotate_left(3), split ^ 0x5a]
        .iter()
        .map(|&b| usize::from(b % 64) + 1)
        .collect();

    let whole = scan_framing(stream, &[usize::MAX], HEADS);
    let bytewise = scan_framing(stream, &[1], HEADS);
    let split_up = scan_framing(stream, &pieces, HEADS);
    assert_eq!(whole, bytewise, "one read and byte-by-byte reads differ");
    assert_eq!(whole, split_up, "the fuzzer's reads {pieces:?} differ");

    let (refusals, cut) = whole;
    if let Some(first) = refusals.iter().position(Option::is_some) {
        assert!(
            refusals[first..].iter().all(Option::is_some),
            "a head after a refused one passed: {refusals:?}"
        );
    }
    if let Some((keep, reason)) = cut {
        assert!(
            keep <= stream.len(),
            "kept {keep} of {} bytes",
            stream.len()
        );
        let (_, before) = scan_framing(&stream[..keep], &[usize::MAX], HEADS);
        assert_eq!(
            before, None,
            "the bytes kept before a cut ({reason}) are cut again"
        );
    }
});
