//! The PROXY protocol (HAProxy's, versions 1 and 2): a header at the start
//! of a TCP connection that names the original client and the address it
//! connected to. Keel reads one from a trusted upstream and writes one to
//! members that ask for it.

use std::net::{IpAddr, SocketAddr};

use keel_model::ProxyProtocol;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The 12 bytes every version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 header read (addresses and some TLVs).
const V2_MAX: usize = 16 + 512;

/// The addresses a PROXY header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// [`Addresses`] in 37 bytes instead of 64, as a connection holds them
/// for its life: each IP in 16 bytes (an IPv4 one mapped, and flagged so
/// it comes back as it was), each port in 2. IPv6 flow labels and scope
/// ids are not kept: no PROXY header carries them.
#[derive(Clone, Copy)]
pub(crate) struct PackedAddresses {
    ips: [[u8; 16]; 2],
    ports: [[u8; 2]; 2],
    /// Bit 0: the source is IPv4; bit 1: the destination.
    v4: u8,
}

impl PackedAddresses {
    pub(crate) fn new(a: Addresses) -> PackedAddresses {
        let ip = |addr: SocketAddr| match addr.ip() {
            IpAddr::V4(ip) => (ip.to_ipv6_mapped().octets(), 1),
            IpAddr::V6(ip) => (ip.octets(), 0),
        };
        let (source, source_v4) = ip(a.source);
        let (destination, destination_v4) = ip(a.destination);
        PackedAddresses {
            ips: [source, destination],
            ports: [
                a.source.port().to_be_bytes(),
                a.destination.port().to_be_bytes(),
            ],
            v4: source_v4 | destination_v4 << 1,
        }
    }

    pub(crate) fn source(&self) -> SocketAddr {
        self.address(0)
    }

    pub(crate) fn get(&self) -> Addresses {
        Addresses {
            source: self.address(0),
            destination: self.address(1),
        }
    }

    fn address(&self, i: usize) -> SocketAddr {
        let ip = &self.ips[i];
        let ip = match self.v4 >> i & 1 {
            1 => IpAddr::from([ip[12], ip[13], ip[14], ip[15]]),
            _ => IpAddr::from(*ip),
        };
        SocketAddr::new(ip, u16::from_be_bytes(self.ports[i]))
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("no PROXY header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are
/// needed; otherwise its length and, unless it is `UNKNOWN`/`LOCAL`, the
/// addresses it names.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(usize, Option<Addresses>)>, HeaderError> {
    if buf.len() >= 5 && buf.starts_with(b"PROXY") {
        return parse_v1(buf);
    }
    if buf.len() >= V2_SIGNATURE.len() && buf.starts_with(&V2_SIGNATURE) {
        return parse_v2(buf);
    }
    let could_be = |sig: &[u8]| sig.starts_with(&buf[..buf.len().min(sig.len())]);
    if buf.len() < V2_SIGNATURE.len() && (could_be(b"PROXY") || could_be(&V2_SIGNATURE)) {
        return Ok(None);
    }
    Err(HeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(usize, Option<Addresses>)>, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::Malformed("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| HeaderError::Malformed("v1 header is not text"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Some((end + 2, None))),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, HeaderError> {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| HeaderError::Malformed("bad address"))?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err(HeaderError::Malformed("address does not match the family"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, HeaderError> {
                if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
                    return Err(HeaderError::Malformed("bad port"));
                }
                s.parse().map_err(|_| HeaderError::Malformed("bad port"))
            };
            Ok(Some((
                end + 2,
                Some(Addresses {
                    source: SocketAddr::new(ip(src)?, port(sport)?),
                    destination: SocketAddr::new(ip(dst)?, port(dport)?),
                }),
            )))
        }
        _ => Err(HeaderError::Malformed("v1 header has the wrong fields")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(usize, Option<Addresses>)>, HeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::Malformed("v2 header with another version"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(HeaderError::Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    match ver_cmd & 0x0f {
        0 => return Ok(Some((len, None))), // LOCAL: the proxy's own connection
        1 => {}
        _ => return Err(HeaderError::Malformed("v2 header with an unknown command")),
    }
    let addresses = match family {
        0x11 if body.len() >= 12 => {
            let ip = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
            Some(Addresses {
                source: SocketAddr::new(ip(&body[0..4]), u16::from_be_bytes([body[8], body[9]])),
                destination: SocketAddr::new(
                    ip(&body[4..8]),
                    u16::from_be_bytes([body[10], body[11]]),
                ),
            })
        }
        0x21 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[..16]);
                IpAddr::from(a)
            };
            Some(Addresses {
                source: SocketAddr::new(ip(&body[0..16]), u16::from_be_bytes([body[32], body[33]])),
                destination: SocketAddr::new(
                    ip(&body[16..32]),
                    u16::from_be_bytes([body[34], body[35]]),
                ),
            })
        }
        0x11 | 0x21 => return Err(HeaderError::Malformed("v2 addresses are cut short")),
        0x00 => None, // UNSPEC
        _ => {
            return Err(HeaderError::Malformed(
                "v2 header with an unsupported family",
            ))
        }
    };
    Ok(Some((len, addresses)))
}

/// Reads and removes a PROXY header from the start of `stream`, waiting for
/// it until `deadline`.
pub(crate) async fn read(
    stream: &TcpStream,
    deadline: Instant,
) -> Result<Option<Addresses>, HeaderError> {
    let mut buf = vec![0u8; V2_MAX];
    let mut seen = 0;
    loop {
        let more = crate::peek::peek_more(stream, &mut buf, seen);
        let n = match tokio::time::timeout_at(deadline, more).await {
            Ok(Ok(n)) if n > seen => n,
            _ => return Err(HeaderError::Missing),
        };
        match parse(&buf[..n])? {
            Some((len, addresses)) => {
                consume(stream, len, deadline).await?;
                return Ok(addresses);
            }
            None if n == buf.len() => return Err(HeaderError::Malformed("header too long")),
            // Part of a header so far: wait until more has arrived.
            None => seen = n,
        }
    }
}

/// Reads exactly `len` bytes (already seen by peeking) off the stream.
async fn consume(stream: &TcpStream, mut len: usize, deadline: Instant) -> Result<(), HeaderError> {
    let mut sink = [0u8; 256];
    while len > 0 {
        let want = len.min(sink.len());
        let read = async {
            loop {
                stream.readable().await?;
                match stream.try_read(&mut sink[..want]) {
                    Ok(n) => return Ok::<usize, std::io::Error>(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(n)) if n > 0 => len -= n,
            _ => return Err(HeaderError::Missing),
        }
    }
    Ok(())
}

/// The header of a connection Keel opens on its own behalf (a health
/// check), naming no client: v1 `PROXY UNKNOWN`, v2 the LOCAL command.
pub(crate) fn encode_local(version: ProxyProtocol) -> Vec<u8> {
    match version {
        ProxyProtocol::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyProtocol::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x20); // version 2, LOCAL
            out.push(0x00); // no address family
            out.extend(0u16.to_be_bytes());
            out
        }
    }
}

/// A version 1 header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
pub(crate) fn encode_v1(a: Addresses) -> Vec<u8> {
    let (src, dst) = same_family(a);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A version 2 header: signature, PROXY command over TCP, the addresses.
pub(crate) fn encode_v2(a: Addresses) -> Vec<u8> {
    let (src, dst) = same_family(a);
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // TCP over IPv4
            out.extend(12u16.to_be_bytes());
            out.extend(s.octets());
            out.extend(d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21); // TCP over IPv6
            out.extend(36u16.to_be_bytes());
            out.extend(v6(s).octets());
            out.extend(v6(d).octets());
        }
    }
    out.extend(src.port().to_be_bytes());
    out.extend(dst.port().to_be_bytes());
    out
}

/// Both addresses in one family: IPv4-mapped IPv6 addresses are unmapped
/// when both can be IPv4, else both are written as IPv6.
fn same_family(a: Addresses) -> (SocketAddr, SocketAddr) {
    let unmap = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(s, |v4| SocketAddr::new(IpAddr::V4(v4), s.port())),
        IpAddr::V4(_) => s,
    };
    let (s, d) = (unmap(a.source), unmap(a.destination));
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    let map = |x: SocketAddr| match x.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), x.port()),
        IpAddr::V6(_) => x,
    };
    (map(s), map(d))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addrs(s: &str, d: &str) -> Addresses {
        Addresses {
            source: s.parse().unwrap(),
            destination: d.parse().unwrap(),
        }
    }

    #[test]
    fn both_versions_round_trip() {
        for a in [
            addrs("192.0.2.1:5000", "10.77.0.100:80"),
            addrs("[2001:db8::1]:5000", "[fd77::100]:443"),
        ] {
            for bytes in [encode_v1(a), encode_v2(a)] {
                let mut more = bytes.clone();
                more.extend(b"GET / HTTP/1.1\r\n");
                assert_eq!(parse(&more).unwrap(), Some((bytes.len(), Some(a))));
                // Every prefix asks for more rather than failing.
                for cut in 1..bytes.len() {
                    assert_eq!(parse(&bytes[..cut]).unwrap(), None, "cut at {cut}");
                }
            }
        }
        assert_eq!(
            encode_v1(addrs("192.0.2.1:5000", "10.77.0.100:80")),
            b"PROXY TCP4 192.0.2.1 10.77.0.100 5000 80\r\n"
        );
    }

    #[test]
    fn malformed_headers_are_refused_without_panics() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY ".to_vec();
        long.extend([b'x'; 200]);
        assert!(parse(&long).is_err());
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x31, 0x11, 0, 12]);
        assert!(parse(&v2).is_err(), "version 3");
        let mut cut = V2_SIGNATURE.to_vec();
        cut.extend([0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&cut).is_err(), "addresses cut short");
        for _ in 0..20_000 {
            let n = fastrand::usize(0..64);
            let mut junk: Vec<u8> = (0..n).map(|_| fastrand::u8(..)).collect();
            if fastrand::bool() {
                junk.splice(0..0, V2_SIGNATURE);
            }
            let _ = parse(&junk);
        }
    }

    #[test]
    fn local_and_unknown_carry_no_addresses() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Some((15, None)));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap(), Some((16, None)));
    }

    #[test]
    fn a_local_header_names_no_client_and_parses_as_such() {
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let bytes = encode_local(version);
            assert_eq!(parse(&bytes).unwrap(), Some((bytes.len(), None)));
        }
    }

    #[test]
    fn packed_addresses_come_back_as_they_were() {
        for (source, destination) in [
            ("192.0.2.7:40000", "10.0.0.1:80"),
            ("[2001:db8::1]:1", "[::ffff:10.0.0.1]:443"),
            ("[::ffff:192.0.2.7]:65535", "198.51.100.9:0"),
            ("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:8080", "[::]:80"),
        ] {
            let a = Addresses {
                source: source.parse().unwrap(),
                destination: destination.parse().unwrap(),
            };
            let packed = PackedAddresses::new(a);
            assert_eq!(packed.get(), a);
            assert_eq!(packed.source(), a.source);
        }
    }
}
