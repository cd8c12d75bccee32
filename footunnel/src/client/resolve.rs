//! The broker's address: a literal IPv4 address, or a name that is resolved
//! at start and again every interval (as wireguard-tools' reresolve-dns), so
//! a broker whose address changes is followed.

use std::{fmt, net::Ipv4Addr, str::FromStr, time::Duration};

use anyhow::{Result, bail};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerAddress {
    Fixed(Ipv4Addr),
    Name(String),
}

impl FromStr for BrokerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(BrokerAddress::Fixed(a));
        }
        if s.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(format!("{s} is an IPv6 address: footunnel's heartbeats and ACKs carry IPv4 endpoints only"));
        }
        let valid = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!("{s:?} is neither an IPv4 address nor a host name"));
        }
        Ok(BrokerAddress::Name(s.to_owned()))
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerAddress::Fixed(a) => write!(f, "{a}"),
            BrokerAddress::Name(n) => write!(f, "{n}"),
        }
    }
}

impl BrokerAddress {
    pub fn is_name(&self) -> bool {
        matches!(self, BrokerAddress::Name(_))
    }

    /// The broker's IPv4 address now (the system resolver: /etc/hosts, DNS).
    pub async fn resolve(&self) -> Result<Ipv4Addr> {
        let name = match self {
            BrokerAddress::Fixed(a) => return Ok(*a),
            BrokerAddress::Name(n) => n,
        };
        let lookup = tokio::net::lookup_host((name.as_str(), 0));
        let addrs = match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Err(_) => bail!("cannot resolve broker name {name}: no answer within 5 s"),
            Ok(Err(e)) => bail!("cannot resolve broker name {name}: {e}"),
            Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        };
        first_v4(name, addrs.iter().map(|a| a.ip()))
    }
}

/// The first IPv4 address among what a name resolved to.
fn first_v4(name: &str, addrs: impl Iterator<Item = std::net::IpAddr>) -> Result<Ipv4Addr> {
    let all: Vec<_> = addrs.collect();
    match all.iter().find_map(|a| if let std::net::IpAddr::V4(v4) = a { Some(*v4) } else { None }) {
        Some(a) => Ok(a),
        None if all.is_empty() => bail!("broker name {name} resolves to no address"),
        None => bail!("broker name {name} resolves to IPv6 addresses only; footunnel needs the broker's IPv4 address"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn addresses_names_and_nonsense_are_told_apart() {
        assert_eq!("198.51.100.1".parse(), Ok(BrokerAddress::Fixed(Ipv4Addr::new(198, 51, 100, 1))));
        assert_eq!("broker.example.net".parse(), Ok(BrokerAddress::Name("broker.example.net".into())));
        assert!("2001:db8::1".parse::<BrokerAddress>().unwrap_err().contains("IPv6"));
        assert!("bad name!".parse::<BrokerAddress>().unwrap_err().contains("neither"));
        assert!("-x.example".parse::<BrokerAddress>().is_err());
        assert!("a..b".parse::<BrokerAddress>().is_err());
    }

    #[test]
    fn the_first_ipv4_address_wins_and_ipv6_only_is_explained() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(first_v4("b", [v6, v4].into_iter()).unwrap(), Ipv4Addr::new(192, 0, 2, 7));
        assert!(first_v4("b", [v6].into_iter()).unwrap_err().to_string().contains("IPv6 addresses only"));
        assert!(first_v4("b", std::iter::empty()).unwrap_err().to_string().contains("no address"));
    }

    #[tokio::test]
    async fn a_literal_address_needs_no_resolver_and_localhost_resolves() {
        let fixed = BrokerAddress::Fixed(Ipv4Addr::new(203, 0, 113, 9));
        assert_eq!(fixed.resolve().await.unwrap(), Ipv4Addr::new(203, 0, 113, 9));
        let name: BrokerAddress = "localhost".parse().unwrap();
        assert_eq!(name.resolve().await.unwrap(), Ipv4Addr::LOCALHOST);
    }
}
