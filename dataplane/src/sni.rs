//! Reading the server name (SNI) from a TLS ClientHello without consuming
//! it: the bytes stay in the socket for the member, which does the TLS.

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most ClientHello bytes looked at (records included): far above what
/// browsers send (about 2 KiB with post-quantum key shares).
const MAX_HELLO: usize = 16 * 1024;

/// What the start of a connection says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A ClientHello with this server name (lower-case), or none.
    Tls(Option<String>),
    /// More bytes are needed to tell.
    Partial,
    /// Not a TLS ClientHello, or a malformed one.
    Invalid(&'static str),
}

/// Peeks at a connection until its ClientHello can be read or `deadline`.
pub(crate) async fn read(stream: &TcpStream, deadline: Instant) -> Result<Option<String>, String> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut seen = 0;
    loop {
        let more = crate::peek::peek_more(stream, &mut buf, seen);
        let n = match tokio::time::timeout_at(deadline, more).await {
            Ok(Ok(n)) if n <= seen => return Err("closed before a ClientHello".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no ClientHello in time".into()),
        };
        match parse(&buf[..n]) {
            Hello::Tls(name) => return Ok(name),
            Hello::Invalid(why) => return Err(why.into()),
            Hello::Partial if n == buf.len() => return Err("ClientHello too large".into()),
            // The rest is on its way: wait until more has arrived.
            Hello::Partial => seen = n,
        }
    }
}

/// Reads the server name from the TLS records at the start of `data`.
pub(crate) fn parse(data: &[u8]) -> Hello {
    // Gather the handshake message from as many records as it spans.
    let mut handshake = Vec::new();
    let mut rest = data;
    loop {
        if rest.len() < 5 {
            return Hello::Partial;
        }
        if rest[0] != 0x16 {
            return Hello::Invalid("not a TLS handshake record");
        }
        if rest[1] != 3 {
            return Hello::Invalid("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16 * 1024 {
            return Hello::Invalid("bad TLS record length");
        }
        if rest.len() < 5 + len {
            // What has arrived of this record still counts.
            handshake.extend_from_slice(&rest[5..]);
            return match hello_complete(&handshake) {
                Some(Err(why)) => Hello::Invalid(why),
                _ => Hello::Partial,
            };
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        match hello_complete(&handshake) {
            Some(Ok(())) => return client_hello(&handshake),
            Some(Err(why)) => return Hello::Invalid(why),
            None => {}
        }
    }
}

/// Whether `h` holds a whole ClientHello message (`None`: not yet).
fn hello_complete(h: &[u8]) -> Option<Result<(), &'static str>> {
    if h.is_empty() {
        return None;
    }
    if h[0] != 1 {
        return Some(Err("not a ClientHello"));
    }
    if h.len() < 4 {
        return None;
    }
    let len = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
    if len + 4 > MAX_HELLO {
        return Some(Err("ClientHello too large"));
    }
    (h.len() >= 4 + len).then_some(Ok(()))
}

/// Walks a complete ClientHello to its server_name extension.
fn client_hello(h: &[u8]) -> Hello {
    let len = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
    let mut r = Reader(&h[4..4 + len]);
    let fields = (|| {
        r.take(2)?; // legacy version
        r.take(32)?; // random
        let n = usize::from(r.u8()?);
        r.take(n)?; // session id
        let n = usize::from(r.u16()?);
        r.take(n)?; // cipher suites
        let n = usize::from(r.u8()?);
        r.take(n)?; // compression methods
        if r.0.is_empty() {
            return Some(None); // no extensions at all
        }
        let n = usize::from(r.u16()?);
        let mut ext = Reader(r.take(n)?);
        while !ext.0.is_empty() {
            let kind = ext.u16()?;
            let n = usize::from(ext.u16()?);
            let body = ext.take(n)?;
            if kind == 0 {
                return Some(Some(body));
            }
        }
        Some(None)
    })();
    let body = match fields {
        None => return Hello::Invalid("truncated ClientHello"),
        Some(None) => return Hello::Tls(None),
        Some(Some(body)) => body,
    };
    let mut list = Reader(body);
    let name = (|| {
        let n = usize::from(list.u16()?);
        let mut names = Reader(list.take(n)?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let n = usize::from(names.u16()?);
            let name = names.take(n)?;
            if kind == 0 {
                return Some(Some(name));
            }
        }
        Some(None)
    })();
    match name {
        None => Hello::Invalid("malformed server_name extension"),
        Some(None) => Hello::Tls(None),
        Some(Some(n)) if n.is_empty() || n.len() > 253 => {
            Hello::Invalid("server name of a bad length")
        }
        Some(Some(n)) if !n.iter().all(|b| b.is_ascii_graphic()) => {
            Hello::Invalid("server name is not printable ASCII")
        }
        Some(Some(n)) => Hello::Tls(Some(String::from_utf8_lossy(n).to_ascii_lowercase())),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name`.
    fn hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), server).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_the_name_from_a_real_client_hello() {
        let h = hello("Shop.Example.com");
        assert_eq!(parse(&h), Hello::Tls(Some("shop.example.com".into())));
        // Every shorter prefix asks for more; none is mistaken for a name.
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Hello::Partial, "prefix of {cut}");
        }
        // An IP address is sent without SNI.
        assert_eq!(parse(&hello("192.0.2.1")), Hello::Tls(None));
    }

    #[test]
    fn a_hello_split_over_records_is_joined() {
        let h = hello("split.example");
        let body = &h[5..];
        let (a, b) = body.split_at(40);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend([0x16, 3, 1]);
            two.extend((part.len() as u16).to_be_bytes());
            two.extend(part);
        }
        assert_eq!(parse(&two), Hello::Tls(Some("split.example".into())));
    }

    #[test]
    fn other_protocols_and_garbage_are_refused_without_panic() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Hello::Invalid(_)
        ));
        assert!(matches!(parse(&[0x16, 3, 1, 0, 0]), Hello::Invalid(_)));
        assert!(matches!(
            parse(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Hello::Invalid(_)
        ));
        let mut seed = 7u64;
        let real = hello("fuzz.example");
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = real.clone();
            let i = (seed as usize) % m.len();
            m[i] = (seed >> 32) as u8;
            let cut = ((seed >> 16) as usize) % (m.len() + 1);
            let _ = parse(&m[..cut]);
        }
    }
}
