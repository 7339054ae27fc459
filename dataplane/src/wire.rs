//! Pieces of HTTP/1.1 encoding shared by the client-facing server loop
//! (`http/h1.rs`) and the member client (`client.rs`).

use bytes::BytesMut;

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

#[cfg(test)]
mod tests {
    use super::*;

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
