//! The header read timeout for HTTP/2, which hyper only has for HTTP/1.1.
//! A client that sends the connection preface or a request's header block
//! (HEADERS and its CONTINUATION frames) a few bytes at a time would
//! otherwise hold the connection for as long as bytes keep trickling in:
//! the idle timeout never fires and h2's CONTINUATION limits count frames
//! and bytes, not time. Here the plaintext frame headers are read as they
//! pass, and a head left unfinished for the timeout fails the next read.
//! "Head" is everything but a DATA frame's payload: the preface, frame
//! headers, control frames (small, and sent whole by real clients) and
//! header blocks. Bodies may be slow; the idle timeout bounds them. It never
//! changes a byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::read_watch::{Cut, ReadWatch, Watcher};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// `inner` (an HTTP/2 connection's plaintext stream, right after the TLS
/// handshake: the preface is due now) whose reads fail with `TimedOut` once
/// the client has been in the middle of a head for longer than `timeout`.
pub(crate) fn watch<T>(inner: T, timeout: Duration) -> ReadWatch<T, HeadClock> {
    ReadWatch::new(inner, HeadClock::new(timeout))
}

/// Times each head the frame scanner sees.
#[derive(Debug)]
pub(crate) struct HeadClock {
    timeout: Duration,
    scanner: FrameScanner,
    /// Since when the client has been in the middle of a head, if it is.
    head_since: Option<Instant>,
    /// `scanner.heads_begun` when `head_since` was set: a later head gets a
    /// clock of its own.
    head_number: u64,
    /// Armed for `head_since + timeout`; made on the first slow head.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl HeadClock {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            scanner: FrameScanner::default(),
            head_since: Some(Instant::now()),
            head_number: 0,
            deadline: None,
        }
    }
}

impl Watcher for HeadClock {
    /// Starts, restarts or stops the head clock: a read that finishes one
    /// head and begins the next starts the next one's clock afresh. The timer
    /// itself is touched only when a read ends inside a head, which a client
    /// sending whole frames rarely causes.
    fn seen(&mut self, bytes: &[u8]) -> Result<(), Cut> {
        self.scanner.feed(bytes);
        if !self.scanner.mid_head() {
            self.head_since = None;
        } else if self.head_since.is_none() || self.head_number != self.scanner.heads_begun {
            self.head_since = Some(Instant::now());
            self.head_number = self.scanner.heads_begun;
        }
        Ok(())
    }

    /// Waiting for the client is the only moment a head can be overdue.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(since) = self.head_since else {
            return Poll::Pending;
        };
        let due = since + self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if deadline.deadline() != due {
            deadline.as_mut().reset(due);
        }
        deadline.as_mut().poll(cx).map(|()| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP/2 preface or header block not finished within the header read timeout",
            )
        })
    }
}

/// Where the client is in its byte stream, at frame granularity. It trusts
/// nothing it reads beyond lengths: h2 itself rejects malformed frames.
#[derive(Debug)]
struct FrameScanner {
    at: Position,
    /// A HEADERS or PUSH_PROMISE frame without END_HEADERS was seen and the
    /// CONTINUATION that carries END_HEADERS has not been read to its end.
    in_header_block: bool,
    /// Heads begun after the preface: every frame but those that continue an
    /// open header block, which share that block's clock.
    heads_begun: u64,
}

#[derive(Debug)]
enum Position {
    /// In the connection preface; this many of its bytes seen.
    Preface(usize),
    /// In a frame header; this many of its bytes seen.
    FrameHeader {
        seen: usize,
        bytes: [u8; FRAME_HEADER_LEN],
    },
    /// In a frame payload with this many bytes to go; `timed` unless it is
    /// DATA; `ends_block` when it is the frame that closes the header block.
    Payload {
        left: usize,
        timed: bool,
        ends_block: bool,
    },
}

impl Default for FrameScanner {
    fn default() -> Self {
        Self {
            at: Position::Preface(0),
            in_header_block: false,
            heads_begun: 0,
        }
    }
}

impl FrameScanner {
    /// Whether the client has started a head and not finished it: the
    /// preface, a frame header, a frame other than DATA, or a header block.
    fn mid_head(&self) -> bool {
        match self.at {
            Position::Preface(_) => true,
            Position::FrameHeader { seen, .. } => seen > 0 || self.in_header_block,
            Position::Payload { timed, .. } => timed || self.in_header_block,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.at {
                Position::Preface(seen) => {
                    let take = (PREFACE_LEN - *seen).min(bytes.len());
                    *seen += take;
                    bytes = &bytes[take..];
                    if *seen == PREFACE_LEN {
                        self.at = Self::next_frame();
                    }
                }
                Position::FrameHeader {
                    seen,
                    bytes: header,
                } => {
                    if *seen == 0 && !self.in_header_block {
                        self.heads_begun += 1;
                    }
                    let take = (FRAME_HEADER_LEN - *seen).min(bytes.len());
                    header[*seen..*seen + take].copy_from_slice(&bytes[..take]);
                    *seen += take;
                    bytes = &bytes[take..];
                    if *seen == FRAME_HEADER_LEN {
                        let header = *header;
                        self.frame_header_complete(&header);
                    }
                }
                Position::Payload {
                    left, ends_block, ..
                } => {
                    let take = (*left).min(bytes.len());
                    *left -= take;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        if *ends_block {
                            self.in_header_block = false;
                        }
                        self.at = Self::next_frame();
                    }
                }
            }
        }
    }

    fn frame_header_complete(&mut self, header: &[u8; FRAME_HEADER_LEN]) {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let mut ends_block = false;
        if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
            self.in_header_block = true;
            ends_block = flags & END_HEADERS != 0;
        }
        if len == 0 {
            if ends_block {
                self.in_header_block = false;
            }
            self.at = Self::next_frame();
        } else {
            self.at = Position::Payload {
                left: len,
                timed: kind != DATA,
                ends_block,
            };
        }
    }

    fn next_frame() -> Position {
        Position::FrameHeader {
            seen: 0,
            bytes: [0; FRAME_HEADER_LEN],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload_len: usize) -> Vec<u8> {
        let len = u32::try_from(payload_len).expect("length");
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags, 0, 0, 0, 1]);
        out.resize(FRAME_HEADER_LEN + payload_len, b'p');
        out
    }

    /// `mid_head` after each byte of `stream`, fed `step` bytes at a time.
    fn mid_head_after(stream: &[u8], step: usize) -> Vec<bool> {
        let mut scanner = FrameScanner::default();
        stream
            .chunks(step)
            .map(|chunk| {
                scanner.feed(chunk);
                scanner.mid_head()
            })
            .collect()
    }

    #[test]
    fn the_preface_is_a_head_until_its_last_byte() {
        let states = mid_head_after(PREFACE, 1);
        assert!(states[..PREFACE_LEN - 1].iter().all(|&mid| mid));
        assert!(!states[PREFACE_LEN - 1]);
    }

    #[test]
    fn a_header_block_is_a_head_until_the_end_headers_frame_is_read() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(HEADERS, 0, 5));
        let open_from = stream.len();
        stream.extend(frame(CONTINUATION, 0, 3));
        stream.extend(frame(CONTINUATION, END_HEADERS, 4));
        let closed_at = stream.len();
        stream.extend(frame(DATA, 0, 10));
        let states = mid_head_after(&stream, 1);
        assert!(states[PREFACE_LEN..closed_at - 1].iter().all(|&mid| mid));
        assert!(states[open_from - 1], "between HEADERS and CONTINUATION");
        assert!(!states[closed_at - 1]);
        // DATA: only its frame header counts; its payload is body.
        let data_payload = closed_at + FRAME_HEADER_LEN;
        assert!(states[closed_at..data_payload - 1].iter().all(|&mid| mid));
        assert!(states[data_payload - 1..].iter().all(|&mid| !mid));
    }

    #[test]
    fn a_control_frame_is_a_head_to_its_last_byte() {
        let ping = frame(0x6, 0, 8);
        let mut stream = PREFACE.to_vec();
        stream.extend(&ping);
        let states = mid_head_after(&stream, 1);
        assert!(states[PREFACE_LEN..stream.len() - 1].iter().all(|&mid| mid));
        assert!(!states[stream.len() - 1]);
    }

    #[test]
    fn whole_frames_in_one_read_never_leave_a_head_open() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0)); // SETTINGS
        stream.extend(frame(HEADERS, END_HEADERS, 40));
        stream.extend(frame(HEADERS, 0, 0));
        stream.extend(frame(CONTINUATION, END_HEADERS, 0));
        assert_eq!(mid_head_after(&stream, stream.len()), [false]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_head_fails_the_read_after_the_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = watch(server, Duration::from_secs(1));
        client.write_all(&PREFACE[..10]).await.expect("write");
        let mut buf = [0u8; 64];
        let read = server.read(&mut buf).await;
        assert_eq!(read.expect("first bytes"), 10);
        let err = server.read(&mut buf).await.expect_err("overdue");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn each_head_gets_the_whole_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = watch(server, Duration::from_secs(1));
        let mut buf = [0u8; 64];
        // The preface ends and a frame header begins in the same read, late in the
        // preface's second: the new head must still get a second of its own.
        client.write_all(&PREFACE[..20]).await.expect("write");
        let read = server.read(&mut buf).await;
        assert_eq!(read.expect("start of the preface"), 20);
        tokio::time::advance(Duration::from_millis(900)).await;
        let mut rest = PREFACE[20..].to_vec();
        rest.extend(&frame(0x4, 0, 0)[..3]);
        client.write_all(&rest).await.expect("write");
        let read = server.read(&mut buf).await;
        assert_eq!(read.expect("end of the preface, start of SETTINGS"), 7);
        let waiting = tokio::time::timeout(Duration::from_millis(500), server.read(&mut buf)).await;
        assert!(waiting.is_err(), "cut off 1.4 s after the preface began");
        let err = server
            .read(&mut buf)
            .await
            .expect_err("overdue once its own second is up");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_head_leaves_reads_waiting() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = watch(server, Duration::from_secs(1));
        client.write_all(PREFACE).await.expect("write");
        let mut buf = [0u8; 64];
        let read = server.read(&mut buf).await;
        assert_eq!(read.expect("preface"), PREFACE_LEN);
        let waiting = tokio::time::timeout(Duration::from_secs(60), server.read(&mut buf)).await;
        assert!(waiting.is_err(), "an idle connection is not a slow head");
    }
}
