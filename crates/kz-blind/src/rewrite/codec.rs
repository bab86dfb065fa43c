//! `Content-Encoding: gzip` / `deflate` request bodies: decoded (with an output limit, against
//! decompression bombs) so tokens can be swapped, then re-encoded the same way. `deflate` is
//! read as zlib (RFC 9110) with a fallback to raw deflate, and written as zlib.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};

use super::SwapError;

/// The encodings this module handles.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
}

fn coding(encoding: &str) -> Result<Coding, SwapError> {
    let e = encoding.trim();
    if e.is_empty() || e.eq_ignore_ascii_case("identity") {
        Ok(Coding::Identity)
    } else if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") {
        Ok(Coding::Gzip)
    } else if e.eq_ignore_ascii_case("deflate") {
        Ok(Coding::Deflate)
    } else {
        Err(SwapError::Decode(format!(
            "Content-Encoding `{}` is not supported for request bodies (only gzip and deflate); \
             send the body uncompressed",
            e.escape_debug()
        )))
    }
}

/// Why [`read_limited`] failed.
enum Fail {
    TooLarge,
    Corrupt(std::io::Error),
}

impl Fail {
    fn into_error(self, limit: usize) -> SwapError {
        match self {
            Self::TooLarge => SwapError::Decode(format!(
                "the decompressed body is larger than {limit} bytes; \
                 send it uncompressed or smaller"
            )),
            Self::Corrupt(e) => SwapError::Decode(format!("the compressed body is corrupt ({e})")),
        }
    }
}

/// Reads all of `r`, failing when it yields more than `limit` bytes.
fn read_limited(r: impl Read, limit: usize) -> Result<Vec<u8>, Fail> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    r.take(cap).read_to_end(&mut out).map_err(Fail::Corrupt)?;
    if out.len() > limit {
        return Err(Fail::TooLarge);
    }
    Ok(out)
}

/// Decodes a request body of the given `Content-Encoding` (`gzip`, `x-gzip`, `deflate`,
/// `identity`), producing at most `limit` bytes (more is a [`SwapError::Decode`] "larger
/// than …"). `deflate` is tried as zlib first, then as raw deflate.
pub fn decode_body(encoding: &str, body: &[u8], limit: usize) -> Result<Vec<u8>, SwapError> {
    let c = coding(encoding)?;
    if c == Coding::Identity || body.is_empty() {
        if body.len() > limit {
            return Err(Fail::TooLarge.into_error(limit));
        }
        return Ok(body.to_vec());
    }
    let decoded = match c {
        Coding::Gzip => read_limited(MultiGzDecoder::new(body), limit),
        Coding::Deflate => match read_limited(ZlibDecoder::new(body), limit) {
            // Only a format error warrants the raw-deflate retry; too large is final.
            Err(Fail::Corrupt(_)) => read_limited(DeflateDecoder::new(body), limit),
            other => other,
        },
        Coding::Identity => Ok(body.to_vec()),
    };
    decoded.map_err(|f| f.into_error(limit))
}

/// Encodes a (rewritten) request body with the given `Content-Encoding`, the inverse of
/// [`decode_body`] (`deflate` is written as zlib).
pub fn encode_body(encoding: &str, body: &[u8]) -> Result<Vec<u8>, SwapError> {
    let fail =
        |e: std::io::Error| SwapError::Decode(format!("could not re-compress the body ({e})"));
    match coding(encoding)? {
        Coding::Identity => Ok(body.to_vec()),
        Coding::Gzip => {
            let mut enc = GzEncoder::new(Vec::new(), Compression::default());
            enc.write_all(body).map_err(fail)?;
            enc.finish().map_err(fail)
        }
        Coding::Deflate => {
            let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
            enc.write_all(body).map_err(fail)?;
            enc.finish().map_err(fail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::DeflateEncoder;

    const LIMIT: usize = 64 << 20;

    #[test]
    fn gzip_and_deflate_round_trip() {
        let body = b"{\"key\":\"kz_masked_0123456789abcdef0123456789abcdef\"}".repeat(50);
        for enc in [
            "gzip",
            "x-gzip",
            "GZIP",
            "deflate",
            " Deflate ",
            "identity",
            "",
        ] {
            let packed = encode_body(enc, &body).unwrap();
            if !enc.trim().is_empty() && enc != "identity" {
                assert_ne!(packed, body, "{enc} must compress");
            }
            assert_eq!(decode_body(enc, &packed, LIMIT).unwrap(), body, "{enc}");
        }
    }

    #[test]
    fn raw_deflate_is_accepted() {
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
        enc.write_all(b"raw deflate body").unwrap();
        let raw = enc.finish().unwrap();
        assert_eq!(
            decode_body("deflate", &raw, LIMIT).unwrap(),
            b"raw deflate body"
        );
    }

    #[test]
    fn bombs_hit_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        for enc in ["gzip", "deflate"] {
            let packed = encode_body(enc, &zeros).unwrap();
            assert!(packed.len() < 64 << 10, "a bomb is small");
            let err = decode_body(enc, &packed, 1 << 20).unwrap_err();
            assert!(err.to_string().contains("larger than 1048576"), "{err}");
            assert_eq!(
                decode_body(enc, &packed, 4 << 20).unwrap().len(),
                4 << 20,
                "exact limit is fine"
            );
        }
    }

    #[test]
    fn garbage_and_unknown_encodings_fail_cleanly() {
        for enc in ["gzip", "deflate"] {
            let err = decode_body(enc, b"\x1f\x8bnot really gzip at all", LIMIT).unwrap_err();
            assert!(matches!(err, SwapError::Decode(_)), "{enc}: {err}");
        }
        for enc in ["br", "zstd", "gzip, gzip"] {
            let err = decode_body(enc, b"x", LIMIT).unwrap_err();
            assert!(err.to_string().contains("not supported"), "{err}");
            assert!(encode_body(enc, b"x").is_err());
        }
        assert!(decode_body("gzip", b"", LIMIT).unwrap().is_empty());
    }
}
