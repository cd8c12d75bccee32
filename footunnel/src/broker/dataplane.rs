//! The eBPF object embedded in this binary, and typed access to its maps.

use std::{net::IpAddr, path::Path};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray, lpm_trie::Key},
};
use footunnel_ebpf::{
    maps::{
        self, Counter, Endpoint, LegacySecret, Observed, PORT_FOU, PORT_LEGACY, PortConfig, PrefixOwner, Settings,
        TunnelConfig, TunnelRef,
    },
    packet::{Addr, UNSPECIFIED},
    siphash::SipKey,
};

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
/// Shared-device mode's egress program.
pub const EGRESS_PROGRAM: &str = "footunnel_egress";
/// Shared-device mode's receive check, on the device's ingress.
pub const DEVICE_INGRESS_PROGRAM: &str = "footunnel_device_ingress";

/// Parses the embedded object and creates its maps (programs are loaded
/// into the kernel separately, by whoever attaches them), with the trace off.
pub fn open() -> Result<Ebpf> {
    loader(false).load(OBJECT).context("loading footunnel's eBPF object (creating its maps) failed")
}

/// A loader for [`OBJECT`] with the programs' trace on or off (a constant
/// of the object, set here before the kernel sees it).
pub fn loader(trace: bool) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.override_global(TRACE_SWITCH, if trace { &1u8 } else { &0u8 }, true);
    loader
}

/// The programs' trace switch (a `static` in `programs.rs`).
const TRACE_SWITCH: &str = "TRACE";

/// Forwards the programs' trace lines to this process's log until the
/// object is dropped; only for an object loaded with the trace on.
pub fn forward_trace(ebpf: &mut Ebpf) -> Result<()> {
    let logger = aya_log::EbpfLogger::init(ebpf).context("cannot read the data plane's trace (aya-log)")?;
    // SAFETY: the logger owns its ring buffer's map fd, open and the same for
    // as long as the logger lives, which is as long as the AsyncFd.
    let mut logger = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the data plane's trace: {e}"))?;
    tokio::spawn(async move {
        while let Ok(mut ready) = logger.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}

fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map> {
    ebpf.map(name).with_context(|| format!("the eBPF object has no map {name}"))
}

pub fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name).with_context(|| format!("the eBPF object has no map {name}"))
}

/// Watches `port` for FoU traffic (and control messages).
pub fn watch_port(ebpf: &mut Ebpf, port: u16) -> Result<()> {
    set_port(ebpf, port, PORT_FOU)
}

/// Watches `port` for the proof of concept's plaintext heartbeats.
pub fn watch_legacy_port(ebpf: &mut Ebpf, port: u16) -> Result<()> {
    set_port(ebpf, port, PORT_LEGACY)
}

/// Sets how the data plane treats UDP port `port` (0: not at all).
pub fn set_port(ebpf: &mut Ebpf, port: u16, kind: u32) -> Result<()> {
    let mut ports: Array<_, PortConfig> = Array::try_from(map_mut(ebpf, maps::FOU_PORTS)?)?;
    ports.set(u32::from(port), PortConfig { kind }, 0).with_context(|| format!("cannot set UDP port {port}"))
}

/// The IPv4 prefixes among `prefixes` as the endpoint cache holds them.
pub fn inner_prefixes_v4(prefixes: &[crate::addr::Prefix]) -> Vec<(u32, u32)> {
    prefixes
        .iter()
        .filter_map(|p| match p.addr {
            IpAddr::V4(a) => Some(maps::inner_prefix(a.octets(), u32::from(p.len))),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Empties the endpoint cache's slot for `endpoint` if it holds that
/// endpoint under a prefix not in `allowed` (empty: whatever prefix).
pub fn forget_cached(ebpf: &mut Ebpf, endpoint: &Endpoint, allowed: &[(u32, u32)]) -> Result<()> {
    let Some(addr) = endpoint.addr.as_v4().filter(|_| endpoint.port != 0) else { return Ok(()) };
    let (slot, entry) = maps::endpoint_cache_key(addr, endpoint.port);
    let mut cache: Array<_, maps::CachedEndpoint> = Array::try_from(map_mut(ebpf, maps::ENDPOINT_CACHE)?)?;
    let cached = cache.get(&slot, 0).context("cannot read the endpoint cache")?;
    if cached.entry == entry && !allowed.contains(&(cached.inner_net, cached.inner_mask)) {
        // The entry word alone, the prefix as it is: the update is a copy,
        // and a reader between its words must never see the entry under
        // another prefix (an all-zero one admits everything).
        cache
            .set(slot, maps::CachedEndpoint { entry: 0, ..cached }, 0)
            .context("cannot clear a slot of the endpoint cache")?;
    }
    Ok(())
}

/// Maps pinned by another footunnel version are reused as they are: with
/// another layout the program would read garbage or lose counters, quietly.
/// Refuses them, naming the fix, before anything is changed.
pub fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    for spec in maps::MAPS.iter().filter(|m| m.pinned) {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).with_context(|| format!("cannot inspect pinned map {}", path.display()))?;
        let have = (info.key_size() as usize, info.value_size() as usize, info.max_entries() as usize);
        if have != (spec.key_size, spec.value_size, spec.max_entries) {
            bail!(
                "the pinned map {} comes from another footunnel version (keys of {} bytes, values of {}, {} entries; \
                 this version needs {}, {} and {}): run `footunnel unload --pin-dir {}` once (it detaches the old \
                 program and removes its maps; clients re-announce themselves within an interval), then start the \
                 broker again",
                path.display(),
                have.0,
                have.1,
                have.2,
                spec.key_size,
                spec.value_size,
                spec.max_entries,
                pin_dir.display()
            );
        }
    }
    Ok(())
}

/// Makes tunnel `id` known, with its heartbeat key and the broker address
/// its link uses (`None`: any), recorded under `id` itself (one secret).
pub fn add_tunnel(ebpf: &mut Ebpf, id: u64, key: SipKey, local: Option<IpAddr>) -> Result<()> {
    add_key(ebpf, id, key, local, id)
}

/// Accepts heartbeats carrying key id `key_id`, tagged with `key`, for
/// the tunnel recorded under `record` (one entry per secret of a tunnel).
pub fn add_key(ebpf: &mut Ebpf, key_id: u64, key: SipKey, local: Option<IpAddr>, record: u64) -> Result<()> {
    add_tunnel_address(ebpf, local)?;
    let mut tunnels: HashMap<_, u64, TunnelConfig> = HashMap::try_from(map_mut(ebpf, maps::TUNNELS)?)?;
    tunnels
        .insert(key_id, tunnel_config(key_id, key, local, record), 0)
        .with_context(|| format!("cannot add key id {key_id:016x}"))
}

/// Makes `local` (`None`: any) one of the tunnels' addresses, whose control
/// messages of no known tunnel are dropped rather than passed as transit.
pub fn add_tunnel_address(ebpf: &mut Ebpf, local: Option<IpAddr>) -> Result<()> {
    let mut addrs: HashMap<_, Addr, u32> = HashMap::try_from(map_mut(ebpf, maps::LOCAL_ADDRS)?)?;
    let addr = local.map_or(UNSPECIFIED, Addr::from);
    addrs.insert(addr, 1, 0).with_context(|| format!("cannot add tunnel address {}", addr.ip()))
}

pub fn tunnel_config(key_id: u64, key: SipKey, local: Option<IpAddr>, record: u64) -> TunnelConfig {
    TunnelConfig::new(key_id, key, local.map_or(UNSPECIFIED, Addr::from), record)
}

/// Tunnel `id`'s configuration in the data plane, if it has one.
pub fn tunnel(ebpf: &Ebpf, id: u64) -> Result<Option<TunnelConfig>> {
    by_tunnel(ebpf, maps::TUNNELS, id)
}

/// Routes FoU data whose inner source is in `addr/len` to tunnel `id`
/// (its record id), whose link uses broker address `local` (`None`: any).
pub fn add_prefix(ebpf: &mut Ebpf, addr: IpAddr, len: u8, id: u64, local: Option<IpAddr>) -> Result<()> {
    let owner = PrefixOwner::new(id, len, local.map_or(UNSPECIFIED, Addr::from));
    let inserted = match addr {
        IpAddr::V4(a) => LpmTrie::<_, [u8; 4], PrefixOwner>::try_from(map_mut(ebpf, maps::PREFIXES_V4)?)?.insert(
            &Key::new(len.into(), a.octets()),
            owner,
            0,
        ),
        IpAddr::V6(a) => LpmTrie::<_, [u8; 16], PrefixOwner>::try_from(map_mut(ebpf, maps::PREFIXES_V6)?)?.insert(
            &Key::new(len.into(), a.octets()),
            owner,
            0,
        ),
    };
    inserted.with_context(|| format!("cannot add prefix {addr}/{len}"))
}

/// A prefix-trie entry: inner prefix and length, owner's record id, the
/// broker address its link uses.
pub type PrefixEntry = (IpAddr, u8, u64, Option<IpAddr>);

/// Leaves exactly `wanted` (prefix → tunnel) in the prefix tries.
pub fn sync_prefixes(ebpf: &mut Ebpf, wanted: &[PrefixEntry]) -> Result<()> {
    let v4 = trie_entries(wanted, |a| if let IpAddr::V4(a) = a { Some(a.octets()) } else { None });
    let v6 = trie_entries(wanted, |a| if let IpAddr::V6(a) = a { Some(a.octets()) } else { None });
    sync(&mut LpmTrie::<_, [u8; 4], PrefixOwner>::try_from(map_mut(ebpf, maps::PREFIXES_V4)?)?, v4)?;
    sync(&mut LpmTrie::<_, [u8; 16], PrefixOwner>::try_from(map_mut(ebpf, maps::PREFIXES_V6)?)?, v6)
}

/// One family's entries of `wanted`, keyed as its trie is.
fn trie_entries<const N: usize>(
    wanted: &[PrefixEntry],
    octets: impl Fn(IpAddr) -> Option<[u8; N]>,
) -> Vec<((u32, [u8; N]), PrefixOwner)> {
    wanted
        .iter()
        .filter_map(|&(a, len, id, local)| {
            let owner = PrefixOwner::new(id, len, local.map_or(UNSPECIFIED, Addr::from));
            Some(((u32::from(len), octets(a)?), owner))
        })
        .collect()
}

/// A map the controller keeps equal to the entries it wants: hash maps, and
/// LPM tries keyed by (prefix length, address).
pub trait Synced<K, V> {
    fn put(&mut self, key: &K, value: V) -> Result<()>;
    fn present(&self) -> Vec<K>;
    fn delete(&mut self, key: &K);
}

impl<K: aya::Pod, V: aya::Pod> Synced<K, V> for HashMap<&mut MapData, K, V> {
    fn put(&mut self, key: &K, value: V) -> Result<()> {
        Ok(self.insert(key, value, 0)?)
    }
    fn present(&self) -> Vec<K> {
        self.keys().filter_map(|k| k.ok()).collect()
    }
    fn delete(&mut self, key: &K) {
        let _ = self.remove(key);
    }
}

impl<K: aya::Pod, V: aya::Pod> Synced<(u32, K), V> for LpmTrie<&mut MapData, K, V> {
    fn put(&mut self, (len, addr): &(u32, K), value: V) -> Result<()> {
        Ok(self.insert(&Key::new(*len, *addr), value, 0)?)
    }
    fn present(&self) -> Vec<(u32, K)> {
        self.keys().filter_map(|k| k.ok()).map(|k| (k.prefix_len(), k.data())).collect()
    }
    fn delete(&mut self, (len, addr): &(u32, K)) {
        let _ = self.remove(&Key::new(*len, *addr));
    }
}

/// Leaves exactly `wanted` in `map`: new entries first, then the stale ones
/// go, so the running program never misses an entry that stays (as it would
/// between a clear and a refill).
pub fn sync<K: Eq + std::hash::Hash, V>(map: &mut impl Synced<K, V>, wanted: Vec<(K, V)>) -> Result<()> {
    let mut keep = std::collections::HashSet::new();
    for (k, v) in wanted {
        map.put(&k, v)?;
        keep.insert(k);
    }
    for k in map.present() {
        if !keep.contains(&k) {
            map.delete(&k);
        }
    }
    Ok(())
}

/// Drops the entries of tunnels (by record id) other than `ids`; returns them.
pub fn remove_other_tunnels<V: aya::Pod>(ebpf: &mut Ebpf, name: &str, ids: &[u64]) -> Result<Vec<V>> {
    let ids: std::collections::HashSet<u64> = ids.iter().copied().collect();
    let mut m: HashMap<&mut MapData, u64, V> = HashMap::try_from(map_mut(ebpf, name)?)?;
    let stale: Vec<u64> = m.keys().filter_map(|k| k.ok()).filter(|k| !ids.contains(k)).collect();
    let mut removed = Vec::new();
    for k in stale {
        if let Ok(v) = m.get(&k, 0) {
            removed.push(v);
        }
        let _ = m.remove(&k);
    }
    Ok(removed)
}

/// The pinned maps the views read without loading the object: `show`, and
/// a restarting broker catching up before its program is loaded.
pub struct Pinned {
    endpoints: HashMap<MapData, u64, Endpoint>,
    observed: HashMap<MapData, u64, Observed>,
    counters: PerCpuArray<MapData, u64>,
}

impl Pinned {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            let path = pin_dir.join(name);
            MapData::from_pin(&path)
                .with_context(|| format!("cannot open pinned map {} (is the broker loaded?)", path.display()))
        };
        Ok(Pinned {
            endpoints: HashMap::try_from(Map::HashMap(open(maps::ENDPOINTS)?))?,
            observed: HashMap::try_from(Map::HashMap(open(maps::OBSERVED)?))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(maps::COUNTERS)?))?,
        })
    }

    pub fn endpoint(&self, record_id: u64) -> Option<Endpoint> {
        self.endpoints.get(&record_id, 0).ok()
    }

    pub fn observed(&self, record_id: u64) -> Option<Observed> {
        self.observed.get(&record_id, 0).ok()
    }

    /// A counter summed over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64> {
        Ok(self.counters.get(&(counter as u32), 0)?.iter().sum())
    }
}

/// Accepts the proof of concept's plaintext `secret` for tunnel `id`.
pub fn add_legacy_secret(ebpf: &mut Ebpf, secret: &[u8], id: u64) -> Result<()> {
    let key = LegacySecret::new(secret).with_context(|| {
        format!("a legacy secret must be 1 to {} bytes, this one has {}", maps::LEGACY_SECRET_MAX, secret.len())
    })?;
    let mut secrets: HashMap<_, LegacySecret, TunnelRef> = HashMap::try_from(map_mut(ebpf, maps::LEGACY_SECRETS)?)?;
    secrets.insert(key, TunnelRef::new(id), 0).context("cannot add a legacy secret")
}

pub fn set_settings(ebpf: &mut Ebpf, settings: Settings) -> Result<()> {
    let mut array: Array<_, Settings> = Array::try_from(map_mut(ebpf, maps::SETTINGS)?)?;
    array.set(0, settings, 0).context("cannot write the data plane's settings")
}

pub use crate::os::sys::realtime_offset_ns;

/// A counter summed over all CPUs.
pub fn counter(ebpf: &Ebpf, counter: Counter) -> Result<u64> {
    let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(ebpf, maps::COUNTERS)?)?;
    Ok(counters.get(&(counter as u32), 0)?.iter().sum())
}

pub fn endpoint(ebpf: &Ebpf, id: u64) -> Result<Option<Endpoint>> {
    by_tunnel(ebpf, maps::ENDPOINTS, id)
}

pub fn observed(ebpf: &Ebpf, id: u64) -> Result<Option<Observed>> {
    by_tunnel(ebpf, maps::OBSERVED, id)
}

/// Tunnel `id`'s entry in the hash map `name`, if it has one.
fn by_tunnel<V: aya::Pod>(ebpf: &Ebpf, name: &str, id: u64) -> Result<Option<V>> {
    let m: HashMap<&MapData, u64, V> = HashMap::try_from(map(ebpf, name)?)?;
    match m.get(&id, 0) {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {name}")),
    }
}
