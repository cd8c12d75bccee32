use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    btf_maps::{HashMap, PerCpuArray},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use footunnel_ebpf::{
    maps::{Counter, PortConfig},
    packet::{PacketBytes, Parsed, parse_udp4},
};

#[btf_map]
static FOU_PORTS: HashMap<u16, PortConfig, 64> = HashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Direct packet access between `data` and `data_end`, as both XDP and TC
/// (for the linear part of the skb) provide.
struct Linear {
    start: usize,
    end: usize,
}

impl PacketBytes for Linear {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: bounds checked against the packet end just above.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// The one packet path both entry points share; `true` means "let it pass".
#[inline(always)]
fn handle(pkt: &Linear) -> bool {
    if let Parsed::Udp(udp) = parse_udp4(pkt) {
        // SAFETY: the value is only read.
        if unsafe { FOU_PORTS.get(udp.dst_port) }.is_some() {
            count(Counter::FouPort);
        }
    }
    true
}

#[xdp]
pub fn footunnel_xdp(ctx: XdpContext) -> u32 {
    let pkt = Linear { start: ctx.data(), end: ctx.data_end() };
    if handle(&pkt) { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
}

#[classifier]
pub fn footunnel_tc(ctx: TcContext) -> i32 {
    let pkt = Linear { start: ctx.data(), end: ctx.data_end() };
    if handle(&pkt) { TC_ACT_OK } else { aya_ebpf::bindings::TC_ACT_SHOT }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
