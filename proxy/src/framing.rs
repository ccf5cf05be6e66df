//! A second, independent reading of HTTP/1.1 request framing on the
//! plaintext bytes hyper reads, only to spot request heads that carry both
//! `Content-Length` and `Transfer-Encoding`. hyper resolves those silently
//! (chunked wins, `Content-Length` is dropped from the request it hands us),
//! which another parser could frame differently; we refuse them instead.
//! It never changes a byte and must not decide anything beyond "ambiguous".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::read_watch::{ReadWatch, Watcher};

/// Longest line prefix kept: enough for any header name we look at and a
/// `Content-Length` or chunk size with generous whitespace.
const MAX_LINE: usize = 1024;

/// What the scanner found, read by `handle` once per request in order.
#[derive(Debug)]
pub(crate) struct FramingVerdicts {
    /// Index of the first ambiguous request head, `u64::MAX` if none.
    first_ambiguous: AtomicU64,
    /// Index of the request `handle` sees next.
    next_request: AtomicU64,
}

impl FramingVerdicts {
    fn new() -> Self {
        Self {
            first_ambiguous: AtomicU64::new(u64::MAX),
            next_request: AtomicU64::new(0),
        }
    }

    /// Whether the next request (in arrival order) must be refused: its head
    /// or an earlier one on the connection was ambiguous. Call exactly once
    /// per request hyper hands over.
    pub(crate) fn next_is_ambiguous(&self) -> bool {
        let index = self.next_request.fetch_add(1, Ordering::SeqCst);
        index >= self.first_ambiguous.load(Ordering::SeqCst)
    }

    fn mark(&self, head: u64) {
        self.first_ambiguous.fetch_min(head, Ordering::SeqCst);
    }
}

/// `inner` with every byte read also fed to the framing scanner; the
/// verdicts are shared with the connection's handler.
pub(crate) fn watch<T>(inner: T) -> (ReadWatch<T, Scanner>, Arc<FramingVerdicts>) {
    let verdicts = Arc::new(FramingVerdicts::new());
    let scanner = Scanner::new(verdicts.clone());
    (ReadWatch::new(inner, scanner), verdicts)
}

/// Where in the request stream the scanner is.
#[derive(Debug)]
enum State {
    /// Reading a request head; `lines` counts lines so far.
    Head(Head),
    /// Skipping a sized body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data.
    ChunkData(u64),
    /// Skipping the line end after chunk data.
    ChunkEnd,
    /// Reading trailer lines up to the blank one.
    Trailers,
    /// Stopped: after a request that may switch protocols (its connection
    /// ends or becomes a tunnel), or on framing hyper will refuse anyway.
    Off,
}

#[derive(Debug, Default)]
struct Head {
    lines: usize,
    content_length: Option<u64>,
    saw_content_length: bool,
    saw_transfer_encoding: bool,
    switches: bool,
}

/// The framing reader itself: a request stream's state, line by line.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    /// The current line's first `MAX_LINE` bytes, without the line end.
    line: Vec<u8>,
    /// Request heads completed so far.
    heads: u64,
    verdicts: Arc<FramingVerdicts>,
}

impl Scanner {
    fn new(verdicts: Arc<FramingVerdicts>) -> Self {
        Self {
            state: State::Head(Head::default()),
            line: Vec::new(),
            heads: 0,
            verdicts,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Body(left) | State::ChunkData(left) => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.state = match self.state {
                            State::Body(_) => State::Head(Head::default()),
                            _ => State::ChunkEnd,
                        };
                    }
                }
                State::Head(_) | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    match bytes.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            self.push_line(&bytes[..end]);
                            bytes = &bytes[end + 1..];
                            self.end_line();
                        }
                        None => {
                            self.push_line(bytes);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn push_line(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let state = std::mem::replace(&mut self.state, State::Off);
        self.state = match state {
            State::Head(head) => self.head_line(head, &line),
            State::ChunkSize => match chunk_size(&line) {
                Some(0) => State::Trailers,
                Some(size) => State::ChunkData(size),
                None => State::Off,
            },
            State::ChunkEnd => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head(Head::default()),
            State::Trailers => State::Trailers,
            State::Body(_) | State::ChunkData(_) | State::Off => State::Off,
        };
        line.clear();
        self.line = line;
    }

    fn head_line(&mut self, mut head: Head, line: &[u8]) -> State {
        if line.is_empty() {
            if head.lines == 0 {
                // Blank lines before a request line are allowed and skipped.
                return State::Head(head);
            }
            let index = self.heads;
            self.heads += 1;
            if head.saw_content_length && head.saw_transfer_encoding {
                self.verdicts.mark(index);
            }
            return if head.switches {
                State::Off
            } else if head.saw_transfer_encoding {
                State::ChunkSize
            } else {
                match head.content_length {
                    Some(0) | None => State::Head(Head::default()),
                    Some(len) => State::Body(len),
                }
            };
        }
        if head.lines == 0 {
            head.switches = line.starts_with(b"CONNECT ");
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                head.saw_content_length = true;
                head.content_length = head.content_length.or_else(|| decimal(value));
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                head.saw_transfer_encoding = true;
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                head.switches = true;
            }
        }
        head.lines += 1;
        State::Head(head)
    }
}

impl Watcher for Scanner {
    fn seen(&mut self, bytes: &[u8]) {
        self.feed(bytes);
    }
}

fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The size at the start of a chunk-size line (extensions ignored).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `step` bytes; returns, per head, whether
    /// it would be refused.
    fn verdicts(stream: &str, step: usize, requests: usize) -> Vec<bool> {
        let verdicts = Arc::new(FramingVerdicts::new());
        let mut scanner = Scanner::new(verdicts.clone());
        for piece in stream.as_bytes().chunks(step) {
            scanner.feed(piece);
        }
        (0..requests)
            .map(|_| verdicts.next_is_ambiguous())
            .collect()
    }

    #[test]
    fn content_length_with_transfer_encoding_is_ambiguous_in_either_order() {
        for step in [1, 3, 1000] {
            let cl_te = "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
            assert_eq!(verdicts(cl_te, step, 1), [true]);
            let te_cl = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
            assert_eq!(verdicts(te_cl, step, 1), [true]);
        }
    }

    #[test]
    fn bodies_are_skipped_so_header_like_body_text_is_not_a_head() {
        let stream = "POST /a HTTP/1.1\r\ncontent-length: 47\r\n\r\n\
                      content-length: 1\r\ntransfer-encoding: chunked\r\n\
                      POST /b HTTP/1.1\n\
                      transfer-encoding: chunked\n\n\
                      2f;ext=1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n\
                      0\r\ntrailer: x\r\n\r\n\
                      \r\nGET /c HTTP/1.1\r\n\r\n\
                      POST /d HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n";
        for step in [1, 7, 4096] {
            assert_eq!(
                verdicts(stream, step, 4),
                [false, false, false, true],
                "{step}"
            );
        }
    }

    #[test]
    fn a_request_that_may_switch_stops_the_scan() {
        let stream = "GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n\
                      POST / HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(stream, 5, 2), [false, false]);
    }
}
