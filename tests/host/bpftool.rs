//! Operators inspect the pinned maps with bpftool; BTF gives them field names.

use footunnel_ebpf::maps::{COUNTERS, ENDPOINTS};
use footunnel_tests::{
    broker::{Broker, FOU_PORT, XDP_DROP, now_ns},
    frame::Udp4,
    sh,
};

#[test]
fn bpftool_dumps_pinned_maps_with_field_names() {
    let mut broker = Broker::new(false);
    let hb = Udp4::new([203, 0, 113, 5], 40001, [198, 51, 100, 1], FOU_PORT, &broker.heartbeat(now_ns()));
    assert_eq!(broker.xdp(&hb.build()), XDP_DROP);
    let dir = format!("/sys/fs/bpf/footunnel-test-{}", std::process::id());
    if sh("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).trim() != "bpf_fs" {
        sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let endpoints = format!("{dir}/{ENDPOINTS}");
    let counters = format!("{dir}/{COUNTERS}");
    broker.ebpf.map_mut(ENDPOINTS).unwrap().pin(&endpoints).unwrap();
    broker.ebpf.map_mut(COUNTERS).unwrap().pin(&counters).unwrap();
    let dump = sh("bpftool", &["map", "dump", "pinned", &endpoints]);
    let counters_dump = sh("bpftool", &["map", "dump", "pinned", &counters]);
    std::fs::remove_dir_all(&dir).unwrap();
    for field in ["\"addr\"", "\"port\": 40001", "\"last_timestamp_ns\"", "\"heartbeats\": 1", "\"changes\": 1"] {
        assert!(dump.contains(field), "bpftool output lacks {field}:\n{dump}");
    }
    assert!(counters_dump.contains("\"cpu\""), "per-CPU values:\n{counters_dump}");
}
