//! The broker's configuration: a TOML file, or the proof of concept's
//! `footunnel broker fou0 SECRET` for a single link. Parsing and the checks
//! that need no system state live here (pure, unit-tested); the checks
//! against the system (links, FoU listeners, file modes) are in `broker`.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use footunnel_ebpf::maps::LEGACY_SECRET_MAX;
use serde::Deserialize;

use crate::addr::{Prefix, find_overlap};
use crate::secret::TunnelIdentity;

pub const DEFAULT_FOU_PORT: u16 = 42424;
pub const DEFAULT_LEGACY_PORT: u16 = 42425;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/footunnel";
pub const DEFAULT_STATE_DIR: &str = "/run/footunnel";

/// Where the program hooks into the uplink.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// XDP in driver mode, falling back to generic mode.
    #[default]
    Xdp,
    /// TC ingress (clsact).
    Tc,
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

/// The file as written (`deny_unknown_fields`: a typo is an error, not a default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    attach: Attach,
    #[serde(default = "default_fou_ports")]
    fou_ports: Vec<u16>,
    #[serde(default = "default_legacy_port")]
    legacy_port: u16,
    #[serde(default = "default_window")]
    freshness_window: f64,
    #[serde(default = "default_challenge_interval")]
    challenge_interval: f64,
    #[serde(default = "default_challenge_rate")]
    challenge_rate: u32,
    #[serde(default = "default_pin_dir")]
    pin_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Seconds without an accepted heartbeat before a tunnel counts as silent; 0: never.
    #[serde(default)]
    silence_timeout: f64,
    #[serde(default)]
    on_silence: OnSilence,
    /// Serve Prometheus metrics at this address and port.
    metrics: Option<String>,
    #[serde(default)]
    mode: Mode,
    shared: Option<SharedFile>,
    #[serde(default, rename = "tunnel")]
    tunnels: Vec<TunnelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedFile {
    #[serde(default = "default_shared_device")]
    device: String,
    local: Ipv4Addr,
    address: Option<String>,
    #[serde(default = "default_mtu")]
    mtu: u32,
}

fn default_shared_device() -> String {
    DEFAULT_SHARED_DEVICE.to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelFile {
    name: String,
    /// Per-link mode only.
    link: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    /// Key rotation: the secret that replaces `secret`, accepted beside it.
    next_secret: Option<String>,
    next_secret_file: Option<PathBuf>,
    #[serde(default)]
    peer_prefixes: Vec<String>,
    #[serde(default)]
    legacy: bool,
    manage: Option<ManageFile>,
    silence_timeout: Option<f64>,
    on_silence: Option<OnSilence>,
}

/// `manage = { local = "…", address = "…" }`: footunnel creates the link.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManageFile {
    local: Ipv4Addr,
    address: String,
    #[serde(default = "default_ttl")]
    ttl: u8,
    #[serde(default = "default_mtu")]
    mtu: u32,
}

fn default_ttl() -> u8 {
    64
}
fn default_mtu() -> u32 {
    1472
}

fn default_fou_ports() -> Vec<u16> {
    vec![DEFAULT_FOU_PORT]
}
fn default_legacy_port() -> u16 {
    DEFAULT_LEGACY_PORT
}
fn default_window() -> f64 {
    120.0
}
fn default_challenge_interval() -> f64 {
    1.0
}
fn default_challenge_rate() -> u32 {
    100
}
fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
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

impl BrokerConfig {
    /// Reads and validates a TOML file; secret files are read relative to it.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read configuration {}", path.display()))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), &|p| read_secret_file(p))
            .with_context(|| format!("invalid configuration {}", path.display()))
    }

    /// Parses and validates `text`; `read_secret` reads a secret file.
    pub fn parse(text: &str, base: &Path, read_secret: &dyn Fn(&Path) -> Result<String>) -> Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let shared = shared_settings(file.mode, file.shared)?;
        let mut tunnels = Vec::new();
        for t in file.tunnels {
            let link = match (&shared, t.link) {
                (None, Some(link)) => link,
                (None, None) => bail!("tunnel {:?}: no link: name its ipip link (`link = \"fou0\"`)", t.name),
                (Some(s), None) => s.device.clone(),
                (Some(s), Some(link)) => bail!(
                    "tunnel {:?}: link = {link:?}, but in shared-device mode every tunnel uses {:?}: remove `link`",
                    t.name,
                    s.device
                ),
            };
            let (secret, secret_file) = match (t.secret, t.secret_file) {
                (Some(s), None) => (s, None),
                (None, Some(p)) => {
                    let p = base.join(p);
                    (read_secret(&p)?, Some(p))
                }
                (Some(_), Some(_)) => bail!("tunnel {:?}: give either `secret` or `secret_file`, not both", t.name),
                (None, None) => {
                    bail!("tunnel {:?}: no secret: add `secret_file = \"…\"` (see `footunnel keygen`)", t.name)
                }
            };
            let next = match (t.next_secret, t.next_secret_file) {
                (None, None) => None,
                (Some(s), None) => Some((s, None)),
                (None, Some(p)) => {
                    let p = base.join(p);
                    Some((read_secret(&p)?, Some(p)))
                }
                (Some(_), Some(_)) => {
                    bail!("tunnel {:?}: give either `next_secret` or `next_secret_file`, not both", t.name)
                }
            };
            let peer_prefixes = t
                .peer_prefixes
                .iter()
                .map(|p| p.parse::<Prefix>().map_err(|e| anyhow::anyhow!("tunnel {:?}: peer_prefixes: {e}", t.name)))
                .collect::<Result<Vec<_>>>()?;
            let manage = match t.manage {
                Some(m) => Some(Managed {
                    local: m.local,
                    address: crate::addr::parse_interface_address(&m.address)
                        .with_context(|| format!("tunnel {:?}: manage.address", t.name))?,
                    ttl: m.ttl,
                    mtu: m.mtu,
                }),
                None => None,
            };
            let silence = silence(
                &t.name,
                t.silence_timeout.unwrap_or(file.silence_timeout),
                t.on_silence.unwrap_or(file.on_silence),
            )?;
            let mut tunnel = Tunnel::new(t.name, link, secret, secret_file, peer_prefixes, t.legacy)?;
            tunnel.manage = manage;
            tunnel.silence = silence;
            if let Some((secret, secret_file)) = next {
                if secret.is_empty() {
                    bail!("tunnel {:?}: the next secret is empty", tunnel.name);
                }
                let identity = TunnelIdentity::derive(&secret);
                tunnel.next = Some(NextSecret { secret, secret_file, identity });
            }
            tunnels.push(tunnel);
        }
        let config = BrokerConfig {
            interfaces: file.interfaces,
            attach: file.attach,
            fou_ports: file.fou_ports,
            legacy_port: file.legacy_port,
            freshness_window_ns: seconds_to_ns("freshness_window", file.freshness_window)?,
            challenge_interval_ns: seconds_to_ns("challenge_interval", file.challenge_interval)?,
            challenge_rate: file.challenge_rate,
            pin_dir: file.pin_dir,
            state_dir: file.state_dir,
            metrics: file.metrics.as_deref().map(parse_metrics_address).transpose()?,
            shared,
            tunnels,
        };
        config.validate()?;
        Ok(config)
    }

    /// The proof of concept's shape: one link, one secret.
    pub fn single(link: &str, secret: &str) -> Result<Self> {
        let config = BrokerConfig {
            interfaces: Vec::new(),
            attach: Attach::Xdp,
            fou_ports: default_fou_ports(),
            legacy_port: DEFAULT_LEGACY_PORT,
            freshness_window_ns: 120_000_000_000,
            challenge_interval_ns: 1_000_000_000,
            challenge_rate: default_challenge_rate(),
            pin_dir: default_pin_dir(),
            state_dir: default_state_dir(),
            metrics: None,
            shared: None,
            tunnels: vec![Tunnel::new(link.to_owned(), link.to_owned(), secret.to_owned(), None, Vec::new(), false)?],
        };
        config.validate()?;
        Ok(config)
    }

    /// The checks that need nothing but the configuration itself.
    pub fn validate(&self) -> Result<()> {
        if self.tunnels.is_empty() {
            bail!("no tunnels: add a [[tunnel]] section with name, link and secret_file");
        }
        if self.tunnels.len() > footunnel_ebpf::maps::MAX_TUNNELS {
            bail!(
                "{} tunnels: the data plane holds at most {}; split them over two brokers",
                self.tunnels.len(),
                footunnel_ebpf::maps::MAX_TUNNELS
            );
        }
        if self.fou_ports.is_empty() || self.fou_ports.contains(&0) {
            bail!("fou_ports must list at least one non-zero UDP port (default [{DEFAULT_FOU_PORT}])");
        }
        if self.fou_ports.len() > footunnel_ebpf::maps::MAX_PORTS - 1 {
            bail!("at most {} FoU ports", footunnel_ebpf::maps::MAX_PORTS - 1);
        }
        if self.tunnels.iter().any(|t| t.legacy) && self.fou_ports.contains(&self.legacy_port) {
            bail!(
                "legacy_port {} is also a FoU port: the proof of concept's heartbeats need their own port",
                self.legacy_port
            );
        }
        if self.challenge_interval_ns == 0 {
            bail!(
                "challenge_interval = 0 would let one spoofed flow draw a CHALLENGE for every packet: \
                 use at least 0.001 seconds (default 1)"
            );
        }
        if self.challenge_rate == 0 {
            bail!("challenge_rate must be at least 1 per second");
        }
        if let Some(shared) = &self.shared {
            self.validate_shared(shared)?;
        }
        let mut names = HashSet::new();
        let mut links = HashSet::new();
        let mut ids: HashMap<u64, &str> = HashMap::new();
        for t in &self.tunnels {
            if !names.insert(t.name.as_str()) {
                bail!("two tunnels are named {:?}: names must be unique", t.name);
            }
            if self.shared.is_none() && !links.insert(t.link.as_str()) {
                bail!(
                    "tunnel {:?}: link {:?} belongs to another tunnel already; each tunnel needs its own link",
                    t.name,
                    t.link
                );
            }
            if t.legacy && t.secret.len() > LEGACY_SECRET_MAX {
                bail!(
                    "tunnel {:?}: its secret has {} bytes, but legacy heartbeats carry the secret itself, \
                     at most {LEGACY_SECRET_MAX} bytes: turn legacy off or use a shorter secret for this tunnel",
                    t.name,
                    t.secret.len()
                );
            }
            if let Some(next) = &t.next
                && next.secret == t.secret
            {
                bail!(
                    "tunnel {:?}: next_secret is the current secret: give the new secret (`footunnel keygen --out FILE`)",
                    t.name
                );
            }
            for id in t.key_ids().map(|(_, id)| id) {
                if let Some(other) = ids.insert(id, &t.name) {
                    bail!(
                        "tunnels {other:?} and {:?} have the same key id {id:016x} (the same secret?): give each \
                         tunnel its own secret",
                        t.name,
                    );
                }
            }
        }
        let claimed: Vec<(Prefix, &str)> =
            self.tunnels.iter().flat_map(|t| t.peer_prefixes.iter().map(|p| (*p, t.name.as_str()))).collect();
        if let Some(((pa, a), (pb, b))) = find_overlap(&claimed) {
            bail!("tunnels {a:?} ({pa}) and {b:?} ({pb}) have overlapping peer prefixes");
        }
        Ok(())
    }
}

impl BrokerConfig {
    /// What shared-device mode cannot do, and needs.
    fn validate_shared(&self, shared: &Shared) -> Result<()> {
        if self.fou_ports.len() != 1 {
            bail!(
                "shared-device mode serves one FoU port (the kernel has one external-mode ipip device per \
                 network namespace): set fou_ports to a single port"
            );
        }
        for t in &self.tunnels {
            if t.peer_prefixes.is_empty() {
                bail!(
                    "tunnel {:?}: shared-device mode routes each tunnel by its inner prefixes: set peer_prefixes \
                     (say [\"10.1.0.2/32\"])",
                    t.name
                );
            }
            if t.manage.is_some() {
                bail!(
                    "tunnel {:?}: `manage` creates a per-tunnel link; shared-device mode has none: remove it",
                    t.name
                );
            }
            if t.silence.is_some_and(|s| s.action == OnSilence::Down) {
                bail!(
                    "tunnel {:?}: on_silence = \"down\" sets a tunnel's own link down; in shared-device mode \
                     tunnels have none: use \"report\"",
                    t.name
                );
            }
        }
        if shared.device.is_empty() || shared.device.len() > 15 {
            bail!("shared.device = {:?}: a Linux interface name has 1 to 15 characters", shared.device);
        }
        Ok(())
    }
}

/// `mode` and `[shared]` together: each needs the other.
fn shared_settings(mode: Mode, file: Option<SharedFile>) -> Result<Option<Shared>> {
    match (mode, file) {
        (Mode::PerLink, None) => Ok(None),
        (Mode::PerLink, Some(_)) => {
            bail!("a [shared] section, but mode is per-link: set mode = \"shared\" or remove [shared]")
        }
        (Mode::Shared, None) => bail!(
            "mode = \"shared\" needs a [shared] section with at least the broker's public address: \
             [shared] local = \"198.51.100.1\""
        ),
        (Mode::Shared, Some(f)) => Ok(Some(Shared {
            device: f.device,
            local: f.local,
            address: f
                .address
                .as_deref()
                .map(crate::addr::parse_interface_address)
                .transpose()
                .context("shared.address")?,
            mtu: f.mtu,
        })),
    }
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
