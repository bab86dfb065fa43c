//! Pure byte transforms of blind mode, in both directions.
//!
//! - [`Swapper`] (requests): masked tokens → real values in the request target (percent-encoded
//!   there), in every header value (also inside a decoded `Authorization: Basic`), and in bodies,
//!   whole ([`Swapper::swap_buffer`]) or streamed ([`BodySwap`], boundary-safe). A token whose
//!   secret may not go to the destination is reported ([`SwapError::Forbidden`]) and never
//!   swapped; a value that cannot legally sit in a header is refused
//!   ([`SwapError::IllegalInHeader`]).
//! - [`Scrubber`] (responses): real values (at least [`MIN_SCRUB_LEN`] bytes), found in a
//!   decoded view (any mix of JSON, percent and HTML escapes, base64 at any alignment, fragments
//!   of long values) → the token (its base64 for a base64 form). The same matcher finds values
//!   in requests: the check for values from the command ([`SwapError::Value`]).
//! - [`decode_body`] / [`encode_body`]: `gzip` / `deflate` request bodies, with an output limit.
//!
//! Boundary: no I/O, no policy. Callers say which secrets may go where through an `allowed`
//! closure over secret indices (into [`SecretTable::secrets`](crate::secrets::SecretTable)),
//! and map indices to names themselves. Errors and `Debug` output name secrets only by index
//! and never contain a value; values are held in zeroizing buffers.

mod codec;
mod scrub;
mod swap;

pub use codec::{decode_body, encode_body};
pub use scrub::{ScrubStream, Scrubber};
pub use swap::{BodySwap, Swapper};

/// Values shorter than this are not scrubbed from responses (they would mangle unrelated text).
pub const MIN_SCRUB_LEN: usize = 8;

/// The largest value blind mode handles (1 MiB): scrubbing indexes every value, in memory linear
/// in their size (about 100 bytes per value byte at the peak of building it, 0.25 s per MiB),
/// and a larger value is refused at start.
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// Why a request could not be rewritten. Messages name secrets by index (`secret #3`); the
/// proxy maps the index to the secret's variable name. They never contain a value.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The token of secret `idx` was found in a request to a host that secret may not reach.
    #[error(
        "the request carries the token of secret #{0}, which may not be sent to this host; \
         add the host to that secret's `hosts` (or pass `--allow-host`) if it should go there"
    )]
    Forbidden(usize),
    /// The command sent the real value of secret `idx`, or a fragment of it (in any form the
    /// decoded view finds, not its token), to any host: a leak or a guess; blind mode stops.
    #[error("the request carries a secret value (not its token); blind mode stopped")]
    Value(usize),
    /// The value of secret `idx` contains CR, LF, NUL (or another control character) and its
    /// token is in a header, where such a value cannot legally go.
    #[error(
        "the value of secret #{0} contains CR, LF, NUL or another control character and cannot \
         be put into an HTTP header; send its token in the body instead, or fix the stored value"
    )]
    IllegalInHeader(usize),
    /// A compressed request body could not be decoded, was too large, or used an unsupported
    /// encoding.
    #[error("the request body could not be rewritten: {0}")]
    Decode(String),
}

/// Sorted, deduplicated.
fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v.dedup();
    v
}

/// RFC 3986 `unreserved`: the bytes percent-encoding leaves as they are.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX_UPPER: [u8; 16] = *b"0123456789ABCDEF";

/// Percent-encodes every byte except unreserved ones (uppercase hex). The output is sized up
/// front so no reallocation leaves a partial copy of a value behind.
fn percent_encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len().saturating_mul(3));
    for &b in value {
        if is_unreserved(b) {
            out.push(b);
        } else {
            out.push(b'%');
            out.extend(HEX_UPPER.get(usize::from(b >> 4)));
            out.extend(HEX_UPPER.get(usize::from(b & 0xf)));
        }
    }
    out
}

/// Whether `b` may appear in an HTTP header value (as `http::HeaderValue` accepts it: visible
/// ASCII, space, tab and obs-text; no CR, LF, NUL, other controls or DEL).
fn header_safe(b: u8) -> bool {
    (b >= 0x20 && b != 0x7f) || b == b'\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        assert_eq!(percent_encode(b"aZ09-._~"), b"aZ09-._~");
        assert_eq!(
            percent_encode(b"a b/c?d=e&f+%\xff\x00"),
            b"a%20b%2Fc%3Fd%3De%26f%2B%25%FF%00"
        );
    }

    #[test]
    fn errors_name_the_index_only() {
        let shown = format!(
            "{} {} {}",
            SwapError::Forbidden(3),
            SwapError::IllegalInHeader(4),
            SwapError::Decode("x".into())
        );
        assert!(
            shown.contains("secret #3") && shown.contains("secret #4"),
            "{shown}"
        );
    }
}
