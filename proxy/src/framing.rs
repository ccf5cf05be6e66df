//! A second, independent reading of HTTP/1.1 request framing on the
//! plaintext bytes hyper reads, for what hyper resolves silently and a
//! parsed request no longer shows:
//!
//! - a head with both `Content-Length` and `Transfer-Encoding` (hyper lets
//!   chunked win and drops `Content-Length`; another parser could frame it
//!   by the length), with `Content-Length` twice (hyper keeps one when they
//!   agree), or with a fragment in its target (the `http` crate drops it):
//!   the request is refused, before it is forwarded;
//! - a chunk-size line that breaks RFC 9112 7.1's grammar (hyper tolerates
//!   some: trailing whitespace, a bare `;`, a NUL in an extension) or chunk
//!   data longer than its size: the stream is cut before that line, so hyper
//!   reports a body error and no byte of the line reaches an upstream.
//!
//! It never changes a byte it lets through, and decides nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::conformance::Refusal;
use crate::read_watch::{Cut, ReadWatch, Watcher};

/// Longest line kept. A chunk-size line longer than this is refused (RFC
/// 9112 7.1.1: a recipient ought to limit chunk extensions); header lines
/// are only looked at for a name and a short value.
const MAX_LINE: usize = 1024;
/// Hex digits of the largest chunk size read (u64).
const MAX_CHUNK_DIGITS: usize = 16;

/// What the scanner found, read by `handle` once per request in order.
#[derive(Debug)]
pub(crate) struct FramingVerdicts {
    /// The first refused request head, by index, and why. Set at most once:
    /// the scan stops there, as the connection ends after its answer.
    first_refused: OnceLock<(u64, Refusal)>,
    /// Index of the request `handle` sees next.
    next_request: AtomicU64,
    /// Each completed head's request line and field count, for the fuzz
    /// target that holds the scanner's reading against hyper's.
    #[cfg(feature = "fuzzing")]
    heads_read: std::sync::Mutex<Vec<(Vec<u8>, usize)>>,
}

impl FramingVerdicts {
    fn new() -> Self {
        Self {
            first_refused: OnceLock::new(),
            next_request: AtomicU64::new(0),
            #[cfg(feature = "fuzzing")]
            heads_read: std::sync::Mutex::default(),
        }
    }

    /// The heads read so far: request line and number of field lines.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn heads_read(&self) -> Vec<(Vec<u8>, usize)> {
        self.heads_read
            .lock()
            .map(|heads| heads.clone())
            .unwrap_or_default()
    }

    /// Why the next request (in arrival order) must be refused: its head, or
    /// an earlier one on the connection, broke a rule. Call exactly once per
    /// request hyper hands over.
    pub(crate) fn next_refusal(&self) -> Option<Refusal> {
        let index = self.next_request.fetch_add(1, Ordering::SeqCst);
        match self.first_refused.get() {
            Some(&(first, refusal)) if index >= first => Some(refusal),
            _ => None,
        }
    }

    fn mark(&self, head: u64, refusal: Refusal) {
        // Only the first counts; the scan stops after it.
        let _ = self.first_refused.set((head, refusal));
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
    /// Reading a request head.
    Head(Head),
    /// Skipping a sized body.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data.
    ChunkData(u64),
    /// Reading the line end after chunk data.
    ChunkEnd,
    /// Reading trailer lines up to the blank one.
    Trailers,
    /// Stopped: after a request that may switch protocols (its connection
    /// ends or becomes a tunnel), after a refusal, or on framing hyper will
    /// refuse anyway.
    Off,
}

#[derive(Debug, Default)]
struct Head {
    /// Lines so far.
    lines: usize,
    /// Spaces seen on the request line so far: the target is after the
    /// first (hyper refuses a line with more than two).
    request_line_spaces: usize,
    /// A `#` in the request target, wherever the line is cut.
    fragment: bool,
    #[cfg(feature = "fuzzing")]
    request_line: Vec<u8>,
    content_length: Option<u64>,
    content_length_fields: usize,
    saw_transfer_encoding: bool,
    switches: bool,
    refusal: Option<Refusal>,
}

/// The framing reader itself: a request stream's state, line by line.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    /// The current line's first `MAX_LINE` bytes, without the line end.
    line: Vec<u8>,
    /// Whether the current line is longer than `MAX_LINE`.
    overlong: bool,
    /// The current line's last byte so far (CR before the LF, or not).
    last_byte: Option<u8>,
    /// Request heads completed so far.
    heads: u64,
    verdicts: Arc<FramingVerdicts>,
}

impl Scanner {
    fn new(verdicts: Arc<FramingVerdicts>) -> Self {
        Self {
            state: State::Head(Head::default()),
            line: Vec::new(),
            overlong: false,
            last_byte: None,
            heads: 0,
            verdicts,
        }
    }

    /// Reads `bytes`; `Err` when the stream must be cut, with how many of
    /// them may still pass.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), Cut> {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match &mut self.state {
                State::Off => return Ok(()),
                State::Body(left) | State::ChunkData(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    *left -= take as u64;
                    at += take;
                    if *left == 0 {
                        self.state = match self.state {
                            State::Body(_) => State::Head(Head::default()),
                            _ => State::ChunkEnd,
                        };
                    }
                }
                State::Head(_) | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let end = rest.iter().position(|&b| b == b'\n');
                    let piece = &rest[..end.unwrap_or(rest.len())];
                    let room = MAX_LINE.saturating_sub(self.line.len());
                    if piece.len() > room && matches!(self.state, State::ChunkSize) {
                        self.state = State::Off;
                        // Exactly MAX_LINE bytes of the line pass, however it was read.
                        return Err(Cut {
                            keep: at + room,
                            reason: "chunk-size line longer than 1 KiB",
                        });
                    }
                    if let State::Head(head) = &mut self.state {
                        head.scan_request_line(piece);
                    }
                    self.push_line(piece);
                    let Some(end) = end else {
                        return Ok(());
                    };
                    self.end_line().map_err(|reason| {
                        self.state = State::Off;
                        // Up to the line end: hyper never sees the line whole.
                        Cut {
                            keep: at + end,
                            reason,
                        }
                    })?;
                    at += end + 1;
                }
            }
        }
        Ok(())
    }

    fn push_line(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.overlong |= bytes.len() > room;
        self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
        if let Some(&last) = bytes.last() {
            self.last_byte = Some(last);
        }
    }

    /// Takes the finished line; `Err` names what is wrong with a chunk line.
    fn end_line(&mut self) -> Result<(), &'static str> {
        let mut line = std::mem::take(&mut self.line);
        let overlong = std::mem::take(&mut self.overlong);
        let crlf = self.last_byte.take() == Some(b'\r');
        if crlf && line.last() == Some(&b'\r') {
            line.pop();
        }
        let state = std::mem::replace(&mut self.state, State::Off);
        let next = match state {
            State::Head(head) => Ok(self.head_line(head, &line, overlong)),
            // hyper ends chunk and trailer lines at CRLF only (a bare LF is
            // a header line end to it, not a chunk line end): so must we, or
            // the two readings part.
            State::ChunkSize | State::ChunkEnd | State::Trailers if !crlf => {
                Err("a chunk or trailer line not ended by CRLF")
            }
            State::ChunkSize => chunk_size_line(&line).map(|size| match size {
                0 => State::Trailers,
                size => State::ChunkData(size),
            }),
            State::ChunkEnd if line.is_empty() => Ok(State::ChunkSize),
            State::ChunkEnd => Err("chunk data longer than its chunk size"),
            State::Trailers if line.is_empty() => Ok(State::Head(Head::default())),
            State::Trailers => Ok(State::Trailers),
            State::Body(_) | State::ChunkData(_) | State::Off => Ok(State::Off),
        };
        line.clear();
        self.line = line;
        self.state = next?;
        Ok(())
    }

    fn head_line(&mut self, mut head: Head, line: &[u8], overlong: bool) -> State {
        if line.is_empty() {
            if head.lines == 0 {
                // Blank lines before a request line are allowed and skipped.
                return State::Head(head);
            }
            let index = self.heads;
            self.heads += 1;
            #[cfg(feature = "fuzzing")]
            if let Ok(mut heads) = self.verdicts.heads_read.lock() {
                heads.push((std::mem::take(&mut head.request_line), head.lines - 1));
            }
            if head.content_length_fields > 0 && head.saw_transfer_encoding {
                head.refusal
                    .get_or_insert(Refusal::LengthAndTransferEncoding);
            }
            if head.content_length_fields > 1 {
                head.refusal.get_or_insert(Refusal::DuplicateContentLength);
            }
            if let Some(refusal) = head.refusal {
                self.verdicts.mark(index, refusal);
                return State::Off;
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
            #[cfg(feature = "fuzzing")]
            head.request_line.extend_from_slice(line);
            head.switches = line.starts_with(b"CONNECT ");
            if head.fragment {
                head.refusal.get_or_insert(Refusal::TargetFragment);
            }
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            let framing = name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"transfer-encoding");
            if framing && overlong {
                // Only its first KiB is kept: its value cannot be read here.
                head.refusal.get_or_insert(Refusal::FramingFieldTooLong);
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                head.content_length_fields += 1;
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
    fn seen(&mut self, bytes: &[u8]) -> Result<(), Cut> {
        self.feed(bytes)
    }
}

/// Feeds `stream` to a fresh scanner in pieces of the sizes `pieces` gives
/// (cycled); returns, for each of the first `requests` heads, its refusal,
/// and where the stream was cut and why. For tests and the fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn scan(
    stream: &[u8],
    pieces: &[usize],
    requests: usize,
) -> (Vec<Option<Refusal>>, Option<(usize, &'static str)>) {
    let verdicts = Arc::new(FramingVerdicts::new());
    let mut scanner = Scanner::new(verdicts.clone());
    let mut fed = 0;
    let mut cut = None;
    for &size in pieces.iter().filter(|&&size| size > 0).cycle() {
        if fed >= stream.len() {
            break;
        }
        let piece = &stream[fed..stream.len().min(fed + size)];
        if let Err(c) = scanner.feed(piece) {
            cut = Some((fed + c.keep, c.reason));
            break;
        }
        fed += piece.len();
    }
    let refusals = (0..requests).map(|_| verdicts.next_refusal()).collect();
    (refusals, cut)
}

impl Head {
    /// Reads a piece of the request line as it passes, for a `#` in the
    /// target however long the line is.
    fn scan_request_line(&mut self, piece: &[u8]) {
        if self.lines > 0 {
            return;
        }
        for &byte in piece {
            match byte {
                b' ' => self.request_line_spaces += 1,
                b'#' if self.request_line_spaces == 1 => self.fragment = true,
                _ => {}
            }
        }
    }
}

fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The size on a chunk-size line, which must be exactly RFC 9112 7.1:
/// `chunk-size [ chunk-ext ]`, with `chunk-ext = *( BWS ";" BWS
/// chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`, names tokens and values
/// tokens or quoted strings. Extensions are checked, then ignored.
fn chunk_size_line(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size is not a hexadecimal number");
    }
    // Leading zeros are digits too (1*HEXDIG); only the rest must fit.
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits - zeros > MAX_CHUNK_DIGITS {
        return Err("chunk size is too large");
    }
    let size = line[zeros..digits].iter().fold(0u64, |size, &digit| {
        // At most 16 hex digits: fits in a u64.
        size << 4 | u64::from(char::from(digit).to_digit(16).unwrap_or(0))
    });
    let mut at = digits;
    while at < line.len() {
        at = skip_whitespace(line, at);
        if line.get(at) != Some(&b';') {
            return Err("junk after the chunk size");
        }
        at = skip_whitespace(line, at + 1);
        let name = token_len(&line[at..]);
        if name == 0 {
            return Err("chunk extension without a name");
        }
        at += name;
        let before_value = skip_whitespace(line, at);
        if line.get(before_value) == Some(&b'=') {
            at = skip_whitespace(line, before_value + 1);
            let value = match line.get(at) {
                Some(b'"') => {
                    quoted_len(&line[at..]).ok_or("chunk extension with a bad quoted value")?
                }
                _ => token_len(&line[at..]),
            };
            if value == 0 {
                return Err("chunk extension without a value after =");
            }
            at += value;
        }
    }
    Ok(size)
}

fn skip_whitespace(line: &[u8], mut at: usize) -> usize {
    while matches!(line.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    at
}

/// RFC 9110 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token_len(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|&&b| is_tchar(b)).count()
}

/// Length of the RFC 9110 5.6.4 quoted string `bytes` starts with.
fn quoted_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 1;
    loop {
        match *bytes.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => {
                let escaped = *bytes.get(at + 1)?;
                if escaped != b'\t' && !(b' '..=b'~').contains(&escaped) && escaped < 0x80 {
                    return None;
                }
                at += 2;
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80.. => at += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(
        stream: &[u8],
        step: usize,
        requests: usize,
    ) -> (Vec<Option<Refusal>>, Option<(usize, &'static str)>) {
        super::scan(stream, &[step], requests)
    }

    fn verdicts(stream: &str, step: usize, requests: usize) -> Vec<Option<Refusal>> {
        let (refusals, cut) = scan(stream.as_bytes(), step, requests);
        assert_eq!(cut, None, "{stream:?}");
        refusals
    }

    const BOTH: Option<Refusal> = Some(Refusal::LengthAndTransferEncoding);

    #[test]
    fn content_length_with_transfer_encoding_is_refused_in_either_order() {
        for step in [1, 3, 1000] {
            let cl_te = "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
            assert_eq!(verdicts(cl_te, step, 1), [BOTH]);
            let te_cl = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
            assert_eq!(verdicts(te_cl, step, 1), [BOTH]);
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
                [None, None, None, BOTH],
                "{step}"
            );
        }
    }

    #[test]
    fn a_request_that_may_switch_stops_the_scan() {
        let stream = "GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n\
                      POST / HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(verdicts(stream, 5, 2), [None, None]);
    }

    #[test]
    fn content_length_twice_is_refused_even_when_equal() {
        let stream = "POST / HTTP/1.1\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(
            verdicts(stream, 3, 1),
            [Some(Refusal::DuplicateContentLength)]
        );
    }

    #[test]
    fn a_fragment_in_the_target_is_refused_and_later_heads_too() {
        let stream = "GET /a#b HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let fragment = Some(Refusal::TargetFragment);
        assert_eq!(verdicts(stream, 4, 2), [fragment, fragment]);
        // A `#` in a field value is no fragment.
        let value = "GET /a HTTP/1.1\r\nx-tag: #1\r\n\r\n";
        assert_eq!(verdicts(value, 4, 1), [None]);
    }

    #[test]
    fn chunk_lines_must_follow_the_grammar() {
        for good in [
            "5",
            "A",
            "5;a",
            "5;a=b",
            "5 ; a = b",
            "5;a=\"q \\\" d\"",
            "5;a;b=c",
            "0000000000000005",
        ] {
            assert_eq!(
                chunk_size_line(good.as_bytes()).map(|_| ()),
                Ok(()),
                "{good:?}"
            );
        }
        assert_eq!(chunk_size_line(b"1f"), Ok(31));
        assert_eq!(chunk_size_line(b"00000000000000000000005"), Ok(5));
        assert_eq!(chunk_size_line(b"ffffffffffffffff"), Ok(u64::MAX));
        for bad in [
            "",
            "0x5",
            "+5",
            "-5",
            " 5",
            "5 ",
            "5_0",
            "5;",
            "5;[x]",
            "5;a\0",
            "5;a=",
            "5;a=\"open",
            "5;a=b ",
            "5\rx",
            "FFFFFFFFFFFFFFFFF",
        ] {
            assert!(chunk_size_line(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_chunk_line_cuts_the_stream_before_its_end() {
        let head = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        // The body, why it is cut, and which of its line ends ends the bad line.
        for (body, reason, bad_line) in [
            ("5 \r\nhello\r\n0\r\n\r\n", "junk after the chunk size", 0),
            (
                "5\r\nhelloXX\r\n0\r\n\r\n",
                "chunk data longer than its chunk size",
                1,
            ),
            (
                "5;\r\nhello\r\n0\r\n\r\n",
                "chunk extension without a name",
                0,
            ),
        ] {
            let stream = format!("{head}{body}");
            let line_end = head.len() + body.match_indices('\n').nth(bad_line).expect("line").0;
            for step in [1, 9, 4096] {
                let (refusals, cut) = scan(stream.as_bytes(), step, 1);
                assert_eq!(refusals, [None], "{body:?}");
                // Everything before the bad line's end passes, nothing after.
                assert_eq!(cut, Some((line_end, reason)), "{body:?} step {step}");
            }
        }
    }

    /// The bug this pins: a bare LF ended a trailer section for the
    /// scanner but not for hyper, so every later head was miscounted.
    #[test]
    fn a_bare_lf_in_a_chunk_or_trailer_line_cuts_the_stream() {
        let head = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        for body in [
            "0\r\n\nGET /hidden HTTP/1.1\r\n\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "0\r\nx: 1\n\r\n",
        ] {
            let stream = format!("{head}{body}");
            for step in [1, 5, 4096] {
                let (_, cut) = scan(stream.as_bytes(), step, 2);
                assert_eq!(
                    cut.map(|(_, why)| why),
                    Some("a chunk or trailer line not ended by CRLF"),
                    "{body:?} step {step}"
                );
            }
        }
    }

    #[test]
    fn framing_fields_longer_than_a_line_are_refused() {
        let spaces = " ".repeat(1100);
        for field in ["content-length", "transfer-encoding"] {
            let stream = format!("POST / HTTP/1.1\r\n{field}:{spaces}5\r\n\r\n");
            assert_eq!(
                verdicts(&stream, 64, 1),
                [Some(Refusal::FramingFieldTooLong)],
                "{field}"
            );
        }
        // Any other field may be long.
        let stream = format!("GET / HTTP/1.1\r\nx-long: {spaces}5\r\n\r\n");
        assert_eq!(verdicts(&stream, 64, 1), [None]);
    }

    #[test]
    fn a_fragment_is_found_however_long_the_target() {
        let stream = format!("GET /{}#frag HTTP/1.1\r\n\r\n", "a".repeat(3000));
        for step in [1, 700, 8192] {
            assert_eq!(
                verdicts(&stream, step, 1),
                [Some(Refusal::TargetFragment)],
                "{step}"
            );
        }
    }

    #[test]
    fn an_overlong_chunk_line_is_cut_without_waiting_for_its_end() {
        let mut stream = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;a=".to_vec();
        stream.extend(std::iter::repeat_n(b'b', 2000));
        let line_start = stream.len() - 2004;
        for step in [1, 100, 512, 4096] {
            let (_, cut) = scan(&stream, step, 1);
            assert_eq!(
                cut,
                Some((line_start + MAX_LINE, "chunk-size line longer than 1 KiB")),
                "{step}"
            );
        }
    }
}
