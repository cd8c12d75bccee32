//! Maps pinned by another footunnel version are refused with the fix, not
//! reused with the wrong layout.

use footunnel_ebpf::maps::{ENDPOINTS, Endpoint, MAX_TUNNELS};
use footunnel_tests::{require_root, sh};

#[test]
fn pinned_maps_of_another_layout_are_refused_naming_unload() {
    require_root();
    let dir = format!("/sys/fs/bpf/ft-pins-{}", std::process::id());
    std::fs::create_dir_all(&dir).expect("bpffs at /sys/fs/bpf");
    let pin = format!("{dir}/{ENDPOINTS}");
    let create = |value: usize, entries: usize| {
        let _ = std::fs::remove_file(&pin);
        let (value, entries) = (value.to_string(), entries.to_string());
        sh(
            "bpftool",
            &[
                "map",
                "create",
                &pin,
                "type",
                "hash",
                "key",
                "8",
                "value",
                &value,
                "entries",
                &entries,
                "name",
                "ENDPOINTS",
                "flags",
                "1",
            ],
        );
    };
    let refused = |what: &str| {
        let e = format!("{:#}", footunnel::dataplane::check_pinned_layouts(dir.as_ref()).unwrap_err());
        assert!(e.contains("another footunnel version") && e.contains("footunnel unload"), "{what}: {e}");
    };
    create(size_of::<Endpoint>() - 8, MAX_TUNNELS); // the layout before the per-tunnel lock
    refused("old value layout");
    create(size_of::<Endpoint>(), 65_536); // before room for 100,000 tunnels
    refused("old capacity");
    create(size_of::<Endpoint>(), MAX_TUNNELS);
    footunnel::dataplane::check_pinned_layouts(dir.as_ref()).expect("the current layout is accepted");
    std::fs::remove_dir_all(&dir).unwrap();
}
