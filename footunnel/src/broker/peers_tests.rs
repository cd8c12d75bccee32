use super::*;

const NOW: u64 = 1_790_000_000_000_000_000;
const WINDOW: u64 = 120_000_000_000;

fn tunnel(name: &str, secret: &str, prefixes: &[&str]) -> PeerTunnel {
    PeerTunnel {
        name: name.into(),
        identities: vec![TunnelIdentity::derive(secret)],
        prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
    }
}

fn ours() -> PeerTunnels {
    PeerTunnels::new(vec![
        tunnel("c1", "client one, long enough", &["10.0.0.0/30", "2001:db8:1::/64"]),
        tunnel("c2", "client two, long enough", &["10.0.0.4/30"]),
    ])
}

fn one(name: &str, secret: &str, prefixes: &[&str]) -> PeerTunnels {
    PeerTunnels::new(vec![tunnel(name, secret, prefixes)])
}

fn sent_by(t: &PeerTunnels, at: u64) -> HashMap<u64, u64> {
    HashMap::from([(t.tunnels[0].identities[0].id, at)])
}

#[test]
fn the_digest_is_of_the_set_of_prefixes() {
    let p = |s: &[&str]| s.iter().map(|p| p.parse().unwrap()).collect::<Vec<Prefix>>();
    let a = prefix_digest(&p(&["10.0.0.0/30", "2001:db8:1::/64"]));
    assert_eq!(a, prefix_digest(&p(&["2001:db8:1::/64", "10.0.0.0/30"])), "order does not matter");
    assert_ne!(a, prefix_digest(&p(&["10.0.0.0/30"])));
    assert_ne!(a, prefix_digest(&p(&["10.0.0.0/29", "2001:db8:1::/64"])));
}

#[test]
fn a_query_from_a_holder_of_the_secret_is_answered_with_our_digest() {
    let theirs = one("other name", "client two, long enough", &["10.0.0.4/30"]);
    let asked = on_query(&ours(), &theirs.query(0, NOW), NOW, WINDOW).expect("answered");
    assert_eq!((asked.tunnel, asked.agrees), (Some(1), true));
    assert_eq!(on_answer(&theirs, &sent_by(&theirs, NOW), &asked.answer), Some((0, Reply::Same)));
}

#[test]
fn other_prefixes_for_the_same_secret_disagree_both_ways() {
    let theirs = one("c1", "client one, long enough", &["10.0.0.0/30"]);
    let asked = on_query(&ours(), &theirs.query(0, NOW), NOW, WINDOW).expect("answered all the same");
    assert_eq!((asked.tunnel, asked.agrees), (Some(0), false));
    assert_eq!(on_answer(&theirs, &sent_by(&theirs, NOW), &asked.answer), Some((0, Reply::Other)));
}

#[test]
fn an_id_we_do_not_serve_is_answered_as_such_untagged() {
    let theirs = one("x", "a secret nobody here has", &["10.9.0.0/30"]);
    let asked = on_query(&ours(), &theirs.query(0, NOW), NOW, WINDOW).expect("answered");
    assert_eq!((asked.tunnel, asked.agrees), (None, false));
    assert_eq!(&asked.answer[32..], &[0; 8], "no key, no tag");
    assert_eq!(on_answer(&theirs, &sent_by(&theirs, NOW), &asked.answer), Some((0, Reply::NotServed)));
    // Even so it must answer a query we sent.
    assert_eq!(on_answer(&theirs, &sent_by(&theirs, NOW + 1), &asked.answer), None);
}

#[test]
fn forged_stale_or_unasked_messages_get_nothing() {
    let theirs = one("c1", "client one, long enough", &["10.0.0.0/30", "2001:db8:1::/64"]);
    let good = theirs.query(0, NOW);
    let mut forged = good;
    forged[39] ^= 1;
    let mut other_kind = good;
    other_kind[2] = Kind::Heartbeat as u8;
    for (what, bytes) in [("forged", &forged[..]), ("a heartbeat", &other_kind[..]), ("short", &good[..39])] {
        assert_eq!(on_query(&ours(), bytes, NOW, WINDOW), None, "{what}");
    }
    assert_eq!(on_query(&ours(), &good, NOW + 2 * WINDOW, WINDOW), None, "stale");
    assert!(on_query(&ours(), &good, NOW + 2 * WINDOW, 0).is_some(), "window 0: no freshness check");
    let answer = on_query(&ours(), &good, NOW, WINDOW).unwrap().answer;
    let mut forged_answer = answer;
    forged_answer[30] ^= 1;
    assert_eq!(on_answer(&theirs, &sent_by(&theirs, NOW), &forged_answer), None, "a forged answer");
    // An answer echoing a query we did not send (a replay of an old one).
    assert_eq!(on_answer(&theirs, &sent_by(&theirs, NOW + 1), &answer), None);
}

#[test]
fn a_rotating_tunnels_next_secret_is_asked_about_too() {
    let mut rotating = vec![
        tunnel("c1", "client one, long enough", &["10.0.0.0/30", "2001:db8:1::/64"]),
        tunnel("c2", "client two, long enough", &["10.0.0.4/30"]),
    ];
    rotating[0].identities.push(TunnelIdentity::derive("client one's next secret"));
    let theirs = one("c1", "client one's next secret", &["10.0.0.0/30", "2001:db8:1::/64"]);
    let asked = on_query(&PeerTunnels::new(rotating), &theirs.query(0, NOW), NOW, WINDOW).expect("answered");
    assert_eq!((asked.tunnel, asked.agrees), (Some(0), true));
}

#[test]
fn the_verdict_refuses_a_disagreement_and_warns_of_silence() {
    let tunnels = ours();
    let (a, b): (IpAddr, IpAddr) = ("198.51.100.6".parse().unwrap(), "198.51.100.10".parse().unwrap());
    let agree = HashMap::from([(a, HashMap::from([(0, Reply::Same), (1, Reply::Same)]))]);
    assert!(verdict(&tunnels, &[a], &agree).unwrap().is_empty());
    let warnings = verdict(&tunnels, &[a, b], &agree).unwrap();
    assert!(warnings.len() == 1 && warnings[0].contains("peer 198.51.100.10 did not answer"), "{warnings:?}");
    let partial = HashMap::from([(a, HashMap::from([(0, Reply::Same), (1, Reply::NotServed)]))]);
    let warnings = verdict(&tunnels, &[a], &partial).unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].contains("does not serve 1 tunnel(s)") && warnings[0].contains("\"c2\"")
    );
    let silent = HashMap::from([(a, HashMap::from([(0, Reply::Same)]))]);
    let warnings = verdict(&tunnels, &[a], &silent).unwrap();
    assert!(warnings.len() == 1 && warnings[0].contains("did not answer about 1 tunnel(s) in time: \"c2\""));
    let disagree = HashMap::from([(a, HashMap::from([(0, Reply::Other), (1, Reply::Same)]))]);
    let e = format!("{:#}", verdict(&tunnels, &[a], &disagree).unwrap_err());
    assert!(
        e.contains("tunnel \"c1\": the broker at 198.51.100.6 has its secret with other prefixes")
            && e.contains("(10.0.0.0/30, 2001:db8:1::/64)")
            && e.contains("give every broker with a tunnel's secret the same peer_prefixes"),
        "{e}"
    );
}

#[test]
fn many_tunnels_are_named_a_few_at_a_time() {
    let names: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(some_of(&names[..2], 5), "\"t0\", \"t1\"");
    assert_eq!(some_of(&names, 5), "\"t0\", \"t1\", \"t2\", \"t3\", \"t4\" and 7 more");
}

/// A peer socket on a loopback address of its own (so two can share a port).
async fn socket_at(addr: &str, port: u16) -> PeerSocket {
    let socket = UdpSocket::bind((addr.parse::<IpAddr>().unwrap(), port)).await.unwrap();
    PeerSocket { socket, port, running: PeerTunnels::new(Vec::new()) }
}

fn many(n: usize) -> Vec<PeerTunnel> {
    (0..n).map(|i| tunnel(&format!("t{i}"), &format!("secret of tunnel {i}, long enough"), &["10.0.0.0/30"])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tunnel_of_a_full_broker_is_compared_none_lost_to_a_burst() {
    const TUNNELS: usize = footunnel_ebpf::maps::MAX_TUNNELS;
    let port = 42_000 + (std::process::id() % 1000) as u16;
    let (a, b) = (socket_at("127.0.0.1", port).await, socket_at("127.0.0.2", port).await);
    let theirs = PeerTunnels::new(many(TUNNELS));
    let answering = tokio::spawn(async move {
        loop {
            let (payload, from) = b.receive().await.unwrap();
            b.answer(&theirs, &payload, from, WINDOW).await;
        }
    });
    let warnings = a.agree(&["127.0.0.2".parse().unwrap()], &PeerTunnels::new(many(TUNNELS)), WINDOW).await.unwrap();
    answering.abort();
    assert!(warnings.is_empty(), "{} warnings, the first: {:?}", warnings.len(), warnings.first());
}
