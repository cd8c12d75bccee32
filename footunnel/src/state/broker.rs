//! The broker's state file: what `footunnel show`, `reload`, `unload` and the
//! metrics need besides the pinned maps, with the latest reload's outcome.

use crate::os::manage::Created;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What `footunnel show` needs besides the maps: written at start-up and on reload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateFile {
    /// The broker process, for `footunnel reload`.
    #[serde(default)]
    pub pid: Option<u32>,
    pub pin_dir: PathBuf,
    pub attach: crate::config::Attach,
    pub interfaces: Vec<String>,
    pub fou_ports: Vec<u16>,
    /// The proof of concept's port, when a tunnel has legacy enabled.
    #[serde(default)]
    pub legacy_port: Option<u16>,
    /// Links and FoU listeners footunnel created; `unload` removes them.
    #[serde(default)]
    pub created: Created,
    /// The latest reload's outcome.
    #[serde(default)]
    pub reload: Option<ReloadOutcome>,
    /// Shared-device mode: the device.
    #[serde(default)]
    pub shared_device: Option<String>,
    /// Shared-device mode: why the device carries no traffic, while it does not.
    #[serde(default)]
    pub shared_problem: Option<String>,
    pub tunnels: Vec<StateTunnel>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateTunnel {
    pub name: String,
    pub link: String,
    /// The current secret's key id.
    pub id: u64,
    /// During a key rotation, the next secret's key id.
    #[serde(default)]
    pub next_id: Option<u64>,
    /// Where the data plane records the tunnel (ENDPOINTS, OBSERVED).
    #[serde(default)]
    pub record_id: u64,
    pub legacy: bool,
    pub peer_prefixes: Vec<String>,
    /// When the broker began serving the tunnel (wall clock, ns).
    #[serde(default)]
    pub since_ns: u64,
    /// The silence policy, if any.
    #[serde(default)]
    pub silence_timeout_ns: Option<u64>,
    #[serde(default)]
    pub on_silence: Option<crate::config::OnSilence>,
    /// What keeps the tunnel from working, as the controller last found it
    /// (a refused re-point, a link that cannot be read or changed).
    #[serde(default)]
    pub problem: Option<String>,
}

pub const STATE_FILE: &str = "broker.json";

pub fn write_state(dir: &Path, state: &StateFile) -> Result<()> {
    crate::os::files::write_atomically(&dir.join(STATE_FILE), &serde_json::to_vec_pretty(state)?)
}

pub fn read_state(dir: &Path) -> Result<StateFile> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).with_context(|| {
        format!("no broker state at {} (is `footunnel broker` running? see --state-dir)", path.display())
    })?;
    serde_json::from_slice(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// The outcome of the latest reload, in the state file, where `footunnel
/// reload` reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Counts reloads since the broker started.
    pub generation: u64,
    pub ok: bool,
    pub message: String,
}
