//! The HTTP/1.1 codec's shared pieces: the framing rules both sides of
//! Keel read and write by. The client-facing server loop (`http/h1.rs`)
//! decodes request bodies with them, the member client (`client.rs`)
//! response bodies and health checks' answers: one reading of a length,
//! one chunked decoder, one encoder.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use crate::http::{MAX_HEADERS, MAX_HEAD_BYTES};

/// Appends one field line: `name: value\r\n`.
pub(crate) fn field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk-size line: `n` in hexadecimal, then `\r\n`.
pub(crate) fn chunk_size(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// A `Content-Length` value, if it is one: decimal digits only (no sign,
/// no spaces inside, no list), without overflow (RFC 9112 §6.3).
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether `ext`, what follows a chunk's size on its line, is chunk
/// extensions as RFC 9112 §7.1.1 writes them: each `;name` or
/// `;name=value` (a token or a quoted string), with optional whitespace
/// around the separators. A CR, LF or other control byte in them is
/// refused: a parser that ends the line there frames the body otherwise.
fn extensions(mut ext: &[u8]) -> bool {
    let ws = |s: &[u8]| -> usize { s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count() };
    let token = |s: &[u8]| -> usize { s.iter().take_while(|b| is_tchar(**b)).count() };
    loop {
        ext = &ext[ws(ext)..];
        match ext.split_first() {
            None => return true,
            Some((b';', rest)) => ext = &rest[ws(rest)..],
            Some(_) => return false,
        }
        let name = token(ext);
        if name == 0 {
            return false;
        }
        ext = &ext[name..];
        ext = &ext[ws(ext)..];
        let Some((b'=', rest)) = ext.split_first() else {
            continue;
        };
        ext = &rest[ws(rest)..];
        let value = match ext.first() {
            Some(b'"') => quoted_string(ext),
            _ => Some(token(ext)).filter(|n| *n > 0),
        };
        let Some(value) = value else {
            return false;
        };
        ext = &ext[value..];
    }
}

/// A token's byte (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The length of the quoted string `s` starts with (RFC 9110 §5.6.4), if
/// it is one.
fn quoted_string(s: &[u8]) -> Option<usize> {
    let text = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
    let mut i = 1;
    loop {
        match *s.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' if text(*s.get(i + 1)?) => i += 2,
            b'\\' => return None,
            b if text(b) => i += 1,
            _ => return None,
        }
    }
}

/// Fields that mean nothing, or something else, after the body (RFC 9110
/// §6.5.1: framing, routing, connection, authentication, request
/// modifiers, content format) and the forwarding fields Keel writes: a
/// recipient that merges trailers into the head would take them as
/// the sender's word after Keel routed and stamped the request. Dropped
/// from trailers, never passed on.
const NOT_TRAILERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "max-forwards",
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "www-authenticate",
    "cookie",
    "set-cookie",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "cache-control",
    "content-type",
    "content-encoding",
    "content-range",
    "location",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-host",
];

/// Whether `name` may travel as a trailer field ([`NOT_TRAILERS`]): those
/// that may not are dropped as trailers are read and as they are written.
pub(crate) fn allowed_trailer(name: &HeaderName) -> bool {
    !NOT_TRAILERS.contains(&name.as_str())
}

/// The last chunk of a chunked body: its `0` line, the trailer fields
/// that may travel, the empty line.
pub(crate) fn last_chunk(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if allowed_trailer(name) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

/// What one step of decoding a chunked body gave.
pub(crate) enum Step {
    /// Data or trailers for the client.
    Frame(Frame<Bytes>),
    /// Bytes were consumed and the state moved on: decode again.
    Next,
    /// More bytes are needed.
    More,
}

/// Decodes the next piece of a chunked body off the front of `buf`.
pub(crate) fn decode_chunk(state: &mut Chunk, buf: &mut BytesMut) -> io::Result<Step> {
    match *state {
        Chunk::Size => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(invalid("chunk size line too long"));
                }
                // A line ended by a bare LF will not become valid: refused
                // now, not after waiting for a CRLF that never comes.
                if buf.contains(&b'\n') {
                    return Err(invalid("chunk size line ended by a bare LF"));
                }
                return Ok(Step::More);
            };
            let line = &buf[..end];
            let digits = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            if digits == 0 || digits > 15 || !extensions(&line[digits..]) {
                return Err(invalid("malformed chunk size"));
            }
            let size = line[..digits]
                .iter()
                .fold(0u64, |n, b| n * 16 + u64::from(hex_value(*b)));
            buf.advance(end + 2);
            *state = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Step::Next)
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = take_bytes(buf, take);
            let left = left - take as u64;
            *state = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Step::Frame(Frame::data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            *state = Chunk::Size;
            Ok(Step::Next)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                *state = Chunk::Done;
                return Ok(Step::Next);
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let (len, trailers) = match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) if len <= MAX_HEAD_BYTES => {
                    let mut trailers = HeaderMap::new();
                    for f in fields.iter() {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| invalid("malformed trailer name"))?;
                        if !allowed_trailer(&name) {
                            continue;
                        }
                        let value = HeaderValue::from_bytes(f.value)
                            .map_err(|_| invalid("malformed trailer value"))?;
                        trailers.append(name, value);
                    }
                    (len, trailers)
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {
                    return Ok(Step::More)
                }
                _ => return Err(invalid("malformed trailers")),
            };
            buf.advance(len);
            *state = Chunk::Done;
            Ok(Step::Frame(Frame::trailers(trailers)))
        }
        Chunk::Done => Ok(Step::Next),
    }
}

/// Bodies up to this size are copied out of the read buffer rather than
/// split off it, so the buffer stays the connection's own and is reused.
const COPY_BELOW: usize = 4096;

/// The first `n` bytes of `buf`, as body data.
pub(crate) fn take_bytes(buf: &mut BytesMut, n: usize) -> Bytes {
    if n < COPY_BELOW {
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        data
    } else {
        buf.split_to(n).freeze()
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> io::Result<(Vec<u8>, Option<HeaderMap>, Chunk)> {
        let mut buf = BytesMut::from(input);
        let mut state = Chunk::Size;
        let mut data = Vec::new();
        let mut trailers = None;
        while !matches!(state, Chunk::Done) {
            match decode_chunk(&mut state, &mut buf)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::Next => {}
                Step::More => break,
            }
        }
        Ok((data, trailers, state))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, trailers, state) =
            decode_all(b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n")
                .unwrap();
        assert_eq!(data, b"hello0123456789");
        assert!(matches!(state, Chunk::Done));
        let trailers = trailers.unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        // Framing, routing and forwarding fields are not trailers.
        let (_, trailers, _) = decode_all(
            b"0\r\nContent-Length: 50\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\nx-sum: 1\r\n\r\n",
        )
        .unwrap();
        let trailers = trailers.unwrap();
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-sum"], "1");
        let (data, trailers, state) = decode_all(b"3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"abc");
        assert!(trailers.is_none() && matches!(state, Chunk::Done));
        // Extensions in every form RFC 9112 allows, whitespace included.
        for line in [
            &b"5 "[..],
            b"5;a",
            b"5 ; a = b ;c",
            b"5;a=\"quoted \\\" ;\";b=t",
            b"5\t;a=\"\"",
        ] {
            let body = [line, b"\r\nhello\r\n0\r\n\r\n"].concat();
            let (data, _, state) = decode_all(&body)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(line)));
            assert_eq!(data, b"hello");
            assert!(matches!(state, Chunk::Done));
        }
    }

    #[test]
    fn an_incomplete_chunked_body_waits_for_more() {
        let (data, _, state) = decode_all(b"5\r\nhel").unwrap();
        assert_eq!(data, b"hel");
        assert!(matches!(state, Chunk::Data(2)));
    }

    #[test]
    fn malformed_chunk_sizes_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"1234567890abcdef0\r\n",
            b"3\r\nabcXY",
            b"-1\r\n",
            // Control bytes in an extension: a parser that ends the size
            // line at a bare LF or CR reads a different body.
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\0\r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
            b"5;a=b c\r\nhello\r\n0\r\n\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\n0\n\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(&long).is_err());
        // A trailer section over the head limit, arrived whole.
        let mut trailers = b"0\r\nx-a: ".to_vec();
        trailers.resize(MAX_HEAD_BYTES + 16, b'a');
        trailers.extend_from_slice(b"\r\n\r\n");
        assert!(decode_all(&trailers).is_err());
    }

    #[test]
    fn lines_are_encoded() {
        let mut out = BytesMut::new();
        field(&mut out, b"host", b"a");
        chunk_size(&mut out, 0);
        chunk_size(&mut out, 0x1f40);
        chunk_size(&mut out, usize::MAX);
        let max = format!("{:x}\r\n", usize::MAX);
        assert_eq!(out, format!("host: a\r\n0\r\n1f40\r\n{max}").as_bytes());
    }
}
