//! The broker's address: a literal IPv4 or IPv6 address, or a name that is
//! resolved at start and again every interval (as wireguard-tools'
//! reresolve-dns), so a broker whose address changes is followed.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use anyhow::{Result, bail};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerAddress {
    Fixed(IpAddr),
    Name(String),
}

/// Which family the client talks to the broker over (`-4`, `-6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl FromStr for BrokerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(BrokerAddress::Fixed(a));
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
            return Err(format!("{s:?} is neither an IP address nor a host name"));
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

    /// The broker's address now (the system resolver: /etc/hosts, DNS), of
    /// `family` if one is forced, else IPv4 if the name has one, else IPv6.
    pub async fn resolve(&self, family: Option<Family>) -> Result<IpAddr> {
        let name = match self {
            BrokerAddress::Fixed(a) => {
                return match family {
                    Some(Family::V4) if a.is_ipv6() => bail!("-4 was given, but the broker's address {a} is IPv6"),
                    Some(Family::V6) if a.is_ipv4() => bail!("-6 was given, but the broker's address {a} is IPv4"),
                    _ => Ok(*a),
                };
            }
            BrokerAddress::Name(n) => n,
        };
        choose(name, lookup(name).await?.into_iter(), family)
    }
}

/// Every address the system resolver (/etc/hosts, DNS) has for `name`.
async fn lookup(name: &str) -> Result<Vec<IpAddr>> {
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((name, 0))).await {
        Err(_) => bail!("cannot resolve broker name {name}: no answer within 5 s"),
        Ok(Err(e)) => bail!("cannot resolve broker name {name}: {e}"),
        Ok(Ok(addrs)) => Ok(addrs.map(|a| a.ip()).collect()),
    }
}

/// Every address of `brokers`, in their order (a name's records in the
/// resolver's), of one family: the forced one, else IPv4 if any broker has
/// an IPv4 address (one tunnel link carries one outer family).
pub async fn resolve_all(brokers: &[BrokerAddress], family: Option<Family>) -> Result<Vec<IpAddr>> {
    let mut all = Vec::new();
    for b in brokers {
        match b {
            BrokerAddress::Fixed(a) => all.push(*a),
            BrokerAddress::Name(name) => all.extend(lookup(name).await?),
        }
    }
    of_one_family(brokers, all, family)
}

/// The addresses of the family to use, first seen first, none twice.
fn of_one_family(brokers: &[BrokerAddress], all: Vec<IpAddr>, family: Option<Family>) -> Result<Vec<IpAddr>> {
    let v6 = match family {
        Some(f) => f == Family::V6,
        None => !all.iter().any(IpAddr::is_ipv4),
    };
    let mut chosen: Vec<IpAddr> = Vec::new();
    for a in all.iter().filter(|a| a.is_ipv6() == v6) {
        if !chosen.contains(a) {
            chosen.push(*a);
        }
    }
    if chosen.is_empty() {
        let names = brokers.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
        if all.is_empty() {
            bail!("the brokers ({names}) resolve to no address");
        }
        bail!(
            "-{} excludes every broker: {names} are at {}; drop -{0}, or give brokers of that family",
            if v6 { 6 } else { 4 },
            all.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(chosen)
}

/// The address to use among what a name resolved to: the first of the
/// forced family, else the first IPv4 one (a link made for IPv4 keeps
/// working when the name gains an AAAA record), else the first IPv6 one.
fn choose(name: &str, addrs: impl Iterator<Item = IpAddr>, family: Option<Family>) -> Result<IpAddr> {
    let all: Vec<_> = addrs.collect();
    let first = |v6: bool| all.iter().copied().find(|a| a.is_ipv6() == v6);
    let chosen = match family {
        Some(Family::V4) => first(false),
        Some(Family::V6) => first(true),
        None => first(false).or_else(|| first(true)),
    };
    match chosen {
        Some(a) => Ok(a),
        None if all.is_empty() => bail!("broker name {name} resolves to no address"),
        None => bail!(
            "broker name {name} resolves to no IPv{} address (only {}): drop -{0} or fix the name",
            if family == Some(Family::V6) { 6 } else { 4 },
            all.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn addresses_names_and_nonsense_are_told_apart() {
        assert_eq!("198.51.100.1".parse(), Ok(BrokerAddress::Fixed(Ipv4Addr::new(198, 51, 100, 1).into())));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!("2001:db8::1".parse(), Ok(BrokerAddress::Fixed(v6)));
        assert_eq!("[2001:db8::1]".parse(), Ok(BrokerAddress::Fixed(v6)));
        assert_eq!("broker.example.net".parse(), Ok(BrokerAddress::Name("broker.example.net".into())));
        assert!("bad name!".parse::<BrokerAddress>().unwrap_err().contains("neither"));
        assert!("-x.example".parse::<BrokerAddress>().is_err());
        assert!("a..b".parse::<BrokerAddress>().is_err());
    }

    #[test]
    fn ipv4_is_preferred_unless_a_family_is_forced() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(choose("b", [v6, v4].into_iter(), None).unwrap(), v4);
        assert_eq!(choose("b", [v6].into_iter(), None).unwrap(), v6, "IPv6 only: IPv6");
        assert_eq!(choose("b", [v4, v6].into_iter(), Some(Family::V6)).unwrap(), v6);
        let e = choose("b", [v4].into_iter(), Some(Family::V6)).unwrap_err().to_string();
        assert!(e.contains("no IPv6 address") && e.contains("192.0.2.7"), "{e}");
        assert!(choose("b", [v6].into_iter(), Some(Family::V4)).unwrap_err().to_string().contains("no IPv4"));
        assert!(choose("b", std::iter::empty(), None).unwrap_err().to_string().contains("no address"));
    }

    #[test]
    fn several_brokers_are_kept_in_order_of_one_family_or_refused() {
        let b = |s: &str| s.parse::<BrokerAddress>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let brokers = [b("203.0.113.1"), b("brokers.example.net")];
        let all = vec![ip("203.0.113.1"), ip("2001:db8::1"), ip("198.51.100.1"), ip("203.0.113.1")];
        assert_eq!(of_one_family(&brokers, all.clone(), None).unwrap(), [ip("203.0.113.1"), ip("198.51.100.1")]);
        assert_eq!(of_one_family(&brokers, all.clone(), Some(Family::V6)).unwrap(), [ip("2001:db8::1")]);
        let v4_only = vec![ip("203.0.113.1"), ip("198.51.100.1")];
        let e = of_one_family(&brokers, v4_only, Some(Family::V6)).unwrap_err().to_string();
        assert!(e.contains("-6 excludes every broker") && e.contains("drop -6"), "{e}");
        assert!(of_one_family(&brokers, vec![], None).unwrap_err().to_string().contains("no address"));
    }

    #[tokio::test]
    async fn a_literal_address_needs_no_resolver_and_must_match_a_forced_family() {
        let fixed = BrokerAddress::Fixed(Ipv4Addr::new(203, 0, 113, 9).into());
        assert_eq!(fixed.resolve(None).await.unwrap(), IpAddr::from(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(fixed.resolve(Some(Family::V6)).await.unwrap_err().to_string().contains("-6"));
        let name: BrokerAddress = "localhost".parse().unwrap();
        assert_eq!(name.resolve(None).await.unwrap(), IpAddr::from(Ipv4Addr::LOCALHOST));
    }
}
