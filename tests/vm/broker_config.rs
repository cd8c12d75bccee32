//! Invalid configurations: each gives its error and changes nothing.

use std::os::unix::fs::PermissionsExt;

use footunnel_tests::{Netns, footunnel_once, require_vm};

use crate::broker::read_link;

fn setup() -> (Netns, String) {
    require_vm();
    let ns = Netns::new("cfg");
    ns.ip("link add up0 type dummy");
    ns.ip("addr add 198.51.100.1/24 dev up0");
    ns.ip("link set up0 up");
    ns.ip("fou add port 42424 ipproto 4");
    ns.ip("link add fou0 type ipip remote 203.0.113.9 local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    ns.ip("addr add 10.0.0.1/30 dev fou0");
    ns.ip("link add plain0 type ipip remote 203.0.113.10 local 198.51.100.1");
    let dir = format!("/tmp/ft-cfg-{}", ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    (ns, dir)
}

fn tunnel(name: &str, link: &str, secret: &str) -> String {
    format!("[[tunnel]]\nname = \"{name}\"\nlink = \"{link}\"\nsecret = \"{secret}\"\n")
}

#[test]
fn invalid_configurations_are_refused_with_their_fix_and_change_nothing() {
    let (ns, dir) = setup();
    let secret_file = format!("{dir}/loose.secret");
    std::fs::write(&secret_file, "a secret readable by all, oops\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pin_dir = format!("/sys/fs/bpf/ft-{}", ns.name);
    let header = format!("pin_dir = \"{pin_dir}\"\nstate_dir = \"{dir}/state\"\n");
    let cases = [
        ("missing link", tunnel("a", "nosuch0", "secret number one, long"), "no link named \"nosuch0\""),
        ("not a tunnel", tunnel("a", "up0", "secret number one, long"), "not an ipip, sit or ip6tnl tunnel"),
        ("no FoU encapsulation", tunnel("a", "plain0", "secret number one, long"), "has no FoU encapsulation"),
        (
            "duplicate ids",
            format!("{}{}", tunnel("a", "fou0", "same secret for both"), tunnel("b", "plain0", "same secret for both")),
            "same key id",
        ),
        (
            "secret file readable by others",
            format!("[[tunnel]]\nname = \"a\"\nlink = \"fou0\"\nsecret_file = \"{secret_file}\"\n"),
            "chmod 600",
        ),
        (
            "bad prefix",
            format!("{}peer_prefixes = [\"10.0.0.2/24\"]\n", tunnel("a", "fou0", "secret number one, long")),
            "host bits set",
        ),
        (
            "port without a FoU listener",
            format!("fou_ports = [5555]\n{}", tunnel("a", "fou0", "secret number one, long")),
            "ip fou add port 5555",
        ),
    ];
    for (what, body, expected) in cases {
        let path = format!("{dir}/broker.toml");
        std::fs::write(&path, format!("{header}{body}")).unwrap();
        let (ok, out) = footunnel_once(&ns, &["broker", "--config", &path]);
        assert!(!ok, "{what}: accepted");
        assert!(out.contains(expected), "{what}: expected {expected:?} in:\n{out}");
        assert!(!std::path::Path::new(&pin_dir).exists(), "{what}: the data plane was loaded anyway");
        let l = read_link(&ns, "fou0").unwrap();
        assert_eq!(l.encap_dport(), Some(42424), "{what}: the link changed");
    }
    let (ok, out) = footunnel_once(&ns, &["broker", "fou0"]);
    assert!(!ok && out.contains("give the tunnel's secret"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
