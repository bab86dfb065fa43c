//! WebSocket relay for blind mode: after the proxy has forwarded the upgrade handshake (tokens
//! swapped into it, `Sec-WebSocket-Extensions` removed so no compression is negotiated) and got
//! `101`, [`relay`] moves bytes between the child's upgraded stream and the upstream one.
//!
//! Boundary:
//! - **Client → upstream** bytes are copied through unchanged. Client frames are masked by the
//!   client (RFC 6455 §5.3), so tokens inside WebSocket messages are **not** swapped: only the
//!   handshake carries swapped credentials. When the scrub offers a
//!   [`TextScrub::client_check`], the unmasked payloads are fed to it before their bytes go on,
//!   and a refusal ends that direction (blind mode's check for values from the command). A token that reaches upstream inside a message is
//!   harmless (it is not a secret); a protocol that authenticates inside messages does not work
//!   in blind mode.
//! - **Upstream → client** frames are parsed (a small RFC 6455 codec written here). Every frame
//!   is scrubbed with a [`TextScrub`]: text and binary messages (opcode 1 or 2 plus
//!   continuations, reassembled, at most [`MAX_TEXT_MESSAGE`] bytes) are re-sent as one
//!   unfragmented frame of the same type; control frames (ping, pong, close) are scrubbed on
//!   their own (a close frame's status code is kept, its reason scrubbed), cut to the 125 bytes
//!   a control frame may carry, and forwarded at once, also between the fragments of a message.
//! - Protocol violations by the server (masked frame, RSV bits, reserved opcode, bad control
//!   frame, stray continuation) close both sides; the child gets a close frame `1002`, or `1009`
//!   for an oversized text message. Errors carry a [`WsError`] inside the [`std::io::Error`].
//!
//! No function here formats payload bytes (which may hold a real value before scrubbing) into a
//! string; the reassembly buffer is zeroized after each message.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroize;

/// Largest text or binary message (after reassembly, before scrubbing) the relay accepts from
/// upstream; a larger one closes the connection with status `1009` (message too big).
pub const MAX_TEXT_MESSAGE: usize = 16 << 20;

/// How much to ask for per read from upstream.
const READ_CHUNK: usize = 64 << 10;

/// Scrubs one complete message or control payload and reports which secrets it hid.
pub trait TextScrub: Send + Sync + 'static {
    /// Returns the scrubbed payload and the indices of the secrets whose values were replaced
    /// (empty when nothing was found).
    fn scrub(&self, payload: &[u8]) -> (Vec<u8>, Vec<usize>);

    /// A check of the client's frames: fed the unmasked payload bytes as they arrive (all
    /// frames, one stream), it returns `false` to stop the client → upstream direction before
    /// those bytes are passed on. `None`: client frames are not checked.
    fn client_check(&self) -> Option<ClientCheck> {
        None
    }
}

/// See [`TextScrub::client_check`].
pub type ClientCheck = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// The payload bytes of client frames (unmasked), from the raw byte stream.
#[derive(Default)]
struct ClientFrames {
    header: Vec<u8>,
    remaining: u64,
    mask: [u8; 4],
    pos: usize,
}

impl ClientFrames {
    /// Appends the unmasked payload bytes in `chunk` to `out`.
    fn payload(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.remaining == 0 {
                let Some((&b, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                self.header.push(b);
                self.try_header();
                continue;
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            let (now, tail) = rest.split_at(take);
            for &b in now {
                out.push(b ^ self.mask.get(self.pos % 4).copied().unwrap_or(0));
                self.pos = self.pos.wrapping_add(1);
            }
            self.remaining -= take as u64;
            rest = tail;
        }
    }

    /// Completes a frame header when `header` holds one.
    fn try_header(&mut self) {
        let h = &self.header;
        let (Some(&b1), n) = (h.get(1), h.len()) else {
            return;
        };
        let masked = b1 & 0x80 != 0;
        let (ext, code) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            c => (0, Some(u64::from(c))),
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if n < need {
            return;
        }
        let len = code.unwrap_or_else(|| {
            h.get(2..2 + ext)
                .unwrap_or_default()
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        });
        self.mask = [0; 4];
        if masked && let Some(m) = h.get(2 + ext..need) {
            for (d, s) in self.mask.iter_mut().zip(m) {
                *d = *s;
            }
        }
        self.remaining = len;
        self.pos = 0;
        self.header.clear();
    }
}

/// Why the relay stopped talking to an upstream WebSocket server. Carried inside the
/// [`std::io::Error`] that [`relay`] returns (`err.get_ref()` then `downcast_ref`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// The server masked a frame, which RFC 6455 §5.1 forbids.
    #[error(
        "the upstream WebSocket server sent a masked frame, which servers must not do \
         (RFC 6455 section 5.1); the connection was closed"
    )]
    MaskedServerFrame,
    /// RSV bits were set although no extension was negotiated.
    #[error(
        "the upstream WebSocket server set reserved (RSV) bits although the proxy negotiated no \
         extension; the connection was closed"
    )]
    ReservedBits,
    /// The frame used an opcode RFC 6455 reserves.
    #[error(
        "the upstream WebSocket server sent a frame with reserved opcode {0:#x}; the connection was closed"
    )]
    ReservedOpcode(u8),
    /// A control frame was fragmented or longer than 125 bytes.
    #[error(
        "the upstream WebSocket server sent a control frame that was fragmented or longer than \
         125 bytes; the connection was closed"
    )]
    BadControlFrame,
    /// A continuation frame arrived with no fragmented message in progress.
    #[error(
        "the upstream WebSocket server sent a continuation frame without a message to continue; \
         the connection was closed"
    )]
    UnexpectedContinuation,
    /// A new text or binary frame began before the fragmented message before it ended.
    #[error(
        "the upstream WebSocket server started a new message before finishing a fragmented one; \
         the connection was closed"
    )]
    InterleavedMessage,
    /// A 64-bit payload length had its most significant bit set.
    #[error(
        "the upstream WebSocket server sent a frame length with the most significant bit set; \
         the connection was closed"
    )]
    LengthTooLarge,
    /// A text message exceeded the reassembly limit.
    #[error(
        "the upstream WebSocket server sent a text message larger than {limit} bytes, the most \
         the proxy reassembles for scrubbing; the connection was closed with status 1009"
    )]
    MessageTooBig {
        /// The limit in bytes.
        limit: usize,
    },
    /// Upstream ended the stream in the middle of a frame or fragmented message.
    #[error(
        "the upstream WebSocket server closed the connection in the middle of a frame or \
         fragmented message"
    )]
    Truncated,
}

impl WsError {
    /// The close status sent to the child for this error, if any.
    fn close_code(&self) -> Option<u16> {
        match self {
            Self::MessageTooBig { .. } => Some(1009),
            Self::Truncated => None,
            _ => Some(1002),
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Relay until either side closes or errors.
///
/// Client → upstream bytes are copied through unchanged (client frames are masked, so tokens in
/// them are **not** swapped). Upstream → client frames are parsed; text messages are reassembled
/// (limit [`MAX_TEXT_MESSAGE`], else close `1009`), scrubbed with `scrub` and re-sent as one
/// unfragmented text frame; everything else passes through unchanged. `on_scrub` gets the
/// secret indices of every message that had hits (for the audit). With `scrub: None` both
/// directions are plain copies.
///
/// When one direction ends, the write side of the other stream is shut down and the other
/// direction runs to its end. Returns `Ok` on clean close/EOF; a protocol error from upstream
/// closes both sides and returns an error of kind `InvalidData` wrapping a [`WsError`].
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    scrub: Option<Arc<dyn TextScrub>>,
    on_scrub: impl Fn(Vec<usize>) + Send + 'static,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(scrub) = scrub else {
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    };
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    tokio::try_join!(
        client_to_upstream(client_read, upstream_write, scrub.client_check()),
        upstream_to_client(
            upstream_read,
            client_write,
            scrub,
            on_scrub,
            MAX_TEXT_MESSAGE
        ),
    )?;
    Ok(())
}

async fn client_to_upstream<R, W>(
    mut from: R,
    mut to: W,
    check: Option<ClientCheck>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(mut check) = check else {
        tokio::io::copy(&mut from, &mut to).await?;
        return to.shutdown().await;
    };
    let mut frames = ClientFrames::default();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut payload = Vec::new();
    loop {
        let n = from.read(&mut buf).await?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            return to.shutdown().await;
        };
        payload.clear();
        frames.payload(chunk, &mut payload);
        let pass = check(&payload);
        payload.zeroize();
        if !pass {
            // Nothing of this chunk is passed on; both directions end.
            let _ = to.shutdown().await;
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a client frame carried a secret value",
            ));
        }
        to.write_all(chunk).await?;
        to.flush().await?;
    }
}

async fn upstream_to_client<R, W, F>(
    mut from: R,
    mut to: W,
    scrub: Arc<dyn TextScrub>,
    on_scrub: F,
    limit: usize,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: Fn(Vec<usize>),
{
    let mut decoder = Decoder::new(limit);
    let mut out = Vec::new();
    loop {
        decoder.buf.reserve(READ_CHUNK);
        let n = from.read_buf(&mut decoder.buf).await?;
        if n == 0 {
            let end = decoder.at_eof();
            to.shutdown().await?;
            return end.map_err(io_error);
        }
        if out.capacity() > 4 * READ_CHUNK {
            out = Vec::new();
        } else {
            out.clear();
        }
        let result = decoder.process(&mut out, &*scrub, &on_scrub);
        to.write_all(&out).await?;
        if let Err(e) = result {
            if let Some(code) = e.close_code()
                && !decoder.close_seen
            {
                to.write_all(&close_frame(code)).await?;
            }
            to.flush().await?;
            // Best effort: the child may already be gone; the error below is what matters.
            let _ = to.shutdown().await;
            return Err(io_error(e));
        }
        to.flush().await?;
    }
}

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    /// Bytes the header occupies on the wire.
    header_len: usize,
}

/// Parses a server frame header from the front of `buf`; `Ok(None)` when more bytes are needed.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::MaskedServerFrame);
    }
    let (len, header_len) = match b1 & 0x7f {
        126 => {
            let Some(bytes) = buf.get(2..4).and_then(|s| <[u8; 2]>::try_from(s).ok()) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes(bytes)), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(WsError::LengthTooLarge);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        len,
        header_len,
    }))
}

/// Appends an unmasked frame header (FIN and opcode in `b0`) with the shortest length encoding.
fn push_frame_header(out: &mut Vec<u8>, b0: u8, len: usize) {
    out.push(b0);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// An unmasked close frame with `code` and no reason.
fn close_frame(code: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    push_frame_header(&mut out, 0x88, 2);
    out.extend_from_slice(&code.to_be_bytes());
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// Collecting `remaining` bytes of a message fragment; `fin` ends the message.
    Text { remaining: u64, fin: bool },
    /// Collecting `remaining` bytes of a control frame with `opcode`.
    Control { remaining: u64, opcode: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragmented {
    Text,
    Binary,
}

/// Incremental upstream → client frame processor (sync, so any chunking can be tested).
#[derive(Debug)]
struct Decoder {
    /// Received, not yet processed bytes.
    buf: BytesMut,
    state: State,
    /// The kind of fragmented message in progress.
    fragmented: Option<Fragmented>,
    /// Reassembled message so far.
    msg: Vec<u8>,
    /// Its opcode (1 text, 2 binary).
    msg_opcode: u8,
    /// The control frame being collected.
    ctrl: Vec<u8>,
    limit: usize,
    /// The server has sent a close frame (so the relay must not send one of its own).
    close_seen: bool,
}

impl Decoder {
    fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            state: State::Header,
            fragmented: None,
            msg: Vec::new(),
            msg_opcode: 1,
            ctrl: Vec::new(),
            limit,
            close_seen: false,
        }
    }

    /// Processes every complete piece of `buf`, appending what the client must receive to `out`.
    /// On error, `out` holds the output of the frames before the bad one (ending on a frame
    /// boundary, so a close frame may follow).
    fn process(
        &mut self,
        out: &mut Vec<u8>,
        scrub: &dyn TextScrub,
        on_scrub: &dyn Fn(Vec<usize>),
    ) -> Result<(), WsError> {
        loop {
            match self.state {
                State::Header => {
                    let Some(header) = parse_header(&self.buf)? else {
                        return Ok(());
                    };
                    self.start_frame(header, out)?;
                }
                State::Control {
                    remaining: 0,
                    opcode,
                } => {
                    self.finish_control(opcode, out, scrub, on_scrub);
                    self.state = State::Header;
                }
                State::Control { remaining, opcode } => {
                    let n = take_len(remaining, self.buf.len());
                    if n == 0 {
                        return Ok(());
                    }
                    self.ctrl
                        .extend_from_slice(self.buf.get(..n).unwrap_or_default());
                    self.buf.advance(n);
                    self.state = State::Control {
                        remaining: remaining - n as u64,
                        opcode,
                    };
                }
                State::Text { remaining: 0, fin } => {
                    if fin {
                        self.finish_text(out, scrub, on_scrub);
                    }
                    self.state = State::Header;
                }
                State::Text { remaining, fin } => {
                    let n = take_len(remaining, self.buf.len());
                    if n == 0 {
                        return Ok(());
                    }
                    self.msg
                        .extend_from_slice(self.buf.get(..n).unwrap_or_default());
                    self.buf.advance(n);
                    self.state = State::Text {
                        remaining: remaining - n as u64,
                        fin,
                    };
                }
            }
        }
    }

    /// Validates a header at the front of `buf`, consumes it and sets the next state.
    fn start_frame(&mut self, h: Header, _out: &mut Vec<u8>) -> Result<(), WsError> {
        match h.opcode {
            0x8..=0xa => {
                if !h.fin || h.len > 125 {
                    return Err(WsError::BadControlFrame);
                }
                if h.opcode == 0x8 {
                    self.close_seen = true;
                }
                self.ctrl.clear();
                self.state = State::Control {
                    remaining: h.len,
                    opcode: h.opcode,
                };
                self.buf.advance(h.header_len);
                return Ok(());
            }
            0x1 | 0x2 => {
                if self.fragmented.is_some() {
                    return Err(WsError::InterleavedMessage);
                }
                self.check_size(h.len)?;
                self.msg.clear();
                self.msg_opcode = h.opcode;
                self.fragmented = (!h.fin).then_some(if h.opcode == 0x1 {
                    Fragmented::Text
                } else {
                    Fragmented::Binary
                });
            }
            0x0 => {
                if self.fragmented.is_none() {
                    return Err(WsError::UnexpectedContinuation);
                }
                self.check_size(h.len)?;
                if h.fin {
                    self.fragmented = None;
                }
            }
            other => return Err(WsError::ReservedOpcode(other)),
        }
        self.state = State::Text {
            remaining: h.len,
            fin: h.fin,
        };
        self.buf.advance(h.header_len);
        Ok(())
    }

    /// Refuses a text fragment of `len` bytes that would push the message over the limit.
    fn check_size(&self, len: u64) -> Result<(), WsError> {
        let total = u64::try_from(self.msg.len())
            .unwrap_or(u64::MAX)
            .saturating_add(len);
        if total > u64::try_from(self.limit).unwrap_or(u64::MAX) {
            return Err(WsError::MessageTooBig { limit: self.limit });
        }
        Ok(())
    }

    /// Scrubs a complete control frame and appends it (a close frame keeps its status code; the
    /// payload is cut to the 125 bytes a control frame may hold, a close reason on a UTF-8
    /// character boundary).
    fn finish_control(
        &mut self,
        opcode: u8,
        out: &mut Vec<u8>,
        scrub: &dyn TextScrub,
        on_scrub: &dyn Fn(Vec<usize>),
    ) {
        let code_len = if opcode == 0x8 && self.ctrl.len() >= 2 {
            2
        } else {
            0
        };
        let code = self.ctrl.get(..code_len).unwrap_or_default().to_vec();
        let (mut scrubbed, hits) = scrub.scrub(self.ctrl.get(code_len..).unwrap_or_default());
        self.ctrl.zeroize();
        let room = 125 - code_len;
        if scrubbed.len() > room {
            let mut cut = room;
            while cut > 0 && scrubbed.get(cut).is_some_and(|b| (b & 0xc0) == 0x80) {
                cut -= 1;
            }
            scrubbed.truncate(cut);
        }
        if !hits.is_empty() {
            on_scrub(hits);
        }
        push_frame_header(out, 0x80 | opcode, code_len + scrubbed.len());
        out.extend_from_slice(&code);
        out.extend_from_slice(&scrubbed);
    }

    /// Scrubs the complete message and appends it as one unfragmented frame of its type.
    fn finish_text(
        &mut self,
        out: &mut Vec<u8>,
        scrub: &dyn TextScrub,
        on_scrub: &dyn Fn(Vec<usize>),
    ) {
        let (scrubbed, hits) = scrub.scrub(&self.msg);
        // The unscrubbed message may hold a real value.
        self.msg.zeroize();
        if self.msg.capacity() > READ_CHUNK {
            self.msg = Vec::new();
        }
        if !hits.is_empty() {
            on_scrub(hits);
        }
        push_frame_header(out, 0x80 | self.msg_opcode, scrubbed.len());
        out.extend_from_slice(&scrubbed);
    }

    /// What the end of the upstream stream means: clean at a message boundary (or after a close
    /// frame), truncated otherwise.
    fn at_eof(&mut self) -> Result<(), WsError> {
        self.msg.zeroize();
        self.ctrl.zeroize();
        let clean = self.state == State::Header && self.buf.is_empty() && self.fragmented.is_none();
        if clean || self.close_seen {
            Ok(())
        } else {
            Err(WsError::Truncated)
        }
    }
}

/// How many of `available` bytes belong to a payload with `remaining` bytes left.
fn take_len(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .min(available)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    const CANARY: &[u8] = b"CANARY-5f1e";
    const TOKEN: &[u8] = b"kz_masked_0123456789abcdef0123456789abcdef";
    const CANARY2: &[u8] = b"SECOND-canary-77";
    const TOKEN2: &[u8] = b"kz_masked_ffffffffffffffffffffffffffffffff";

    /// Replaces CANARY (secret 0) and CANARY2 (secret 1) by their tokens.
    struct Toy;

    fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(hay.len());
        let mut i = 0;
        let mut hit = false;
        while i < hay.len() {
            if hay[i..].starts_with(needle) {
                out.extend_from_slice(with);
                i += needle.len();
                hit = true;
            } else {
                out.push(hay[i]);
                i += 1;
            }
        }
        (out, hit)
    }

    impl TextScrub for Toy {
        fn scrub(&self, payload: &[u8]) -> (Vec<u8>, Vec<usize>) {
            let (a, hit0) = replace(payload, CANARY, TOKEN);
            let (b, hit1) = replace(&a, CANARY2, TOKEN2);
            let hits = [(hit0, 0), (hit1, 1)]
                .into_iter()
                .filter(|h| h.0)
                .map(|h| h.1)
                .collect();
            (b, hits)
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// An unmasked frame, written independently of the module's encoder.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![b0];
        let n = payload.len();
        if n <= 125 {
            v.push(n as u8);
        } else if n <= 0xffff {
            v.push(126);
            v.push((n >> 8) as u8);
            v.push(n as u8);
        } else {
            v.push(127);
            for shift in (0..8).rev() {
                v.push((n as u64 >> (shift * 8)) as u8);
            }
        }
        v.extend_from_slice(payload);
        v
    }

    fn text_with(prefix_len: usize, secret: &[u8], total: usize) -> Vec<u8> {
        let mut p = vec![b'a'; prefix_len];
        p.extend_from_slice(secret);
        p.resize(total, b'z');
        p
    }

    struct Harness {
        /// The child's end.
        child: DuplexStream,
        /// The upstream server's end.
        server: DuplexStream,
        relay: JoinHandle<io::Result<()>>,
        hits: Arc<Mutex<Vec<Vec<usize>>>>,
    }

    fn start(scrub: Option<Arc<dyn TextScrub>>) -> Harness {
        let (child, relay_client) = tokio::io::duplex(64 << 10);
        let (relay_upstream, server) = tokio::io::duplex(64 << 10);
        let hits = Arc::new(Mutex::new(Vec::new()));
        let sink = hits.clone();
        let relay = tokio::spawn(relay(relay_client, relay_upstream, scrub, move |h| {
            sink.lock().unwrap().push(h)
        }));
        Harness {
            child,
            server,
            relay,
            hits,
        }
    }

    fn scrubbing() -> Harness {
        start(Some(Arc::new(Toy)))
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("timed out")
    }

    async fn read_all(s: &mut DuplexStream) -> Vec<u8> {
        let mut v = Vec::new();
        within(s.read_to_end(&mut v)).await.unwrap();
        v
    }

    /// Server sends `input`, closes; returns what the child got and the relay's result (after
    /// the child closed too).
    async fn server_sends(input: &[u8]) -> (Vec<u8>, io::Result<()>, Vec<Vec<usize>>) {
        let mut h = scrubbing();
        h.server.write_all(input).await.unwrap();
        h.server.shutdown().await.unwrap();
        let got = read_all(&mut h.child).await;
        h.child.shutdown().await.unwrap();
        let result = within(h.relay).await.unwrap();
        let hits = h.hits.lock().unwrap().clone();
        (got, result, hits)
    }

    fn ws_error(e: &io::Error) -> &WsError {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<WsError>())
            .expect("a WsError inside")
    }

    #[tokio::test]
    async fn text_frame_is_scrubbed_and_canary_never_reaches_child() {
        let (got, result, hits) = server_sends(&frame(0x81, b"hello CANARY-5f1e world")).await;
        result.unwrap();
        let mut want = b"hello ".to_vec();
        want.extend_from_slice(TOKEN);
        want.extend_from_slice(b" world");
        assert_eq!(got, frame(0x81, &want));
        assert!(!contains(&got, CANARY));
        assert_eq!(hits, vec![vec![0]]);
    }

    #[tokio::test]
    async fn fragmented_text_with_interleaved_ping_is_reassembled_and_scrubbed() {
        let mut input = frame(0x01, b"hel");
        input.extend(frame(0x89, b"ping!"));
        input.extend(frame(0x00, b"lo CANA"));
        input.extend(frame(0x8a, b"pong"));
        input.extend(frame(0x80, b"RY-5f1e!"));
        let (got, result, hits) = server_sends(&input).await;
        result.unwrap();
        let mut want = frame(0x89, b"ping!");
        want.extend(frame(0x8a, b"pong"));
        let mut text = b"hello ".to_vec();
        text.extend_from_slice(TOKEN);
        text.push(b'!');
        want.extend(frame(0x81, &text));
        assert_eq!(got, want);
        assert!(!contains(&got, CANARY));
        assert_eq!(hits, vec![vec![0]]);
    }

    #[tokio::test]
    async fn length_encodings_round_trip() {
        // 200 bytes: 16-bit length; 70_000 bytes: 64-bit length; both unchanged.
        let small = vec![b's'; 200];
        let big: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = frame(0x81, &small);
        input.extend(frame(0x81, &big));
        let (got, result, hits) = server_sends(&input).await;
        result.unwrap();
        assert_eq!(got, input);
        assert_eq!(&got[..4], &[0x81, 126, 0x00, 0xc8]);
        assert_eq!(
            &got[204..214],
            &[0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]
        );
        assert!(hits.is_empty());
    }

    #[tokio::test]
    async fn scrubbing_recomputes_length_across_encoding_boundaries() {
        // 120 bytes (7-bit) grows past 125; 65_530 bytes (16-bit) grows past 65_535.
        let a = text_with(10, CANARY, 120);
        let b = text_with(60_000, CANARY, 65_530);
        let mut input = frame(0x81, &a);
        input.extend(frame(0x81, &b));
        let (got, result, hits) = server_sends(&input).await;
        result.unwrap();
        let a2 = replace(&a, CANARY, TOKEN).0;
        let b2 = replace(&b, CANARY, TOKEN).0;
        assert_eq!(a2.len(), 151);
        assert!(b2.len() > 65_535);
        let mut want = frame(0x81, &a2);
        want.extend(frame(0x81, &b2));
        assert_eq!(&got[..4], &[0x81, 126, 0, 151]);
        assert_eq!(got, want);
        assert!(!contains(&got, CANARY));
        assert_eq!(hits, vec![vec![0], vec![0]]);
    }

    #[tokio::test]
    async fn binary_and_control_frames_are_scrubbed_too() {
        // A binary frame, a fragmented binary message (non-minimal length) with a ping between
        // its fragments, a pong and a close frame whose reason carries values.
        let mut input = frame(0x82, b"\x00\x01CANARY-5f1e\xff");
        input.extend([0x02, 126, 0x00, 0x05]);
        input.extend(b"12CAN");
        input.extend(frame(0x89, b""));
        input.extend(frame(0x80, b"ARY-5f1e"));
        input.extend(frame(0x8a, b"pong SECOND-canary-77"));
        let mut reason = vec![0x03, 0xe8];
        reason.extend_from_slice(&[b'x'; 100]);
        reason.extend_from_slice(CANARY);
        input.extend(frame(0x88, &reason));
        let (got, result, hits) = server_sends(&input).await;
        result.unwrap();
        let mut want = frame(0x82, &[b"\x00\x01".as_slice(), TOKEN, b"\xff"].concat());
        want.extend(frame(0x89, b""));
        want.extend(frame(0x82, &[b"12".as_slice(), TOKEN].concat()));
        want.extend(frame(0x8a, &[b"pong ".as_slice(), TOKEN2].concat()));
        // The close reason grows past what a control frame holds and is cut to 123 bytes.
        let mut close = vec![0x03, 0xe8];
        close.extend_from_slice(&[b'x'; 100]);
        close.extend_from_slice(&TOKEN[..23]);
        want.extend(frame(0x88, &close));
        assert_eq!(got, want);
        assert!(!contains(&got, CANARY) && !contains(&got, CANARY2));
        assert_eq!(hits, vec![vec![0], vec![0], vec![1], vec![0]]);
    }

    fn masked(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = frame(b0, payload);
        let at = v.len() - payload.len();
        v[1] |= 0x80;
        let body: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        v.truncate(at);
        v.extend(mask);
        v.extend(body);
        v
    }

    #[test]
    fn client_frames_yield_the_unmasked_payload_under_any_split() {
        let long = vec![b'q'; 300];
        let mut wire = masked(0x01, b"hello ", [9, 8, 7, 6]);
        wire.extend(masked(0x80, CANARY, [1, 2, 3, 4]));
        wire.extend(masked(0x82, &long, [5, 0, 5, 0]));
        wire.extend(frame(0x89, b"ping"));
        let mut want = b"hello ".to_vec();
        want.extend(CANARY);
        want.extend(&long);
        want.extend(b"ping");
        for split in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut f = ClientFrames::default();
            let mut out = Vec::new();
            for c in wire.chunks(split) {
                f.payload(c, &mut out);
            }
            assert_eq!(out, want, "split {split}");
        }
    }

    #[tokio::test]
    async fn a_client_frame_the_check_refuses_is_not_passed_on() {
        let (mut child, relay_client) = tokio::io::duplex(1 << 16);
        let (relay_upstream, mut server) = tokio::io::duplex(1 << 16);
        let check: ClientCheck = Box::new(|p: &[u8]| !contains(p, CANARY));
        let task = tokio::spawn(async move {
            client_to_upstream(relay_client, relay_upstream, Some(check)).await
        });
        let first = masked(0x81, b"fine", [1, 2, 3, 4]);
        child.write_all(&first).await.unwrap();
        child.flush().await.unwrap();
        let mut got = vec![0u8; first.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, first);
        child
            .write_all(&masked(0x81, CANARY, [4, 3, 2, 1]))
            .await
            .unwrap();
        let err = within(task).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let rest = read_all(&mut server).await;
        assert!(rest.is_empty(), "nothing of the refused frame went on");
    }

    #[tokio::test]
    async fn client_to_upstream_bytes_are_identical_and_half_close_works() {
        let mut h = scrubbing();
        // A masked client frame carrying a token and the canary, then bytes that are no frame.
        let mut sent = vec![0x81, 0x80 | 11, 1, 2, 3, 4];
        sent.extend(
            CANARY
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        sent.extend(TOKEN);
        sent.extend(CANARY);
        sent.extend([0u8, 0xff, 0x7f]);
        h.child.write_all(&sent).await.unwrap();
        h.child.shutdown().await.unwrap();
        let got = read_all(&mut h.server).await;
        assert_eq!(got, sent);
        // The other direction still works after the child's half-close.
        h.server
            .write_all(&frame(0x81, b"late CANARY-5f1e"))
            .await
            .unwrap();
        h.server.shutdown().await.unwrap();
        let back = read_all(&mut h.child).await;
        let mut want = b"late ".to_vec();
        want.extend(TOKEN);
        assert_eq!(back, frame(0x81, &want));
        within(h.relay).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn oversized_single_frame_closes_with_1009() {
        let mut h = scrubbing();
        // Only the header: the relay must refuse from the declared length, not buffer first.
        let len = MAX_TEXT_MESSAGE as u64 + 1;
        let mut header = vec![0x81, 127];
        header.extend(len.to_be_bytes());
        h.server.write_all(&frame(0x89, b"p")).await.unwrap();
        h.server.write_all(&header).await.unwrap();
        let got = read_all(&mut h.child).await;
        let mut want = frame(0x89, b"p");
        want.extend([0x88, 0x02, 0x03, 0xf1]);
        assert_eq!(got, want);
        let err = within(h.relay).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            ws_error(&err),
            &WsError::MessageTooBig {
                limit: MAX_TEXT_MESSAGE
            }
        );
        assert!(err.to_string().contains("1009"));
    }

    #[tokio::test]
    async fn oversized_fragmented_message_closes_with_1009() {
        let mut h = scrubbing();
        let first = vec![b'x'; MAX_TEXT_MESSAGE - 10];
        let writer = tokio::spawn(async move {
            // Ignore errors: the relay closes the connection mid-way.
            let _ = h.server.write_all(&frame(0x01, &first)).await;
            let _ = h.server.write_all(&frame(0x80, &[b'y'; 11])).await;
            h.server
        });
        let got = read_all(&mut h.child).await;
        assert_eq!(got, [0x88, 0x02, 0x03, 0xf1]);
        let err = within(h.relay).await.unwrap().unwrap_err();
        assert_eq!(
            ws_error(&err),
            &WsError::MessageTooBig {
                limit: MAX_TEXT_MESSAGE
            }
        );
        drop(within(writer).await);
    }

    #[tokio::test]
    async fn masked_server_frame_is_an_error_and_closes_both() {
        let mut h = scrubbing();
        let mut input = frame(0x81, b"ok");
        input.extend([0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        h.server.write_all(&input).await.unwrap();
        // The child does not close: the relay must still end, closing both sides.
        let err = within(h.relay).await.unwrap().unwrap_err();
        assert_eq!(ws_error(&err), &WsError::MaskedServerFrame);
        let got = read_all(&mut h.child).await;
        let mut want = frame(0x81, b"ok");
        want.extend([0x88, 0x02, 0x03, 0xea]);
        assert_eq!(got, want);
        // The upstream side is closed too.
        let mut rest = Vec::new();
        within(h.server.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn rsv_bits_are_an_error() {
        let (got, result, _) = server_sends(&frame(0xc1, b"compressed?")).await;
        assert_eq!(ws_error(&result.unwrap_err()), &WsError::ReservedBits);
        assert_eq!(got, [0x88, 0x02, 0x03, 0xea]);
    }

    #[tokio::test]
    async fn byte_at_a_time_delivery_works() {
        let mut h = scrubbing();
        let mut input = frame(0x81, &text_with(50, CANARY, 200));
        input.extend(frame(0x89, b"ping"));
        input.extend(frame(0x01, b"CANA"));
        input.extend(frame(0x8a, b""));
        input.extend(frame(0x80, b"RY-5f1e SECOND-canary-77"));
        let server = tokio::spawn(async move {
            for b in &input {
                h.server.write_all(std::slice::from_ref(b)).await.unwrap();
                h.server.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            h.server.shutdown().await.unwrap();
            h.server
        });
        let got = read_all(&mut h.child).await;
        let _server = within(server).await.unwrap();
        let mut want = frame(0x81, &replace(&text_with(50, CANARY, 200), CANARY, TOKEN).0);
        want.extend(frame(0x89, b"ping"));
        want.extend(frame(0x8a, b""));
        let mut text = TOKEN.to_vec();
        text.push(b' ');
        text.extend(TOKEN2);
        want.extend(frame(0x81, &text));
        assert_eq!(got, want);
        h.child.shutdown().await.unwrap();
        within(h.relay).await.unwrap().unwrap();
        assert_eq!(h.hits.lock().unwrap().clone(), vec![vec![0], vec![0, 1]]);
    }

    #[tokio::test]
    async fn on_scrub_gets_the_right_indices_and_only_on_hits() {
        let mut input = frame(0x81, b"nothing here");
        input.extend(frame(0x81, b"only SECOND-canary-77"));
        input.extend(frame(0x81, b"CANARY-5f1e and SECOND-canary-77"));
        input.extend(frame(0x81, b""));
        let (got, result, hits) = server_sends(&input).await;
        result.unwrap();
        assert_eq!(hits, vec![vec![1], vec![0, 1]]);
        assert!(!contains(&got, CANARY) && !contains(&got, CANARY2));
        assert!(got.ends_with(&[0x81, 0x00]));
    }

    #[tokio::test]
    async fn without_scrubber_both_directions_are_plain_copies() {
        let mut h = start(None);
        let down = frame(0x81, b"CANARY-5f1e stays");
        h.server.write_all(&down).await.unwrap();
        h.server.shutdown().await.unwrap();
        h.child.write_all(b"up \x00\xff").await.unwrap();
        h.child.shutdown().await.unwrap();
        assert_eq!(read_all(&mut h.child).await, down);
        assert_eq!(read_all(&mut h.server).await, b"up \x00\xff");
        within(h.relay).await.unwrap().unwrap();
        assert!(h.hits.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn eof_mid_frame_is_truncated_but_after_close_frame_is_clean() {
        let mut cut = frame(0x82, b"abcdef");
        cut.truncate(5);
        let (got, result, _) = server_sends(&cut).await;
        assert_eq!(ws_error(&result.unwrap_err()), &WsError::Truncated);
        // A binary message is held until complete (it is scrubbed whole): nothing of it went
        // out, and no close frame is added.
        assert_eq!(got, b"");

        let (_, result, _) = server_sends(&frame(0x01, b"half")).await;
        assert_eq!(ws_error(&result.unwrap_err()), &WsError::Truncated);

        let mut closed = frame(0x88, &[0x03, 0xe8]);
        closed.extend([0x82, 0x7e]);
        let (got, result, _) = server_sends(&closed).await;
        result.unwrap();
        // The close frame passes; the incomplete header after it is never forwarded.
        assert_eq!(got, frame(0x88, &[0x03, 0xe8]));
    }

    #[test]
    fn relay_future_is_send_with_a_non_sync_callback() {
        fn assert_send<T: Send>(_: &T) {}
        let (a, _b) = tokio::io::duplex(8);
        let (c, _d) = tokio::io::duplex(8);
        let cell = std::cell::Cell::new(0usize);
        let fut = relay(a, c, Some(Arc::new(Toy)), move |h| cell.set(h.len()));
        assert_send(&fut);
    }

    fn run(dec: &mut Decoder, chunks: &[&[u8]]) -> Result<(Vec<u8>, Vec<Vec<usize>>), WsError> {
        let hits = std::cell::RefCell::new(Vec::new());
        let mut out = Vec::new();
        for c in chunks {
            dec.buf.extend_from_slice(c);
            dec.process(&mut out, &Toy, &|h| hits.borrow_mut().push(h))?;
        }
        Ok((out, hits.into_inner()))
    }

    #[test]
    fn decoder_output_is_independent_of_chunking() {
        let mut input = frame(0x01, b"a CAN");
        input.extend(frame(0x89, b"x"));
        input.extend(frame(0x00, b""));
        input.extend(frame(0x80, b"ARY-5f1e b"));
        input.extend(frame(0x82, &[9u8; 130]));
        input.extend(frame(0x81, &text_with(1000, CANARY2, 70_000)));
        input.extend(frame(0x81, b""));
        let (whole, whole_hits) = run(&mut Decoder::new(MAX_TEXT_MESSAGE), &[&input]).unwrap();
        assert!(!contains(&whole, CANARY) && !contains(&whole, CANARY2));
        assert_eq!(whole_hits, vec![vec![0], vec![1]]);
        for size in [1, 2, 3, 7, 10, 126, 4096] {
            let chunks: Vec<&[u8]> = input.chunks(size).collect();
            let mut dec = Decoder::new(MAX_TEXT_MESSAGE);
            let (out, hits) = run(&mut dec, &chunks).unwrap();
            assert_eq!(out, whole, "chunk size {size}");
            assert_eq!(hits, whole_hits);
            assert_eq!(dec.at_eof(), Ok(()));
        }
    }

    #[test]
    fn decoder_limit_is_inclusive() {
        let mut dec = Decoder::new(10);
        let (out, _) = run(&mut dec, &[&frame(0x01, b"12345"), &frame(0x80, b"67890")]).unwrap();
        assert_eq!(out, frame(0x81, b"1234567890"));
        let mut dec = Decoder::new(10);
        let err = run(&mut dec, &[&frame(0x01, b"12345"), &frame(0x80, b"678901")]).unwrap_err();
        assert_eq!(err, WsError::MessageTooBig { limit: 10 });
        assert_eq!(err.close_code(), Some(1009));
    }

    #[test]
    fn decoder_rejects_hostile_frames() {
        let cases: Vec<(Vec<u8>, WsError)> = vec![
            (vec![0x83, 0x00], WsError::ReservedOpcode(3)),
            (vec![0x8b, 0x00], WsError::ReservedOpcode(0xb)),
            (vec![0x80, 0x00], WsError::UnexpectedContinuation),
            (vec![0x09, 0x00], WsError::BadControlFrame),
            (frame(0x89, &[0u8; 126]), WsError::BadControlFrame),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                WsError::InterleavedMessage,
            ),
            (
                [frame(0x02, b"a"), frame(0x81, b"b")].concat(),
                WsError::InterleavedMessage,
            ),
            (
                [frame(0x01, b"a"), frame(0x02, b"b")].concat(),
                WsError::InterleavedMessage,
            ),
            (
                vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
                WsError::LengthTooLarge,
            ),
            (vec![0x91, 0x00], WsError::ReservedBits),
            (vec![0xa1, 0x00], WsError::ReservedBits),
            (vec![0x82, 0x80, 0, 0, 0, 0], WsError::MaskedServerFrame),
        ];
        for (input, want) in cases {
            let mut dec = Decoder::new(MAX_TEXT_MESSAGE);
            let mut out = Vec::new();
            dec.buf.extend_from_slice(&input);
            let err = dec.process(&mut out, &Toy, &|_| {}).unwrap_err();
            assert_eq!(err, want, "input {input:?}");
            assert_eq!(err.close_code(), Some(1002));
        }
    }

    #[test]
    fn encoder_uses_shortest_length() {
        for (len, head) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            push_frame_header(&mut out, 0x81, len);
            assert_eq!(out, head, "len {len}");
        }
        assert_eq!(close_frame(1009), [0x88, 0x02, 0x03, 0xf1]);
    }
}
