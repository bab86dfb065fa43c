//! Body plumbing: a streaming transform over any body (swap or scrub, chunk by chunk), response
//! decompression, and a stream that replays bytes already read (TLS detection after `CONNECT`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, BodyStream, StreamBody, combinators::UnsyncBoxBody};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Errors inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy handles.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A chunk-by-chunk rewrite of a body.
pub trait Transform: Send + 'static {
    /// Rewrites `chunk`, appending what is final to `out`.
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BoxError>;
    /// The body ended: appends what was held back.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError>;
    /// Rewrites trailers (header fields after the body), called before [`Transform::finish`].
    fn trailers(&mut self, _trailers: &mut http::HeaderMap) {}
}

/// `inner` with every data frame passed through a [`Transform`]; trailers are passed on after
/// the held-back tail.
pub struct MapBody<B, T> {
    inner: B,
    transform: T,
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl<B, T> MapBody<B, T> {
    /// Wraps `inner`.
    pub fn new(inner: B, transform: T) -> Self {
        Self {
            inner,
            transform,
            trailers: None,
            done: false,
        }
    }
}

impl<B, T> Body for MapBody<B, T>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    T: Transform + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let mut out = Vec::new();
                        this.transform.feed(&data, &mut out)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            this.transform.trailers(&mut t);
                            this.trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    this.done = true;
                    let mut out = Vec::new();
                    this.transform.finish(&mut out)?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The length changes with every replacement.
        SizeHint::default()
    }
}

/// A response `Content-Encoding` the proxy can decode for scrubbing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No encoding (`identity` or absent).
    Identity,
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib-wrapped, as HTTP defines it).
    Deflate,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Encoding {
    /// The encoding a `Content-Encoding` header names; `None` when unknown or stacked.
    pub fn parse(value: Option<&http::HeaderValue>) -> Option<Self> {
        let Some(v) = value else {
            return Some(Self::Identity);
        };
        let v = v.to_str().ok()?.trim().to_ascii_lowercase();
        Some(match v.as_str() {
            "" | "identity" => Self::Identity,
            "gzip" | "x-gzip" => Self::Gzip,
            "deflate" => Self::Deflate,
            "br" => Self::Brotli,
            "zstd" => Self::Zstd,
            _ => return None,
        })
    }
}

/// `body` decompressed on the fly.
pub fn decoded(body: ProxyBody, encoding: Encoding) -> ProxyBody {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
    let stream = BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
        .map_err(io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let decoder: Pin<Box<dyn AsyncRead + Send>> = match encoding {
        Encoding::Identity => Box::pin(reader),
        Encoding::Gzip => Box::pin(GzipDecoder::new(reader)),
        Encoding::Deflate => Box::pin(ZlibDecoder::new(reader)),
        Encoding::Brotli => Box::pin(BrotliDecoder::new(reader)),
        Encoding::Zstd => Box::pin(ZstdDecoder::new(reader)),
    };
    let frames = tokio_util::io::ReaderStream::new(decoder)
        .map(|r| r.map(Frame::data).map_err(BoxError::from));
    StreamBody::new(frames).boxed_unsync()
}

/// A stream that first yields `prefix`, then reads from `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    struct Upper;
    impl Transform for Upper {
        fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BoxError> {
            out.extend(chunk.iter().map(u8::to_ascii_uppercase));
            Ok(())
        }
        fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError> {
            out.extend_from_slice(b"!");
            Ok(())
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn map_body_transforms_every_chunk_and_flushes_at_the_end() {
        let out = rt().block_on(async {
            let body = MapBody::new(full("abc"), Upper);
            body.collect().await.unwrap().to_bytes()
        });
        assert_eq!(&out[..], b"ABC!");
    }

    #[test]
    fn gzip_bodies_are_decoded() {
        use async_compression::tokio::bufread::GzipEncoder;
        let out = rt().block_on(async {
            let mut enc = GzipEncoder::new(&b"hello gzip"[..]);
            let mut z = Vec::new();
            enc.read_to_end(&mut z).await.unwrap();
            decoded(full(z), Encoding::Gzip)
                .collect()
                .await
                .unwrap()
                .to_bytes()
        });
        assert_eq!(&out[..], b"hello gzip");
    }

    #[test]
    fn unknown_and_stacked_encodings_are_not_decodable() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert_eq!(Encoding::parse(None), Some(Encoding::Identity));
        assert_eq!(Encoding::parse(Some(&v("GZIP"))), Some(Encoding::Gzip));
        assert_eq!(Encoding::parse(Some(&v("gzip, br"))), None);
        assert_eq!(Encoding::parse(Some(&v("compress"))), None);
    }

    #[test]
    fn prefixed_replays_then_reads() {
        let out = rt().block_on(async {
            let mut p = Prefixed::new(b"ab".to_vec(), &b"cd"[..]);
            let mut s = Vec::new();
            p.read_to_end(&mut s).await.unwrap();
            s
        });
        assert_eq!(out, b"abcd");
    }
}
