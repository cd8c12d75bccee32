//! Map names and layouts. Userspace finds maps by these names, bpftool shows
//! them (and the BTF field names) under `/sys/fs/bpf/footunnel/`.

/// Hash map: FoU UDP port (host order) → [`PortConfig`].
pub const FOU_PORTS: &str = "FOU_PORTS";
/// Per-CPU array indexed by [`Counter`].
pub const COUNTERS: &str = "COUNTERS";

/// Value of [`FOU_PORTS`]. A struct rather than a bare flag so later fields
/// (encapsulated protocol, legacy port) need no new map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortConfig {
    /// 1 when the port is watched.
    pub enabled: u32,
}

/// What the data plane counts, one slot each in [`COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// IPv4/UDP packets to a watched FoU port.
    FouPort = 0,
}

impl Counter {
    pub const ALL: [Counter; 1] = [Counter::FouPort];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Counter::FouPort => "fou_port",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, `repr(C)`, no padding.
    unsafe impl aya::Pod for super::PortConfig {}
}
