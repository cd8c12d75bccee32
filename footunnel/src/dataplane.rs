//! The eBPF object embedded in this binary, and typed access to its maps.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use footunnel_ebpf::maps::{self, Counter, PortConfig};

#[cfg(ebpf_object_missing)]
compile_error!("footunnel's eBPF object is missing: run `cargo xtask build-ebpf` first");

/// The eBPF programs, as `cargo xtask build-ebpf` built them.
#[cfg(not(ebpf_object_missing))]
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FOOTUNNEL_EBPF_OBJECT_PATH"));
#[cfg(ebpf_object_missing)]
pub static OBJECT: &[u8] = &[];

/// Name of the XDP entry point in [`OBJECT`].
pub const XDP_PROGRAM: &str = "footunnel_xdp";
/// Name of the TC-ingress entry point in [`OBJECT`].
pub const TC_PROGRAM: &str = "footunnel_tc";

/// Parses the embedded object and creates its maps (programs are loaded
/// into the kernel separately, by whoever attaches them).
pub fn open() -> Result<Ebpf> {
    Ebpf::load(OBJECT).context("loading footunnel's eBPF object (creating its maps) failed")
}

/// Watches `port` for FoU traffic.
pub fn watch_port(ebpf: &mut Ebpf, port: u16) -> Result<()> {
    let mut ports: HashMap<_, u16, PortConfig> = HashMap::try_from(map_mut(ebpf, maps::FOU_PORTS)?)?;
    ports.insert(port, PortConfig { enabled: 1 }, 0).with_context(|| format!("cannot watch UDP port {port}"))
}

/// A counter summed over all CPUs.
pub fn counter(ebpf: &Ebpf, counter: Counter) -> Result<u64> {
    let map = ebpf.map(maps::COUNTERS).with_context(|| format!("the eBPF object has no map {}", maps::COUNTERS))?;
    let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    Ok(counters.get(&(counter as u32), 0)?.iter().sum())
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("the eBPF object has no map {name}"))
}
