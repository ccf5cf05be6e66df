//! HTTP/2 by hand: frames, HPACK literals (never Huffman, never indexed into
//! the dynamic table), and a client that sends exactly the bytes it is
//! given, so tests can send what a conforming client library refuses to.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{h2_sender, within, Proxy, APP};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("4 bytes"))
    }
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET https://APP<path>`, literals without indexing or Huffman.
pub fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    literal_indexed_name(&mut block, 4, path.as_bytes()); // :path
    literal_indexed_name(&mut block, 1, APP.as_bytes()); // :authority
    block
}

/// HPACK for `POST https://APP<path>`.
pub fn post_block(path: &str) -> Vec<u8> {
    let mut block = get_block(path);
    block[0] = 0x83; // :method POST
    block
}

/// A header block of exactly `fields`, in order, each a literal with a
/// literal name: pseudo-fields, case and bytes as given.
pub fn block_of(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        literal(&mut block, name, value);
    }
    block
}

/// The request fields of a plain `GET https://APP/`.
pub fn get_fields() -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", APP.as_bytes()),
        (b":path", b"/"),
    ]
}

pub fn literal_indexed_name(block: &mut Vec<u8>, index: u8, value: &[u8]) {
    block.push(index); // 0000xxxx: literal without indexing, indexed name
    integer(block, 0, 7, value.len());
    block.extend_from_slice(value);
}

/// A literal field without indexing, with a literal name (RFC 7541 6.2.2).
pub fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    integer(block, 0, 7, name.len());
    block.extend_from_slice(name);
    integer(block, 0, 7, value.len());
    block.extend_from_slice(value);
}

/// One small `x-junk-N: <value>` field with a new (literal) name.
pub fn junk_field(block: &mut Vec<u8>, n: usize, value_len: usize) {
    let name = format!("x-junk-{n}");
    literal(block, name.as_bytes(), &vec![b'v'; value_len]);
}

/// HPACK integer with an `prefix`-bit prefix (RFC 7541 5.1).
pub fn integer(block: &mut Vec<u8>, high_bits: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        block.push(high_bits | u8::try_from(value).expect("small"));
        return;
    }
    block.push(high_bits | u8::try_from(max).expect("prefix"));
    value -= max;
    while value >= 128 {
        block.push(u8::try_from(value % 128).expect("7 bits") | 0x80);
        value /= 128;
    }
    block.push(u8::try_from(value).expect("7 bits"));
}

/// The `:status` a response header block starts with, as hyper's encoder
/// writes it: indexed from the static table, or a literal with the indexed
/// name `:status` and a plain or Huffman-coded value (digits only).
pub fn status_of(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    let indexed = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    if first & 0x80 != 0 {
        return indexed
            .iter()
            .find(|(index, _)| *index == first & 0x7f)
            .map(|&(_, status)| status);
    }
    // Literal with incremental indexing (0x48), without (0x08), never (0x18).
    if ![0x48, 0x08, 0x18].contains(&first) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(2..2 + len)?;
    let text = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

/// Decodes a Huffman-coded (RFC 7541 Appendix B) string of digits.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    // '0'-'2' have 5-bit codes 0-2, '3'-'9' 6-bit codes 0x19-0x1f.
    let bits: Vec<bool> = bytes
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| byte >> i & 1 == 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    while at + 5 <= bits.len() {
        let code = |n: usize| {
            bits[at..at + n]
                .iter()
                .fold(0u8, |acc, &bit| acc << 1 | u8::from(bit))
        };
        if code(5) <= 2 {
            out.push(char::from(b'0' + code(5)));
            at += 5;
        } else if at + 6 <= bits.len() && (0x19..=0x1f).contains(&code(6)) {
            out.push(char::from(b'3' + code(6) - 0x19));
            at += 6;
        } else {
            // The padding: all ones, shorter than 8 bits.
            return bits[at..].iter().all(|&bit| bit).then_some(out);
        }
    }
    bits[at..].iter().all(|&bit| bit).then_some(out)
}

/// How the proxy ended one stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It answered with this status.
    Status(u16),
    /// It reset the stream with this error code.
    Reset(u32),
    /// It closed the connection with GOAWAY and this error code.
    GoAway(u32),
}

pub struct RawH2 {
    pub reader: ReadHalf<TlsStream<TcpStream>>,
    pub writer: WriteHalf<TlsStream<TcpStream>>,
}

impl RawH2 {
    /// Preface and SETTINGS exchanged (ours empty, theirs acknowledged).
    pub async fn connect(proxy: &Proxy) -> RawH2 {
        let tls = proxy.tls(APP, &[b"h2"]).await.expect("TLS");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (reader, writer) = tokio::io::split(tls);
        let mut h2 = RawH2 { reader, writer };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h2.send(&hello).await.expect("preface");
        loop {
            let settings = h2.read().await.expect("server SETTINGS");
            if settings.kind == SETTINGS && settings.flags & ACK == 0 {
                break;
            }
        }
        // Acknowledged before any stream, so the server's limits apply.
        h2.send(&frame(SETTINGS, ACK, 0, &[])).await.expect("ack");
        h2
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    pub async fn read(&mut self) -> Option<Frame> {
        read_frame(&mut self.reader).await
    }

    /// Reads until stream `stream` gets its answer (the head of a response,
    /// or a reset) or the connection ends.
    pub async fn outcome(&mut self, stream: u32) -> Outcome {
        within(10, "the stream's outcome", async {
            loop {
                let Some(frame) = self.read().await else {
                    panic!("connection closed without GOAWAY or an answer");
                };
                match frame.kind {
                    GOAWAY => return Outcome::GoAway(frame.error_code()),
                    RST_STREAM if frame.stream == stream => {
                        return Outcome::Reset(frame.error_code())
                    }
                    HEADERS if frame.stream == stream => {
                        let status = status_of(&frame.payload)
                            .unwrap_or_else(|| panic!("no :status in {frame:?}"));
                        return Outcome::Status(status);
                    }
                    _ => {}
                }
            }
        })
        .await
    }
}

/// The next frame, or `None` once the connection is closed.
pub async fn read_frame(reader: &mut ReadHalf<TlsStream<TcpStream>>) -> Option<Frame> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().expect("4 bytes")) & 0x7fff_ffff,
        payload,
    })
}

/// Frames until the connection closes; the last GOAWAY among them, if any.
pub async fn goaway(reader: &mut ReadHalf<TlsStream<TcpStream>>) -> Option<Frame> {
    let mut goaway = None;
    while let Some(frame) = read_frame(reader).await {
        if frame.kind == GOAWAY {
            goaway = Some(frame);
        }
    }
    goaway
}

/// A fresh HTTP/2 connection still gets a 200.
pub async fn h2_get_works(proxy: &Proxy) {
    let mut sender = h2_sender(proxy, APP).await;
    let req = Request::get(format!("https://{APP}/fresh"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(10, "fresh request", sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
}
