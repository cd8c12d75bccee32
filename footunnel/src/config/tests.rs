use super::*;
use crate::addr::find_overlap;

fn parse(text: &str) -> Result<BrokerConfig> {
    BrokerConfig::parse(text, Path::new("/etc/footunnel"), &|p| {
        if p.ends_with("alice.secret") {
            Ok("alice's secret, long enough".into())
        } else {
            bail!("no file {}", p.display())
        }
    })
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

const ONE: &str = r#"
[[tunnel]]
name = "alice"
link = "fou0"
secret_file = "alice.secret"
peer_prefixes = ["10.0.0.2/32", "2001:db8:1::/64"]
"#;

#[test]
fn a_minimal_file_gets_the_defaults() {
    let c = parse(ONE).unwrap();
    assert_eq!(c.fou_ports, vec![42424]);
    assert_eq!(c.attach, Attach::Xdp);
    assert_eq!(c.freshness_window_ns, 120_000_000_000);
    assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/footunnel"));
    let t = &c.tunnels[0];
    assert_eq!(t.secret_file.as_deref(), Some(Path::new("/etc/footunnel/alice.secret")));
    assert_eq!(t.identity, TunnelIdentity::derive("alice's secret, long enough"));
    assert_eq!(t.peer_prefixes[1].to_string(), "2001:db8:1::/64");
}

#[test]
fn every_option_is_read() {
    let c = parse(&format!(
        "interfaces = [\"eth0\"]\nattach = \"tc\"\nfou_ports = [5555, 5556]\nfreshness_window = 0\n\
         challenge_interval = 2.5\nchallenge_rate = 7\npin_dir = \"/sys/fs/bpf/x\"\nstate_dir = \"/tmp/s\"\n{ONE}"
    ))
    .unwrap();
    assert_eq!((c.interfaces, c.attach, c.fou_ports), (vec!["eth0".to_owned()], Attach::Tc, vec![5555, 5556]));
    assert_eq!((c.freshness_window_ns, c.challenge_interval_ns, c.challenge_rate), (0, 2_500_000_000, 7));
}

#[test]
fn mistakes_are_named_with_their_fix() {
    assert!(err("intefaces = []\n").contains("unknown field `intefaces`"));
    assert!(err("").contains("no tunnels"));
    assert!(err(&ONE.replace("secret_file = \"alice.secret\"", "")).contains("no secret"));
    assert!(
        err(&ONE.replace("secret_file = \"alice.secret\"", "secret_file = \"bob.secret\""))
            .contains("no file /etc/footunnel/bob.secret")
    );
    assert!(err(&ONE.replace("10.0.0.2/32", "10.0.0.2/24")).contains("host bits set: did you mean 10.0.0.0/24?"));
    assert!(err(&ONE.replace("10.0.0.2/32", "10.0.0.2")).contains("not a prefix"));
    assert!(err(&ONE.replace("10.0.0.2/32", "10.0.0.300/32")).contains("not an IP address"));
    assert!(err(&ONE.replace("10.0.0.2/32", "10.0.0.2/33")).contains("0 to 32"));
    assert!(err(&format!("fou_ports = []\n{ONE}")).contains("at least one"));
    assert!(err(&format!("freshness_window = -1\n{ONE}")).contains("between 0 and 86400"));
    assert!(err(&format!("attach = \"ebpf\"\n{ONE}")).contains("attach"));
    let both = ONE.replace("secret_file = \"alice.secret\"", "secret = \"x\"\nsecret_file = \"alice.secret\"");
    assert!(err(&both).contains("not both"));
}

#[test]
fn duplicates_and_overlaps_are_rejected() {
    let bob = |name: &str, link: &str, secret_file: &str, prefix: &str| {
        format!(
            "[[tunnel]]\nname = \"{name}\"\nlink = \"{link}\"\nsecret_file = \"{secret_file}\"\npeer_prefixes = [\"{prefix}\"]\n"
        )
    };
    assert!(
        err(&format!("{ONE}{}", bob("alice", "fou1", "alice.secret", "10.0.1.0/24")))
            .contains("two tunnels are named \"alice\"")
    );
    assert!(
        err(&format!("{ONE}{}", bob("bob", "fou0", "alice.secret", "10.0.1.0/24")))
            .contains("belongs to another tunnel")
    );
    let same_id = err(&format!("{ONE}{}", bob("bob", "fou1", "alice.secret", "10.0.1.0/24")));
    assert!(same_id.contains("same key id"), "{same_id}");
    let other = "[[tunnel]]\nname = \"bob\"\nlink = \"fou1\"\nsecret = \"bob's own secret value\"\npeer_prefixes = [\"10.0.0.0/30\"]\n";
    assert!(err(&format!("{ONE}{other}")).contains("overlapping peer prefixes"));
    assert!(parse(&format!("{ONE}{}", other.replace("10.0.0.0/30", "10.0.0.4/30"))).is_ok());
}

#[test]
fn legacy_needs_its_own_port_and_a_short_secret() {
    let legacy = format!("{ONE}legacy = true\n");
    assert!(parse(&legacy).unwrap().tunnels[0].legacy);
    assert!(err(&format!("fou_ports = [42425]\n{legacy}")).contains("legacy_port 42425 is also a FoU port"));
    let long =
        "[[tunnel]]\nname = \"x\"\nlink = \"fou9\"\nlegacy = true\nsecret = \"".to_owned() + &"s".repeat(61) + "\"\n";
    assert!(err(&long).contains("at most 60 bytes"));
}

#[test]
fn the_seed_shape_with_legacy_is_validated_like_a_file() {
    // `footunnel broker --legacy fou0 SECRET` turns legacy on after the
    // tunnel is built: validate() must still refuse a secret too long for it.
    let mut c = BrokerConfig::single("fou0", &"s".repeat(70)).unwrap();
    c.tunnels[0].legacy = true;
    let e = format!("{:#}", c.validate().unwrap_err());
    assert!(e.contains("70 bytes") && e.contains("at most 60"), "{e}");
}

#[test]
fn a_zero_challenge_interval_is_refused() {
    assert!(err(&format!("challenge_interval = 0\n{ONE}")).contains("challenge_interval = 0"));
    assert!(parse(&format!("challenge_interval = 0.5\n{ONE}")).is_ok());
}

#[test]
fn the_seed_shape_is_one_tunnel_named_after_its_link() {
    let c = BrokerConfig::single("fou0", "SECRET").unwrap();
    assert_eq!((c.tunnels[0].name.as_str(), c.tunnels[0].link.as_str()), ("fou0", "fou0"));
    assert!(c.tunnels[0].peer_prefixes.is_empty());
    assert!(format!("{:#}", BrokerConfig::single("a-very-long-link-name", "S").unwrap_err()).contains("longer than"));
}

#[test]
fn secret_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("footunnel-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s");
    std::fs::write(&file, "top secret value\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = format!("{:#}", read_secret_file(&file).unwrap_err());
    assert!(e.contains("readable by group or others (mode 644)") && e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read_secret_file(&file).unwrap(), "top secret value");
    std::fs::write(&file, "\n").unwrap();
    assert!(format!("{:#}", read_secret_file(&file).unwrap_err()).contains("empty"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prefixes_overlap_by_their_shorter_length() {
    let p = |s: &str| s.parse::<Prefix>().unwrap();
    assert!(p("10.0.0.0/8").overlaps(&p("10.1.0.0/16")));
    assert!(!p("10.0.0.0/30").overlaps(&p("10.0.0.4/30")));
    assert!(!p("10.0.0.0/8").overlaps(&p("2001:db8::/32")));
    assert_eq!(Prefix::containing("10.0.0.1".parse().unwrap(), 30), p("10.0.0.0/30"));
}

#[test]
fn overlaps_are_found_among_many_prefixes_of_different_owners_only() {
    let p = |s: &str| s.parse::<Prefix>().unwrap();
    let many: Vec<(Prefix, String)> = (0u32..10_000)
        .map(|i| (Prefix::containing(IpAddr::V4((0x0a00_0000 + 4 * i).into()), 30), format!("t{i}")))
        .collect();
    let claimed: Vec<(Prefix, &str)> = many.iter().map(|(p, n)| (*p, n.as_str())).collect();
    assert_eq!(find_overlap(&claimed), None);
    let mut with_clash = claimed.clone();
    with_clash.push((p("10.0.39.0/24"), "wide"));
    let ((a, _), (b, _)) = find_overlap(&with_clash).expect("found");
    assert!(a.overlaps(&b));
    let same_owner =
        [(p("10.0.0.0/8"), "a"), (p("10.1.0.0/16"), "a"), (p("2001:db8::/32"), "b"), (p("10.2.0.0/16"), "c")];
    let ((_, x), (_, y)) = find_overlap(&same_owner).expect("a's /8 covers c's /16");
    assert_eq!((x, y), ("a", "c"));
    assert_eq!(find_overlap(&[(p("10.0.0.0/8"), "a"), (p("10.1.0.0/16"), "a")]), None, "a tunnel may repeat itself");
    assert_eq!(find_overlap(&[(p("0.0.0.0/0"), "a"), (p("::/0"), "b")]), None, "families never overlap");
}

#[test]
fn managed_links_are_described_and_checked() {
    let c = parse(&format!("{ONE}manage = {{ local = \"198.51.100.1\", address = \"10.0.0.1/30\" }}\n")).unwrap();
    let m = c.tunnels[0].manage.as_ref().unwrap();
    assert_eq!(
        (m.local, m.address, m.ttl, m.mtu),
        ("198.51.100.1".parse().unwrap(), ("10.0.0.1".parse().unwrap(), 30), 64, 1472)
    );
    assert!(
        err(&format!("{ONE}manage = {{ local = \"198.51.100.1\", address = \"10.0.0.1\" }}\n"))
            .contains("ADDRESS/LENGTH")
    );
    assert!(err(&format!("{ONE}manage = {{ local = \"nowhere\", address = \"10.0.0.1/30\" }}\n")).contains("manage"));
}

#[test]
fn silence_is_off_by_default_global_and_overridable_per_tunnel() {
    assert_eq!(parse(ONE).unwrap().tunnels[0].silence, None);
    let global = parse(&format!("silence_timeout = 60\non_silence = \"down\"\n{ONE}")).unwrap();
    assert_eq!(global.tunnels[0].silence, Some(Silence { timeout_ns: 60_000_000_000, action: OnSilence::Down }));
    let own = parse(&format!("silence_timeout = 60\n{ONE}silence_timeout = 0\n")).unwrap();
    assert_eq!(own.tunnels[0].silence, None, "a tunnel may turn the global policy off");
    let own = parse(&format!("{ONE}silence_timeout = 30\n")).unwrap();
    assert_eq!(own.tunnels[0].silence, Some(Silence { timeout_ns: 30_000_000_000, action: OnSilence::Report }));
}

#[test]
fn silence_settings_that_cannot_work_name_their_fix() {
    assert!(err(&format!("on_silence = \"down\"\n{ONE}")).contains("needs a silence_timeout"));
    assert!(err(&format!("silence_timeout = 0.5\n{ONE}")).contains("between 1 and 86400"));
    assert!(err(&format!("silence_timeout = -3\n{ONE}")).contains("between 1 and 86400"));
    assert!(err(&format!("on_silence = \"delete\"\n{ONE}")).contains("unknown variant `delete`"));
}

#[test]
fn metrics_are_off_by_default_and_need_an_address_and_port() {
    assert_eq!(parse(ONE).unwrap().metrics, None);
    let c = parse(&format!("metrics = \"127.0.0.1:9586\"\n{ONE}")).unwrap();
    assert_eq!(c.metrics, Some("127.0.0.1:9586".parse().unwrap()));
    assert!(err(&format!("metrics = \"localhost\"\n{ONE}")).contains("write it as \"127.0.0.1:9586\""));
}

#[test]
fn a_next_secret_is_accepted_beside_the_current_one_under_one_record() {
    let c = parse(&format!("{ONE}next_secret = \"alice's next secret, long enough\"\n")).unwrap();
    let t = &c.tunnels[0];
    let next = t.next.as_ref().unwrap().identity;
    assert_eq!(next, TunnelIdentity::derive("alice's next secret, long enough"));
    assert_eq!(t.key_ids().collect::<Vec<_>>(), [(KeyRole::Current, t.identity.id), (KeyRole::Next, next.id)]);
    assert_eq!(t.identity_for(next.id), Some((KeyRole::Next, next)));
    assert_eq!(t.identity_for(12345), None);
    // The record follows the name, not the secret: rotation keeps the endpoint.
    let rotated =
        parse(&ONE.replace("secret_file = \"alice.secret\"", "secret = \"alice's next secret, long enough\"")).unwrap();
    assert_eq!(rotated.tunnels[0].record_id, t.record_id);
    assert_ne!(rotated.tunnels[0].identity.id, t.identity.id);
}

#[test]
fn a_next_secret_that_cannot_work_is_refused() {
    assert!(
        err(&format!("{ONE}next_secret = \"alice's secret, long enough\"\n")).contains("next_secret is the current")
    );
    let bob = "[[tunnel]]\nname = \"bob\"\nlink = \"fou1\"\nsecret = \"bob's secret, long enough\"\n";
    assert!(
        err(&format!("{ONE}next_secret = \"bob's secret, long enough\"\n{bob}")).contains("the same key id"),
        "a next secret equal to another tunnel's secret"
    );
    assert!(err(&format!("{ONE}next_secret = \"x\"\nnext_secret_file = \"y\"\n")).contains("not both"));
}

const SHARED: &str = r#"
mode = "shared"
[shared]
local = "198.51.100.1"
address = "10.0.0.1/32"

[[tunnel]]
name = "alice"
secret = "alice's secret, long enough"
peer_prefixes = ["10.1.0.2/32"]

[[tunnel]]
name = "bob"
secret = "bob's secret, long enough too"
peer_prefixes = ["10.1.0.3/32"]
"#;

#[test]
fn shared_mode_puts_every_tunnel_on_the_shared_device() {
    let c = parse(SHARED).unwrap();
    let shared = c.shared.as_ref().unwrap();
    assert_eq!(
        (shared.device.as_str(), shared.local, shared.mtu),
        ("footunnel0", Ipv4Addr::new(198, 51, 100, 1), 1472)
    );
    assert_eq!(shared.address, Some(("10.0.0.1".parse().unwrap(), 32)));
    assert!(c.tunnels.iter().all(|t| t.link == "footunnel0"), "{:?}", c.tunnels);
    assert!(parse(ONE).unwrap().shared.is_none(), "per-link is the default");
}

#[test]
fn shared_mode_mistakes_are_named_with_their_fix() {
    for (text, expected) in [
        (
            SHARED.replace("[shared]\nlocal = \"198.51.100.1\"\naddress = \"10.0.0.1/32\"\n", ""),
            "needs a [shared] section",
        ),
        (SHARED.replace("mode = \"shared\"\n", ""), "but mode is per-link"),
        (SHARED.replace("name = \"bob\"\n", "name = \"bob\"\nlink = \"fou1\"\n"), "remove `link`"),
        (SHARED.replace("peer_prefixes = [\"10.1.0.3/32\"]\n", ""), "set peer_prefixes"),
        (SHARED.replace("peer_prefixes = [\"10.1.0.3/32\"]", "peer_prefixes = [\"10.1.0.2/31\"]"), "overlapping"),
        (format!("fou_ports = [1, 2]\n{SHARED}"), "a single port"),
        (format!("{SHARED}on_silence = \"down\"\nsilence_timeout = 60\n"), "use \"report\""),
        (SHARED.replace("mode = \"shared\"", "mode = \"sharde\""), "unknown variant"),
        (ONE.replace("link = \"fou0\"\n", ""), "no link"),
    ] {
        let e = err(&text);
        assert!(e.contains(expected), "{expected:?} not in: {e}");
    }
}

/// Every key the file format has (the fields of its serde structs) is in
/// the configuration reference.
#[test]
fn every_configuration_key_is_documented() {
    let source = include_str!("file.rs");
    let reference = include_str!("../../../docs/configuration.md");
    let mut keys = Vec::new();
    for structure in ["struct File {", "struct SharedFile {", "struct TunnelFile {", "struct ManageFile {"] {
        let body = &source[source.find(structure).expect(structure)..];
        let body = &body[..body.find("\n}").unwrap()];
        for line in body.lines().skip(1) {
            let line = line.trim();
            if line.starts_with("//") || line.starts_with('#') {
                continue;
            }
            let field = line.split(':').next().unwrap().trim().trim_start_matches("pub(super) ");
            // serde's rename: the file says `tunnel`.
            keys.push(if field == "tunnels" { "tunnel".to_owned() } else { field.to_owned() });
        }
    }
    assert!(keys.len() > 25, "{keys:?}");
    for key in keys {
        let documented = reference.contains(&format!("`{key}`"))
            || reference.contains(&format!("`[{key}]`"))
            || reference.contains(&format!("`[[{key}]]`"));
        assert!(documented, "docs/configuration.md does not describe `{key}`");
    }
}

#[test]
fn an_announce_table_is_a_table_of_its_own_and_needs_silence_timeouts() {
    let c = parse(&format!("announce_table = 4242\nsilence_timeout = 30\n{ONE}")).unwrap();
    assert_eq!(c.announce_table, Some(4242));
    assert_eq!(parse(ONE).unwrap().announce_table, None, "off by default");
    for (text, expected) in [
        (format!("announce_table = 254\nsilence_timeout = 30\n{ONE}"), "one of the kernel's own tables"),
        (format!("announce_table = 0\nsilence_timeout = 30\n{ONE}"), "one of the kernel's own tables"),
        (format!("announce_table = 4242\n{ONE}"), "tunnel \"alice\" has none"),
    ] {
        let e = err(&text);
        assert!(e.contains(expected), "{expected:?} not in: {e}");
    }
}

#[test]
fn peers_are_other_brokers_unicast_addresses_on_a_port_of_their_own() {
    let c = parse(&format!("peers = [\"198.51.100.6\", \"2001:db8::6\"]\n{ONE}")).unwrap();
    assert_eq!(c.peers, vec!["198.51.100.6".parse::<IpAddr>().unwrap(), "2001:db8::6".parse().unwrap()]);
    assert_eq!(c.peer_port, DEFAULT_PEER_PORT);
    assert!(parse(ONE).unwrap().peers.is_empty(), "none by default");
    for (text, expected) in [
        (format!("peers = [\"0.0.0.0\"]\n{ONE}"), "not another broker's address"),
        (format!("peers = [\"127.0.0.1\"]\n{ONE}"), "not another broker's address"),
        (format!("peers = [\"224.0.0.18\"]\n{ONE}"), "not another broker's address"),
        (format!("peers = [\"198.51.100.6\", \"198.51.100.6\"]\n{ONE}"), "listed twice"),
        (format!("peers = [\"198.51.100.6\"]\npeer_port = 42424\n{ONE}"), "a UDP port of its own"),
        (format!("peers = [\"broker-b\"]\n{ONE}"), "invalid IP address"),
    ] {
        let e = err(&text);
        assert!(e.contains(expected), "{expected:?} not in: {e}");
    }
}
