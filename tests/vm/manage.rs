//! Optional link management: what footunnel creates, it removes; nothing else.

use std::{process::Command, time::Duration};

use footunnel_tests::{Netns, NsProcess, footunnel_once, require_vm, veth};
use netlink_packet_route::link::TunnelEncapType;

use crate::broker::{SECRET, read_link};

fn listeners(ns: &Netns) -> String {
    ns.ip("fou show")
}

#[test]
fn a_managed_broker_creates_its_link_and_unload_removes_only_that() {
    require_vm();
    let broker = Netns::new("mbroker");
    let client = Netns::new("mclient");
    veth(&broker, "up0", "198.51.100.1/24", &client, "up0", "198.51.100.2/24");
    let dir = format!("/tmp/ft-{}", broker.name);
    std::fs::create_dir_all(&dir).unwrap();
    // A link footunnel does not manage, made by hand: it must survive.
    broker.ip("link add other0 type dummy");
    let config = format!("{dir}/broker.toml");
    std::fs::write(
        &config,
        format!(
            "pin_dir = \"/sys/fs/bpf/ft-{0}\"\nstate_dir = \"{dir}/state\"\n\n[[tunnel]]\nname = \"m\"\nlink = \"fou0\"\nsecret = \"{SECRET}\"\n\
             manage = {{ local = \"198.51.100.1\", address = \"10.0.0.1/30\" }}\n",
            broker.name
        ),
    )
    .unwrap();
    assert!(!listeners(&broker).contains("42424"));

    let mut process = NsProcess::footunnel(&broker, &["broker", "-v", "--config", &config]);
    process.wait_for("broker running", Duration::from_secs(20));
    assert!(process.log().contains("created links [\"fou0\"] and FoU listeners on ports [42424]"), "{}", process.log());
    let link = read_link(&broker, "fou0").expect("the broker created fou0");
    assert_eq!(link.encap_type(), Some(TunnelEncapType::Fou));
    assert_eq!((link.encap_sport(), link.ttl()), (Some(42424), Some(64)));
    assert_eq!(link.local(), Some("198.51.100.1".parse().unwrap()));
    assert!(broker.ip("addr show dev fou0").contains("10.0.0.1/30"));
    assert!(listeners(&broker).contains("port 42424 ipproto 4"));

    // Idempotent: a restart finds everything in place and creates nothing.
    process.kill9();
    let mut again = NsProcess::footunnel(&broker, &["broker", "-v", "--config", &config]);
    again.wait_for("broker running", Duration::from_secs(20));
    assert!(!again.log().contains("created links"), "{}", again.log());
    again.kill9();

    let (ok, out) = footunnel_once(
        &broker,
        &["unload", "--pin-dir", &format!("/sys/fs/bpf/ft-{}", broker.name), "--state-dir", &format!("{dir}/state")],
    );
    assert!(ok, "{out}");
    assert!(read_link(&broker, "fou0").is_err(), "fou0 was created by footunnel and is gone");
    assert!(!listeners(&broker).contains("42424"), "so is the FoU listener");
    assert!(broker.ip("link show other0").contains("other0"), "what footunnel did not create stays");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_managed_client_brings_its_link_up_and_down() {
    require_vm();
    let broker = Netns::new("mb");
    let client = Netns::new("mc");
    veth(&broker, "up0", "198.51.100.1/24", &client, "up0", "198.51.100.2/24");
    broker.ip("fou add port 42424 ipproto 4");
    broker.ip("link add fou0 type ipip remote 192.0.2.9 local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    broker.ip("addr add 10.0.0.1/30 dev fou0");
    broker.ip("link set fou0 up");
    let dir = format!("/tmp/ft-{}", broker.name);
    let _broker = NsProcess::footunnel(
        &broker,
        &["broker", "--pin-dir", &format!("/sys/fs/bpf/ft-{}", broker.name), "--state-dir", &dir, "fou0", SECRET],
    );
    let mut c = NsProcess::footunnel(
        &client,
        &[
            "client",
            "-v",
            "--manage",
            "--address",
            "10.0.0.2/30",
            "--port",
            "40001",
            "--state-dir",
            &format!("{dir}-client"),
            "198.51.100.1",
            SECRET,
        ],
    );
    c.wait_for("the broker sees this end at 198.51.100.2:40001", Duration::from_secs(20));
    let link = read_link(&client, "fou0").expect("the client created fou0");
    assert_eq!((link.encap_sport(), link.encap_dport()), (Some(40001), Some(42424)));
    assert!(link.local_ip().is_none(), "local any, so address changes keep it working");
    let ping = Command::new("ip")
        .args(["netns", "exec", &client.name, "ping", "-c", "1", "-W", "2", "10.0.0.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "traffic flows through the managed link");

    // SIGTERM: a clean exit takes down what it brought up.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
    let status = c.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", c.log());
    assert!(read_link(&client, "fou0").is_err(), "fou0 removed:\n{}", c.log());
    assert!(!client.ip("fou show").contains("40001"), "listener removed");
    footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", broker.name), &dir);
}

#[test]
fn a_managed_broker_that_fails_to_start_removes_what_it_created() {
    require_vm();
    let broker = Netns::new("mfail");
    broker.ip("link add up0 type dummy");
    broker.ip("addr add 198.51.100.1/24 dev up0");
    broker.ip("link set up0 up");
    let dir = format!("/tmp/ft-{}", broker.name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!("{dir}/broker.toml");
    // The links come up first; then the pin directory cannot be made.
    std::fs::write(
        &config,
        format!(
            "pin_dir = \"/proc/footunnel-cannot-be-here/pins\"\nstate_dir = \"{dir}/state\"\n\n[[tunnel]]\nname = \"m\"\n\
             link = \"fou0\"\nsecret = \"{SECRET}\"\nmanage = {{ local = \"198.51.100.1\", address = \"10.0.0.1/30\" }}\n"
        ),
    )
    .unwrap();
    let (ok, out) = footunnel_once(&broker, &["broker", "-v", "--config", &config]);
    assert!(!ok, "{out}");
    assert!(out.contains("created links [\"fou0\"]"), "the failure must come after the link was made:\n{out}");
    assert!(read_link(&broker, "fou0").is_err(), "a failed start left its link behind:\n{out}");
    assert!(!listeners(&broker).contains("42424"), "a failed start left its FoU listener behind");
    std::fs::remove_dir_all(&dir).unwrap();
}
