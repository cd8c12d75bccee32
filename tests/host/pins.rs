//! Maps pinned by another footunnel version are refused with the fix, not
//! reused with the wrong layout.

use footunnel_ebpf::maps::{ENDPOINTS, Endpoint, MAPS, MAX_TUNNELS};
use footunnel_tests::{require_root, sh};

#[test]
fn pinned_maps_of_another_layout_are_refused_naming_unload() {
    require_root();
    let dir = format!("/sys/fs/bpf/ft-pins-{}", std::process::id());
    std::fs::create_dir_all(&dir).expect("bpffs at /sys/fs/bpf");
    let pin = format!("{dir}/{ENDPOINTS}");
    let create_keyed = |key: usize, value: usize, entries: usize| {
        let _ = std::fs::remove_file(&pin);
        let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
        sh(
            "bpftool",
            &[
                "map",
                "create",
                &pin,
                "type",
                "hash",
                "key",
                &key,
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
    let create = |value: usize, entries: usize| create_keyed(8, value, entries);
    let refused = |what: &str| {
        let e = format!("{:#}", footunnel::broker::dataplane::check_pinned_layouts(dir.as_ref()).unwrap_err());
        assert!(e.contains("another footunnel version") && e.contains("footunnel unload"), "{what}: {e}");
    };
    create(size_of::<Endpoint>() - 8, MAX_TUNNELS); // the layout before the per-tunnel lock
    refused("old value layout");
    create(size_of::<Endpoint>(), 65_536); // before room for 100,000 tunnels
    refused("old capacity");
    create(size_of::<Endpoint>(), MAX_TUNNELS);
    footunnel::broker::dataplane::check_pinned_layouts(dir.as_ref()).expect("the current layout is accepted");
    // Keys are checked too: a 4-byte key of the same value layout.
    create_keyed(4, size_of::<Endpoint>(), MAX_TUNNELS);
    refused("old key layout");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The one table of maps (`maps::MAPS`) is the object's: every map the
/// built object declares is in it, with the key size, value size and
/// capacity the kernel reports for it once loaded (pinned, for this test,
/// into a directory of its own, so no other map can answer).
#[test]
fn the_table_of_maps_is_the_objects() {
    require_root();
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/ft-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bpffs at /sys/fs/bpf");
    let mut loader = aya::EbpfLoader::new();
    let paths: Vec<(&str, std::path::PathBuf)> = MAPS.iter().map(|m| (m.name, dir.join(m.name))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path);
    }
    let ebpf = loader.load(footunnel::broker::dataplane::OBJECT).expect("load the eBPF object");
    // Sections of constants (.rodata.*) are maps to aya too, but no one's state.
    let declared: Vec<&str> = ebpf.maps().map(|(name, _)| name).filter(|name| !name.starts_with('.')).collect();
    for name in &declared {
        assert!(MAPS.iter().any(|m| m.name == *name), "the object's map {name} is not in maps::MAPS");
    }
    for spec in MAPS {
        assert!(declared.contains(&spec.name), "maps::MAPS lists {}, which the object lacks", spec.name);
        let info = aya::maps::MapInfo::from_pin(dir.join(spec.name)).expect(spec.name);
        let have = (info.key_size() as usize, info.value_size() as usize, info.max_entries() as usize);
        assert_eq!(have, (spec.key_size, spec.value_size, spec.max_entries), "{}: (key, value, entries)", spec.name);
    }
    drop(ebpf);
    std::fs::remove_dir_all(&dir).unwrap();
}
