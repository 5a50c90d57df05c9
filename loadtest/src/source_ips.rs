//! `--source-ips`: the local addresses client sockets bind to before connecting, so that one
//! machine can open more connections to one server port than a single address has ports.

use std::net::IpAddr;

/// More source addresses than this would only be a typo.
pub const MAX_SOURCE_IPS: u128 = 65_536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceIpError {
    #[error("`{0}` is not an IP address")]
    NotAnAddress(String),
    #[error("range `{0}` mixes IPv4 and IPv6")]
    MixedFamilies(String),
    #[error("range `{0}` ends before it starts")]
    Reversed(String),
    #[error("`{0}` names more than {MAX_SOURCE_IPS} source addresses")]
    TooMany(String),
    #[error("no source address given")]
    Empty,
}

/// Parses `A`, `A-B` (inclusive) or a comma-separated list of those.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, SourceIpError> {
    let mut addresses = Vec::new();
    for part in spec
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (parse_address(first)?, parse_address(last)?),
            None => {
                let address = parse_address(part)?;
                (address, address)
            }
        };
        let (first_number, last_number) = match (first, last) {
            (IpAddr::V4(first), IpAddr::V4(last)) => {
                (u128::from(u32::from(first)), u128::from(u32::from(last)))
            }
            (IpAddr::V6(first), IpAddr::V6(last)) => (u128::from(first), u128::from(last)),
            _ => return Err(SourceIpError::MixedFamilies(part.into())),
        };
        if last_number < first_number {
            return Err(SourceIpError::Reversed(part.into()));
        }
        let total = addresses.len() as u128 + (last_number - first_number) + 1;
        if total > MAX_SOURCE_IPS {
            return Err(SourceIpError::TooMany(spec.into()));
        }
        for number in first_number..=last_number {
            addresses.push(match first {
                // The range stays within the family, so the number fits a u32 here.
                IpAddr::V4(_) => {
                    IpAddr::from(u32::try_from(number).unwrap_or(u32::MAX).to_be_bytes())
                }
                IpAddr::V6(_) => IpAddr::from(number.to_be_bytes()),
            });
        }
    }
    if addresses.is_empty() {
        return Err(SourceIpError::Empty);
    }
    Ok(addresses)
}

/// The source address of connection `index`: the addresses are taken in turn, none when empty.
pub fn nth_source(addresses: &[IpAddr], index: u64) -> Option<IpAddr> {
    if addresses.is_empty() {
        return None;
    }
    addresses
        .get((index % addresses.len() as u64) as usize)
        .copied()
}

fn parse_address(text: &str) -> Result<IpAddr, SourceIpError> {
    let text = text.trim();
    text.parse()
        .map_err(|_| SourceIpError::NotAnAddress(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn ranges_are_inclusive_and_cross_octets() {
        let addresses = parse_source_ips("127.0.0.2-127.0.0.30").expect("parses");
        assert_eq!(addresses.len(), 29);
        assert_eq!(addresses[0], ip("127.0.0.2"));
        assert_eq!(addresses[28], ip("127.0.0.30"));
        let addresses = parse_source_ips("127.0.0.254-127.0.1.1").expect("parses");
        assert_eq!(
            addresses,
            vec![
                ip("127.0.0.254"),
                ip("127.0.0.255"),
                ip("127.0.1.0"),
                ip("127.0.1.1")
            ]
        );
    }

    #[test]
    fn lists_and_single_addresses_combine() {
        let addresses = parse_source_ips("127.0.0.2, 127.0.0.5-127.0.0.6,::1").expect("parses");
        assert_eq!(
            addresses,
            vec![ip("127.0.0.2"), ip("127.0.0.5"), ip("127.0.0.6"), ip("::1")]
        );
    }

    #[test]
    fn connections_take_the_addresses_in_turn() {
        let addresses = [ip("127.0.0.2"), ip("127.0.0.3")];
        assert_eq!(nth_source(&addresses, 0), Some(ip("127.0.0.2")));
        assert_eq!(nth_source(&addresses, 3), Some(ip("127.0.0.3")));
        assert_eq!(nth_source(&[], 3), None);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert_eq!(
            parse_source_ips("127.0.0.9-127.0.0.2"),
            Err(SourceIpError::Reversed("127.0.0.9-127.0.0.2".into()))
        );
        assert_eq!(
            parse_source_ips("127.0.0.1-::1"),
            Err(SourceIpError::MixedFamilies("127.0.0.1-::1".into()))
        );
        assert_eq!(
            parse_source_ips("127.0.0.300"),
            Err(SourceIpError::NotAnAddress("127.0.0.300".into()))
        );
        assert_eq!(
            parse_source_ips("10.0.0.0-10.255.255.255"),
            Err(SourceIpError::TooMany("10.0.0.0-10.255.255.255".into()))
        );
        assert_eq!(parse_source_ips(" , "), Err(SourceIpError::Empty));
    }
}
