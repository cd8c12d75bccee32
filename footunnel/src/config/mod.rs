//! The broker's configuration: a TOML file, or the proof of concept's
//! `footunnel broker fou0 SECRET` for a single link. Parsing and the checks
//! that need no system state live here (pure, unit-tested); the checks
//! against the system (links, FoU listeners, file modes) are in `broker`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use footunnel_ebpf::maps::LEGACY_SECRET_MAX;
use serde::{Deserialize, Serialize};

use crate::addr::Prefix;
use crate::secret::TunnelIdentity;

mod file;
mod parse;
#[cfg(test)]
mod tests;

pub const DEFAULT_FOU_PORT: u16 = 42424;
pub const DEFAULT_LEGACY_PORT: u16 = 42425;
/// Where brokers compare their tunnels' prefixes (`peers`).
pub const DEFAULT_PEER_PORT: u16 = 42426;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/footunnel";
pub const DEFAULT_STATE_DIR: &str = "/run/footunnel";

/// Where the program hooks into the uplink.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// XDP in driver mode, falling back to generic mode.
    #[default]
    Xdp,
    /// TC ingress (clsact).
    Tc,
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attach::Xdp => "xdp",
            Attach::Tc => "tc",
        })
    }
}

/// How tunnels map onto the kernel's tunnel devices.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One ipip link per tunnel, re-pointed over rtnetlink (any kernel with fou).
    #[default]
    PerLink,
    /// One external-mode device for all tunnels; the data plane addresses
    /// each packet (many clients behind one NAT address; see `broker::shared`).
    Shared,
}

/// Shared-device mode's device and the broker address its clients reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shared {
    pub device: String,
    /// The broker's public address: heartbeats and FoU arrive here, and
    /// encapsulated packets leave from it.
    pub local: Ipv4Addr,
    /// The broker's inner address on the device, e.g. 10.0.0.1/32.
    pub address: Option<(IpAddr, u8)>,
    pub mtu: u32,
}

pub const DEFAULT_SHARED_DEVICE: &str = "footunnel0";

/// What a silent tunnel's link gets.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnSilence {
    /// Reported (log, `show`, metrics); the link stays as it is.
    #[default]
    Report,
    /// Reported, and the link carries nothing until the next accepted
    /// heartbeat: it is parked on a placeholder remote; it stays up, and
    /// keeps its routes and addresses.
    Down,
}

/// When a tunnel counts as silent, and what then happens to its link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    pub timeout_ns: u64,
    pub action: OnSilence,
}

/// A validated broker configuration.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Uplinks to attach to; empty means "the interface holding each link's local address".
    pub interfaces: Vec<String>,
    pub attach: Attach,
    pub fou_ports: Vec<u16>,
    pub legacy_port: u16,
    pub freshness_window_ns: u64,
    pub challenge_interval_ns: u64,
    /// Challenges per second over all tunnels.
    pub challenge_rate: u32,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Where to serve Prometheus metrics; `None`: not at all.
    pub metrics: Option<SocketAddr>,
    /// `Some` in shared-device mode.
    pub shared: Option<Shared>,
    pub tunnels: Vec<Tunnel>,
    /// Routing table in which each tunnel's prefix routes are kept while
    /// the tunnel is fresh here (heard within its silence_timeout), for a
    /// routing daemon (BIRD) to announce; `None`: no such routes.
    pub announce_table: Option<u32>,
    /// Other brokers serving these tunnels (behind one anycast or VRRP
    /// address), at addresses of their own: each tunnel's prefixes must be
    /// the same on every broker that has its secret.
    pub peers: Vec<IpAddr>,
    /// The UDP port brokers compare prefixes on.
    pub peer_port: u16,
    /// Log each control message's verdict from the data plane
    /// (`footunnel broker --trace`; no configuration key: it is for a session
    /// of troubleshooting, not for running).
    pub trace: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tunnel {
    pub name: String,
    /// Its own link in per-link mode; the shared device in shared-device mode.
    pub link: String,
    pub secret: String,
    /// Where the secret came from, for messages.
    pub secret_file: Option<PathBuf>,
    pub identity: TunnelIdentity,
    /// The id the data plane records the tunnel under, from its name: the
    /// same for each of its secrets.
    pub record_id: u64,
    /// Key rotation: a second secret, accepted beside the current one.
    pub next: Option<NextSecret>,
    /// Inner source prefixes of the client side; empty means "derive from the link's addresses".
    pub peer_prefixes: Vec<Prefix>,
    pub legacy: bool,
    /// Create the link (and the FoU listener) if missing.
    pub manage: Option<Managed>,
    /// `None`: the tunnel is never reported silent.
    pub silence: Option<Silence>,
}

/// The secret a tunnel is rotating to (docs/protocol.md, "Key rotation").
#[derive(Clone, Debug, PartialEq)]
pub struct NextSecret {
    pub secret: String,
    pub secret_file: Option<PathBuf>,
    pub identity: TunnelIdentity,
}

/// Which of a tunnel's secrets a message uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    Current,
    Next,
}

/// How footunnel creates a tunnel's link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Managed {
    pub local: Ipv4Addr,
    /// The broker's inner address on the link, with its prefix length.
    pub address: (IpAddr, u8),
    pub ttl: u8,
    pub mtu: u32,
}

/// A tunnel's silence policy from its own settings or the global ones.
pub fn silence(name: &str, timeout: f64, action: OnSilence) -> Result<Option<Silence>> {
    if timeout == 0.0 {
        if action == OnSilence::Down {
            bail!(
                "tunnel {name:?}: on_silence = \"down\" needs a silence_timeout: set one (say 60, a few client \
                 intervals), or drop on_silence"
            );
        }
        return Ok(None);
    }
    if !(1.0..=86_400.0).contains(&timeout) {
        bail!(
            "tunnel {name:?}: silence_timeout = {timeout}: must be 0 (off) or between 1 and 86400 seconds; \
             a few client intervals (say 60) is a good start"
        );
    }
    Ok(Some(Silence { timeout_ns: (timeout * 1e9) as u64, action }))
}

fn seconds_to_ns(what: &str, s: f64) -> Result<u64> {
    if !(0.0..=86_400.0).contains(&s) {
        bail!("{what} = {s}: must be between 0 and 86400 seconds");
    }
    Ok((s * 1e9) as u64)
}

impl Tunnel {
    pub fn new(
        name: String,
        link: String,
        secret: String,
        secret_file: Option<PathBuf>,
        peer_prefixes: Vec<Prefix>,
        legacy: bool,
    ) -> Result<Self> {
        if name.is_empty() || link.is_empty() {
            bail!("a tunnel needs a name and a link");
        }
        if link.len() > 15 {
            bail!("tunnel {name:?}: {link:?} is longer than a Linux interface name can be (15)");
        }
        if secret.is_empty() {
            bail!("tunnel {name:?}: the secret is empty");
        }
        let identity = TunnelIdentity::derive(&secret);
        let record_id = crate::secret::record_id(&name);
        Ok(Tunnel {
            name,
            link,
            secret,
            secret_file,
            identity,
            record_id,
            next: None,
            peer_prefixes,
            legacy,
            manage: None,
            silence: None,
        })
    }
}

/// `metrics = "127.0.0.1:9586"`, or `[::1]:9586`: an address and a port.
pub fn parse_metrics_address(s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|_| {
        anyhow::anyhow!(
            "metrics = {s:?} is not an address and port: write it as \"127.0.0.1:9586\" (loopback only) or \
             \"0.0.0.0:9586\" (every address; mind who can reach it)"
        )
    })
}

impl Tunnel {
    /// The tunnel's secrets as the wire names them: (role, key id).
    pub fn key_ids(&self) -> impl Iterator<Item = (KeyRole, u64)> + '_ {
        std::iter::once((KeyRole::Current, self.identity.id))
            .chain(self.next.iter().map(|n| (KeyRole::Next, n.identity.id)))
    }

    /// Each of its secrets' identities, the current one first.
    pub fn identities(&self) -> impl Iterator<Item = TunnelIdentity> + '_ {
        std::iter::once(self.identity).chain(self.next.iter().map(|n| n.identity))
    }

    /// The identity (id and key) of the secret with key id `id`.
    pub fn identity_for(&self, id: u64) -> Option<(KeyRole, TunnelIdentity)> {
        if id == self.identity.id {
            return Some((KeyRole::Current, self.identity));
        }
        self.next.as_ref().filter(|n| n.identity.id == id).map(|n| (KeyRole::Next, n.identity))
    }
}

/// A secret file: one line, readable by its owner only.
pub fn read_secret_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read secret file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "secret file {} is readable by group or others (mode {mode:03o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read secret file {}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        bail!("secret file {} is empty: put the secret on its first line (`footunnel keygen > FILE`)", path.display());
    }
    Ok(secret)
}
