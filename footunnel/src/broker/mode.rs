//! The broker's two ways of meeting the kernel, and the state only the
//! second has. Code that differs by mode matches on [`Mode`].

use std::collections::HashMap;

use super::shared::SharedDevice;
use crate::addr::Prefix;

pub(super) enum Mode {
    /// Each tunnel has a link of its own, which the broker re-points at its
    /// client; a link set down stops that tunnel.
    PerLink,
    /// One external-mode device for every tunnel: its egress program
    /// addresses each packet from the endpoint map, so there is no link to
    /// re-point, and its routes carry IPv4 only.
    Shared(SharedState),
}

pub(super) struct SharedState {
    pub device: SharedDevice,
    /// Why the device does not carry the tunnels (no ACKs meanwhile), as
    /// last checked: at start, on its link notifications, every 10 s.
    pub problem: Option<String>,
    /// Why the uplink's MTU no longer fits the device's (changed since the
    /// start, which refuses a misfit), as last checked.
    pub mtu_problem: Option<String>,
    /// The MTU each tunnel's client discovered, on the routes of its
    /// prefixes (kept across reloads, which re-route).
    pub route_mtus: HashMap<Prefix, u32>,
}

impl Mode {
    /// Shared-device mode for `device` as planned; per-link mode without one.
    pub fn new(device: Option<SharedDevice>) -> Self {
        match device {
            Some(device) => {
                Mode::Shared(SharedState { device, problem: None, mtu_problem: None, route_mtus: HashMap::new() })
            }
            None => Mode::PerLink,
        }
    }

    pub fn shared(&self) -> Option<&SharedState> {
        match self {
            Mode::Shared(s) => Some(s),
            Mode::PerLink => None,
        }
    }

    pub fn shared_mut(&mut self) -> Option<&mut SharedState> {
        match self {
            Mode::Shared(s) => Some(s),
            Mode::PerLink => None,
        }
    }

    pub fn device(&self) -> Option<&SharedDevice> {
        self.shared().map(|s| &s.device)
    }

    /// Why the tunnels carry nothing now (shared mode's device is down).
    pub fn problem(&self) -> Option<&str> {
        self.shared().and_then(|s| s.problem.as_deref())
    }

    /// Whether clients at IPv6 addresses can be served (ip6tnl links).
    pub fn serves_ipv6_clients(&self) -> bool {
        matches!(self, Mode::PerLink)
    }
}
