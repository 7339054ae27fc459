//! Entry points for fuzzing: each hands arbitrary bytes to one parser of
//! untrusted input, the way the data plane does, and must return without
//! panicking whatever the bytes. The coverage-guided targets in
//! `tests/fuzz` call them, and so does a test that replays every committed
//! corpus and crash input on each CI run.

use bytes::BytesMut;

/// A client's request head, as Keel's HTTP/1.1 loop reads it, then the
/// authority rule and the host routing reads.
pub fn request_head(data: &[u8]) {
    crate::http::h1::fuzz_request(data);
}

/// A member's response head and what follows it, read as the member client
/// reads them: the framing decided, a chunked body decoded to its end.
pub fn response(data: &[u8]) {
    crate::client::fuzz_response(&mut BytesMut::from(data));
}

/// A member's side of an HTTP/2 connection, read as Keel reads it before
/// h2 does: frames, and the HPACK of every header block.
pub fn member_http2(data: &[u8]) {
    crate::http::h2_member::fuzz(data);
}

/// A PROXY protocol header (v1 or v2).
pub fn proxy_header(data: &[u8]) {
    let _ = crate::proxy_protocol::parse(data);
}

/// The TLS records at the start of a `tls_passthrough` connection, read
/// for the ClientHello's server name.
pub fn client_hello(data: &[u8]) {
    let _ = crate::sni::parse(data);
}
