//! The configuration file as written: serde's shape of it, and the
//! defaults of what it may leave out. [`super::parse`] turns it into a
//! [`super::BrokerConfig`].

use std::{net::Ipv4Addr, path::PathBuf};

use serde::Deserialize;

use super::{
    Attach, DEFAULT_FOU_PORT, DEFAULT_LEGACY_PORT, DEFAULT_PIN_DIR, DEFAULT_SHARED_DEVICE, DEFAULT_STATE_DIR, Mode,
    OnSilence,
};

/// The file as written (`deny_unknown_fields`: a typo is an error, not a default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub(super) interfaces: Vec<String>,
    #[serde(default)]
    pub(super) attach: Attach,
    #[serde(default = "default_fou_ports")]
    pub(super) fou_ports: Vec<u16>,
    #[serde(default = "default_legacy_port")]
    pub(super) legacy_port: u16,
    #[serde(default = "default_window")]
    pub(super) freshness_window: f64,
    #[serde(default = "default_challenge_interval")]
    pub(super) challenge_interval: f64,
    #[serde(default = "default_challenge_rate")]
    pub(super) challenge_rate: u32,
    #[serde(default = "default_pin_dir")]
    pub(super) pin_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: PathBuf,
    /// Seconds without an accepted heartbeat before a tunnel counts as silent; 0: never.
    #[serde(default)]
    pub(super) silence_timeout: f64,
    #[serde(default)]
    pub(super) on_silence: OnSilence,
    /// Serve Prometheus metrics at this address and port.
    pub(super) metrics: Option<String>,
    /// Keep each fresh tunnel's prefix routes in this routing table, for a
    /// routing daemon to announce.
    pub(super) announce_table: Option<u32>,
    /// Other brokers with these tunnels' secrets: their prefixes must agree.
    #[serde(default)]
    pub(super) peers: Vec<std::net::IpAddr>,
    #[serde(default = "default_peer_port")]
    pub(super) peer_port: u16,
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) shared: Option<SharedFile>,
    #[serde(default, rename = "tunnel")]
    pub(super) tunnels: Vec<TunnelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SharedFile {
    #[serde(default = "default_shared_device")]
    pub(super) device: String,
    pub(super) local: Ipv4Addr,
    pub(super) address: Option<String>,
    #[serde(default = "default_mtu")]
    pub(super) mtu: u32,
}

pub(super) fn default_peer_port() -> u16 {
    super::DEFAULT_PEER_PORT
}

pub(super) fn default_shared_device() -> String {
    DEFAULT_SHARED_DEVICE.to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TunnelFile {
    pub(super) name: String,
    /// Per-link mode only.
    pub(super) link: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    /// Key rotation: the secret that replaces `secret`, accepted beside it.
    pub(super) next_secret: Option<String>,
    pub(super) next_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) peer_prefixes: Vec<String>,
    #[serde(default)]
    pub(super) legacy: bool,
    pub(super) manage: Option<ManageFile>,
    pub(super) silence_timeout: Option<f64>,
    pub(super) on_silence: Option<OnSilence>,
}

/// `manage = { local = "…", address = "…" }`: footunnel creates the link.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ManageFile {
    pub(super) local: Ipv4Addr,
    pub(super) address: String,
    #[serde(default = "default_ttl")]
    pub(super) ttl: u8,
    #[serde(default = "default_mtu")]
    pub(super) mtu: u32,
}

pub(super) fn default_ttl() -> u8 {
    64
}
pub(super) fn default_mtu() -> u32 {
    1472
}

pub(super) fn default_fou_ports() -> Vec<u16> {
    vec![DEFAULT_FOU_PORT]
}
pub(super) fn default_legacy_port() -> u16 {
    DEFAULT_LEGACY_PORT
}
pub(super) fn default_window() -> f64 {
    120.0
}
pub(super) fn default_challenge_interval() -> f64 {
    1.0
}
pub(super) fn default_challenge_rate() -> u32 {
    100
}
pub(super) fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}
pub(super) fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
