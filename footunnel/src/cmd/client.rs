//! `footunnel client`: keep the broker informed of where this end is.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use footunnel::{
    client::{self, ClientConfig},
    config, secret,
};
use tracing::warn;

pub const HELP: &str = "Keep the broker informed of where this end of the tunnel is.

    footunnel client [-v] BROKER SECRET

The tunnel's link must exist: an ipip (or sit) link with remote BROKER and FoU
encapsulation, and a FoU listener on its encap-sport:

    ip fou add port 42424 ipproto 4
    ip link add fou0 type ipip remote <BROKER> ttl 64 \\
        encap fou encap-sport 42424 encap-dport 42424
    ip link set fou0 up && ip addr add 10.0.0.2/30 dev fou0

Heartbeats leave from the link's own UDP port (encap-sport) through a raw socket,
so the NAT maps them exactly like the tunnel's data: no SNAT rule is needed.
They go out every --interval, at once when this host's addresses, routes or links
change, and at once when the broker challenges (it saw our data arrive from a new
source); unanswered ones are retried with backoff until the broker's ACK arrives.
Leave the link's local address unset (`local any`) so it survives address changes.

Over IPv6 (a broker at an IPv6 address), the link is an ip6tnl one and the FoU
listener an IPv6 one (after `modprobe fou6`); the broker answers with ACK6,
which carries the IPv6 address and port it saw. The client sets the ip6tnl
link's local address (the kernel sends only from one) and moves it when this
host's address changes:

    ip fou add port 42424 ipproto 4 -6
    ip link add fou0 type ip6tnl mode ipip6 remote <BROKER> \
        encap fou encap-sport 42424 encap-dport 42424

BROKER may be a name (broker.example.net). It is resolved at start, retried until
it resolves, and resolved again every --interval: when the broker's address
changes, the client points its link's remote at the new address and heartbeats.
A name with both kinds of address is used over IPv4 unless -6 is given; -4 and -6
force a family for literal addresses too.

A wrong clock (a router without a real-time clock, before NTP answers) makes
the broker refuse heartbeats as stale; it answers with an authenticated TIME,
and the client then stamps heartbeats with the broker's time until its own
agrees. `footunnel show` says by how much this host's clock is off.

Several brokers (--broker, repeated; or a name with several addresses), in
order of preference: the client heartbeats to the first; after 3 unanswered
heartbeats it points its link at the next one. A broker that failed is
avoided for 30 s, doubling with each failure in a row up to 10 minutes;
with all of them avoided the client stays where it is. Once an earlier
broker's hold is over, a PROBE (which moves nothing) asks whether it is
back, and the client returns to it when it answers. Each broker needs the
tunnel (its secret) and the client's inner prefix.

The path to the broker may carry less than 1500 bytes (PPPoE 1492, DS-Lite,
LTE), and ICMP \"fragmentation needed\" often does not make it back through a
carrier NAT: large packets then vanish, ping works and TCP stalls. So after the
first ACK the client sends authenticated PROBEs of several sizes with
don't-fragment set, sets its link's MTU to the largest the broker answered, and
tells the broker, which sets its end to match. It probes again when its route
to the broker changes, and every 10 minutes. `--mtu 1400` sets a fixed MTU
(and tells the broker); `--mtu off` leaves the link's MTU alone. Hosts behind
this one need MSS clamping for TCP (docs/router.md).";

#[derive(clap::Args)]
pub struct Args {
    /// The broker's public IPv4 or IPv6 address, or its name (re-resolved every interval, so a broker that moves is followed).
    #[arg(value_parser = parse_broker)]
    broker: client::resolve::BrokerAddress,
    /// The tunnel's shared secret. Prefer --secret-file: arguments are visible in `ps`.
    secret: Option<String>,
    /// Another broker, tried in order after BROKER when it stops answering (repeat for more; a name counts with every address).
    #[arg(long = "broker", value_name = "BROKER", value_parser = parse_broker)]
    also: Vec<client::resolve::BrokerAddress>,
    /// Read the secret from this file (mode 600) instead.
    #[arg(long, conflicts_with = "secret")]
    secret_file: Option<PathBuf>,
    /// The tunnel's link (default: the ipip/sit/ip6tnl link whose remote is BROKER).
    #[arg(long)]
    link: Option<String>,
    /// Reach the broker over IPv4 only (a name's A records).
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Reach the broker over IPv6 only (a name's AAAA records; an ip6tnl link).
    #[arg(short = '6')]
    ipv6: bool,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Freshness window for the broker's messages, in seconds (0 disables).
    #[arg(long, default_value_t = 120.0)]
    freshness_window: f64,
    #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Create the FoU listener and the link (`local any`) at start, remove them at exit, like wg-quick up/down.
    #[arg(long, requires = "address")]
    manage: bool,
    /// Serve Prometheus metrics at ADDR:PORT, e.g. 127.0.0.1:9587 (off by default).
    #[arg(long, value_name = "ADDR:PORT", value_parser = super::parse_metrics)]
    metrics: Option<std::net::SocketAddr>,
    /// With --manage: this end's inner address, e.g. 10.0.0.2/30.
    #[arg(long)]
    address: Option<String>,
    /// With --manage: this end's FoU port.
    #[arg(long, default_value_t = config::DEFAULT_FOU_PORT)]
    port: u16,
    /// With --manage: the broker's FoU port.
    #[arg(long, default_value_t = config::DEFAULT_FOU_PORT)]
    broker_port: u16,
    /// The tunnel's MTU: `auto` discovers the path's with PROBEs and sets the link's (and the broker's) to match; a number sets that one; `off` leaves the link's MTU alone.
    #[arg(long, default_value = "auto", value_parser = parse_mtu)]
    mtu: client::MtuMode,
    /// More detail in the log.
    #[arg(long, short)]
    verbose: bool,
}

fn parse_mtu(s: &str) -> Result<client::MtuMode, String> {
    match s {
        "auto" => Ok(client::MtuMode::Auto),
        "off" => Ok(client::MtuMode::Off),
        n => match n.parse::<u16>() {
            Ok(mtu) if mtu >= footunnel::mtu::floor(false) => Ok(client::MtuMode::Fixed(mtu)),
            Ok(mtu) => Err(format!(
                "{mtu} is below {}, the least an IPv4 tunnel may carry (1280 for one that carries IPv6)",
                footunnel::mtu::floor(false)
            )),
            Err(_) => Err(format!("{n:?} is no MTU: give `auto`, `off` or a number of bytes such as 1400")),
        },
    }
}

fn parse_broker(s: &str) -> Result<client::resolve::BrokerAddress, String> {
    s.parse()
}

impl Args {
    fn config(&self) -> Result<ClientConfig> {
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), None) => s.clone(),
            (None, Some(f)) => config::read_secret_file(f)?,
            _ => bail!("give the tunnel's secret: `footunnel client {} SECRET` or --secret-file FILE", self.broker),
        };
        if secret.is_empty() {
            bail!("the secret is empty");
        }
        if !(0.1..=3600.0).contains(&self.interval) {
            bail!("--interval must be between 0.1 and 3600 seconds");
        }
        if !(0.0..=86_400.0).contains(&self.freshness_window) {
            bail!("--freshness-window must be between 0 and 86400 seconds");
        }
        Ok(ClientConfig {
            broker: self.broker.clone(),
            also: self.also.clone(),
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(client::resolve::Family::V4),
                (_, true) => Some(client::resolve::Family::V6),
                _ => None,
            },
            secret,
            link: self.link.clone(),
            interval: std::time::Duration::from_secs_f64(self.interval),
            freshness_window_ns: (self.freshness_window * 1e9) as u64,
            state_dir: self.state_dir.clone(),
            metrics: self.metrics,
            mtu: self.mtu,
            manage: match (&self.address, self.manage) {
                (Some(a), true) => Some(client::ManagedClient {
                    address: footunnel::addr::parse_interface_address(a).context("--address")?,
                    port: self.port,
                    broker_port: self.broker_port,
                }),
                (Some(_), false) => bail!("--address only applies with --manage"),
                _ => None,
            },
        })
    }
}

pub fn run(args: Args) -> Result<()> {
    super::init_logging(args.verbose);
    let config = args.config()?;
    if let Some(w) = secret::weakness(&config.secret) {
        warn!("{w}");
    }
    let rt = super::runtime()?;
    rt.block_on(client::run(config, super::shutdown_signal()))?;
    Ok(())
}
