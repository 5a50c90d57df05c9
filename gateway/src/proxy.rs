//! The PROXY protocol, versions 1 and 2 (HAProxy's `proxy-protocol.txt`): the header an L4 load
//! balancer puts before a connection's first byte to say which client it carries. The bytes are
//! parsed by the `ppp` crate, in place; this module bounds them, says which address the
//! connection stands for, and which sources may send a header at all. No IO.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ppp::v2::{Command, Protocol};
use ppp::{v1, v2, HeaderResult, PartialResult};

/// Most bytes read for a header. A version 1 header is at most 107 bytes; a version 2 header is
/// 16 bytes and the length it declares, which may say up to 64 KiB. Its addresses take at most
/// 216 bytes (two AF_UNIX paths); the rest is TLVs, which are skipped, so a larger one is refused
/// rather than read.
pub const MAX_HEADER: usize = 536;
/// Longest version 1 header, its CRLF included.
const MAX_V1: usize = 107;
/// The first bytes of a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Where parsing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// The header takes the first `len` bytes. `source` is the client it speaks for; none when
    /// the connection is the proxy's own (a v2 LOCAL command, as health checks send) or the
    /// header gives no IP address (v1 UNKNOWN, v2 UNSPEC or UNIX): the socket's address stands.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY v1 header: {0}")]
    V1(#[from] v1::BinaryParseError),
    #[error("PROXY v2 header: {0}")]
    V2(#[from] v2::ParseError),
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("PROXY v2 header for a datagram flow on a stream connection")]
    Datagram,
}

/// Parses the header at the start of `buf`, which holds what has arrived so far. The bytes after
/// the header are the connection's own.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let start = &b"PROXY "[..buf.len().min(6)];
    if buf.starts_with(start) {
        // A v1 header is one line ending in CR LF, parsed once its CR and the byte after it have
        // come: ppp's guesses about a line in progress refuse some that would have completed
        // (`... 56324 ` before the destination port), and take some lines that have ended for
        // lines in progress (one that ends in `PROXY`). A line ended by LF alone is refused.
        match buf
            .iter()
            .take(MAX_V1)
            .position(|&b| b == b'\r' || b == b'\n')
        {
            Some(end) if buf[end] == b'\n' => {
                return Err(ProxyError::V1(v1::ParseError::MissingNewLine.into()))
            }
            Some(end) if end + 1 < buf.len() => {}
            _ if buf.len() >= MAX_V1 => return Err(ProxyError::TooLong),
            _ => return Ok(Parsed::Incomplete),
        }
    } else if !buf.starts_with(&V2_SIGNATURE[..buf.len().min(12)]) {
        // What begins neither header is refused at once, however it was cut: ppp takes some of
        // it (`P\rP`) for the start of a v1 header and would wait for more.
        return Err(ProxyError::V1(v1::ParseError::InvalidPrefix.into()));
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        match result {
            // The line has ended: no more bytes complete it.
            HeaderResult::V1(Err(error)) => return Err(error.into()),
            // A v2 header says its length up front: one past the bound is refused before it is
            // read.
            HeaderResult::V2(Err(v2::ParseError::Partial(_, length)))
                if 16 + length > MAX_HEADER =>
            {
                return Err(ProxyError::TooLong)
            }
            _ => {}
        }
        return match buf.len() >= MAX_HEADER {
            true => Err(ProxyError::TooLong),
            false => Ok(Parsed::Incomplete),
        };
    }
    match result {
        HeaderResult::V1(header) => {
            let header = header?;
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            let len = header.header.len();
            Ok(Parsed::Header { len, source })
        }
        HeaderResult::V2(header) => {
            let header = header?;
            let len = header.as_bytes().len();
            if header.command == Command::Local {
                return Ok(Parsed::Header { len, source: None });
            }
            if header.protocol == Protocol::Datagram {
                return Err(ProxyError::Datagram);
            }
            let source = match header.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            };
            Ok(Parsed::Header { len, source })
        }
    }
}

/// An IP network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether the address is in this network. An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`,
    /// as a dual-stack listener sees IPv4 clients) is taken as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), 32, self.prefix) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// The first `prefix` of `bits` bits of `value`.
fn mask(value: u128, bits: u8, prefix: u8) -> u128 {
    match bits - prefix {
        0 => value,
        host if host >= bits => 0,
        host => value >> host << host,
    }
}

/// Why a network could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    #[error("{0:?} is not an IP address or network (10.0.0.0/8, 2001:db8::/32)")]
    NotAnAddress(String),
    #[error("prefix length {prefix} is more than the {bits} bits of the address")]
    PrefixTooLong { prefix: u8, bits: u8 },
}

impl FromStr for Network {
    type Err = NetworkError;

    /// Host bits after the prefix are cleared, as HAProxy does with its own `src` lists.
    fn from_str(text: &str) -> Result<Network, NetworkError> {
        let bad = || NetworkError::NotAnAddress(text.to_owned());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return Err(NetworkError::PrefixTooLong { prefix, bits });
        }
        let addr = match addr {
            IpAddr::V4(v4) => {
                let masked = mask(u128::from(u32::from(v4)), 32, prefix) as u32;
                IpAddr::from(masked.to_be_bytes())
            }
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask(u128::from(v6), 128, prefix))),
        };
        Ok(Network { addr, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The networks allowed to send a PROXY header: a comma-separated list, as a setting gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<Network>);

impl Networks {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(ip))
    }
}

impl FromStr for Networks {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Networks, NetworkError> {
        text.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Networks)
    }
}

impl std::fmt::Display for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, network) in self.0.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{network}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize, source: Option<&str>) -> Parsed {
        Parsed::Header {
            len,
            source: source.map(|s| s.parse().unwrap()),
        }
    }

    /// A v2 header: version and command, family and protocol, then the address block.
    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend([command, family]);
        bytes.extend((block.len() as u16).to_be_bytes());
        bytes.extend(block);
        bytes
    }

    /// The spec's v1 examples (section 2.1, its `f...f` spelt out), each with the request that
    /// follows it.
    #[test]
    fn version_1_examples_from_the_spec() {
        let all_f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {all_f} {all_f} 65535 65535\r\n");
        let unknown = format!("PROXY UNKNOWN {all_f} {all_f} 65535 65535\r\n");
        let examples = [
            (
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
                Some("192.168.0.1:56324".to_owned()),
            ),
            (
                "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
                Some("255.255.255.255:65535".to_owned()),
            ),
            (&tcp6, Some(format!("[{all_f}]:65535"))),
            ("PROXY UNKNOWN\r\n", None),
            (&unknown, None),
        ];
        for (line, source) in examples {
            let mut bytes = line.as_bytes().to_vec();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n");
            let expected = header(line.len(), source.as_deref());
            assert_eq!(parse(&bytes).unwrap(), expected, "{line}");
        }
        assert_eq!(
            (tcp6.len(), unknown.len()),
            (104, 107),
            "the spec's worst cases"
        );
    }

    /// The spec's v2 examples (section 2.2): PROXY over TCP/IPv4 and IPv6, LOCAL, UNSPEC and
    /// UNIX, and TLVs after the addresses, which are skipped.
    #[test]
    fn version_2_examples_from_the_spec() {
        let ipv4 = [192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb];
        let tcp4 = v2(0x21, 0x11, &ipv4);
        assert_eq!(parse(&tcp4).unwrap(), header(28, Some("192.168.0.1:56324")));

        let mut ipv6 = [0u8; 36];
        ipv6[..16].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        ipv6[16..32].copy_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        ipv6[32..].copy_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        let tcp6 = v2(0x21, 0x21, &ipv6);
        assert_eq!(
            parse(&tcp6).unwrap(),
            header(52, Some("[2001:db8::1]:12345"))
        );

        let local = v2(0x20, 0x00, &[]);
        assert_eq!(parse(&local).unwrap(), header(16, None));
        let local_with_addresses = v2(0x20, 0x11, &ipv4);
        assert_eq!(parse(&local_with_addresses).unwrap(), header(28, None));
        assert_eq!(parse(&v2(0x21, 0x00, &[])).unwrap(), header(16, None));
        let unix = v2(0x21, 0x31, &[0u8; 216]);
        assert_eq!(parse(&unix).unwrap(), header(232, None));

        // PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY "example.com", a PP2_TYPE_NOOP.
        let mut with_tlvs = ipv4.to_vec();
        with_tlvs.extend([0x01, 0x00, 0x02, b'h', b'2']);
        with_tlvs.extend([0x02, 0x00, 0x0b]);
        with_tlvs.extend(b"example.com");
        with_tlvs.extend([0x04, 0x00, 0x00]);
        let mut bytes = v2(0x21, 0x11, &with_tlvs);
        let len = bytes.len();
        bytes.extend([0x16, 0x03, 0x01]);
        assert_eq!(
            parse(&bytes).unwrap(),
            header(len, Some("192.168.0.1:56324"))
        );
    }

    #[test]
    fn a_header_arriving_byte_by_byte_is_incomplete_until_whole() {
        let v1 = b"PROXY TCP6 2001:db8::1 2001:db8::2 12345 443\r\n".to_vec();
        let v2 = v2(0x21, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187]);
        for bytes in [v1, v2] {
            for end in 1..bytes.len() {
                assert_eq!(parse(&bytes[..end]).unwrap(), Parsed::Incomplete, "{end}");
            }
            assert!(
                matches!(parse(&bytes).unwrap(), Parsed::Header { len, .. } if len == bytes.len())
            );
        }
    }

    #[test]
    fn what_is_not_a_header_is_refused() {
        let client_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        let refused: [&[u8]; 10] = [
            b"GET / HTTP/1.1\r\n\r\n",
            &client_hello,
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 extra\r\n",
            b"PROXY TCP4 ::1 ::1 80 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 80 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX",
            b"proxy TCP4 1.2.3.4 5.6.7.8 80 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
        ];
        for bytes in refused {
            assert!(
                parse(bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let block = [10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187];
        for (command, family) in [(0x11, 0x11), (0x22, 0x11), (0x21, 0x41), (0x21, 0x13)] {
            assert!(
                parse(&v2(command, family, &block)).is_err(),
                "{command:x} {family:x}"
            );
        }
        // Shorter than its addresses, and UDP on a TCP connection.
        assert!(parse(&v2(0x21, 0x11, &block[..8])).is_err());
        assert!(matches!(
            parse(&v2(0x21, 0x12, &block)),
            Err(ProxyError::Datagram)
        ));
    }

    #[test]
    fn what_can_be_no_header_is_refused_at_once_however_it_is_cut() {
        // ppp takes the first two for v1 headers in progress, and would wait for more, and the
        // last, which a lone LF ends, for a header.
        let cases: [(&[u8], usize); 3] = [
            (b"P\rP\r\n4\n4", 2),
            (b"PROXY UNKNOWN\rX PROXY", "PROXY UNKNOWN\rX".len()),
            (b"PROXY UNKNOWN a\nb\r\n", "PROXY UNKNOWN a\n".len()),
        ];
        for (garbage, refused_from) in cases {
            for end in refused_from..=garbage.len() {
                let part = String::from_utf8_lossy(&garbage[..end]);
                assert!(parse(&garbage[..end]).is_err(), "{part:?}");
            }
        }
    }

    #[test]
    fn headers_are_bounded() {
        let v1 = format!("PROXY UNKNOWN {}\r\n", "a".repeat(100));
        assert!(parse(v1.as_bytes()).is_err());
        assert!(parse(
            &[b'P', b'R', b'O', b'X', b'Y', b' ', b'T', b'C', b'P', b'4', b' '].repeat(10)
        )
        .is_err());
        // A v2 header that declares more than the bound is refused from its first 16 bytes.
        let mut declared = V2_SIGNATURE.to_vec();
        declared.extend([0x21, 0x11]);
        declared.extend(((MAX_HEADER - 15) as u16).to_be_bytes());
        assert!(matches!(parse(&declared), Err(ProxyError::TooLong)));
        let mut just_fits = v2(0x21, 0x11, &vec![0u8; MAX_HEADER - 16]);
        assert!(matches!(
            parse(&just_fits).unwrap(),
            Parsed::Header {
                len: MAX_HEADER,
                ..
            }
        ));
        just_fits.truncate(MAX_HEADER - 1);
        assert_eq!(parse(&just_fits).unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn networks() {
        let trusted: Networks = "10.0.0.0/8, 192.168.1.7,2001:db8::/32 ,::1"
            .parse()
            .unwrap();
        for ip in [
            "10.1.2.3",
            "192.168.1.7",
            "2001:db8:5::9",
            "::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "192.168.1.8",
            "2001:db9::1",
            "::2",
            "::ffff:11.0.0.1",
        ] {
            assert!(!trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(
            trusted.to_string(),
            "10.0.0.0/8,192.168.1.7/32,2001:db8::/32,::1/128"
        );
        let everyone: Networks = "0.0.0.0/0,::/0".parse().unwrap();
        assert!(everyone.contains("8.8.8.8".parse().unwrap()));
        assert!(everyone.contains("2001:4860::8888".parse().unwrap()));
        assert_eq!(
            "10.1.2.3/8".parse::<Network>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("".parse::<Networks>().unwrap(), Networks::default());
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "example.com",
            "10.0.0.0/x",
            "/8",
        ] {
            assert!(bad.parse::<Networks>().is_err(), "{bad}");
        }
    }
}
