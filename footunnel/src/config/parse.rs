//! From the file (or the command line) to a validated
//! [`BrokerConfig`](super::BrokerConfig): every check that needs no system
//! state.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};

use super::file::*;
use super::*;
use crate::addr::find_overlap;

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
        let defaults = FileDefaults { silence_timeout: file.silence_timeout, on_silence: file.on_silence };
        let tunnels = file
            .tunnels
            .into_iter()
            .map(|t| tunnel_from_file(t, &defaults, shared.as_ref(), base, read_secret))
            .collect::<Result<Vec<_>>>()?;
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
            announce_table: file.announce_table,
            peers: file.peers,
            peer_port: file.peer_port,
            trace: false,
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
            announce_table: None,
            peers: Vec::new(),
            peer_port: DEFAULT_PEER_PORT,
            trace: false,
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
        self.validate_announce_table()?;
        self.validate_peers()?;
        self.validate_tunnels()
    }

    /// Peers are unicast addresses, each once; the peer port is a port of its own.
    fn validate_peers(&self) -> Result<()> {
        let mut seen = HashSet::new();
        for peer in &self.peers {
            if peer.is_unspecified() || peer.is_multicast() || peer.is_loopback() {
                bail!("peers: {peer} is not another broker's address: list each other broker's own unicast address");
            }
            if !seen.insert(peer) {
                bail!("peers: {peer} is listed twice");
            }
        }
        let taken = self.fou_ports.contains(&self.peer_port)
            || (self.tunnels.iter().any(|t| t.legacy) && self.legacy_port == self.peer_port);
        if self.peer_port == 0 || taken {
            bail!(
                "peer_port = {}: brokers compare prefixes on a UDP port of its own, not 0, a FoU port or the \
                 legacy port (default {DEFAULT_PEER_PORT})",
                self.peer_port
            );
        }
        Ok(())
    }

    /// A table of announced routes must be one of its own, and its routes
    /// must go when a client is gone: every tunnel needs a silence_timeout.
    fn validate_announce_table(&self) -> Result<()> {
        let Some(table) = self.announce_table else { return Ok(()) };
        // 0: unspecified; 253-255: the kernel's default, main and local tables.
        if table == 0 || (253..=255).contains(&table) {
            bail!(
                "announce_table = {table} is one of the kernel's own tables: give a table of its own for the \
                 routes a routing daemon announces (say 4242)"
            );
        }
        if let Some(t) = self.tunnels.iter().find(|t| t.silence.is_none()) {
            bail!(
                "announce_table needs a silence_timeout for every tunnel (tunnel {:?} has none): its routes must \
                 go when its client is gone or heartbeats to another broker; set silence_timeout = 30 (three \
                 heartbeat intervals)",
                t.name
            );
        }
        Ok(())
    }

    /// Each tunnel on its own, and the tunnels against each other.
    fn validate_tunnels(&self) -> Result<()> {
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

/// One `[[tunnel]]` section, checked on its own; `base` is where its secret
/// files are found from.
fn tunnel_from_file(
    t: TunnelFile,
    file: &FileDefaults,
    shared: Option<&Shared>,
    base: &Path,
    read_secret: &dyn Fn(&Path) -> Result<String>,
) -> Result<Tunnel> {
    let link = match (shared, t.link) {
        (None, Some(link)) => link,
        (None, None) => bail!("tunnel {:?}: no link: name its ipip link (`link = \"fou0\"`)", t.name),
        (Some(s), None) => s.device.clone(),
        (Some(s), Some(link)) => bail!(
            "tunnel {:?}: link = {link:?}, but in shared-device mode every tunnel uses {:?}: remove `link`",
            t.name,
            s.device
        ),
    };
    let read = |given: Option<String>, file: Option<PathBuf>, key: &str| -> Result<Option<(String, Option<PathBuf>)>> {
        match (given, file) {
            (None, None) => Ok(None),
            (Some(s), None) => Ok(Some((s, None))),
            (None, Some(p)) => {
                let p = base.join(p);
                Ok(Some((read_secret(&p)?, Some(p))))
            }
            (Some(_), Some(_)) => bail!("tunnel {:?}: give either `{key}` or `{key}_file`, not both", t.name),
        }
    };
    let Some((secret, secret_file)) = read(t.secret, t.secret_file, "secret")? else {
        bail!("tunnel {:?}: no secret: add `secret_file = \"…\"` (see `footunnel keygen`)", t.name)
    };
    let next = read(t.next_secret, t.next_secret_file, "next_secret")?;
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
    let silence =
        silence(&t.name, t.silence_timeout.unwrap_or(file.silence_timeout), t.on_silence.unwrap_or(file.on_silence))?;
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
    Ok(tunnel)
}

/// The file's settings that its tunnels inherit.
struct FileDefaults {
    silence_timeout: f64,
    on_silence: OnSilence,
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
