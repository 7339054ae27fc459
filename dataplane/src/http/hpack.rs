//! Just enough HPACK (RFC 7541) to see the names in a member's HTTP/2
//! header blocks: field names, and the dynamic table's entries as sizes,
//! kept in step with the decoder of the connection (h2's). Values are
//! never kept; a value that goes into the table is measured.
//!
//! h2 0.4 (hyper's HTTP/2 client) decodes a response's request
//! pseudo-headers (`:path`, `:method`, ...) and then drops them
//! (`h2::client::Peer::convert_poll_message` reads `:status` only), and
//! drops every pseudo-header of a trailer section, so a response RFC 9113
//! §8.1 and §8.3 call malformed would reach the client as a well-formed
//! one. [`super::h2_member`] reads each block with this first. Of values,
//! only `:status`'s first digit is read (1xx or final).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The table size a decoder starts with, and the most a member may set:
/// Keel's HTTP/2 client does not send `SETTINGS_HEADER_TABLE_SIZE`, so the
/// protocol's default holds (RFC 9113 §6.5.2).
pub(crate) const TABLE_LIMIT: usize = 4096;

/// A header block that does not decode (h2 ends the connection on it too:
/// `COMPRESSION_ERROR`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Undecodable;

/// The request pseudo-headers: never in a response (RFC 9113 §8.3).
const REQUEST_PSEUDO: [&[u8]; 5] = [
    b":authority",
    b":method",
    b":path",
    b":scheme",
    b":protocol",
];

/// The static table's names (RFC 7541 Appendix A), index 1 first.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// What is known of a name: its length (for the size of a table entry that
/// uses it), whether it is a request pseudo-header, whether `:status`.
#[derive(Debug, Clone, Copy)]
struct Name {
    len: usize,
    request_pseudo: bool,
    status: bool,
}

impl Name {
    fn of(name: &[u8]) -> Self {
        Name {
            len: name.len(),
            request_pseudo: REQUEST_PSEUDO.contains(&name),
            status: name == b":status",
        }
    }
}

/// A `:status` value's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// 1xx: a final head is still to come.
    Informational,
    Final,
}

impl Status {
    fn of(value: &[u8]) -> Status {
        if value.first() == Some(&b'1') {
            Status::Informational
        } else {
            Status::Final
        }
    }
}

/// What a header block holds, of what the checking asks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// A request pseudo-header: never in a response (RFC 9113 §8.3).
    pub(crate) request_pseudo: bool,
    /// Its `:status` field's kind, if it has one.
    pub(crate) status: Option<Status>,
}

impl Seen {
    fn note(&mut self, name: Name, status: Option<Status>) {
        self.request_pseudo |= name.request_pseudo;
        if status.is_some() {
            self.status = status;
        }
    }
}

/// A connection's decoding state: the dynamic table, newest entry first:
/// each entry's name, its value's kind for a `:status` entry, its size.
#[derive(Debug)]
pub(crate) struct Hpack {
    entries: VecDeque<(Name, Option<Status>, usize)>,
    size: usize,
    max: usize,
    scratch: Vec<u8>,
}

impl Default for Hpack {
    fn default() -> Self {
        Hpack {
            entries: VecDeque::new(),
            size: 0,
            max: TABLE_LIMIT,
            scratch: Vec::new(),
        }
    }
}

impl Hpack {
    /// Reads one whole header block. The table changes as the member's
    /// encoder's did.
    pub(crate) fn block(&mut self, mut b: &[u8]) -> Result<Seen, Undecodable> {
        let mut seen = Seen::default();
        while let Some(&first) = b.first() {
            if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(&mut b, 7)?;
                let (name, status) = self.field(index)?;
                seen.note(name, status);
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let max = integer(&mut b, 5)?;
                if max > TABLE_LIMIT {
                    return Err(Undecodable);
                }
                self.max = max;
                self.evict(0);
            } else {
                // A literal: with incremental indexing (01), without
                // indexing (0000) or never indexed (0001).
                let indexing = first & 0xc0 == 0x40;
                let index = integer(&mut b, if indexing { 6 } else { 4 })?;
                let name = if index == 0 {
                    let (huffman, raw) = string(&mut b)?;
                    if huffman {
                        self.scratch.clear();
                        huffman_decode(raw, &mut self.scratch)?;
                        Name::of(&self.scratch)
                    } else {
                        Name::of(raw)
                    }
                } else {
                    self.name(index)?
                };
                let (huffman, mut value) = string(&mut b)?;
                if huffman && (indexing || name.status) {
                    self.scratch.clear();
                    huffman_decode(value, &mut self.scratch)?;
                    value = &self.scratch;
                }
                let status = name.status.then(|| Status::of(value));
                seen.note(name, status);
                if indexing {
                    let size = name.len + value.len() + 32;
                    self.insert(name, status, size);
                }
            }
        }
        Ok(seen)
    }

    /// The dynamic table's size now (RFC 7541 §4.1).
    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    fn name(&self, index: usize) -> Result<Name, Undecodable> {
        self.field(index).map(|(name, _)| name)
    }

    /// The entry at `index`: its name, and its value's kind for `:status`
    /// (the static table's are 200 to 500).
    fn field(&self, index: usize) -> Result<(Name, Option<Status>), Undecodable> {
        match index {
            0 => Err(Undecodable),
            1..=61 => {
                let name = Name::of(STATIC_NAMES[index - 1].as_bytes());
                Ok((name, name.status.then_some(Status::Final)))
            }
            _ => self
                .entries
                .get(index - 62)
                .map(|(name, status, _)| (*name, *status))
                .ok_or(Undecodable),
        }
    }

    fn insert(&mut self, name: Name, status: Option<Status>, size: usize) {
        // An entry larger than the table empties it and is not kept
        // (RFC 7541 §4.4).
        self.evict(size);
        if size <= self.max {
            self.entries.push_front((name, status, size));
            self.size += size;
        }
    }

    /// Drops the oldest entries until `room` more fits (all of them when it
    /// cannot).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.entries.pop_back() {
                Some((_, _, size)) => self.size -= size,
                None => break,
            }
        }
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1); at most 2^28 or so,
/// far above anything a header block can mean.
fn integer(b: &mut &[u8], n: u8) -> Result<usize, Undecodable> {
    let (&first, rest) = b.split_first().ok_or(Undecodable)?;
    *b = rest;
    let mask = (1u8 << n) - 1;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let (&byte, rest) = b.split_first().ok_or(Undecodable)?;
        *b = rest;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(Undecodable);
        }
    }
}

/// A string literal (RFC 7541 §5.2): whether it is Huffman-coded, and its
/// bytes as sent.
fn string<'a>(b: &mut &'a [u8]) -> Result<(bool, &'a [u8]), Undecodable> {
    let huffman = b.first().ok_or(Undecodable)? & 0x80 != 0;
    let len = integer(b, 7)?;
    if len > b.len() {
        return Err(Undecodable);
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    Ok((huffman, s))
}

/// The length in bits of each symbol's code (RFC 7541 Appendix B), symbol
/// 0 first, EOS (256) last. The code is canonical: codes of one length are
/// consecutive, in symbol order, after the last code of the length before,
/// so the lengths are all it takes to decode.
const CODE_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;

/// The canonical code laid out for decoding: for each length, its first
/// code and where its symbols start in `symbols` (sorted by length, then
/// symbol).
struct Code {
    first: [u32; 31],
    count: [u32; 31],
    start: [usize; 31],
    symbols: Vec<u16>,
}

fn code() -> &'static Code {
    static CODE: OnceLock<Code> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..=EOS).collect();
        symbols.sort_by_key(|&s| (CODE_BITS[usize::from(s)], s));
        let mut code = Code {
            first: [0; 31],
            count: [0; 31],
            start: [0; 31],
            symbols,
        };
        for &bits in &CODE_BITS {
            code.count[usize::from(bits)] += 1;
        }
        let (mut next, mut start) = (0u32, 0usize);
        for len in 1..31 {
            next <<= 1;
            code.first[len] = next;
            code.start[len] = start;
            next += code.count[len];
            start += code.count[len] as usize;
        }
        code
    })
}

/// Appends the Huffman-coded `bytes`, decoded, to `out`. Refuses EOS in
/// the string and padding that is longer than 7 bits or not all ones
/// (RFC 7541 §5.2), as h2 does.
fn huffman_decode(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Undecodable> {
    let code = code();
    let (mut value, mut len) = (0u32, 0usize);
    for &byte in bytes {
        for shift in (0..8).rev() {
            value = value << 1 | u32::from(byte >> shift & 1);
            len += 1;
            if len > 30 {
                return Err(Undecodable);
            }
            let offset = value.wrapping_sub(code.first[len]);
            if value >= code.first[len] && offset < code.count[len] {
                let symbol = code.symbols[code.start[len] + offset as usize];
                let byte = u8::try_from(symbol).map_err(|_| Undecodable)?;
                out.push(byte);
                (value, len) = (0, 0);
            }
        }
    }
    // What is left is padding: the first bits of EOS, all ones, under 8.
    if len > 7 || value != (1 << len) - 1 {
        return Err(Undecodable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Blocks from Python's hpack 4.1.0 encoder (Huffman on; its choices of
    /// indexing, one never-indexed field, a table size update to 256 and
    /// the evictions and the oversized entry that follow): each block's
    /// verdict and the table's size after it, as that encoder counted.
    #[test]
    fn blocks_keep_the_table_in_step_with_an_independent_encoder() {
        let blocks = [
            ("885f87497ca589d34d1f77891c11fda9ac699e063f7687ea52d0b24a84ff", false, 153),
            ("8884", true, 153),
            (concat!(
                "88418cf1e3c2e5f23a6ba0ab90f4ff4085f2b507aa6fd8efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7",
                "efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdf",
                "bf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7efdfbf7f",
            ), true, 348),
            ("89c1", false, 348),
            ("88bf", true, 348),
            ("884285d70efbd8ff", true, 392),
            ("884087b95d8749c87a3f87f058d072752a7f", true, 442),
            ("881f08844149615387", true, 442),
            (concat!(
                "3fe1018d4083f2b0ff9e8e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e34083f2b4",
                "7f9921084210842108421084210842108421084210842108421084",
            ), false, 244),
            (concat!(
                "88bf4083f2b13fff629249249249249249249249249249249249249249249249249249249249249249249249",
                "2492492492492492492492492492492492492492492492492492492492492492492492492492492492492492",
                "4924924924924924924924924924924924924924924924924924924924924924924924924924924924924924",
                "9249249249249249249249249249249249249249249249249249249249249249249249249249249249249249",
                "2492492492492492492492492492492492492492492492492492492492492492492492492492492492492492",
                "4924924924924924924924924924",
            ), false, 0),
            (concat!(
                "887687ea52d0b24a84ff4083f2b0ff9e8e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e",
                "38e3",
            ), false, 122),
        ];
        let mut hpack = Hpack::default();
        for (i, (block, request_pseudo, size)) in blocks.into_iter().enumerate() {
            let seen = hpack.block(&hex(block)).map(|seen| seen.request_pseudo);
            assert_eq!(seen, Ok(request_pseudo), "block {i}");
            assert_eq!(hpack.size(), size, "block {i}");
        }
    }

    #[test]
    fn a_status_is_told_informational_or_final() {
        use Status::{Final, Informational};
        let mut hpack = Hpack::default();
        for (block, status) in [
            ("88", Some(Final)),                 // static entry 8, 200
            ("0803313033", Some(Informational)), // a literal 103 on the static name
            ("08826402", Some(Final)),           // a literal 302, Huffman-coded
            ("4803313030", Some(Informational)), // 100, into the table
            ("be", Some(Informational)),         // the table's 100
            ("4003782d610131", None),            // `x-a: 1`, into the table
            ("bf", Some(Informational)),         // the table's 100, one older now
            ("be", None),                        // the table's `x-a: 1`
        ] {
            let seen = hpack.block(&hex(block)).unwrap();
            assert_eq!(seen.status, status, "{block}");
            assert!(!seen.request_pseudo, "{block}");
        }
    }

    #[test]
    fn what_does_not_decode_is_refused() {
        for bad in [
            "80",           // index 0
            "be",           // index 62 of an empty dynamic table
            "3fe21f",       // a table size above 4096
            "0f",           // a literal whose index is cut short
            "0085",         // a name longer than the block
            "ffffffffff7f", // an index past any bound
        ] {
            assert_eq!(Hpack::default().block(&hex(bad)), Err(Undecodable), "{bad}");
        }
    }

    #[test]
    fn huffman_strings_decode() {
        // Encoded by Python's hpack 4.1.0 (an independent encoder).
        for (coded, plain) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("b958d33f", ":path"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            ("", ""),
        ] {
            let mut out = Vec::new();
            huffman_decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes(), "{coded}");
        }
        // Padding of 8 bits, padding that is not ones, EOS itself.
        for bad in ["a8eb10649cbfff", "a8eb10649cbe", "fffffffc"] {
            assert_eq!(
                huffman_decode(&hex(bad), &mut Vec::new()),
                Err(Undecodable),
                "{bad}"
            );
        }
    }
}
