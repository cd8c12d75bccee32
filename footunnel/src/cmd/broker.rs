//! `footunnel broker`: keep each tunnel's link pointed at its client.

use std::path::PathBuf;

use anyhow::{Result, bail};
use footunnel::{
    addr::Prefix,
    broker,
    config::{self, Attach, BrokerConfig},
    os::service,
    secret,
};
use tracing::warn;

pub const HELP: &str = "Run the broker: keep each tunnel's link pointed at its client.

Either one existing link, as the proof of concept did:

    footunnel broker [-v] fou0 SECRET

or every tunnel from a configuration file:

    footunnel broker --config /etc/footunnel/broker.toml

Each link must exist already, as an ipip (or sit, or ip6tnl) link with FoU encapsulation whose
encap-sport is the FoU port, and the port needs a FoU listener:

    ip fou add port 42424 ipproto 4
    ip link add fou0 type ipip remote 192.0.2.1 local <BROKER-IP> ttl 64 \\
        encap fou encap-sport 42424 encap-dport 42424
    ip link set fou0 up && ip addr add 10.0.0.1/30 dev fou0

For a client at an IPv6 address, an ip6tnl link over an IPv6 listener (after
`modprobe fou6`); the broker answers it with ACK6:

    ip fou add port 42424 ipproto 4 -6
    ip link add fou6 type ip6tnl mode ipip6 remote 2001:db8::1 local <BROKER-IPv6> \\
        encap fou encap-sport 42424 encap-dport 42424

The eBPF program attaches to the interface holding the link's local address (or
--interface), verifies heartbeats there and records each client's address and port.
On every accepted heartbeat the broker points the link's remote and encap-dport at
that source, keeping every other parameter, and answers with an ACK — only once the
link really points there: a refused change is logged and never ACKed. Links edited
or re-created by hand are put back at once. FoU data from any other source draws a
rate-limited CHALLENGE, never a change.

Many clients behind one NAT address (carrier-grade NAT) need shared-device mode
(Linux >= 5.12), set in the configuration file: one external-mode device for all
tunnels, each packet sent to its tunnel's endpoint by the data plane itself.

    mode = \"shared\"
    [shared]
    local = \"<BROKER-IP>\"      # and optionally address = \"10.0.0.1/32\"
    [[tunnel]]                  # no link; peer_prefixes required
    name = \"alice\"
    secret_file = \"alice.secret\"
    peer_prefixes = [\"10.1.0.2/32\"]

State is pinned under /sys/fs/bpf/footunnel/: stopping the broker (SIGINT/SIGTERM)
leaves the data plane recording, and a restart continues from there. `footunnel show`
reports; `footunnel unload` removes everything.";

#[derive(clap::Args)]
pub struct Args {
    /// The tunnel's link (seed shape; needs SECRET).
    link: Option<String>,
    /// The tunnel's shared secret (seed shape). Prefer --secret-file: arguments are visible in `ps`.
    secret: Option<String>,
    /// Read the secret from this file (mode 600) instead.
    #[arg(long, conflicts_with_all = ["secret", "config"])]
    secret_file: Option<PathBuf>,
    /// A TOML configuration with one [[tunnel]] per tunnel.
    #[arg(long, short, conflicts_with = "link")]
    config: Option<PathBuf>,
    /// Uplink interface(s) to attach to (default: the one holding each link's local address).
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Where to hook into the uplink.
    #[arg(long, value_enum)]
    attach: Option<Attach>,
    /// Inner source prefix(es) of the client (default: the link's own subnets).
    #[arg(long = "peer", value_parser = parse_prefix)]
    peers: Vec<Prefix>,
    /// Also accept the proof of concept's plaintext heartbeats (insecure).
    #[arg(long)]
    legacy: bool,
    /// Freshness window for heartbeat timestamps, in seconds (0 disables).
    #[arg(long)]
    freshness_window: Option<f64>,
    /// Report a tunnel silent after this many seconds without an accepted heartbeat (0: never; the default).
    #[arg(long)]
    silence_timeout: Option<f64>,
    /// What a silent tunnel's link gets: `report` leaves it, `down` sets it down until the next heartbeat.
    #[arg(long, value_enum)]
    on_silence: Option<config::OnSilence>,
    /// Serve Prometheus metrics at ADDR:PORT, e.g. 127.0.0.1:9586 (off by default).
    #[arg(long, value_name = "ADDR:PORT", value_parser = super::parse_metrics)]
    metrics: Option<std::net::SocketAddr>,
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Log every control message the data plane sees: source, destination, verdict and reason
    /// (e.g. `dropped bad_tag`). Costs nothing when off; when on, one line per message.
    #[arg(long)]
    trace: bool,
    /// More detail in the log.
    #[arg(long, short)]
    verbose: bool,
}

fn parse_prefix(s: &str) -> Result<Prefix, String> {
    s.parse()
}

impl Args {
    fn config(&self) -> Result<BrokerConfig> {
        let mut config = match (&self.config, &self.link) {
            (Some(path), None) => BrokerConfig::load(path)?,
            (None, Some(link)) => {
                let secret = match (&self.secret, &self.secret_file) {
                    (Some(s), None) => s.clone(),
                    (None, Some(f)) => config::read_secret_file(f)?,
                    _ => bail!("give the tunnel's secret: `footunnel broker {link} SECRET` or --secret-file FILE"),
                };
                let mut c = BrokerConfig::single(link, &secret)?;
                c.tunnels[0].peer_prefixes = self.peers.clone();
                c.tunnels[0].legacy = self.legacy;
                c
            }
            _ => {
                bail!("say which tunnels to serve: `footunnel broker LINK SECRET` or `footunnel broker --config FILE`")
            }
        };
        if !self.interfaces.is_empty() {
            config.interfaces = self.interfaces.clone();
        }
        if let Some(a) = self.attach {
            config.attach = a;
        }
        if let Some(w) = self.freshness_window {
            if !(0.0..=86_400.0).contains(&w) {
                bail!("--freshness-window must be between 0 and 86400 seconds");
            }
            config.freshness_window_ns = (w * 1e9) as u64;
        }
        if self.silence_timeout.is_some() || self.on_silence.is_some() {
            for t in &mut config.tunnels {
                let timeout = self.silence_timeout.unwrap_or(t.silence.map_or(0.0, |s| s.timeout_ns as f64 / 1e9));
                let action = self.on_silence.unwrap_or(t.silence.map_or(config::OnSilence::Report, |s| s.action));
                t.silence = config::silence(&t.name, timeout, action)
                    .map_err(|e| anyhow::anyhow!("{e:#}").context("--silence-timeout/--on-silence"))?;
            }
        }
        if let Some(m) = self.metrics {
            config.metrics = Some(m);
        }
        if let Some(p) = &self.pin_dir {
            config.pin_dir = p.clone();
        }
        if let Some(s) = &self.state_dir {
            config.state_dir = s.clone();
        }
        config.trace = self.trace;
        config.validate()?;
        Ok(config)
    }
}

pub fn run(args: Args) -> Result<()> {
    service::hold_hangups();
    super::init_logging(args.verbose);
    let config = args.config()?;
    for t in &config.tunnels {
        if let Some(w) = secret::weakness(&t.secret) {
            warn!("tunnel {:?}: {w}", t.name);
        }
    }
    let rt = super::runtime()?;
    let reread: broker::Reread = Box::new(move || args.config());
    rt.block_on(broker::run(config, reread, super::shutdown_signal()))?;
    Ok(())
}
