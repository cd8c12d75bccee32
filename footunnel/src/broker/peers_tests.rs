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

fn ours() -> Vec<PeerTunnel> {
    vec![
        tunnel("c1", "client one, long enough", &["10.0.0.0/30", "2001:db8:1::/64"]),
        tunnel("c2", "client two, long enough", &["10.0.0.4/30"]),
    ]
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
    let theirs = tunnel("other name", "client two, long enough", &["10.0.0.4/30"]);
    let asked = on_query(&ours(), &query(&theirs, NOW), NOW, WINDOW).expect("answered");
    assert_eq!((asked.tunnel, asked.agrees), (1, true));
    // The asker reads our answer as agreeing.
    let sent = HashMap::from([(theirs.identities[0].id, NOW)]);
    assert_eq!(on_answer(&[theirs], &sent, &asked.answer), Some((0, true)));
}

#[test]
fn other_prefixes_for_the_same_secret_disagree_both_ways() {
    let theirs = tunnel("c1", "client one, long enough", &["10.0.0.0/30"]);
    let asked = on_query(&ours(), &query(&theirs, NOW), NOW, WINDOW).expect("answered all the same");
    assert_eq!((asked.tunnel, asked.agrees), (0, false));
    let sent = HashMap::from([(theirs.identities[0].id, NOW)]);
    assert_eq!(on_answer(&[theirs], &sent, &asked.answer), Some((0, false)));
}

#[test]
fn forged_stale_unknown_or_unasked_messages_get_nothing() {
    let theirs = tunnel("c1", "client one, long enough", &["10.0.0.0/30", "2001:db8:1::/64"]);
    let good = query(&theirs, NOW);
    let mut forged = good;
    forged[39] ^= 1;
    let mut other_kind = good;
    other_kind[2] = Kind::Heartbeat as u8;
    let stranger = query(&tunnel("x", "a secret nobody here has", &["10.9.0.0/30"]), NOW);
    for (what, bytes) in [("forged", &forged[..]), ("a heartbeat", &other_kind[..]), ("unknown", &stranger[..])] {
        assert_eq!(on_query(&ours(), bytes, NOW, WINDOW), None, "{what}");
    }
    assert_eq!(on_query(&ours(), &good[..39], NOW, WINDOW), None, "short");
    assert_eq!(on_query(&ours(), &good, NOW + 2 * WINDOW, WINDOW), None, "stale");
    assert!(on_query(&ours(), &good, NOW + 2 * WINDOW, 0).is_some(), "window 0: no freshness check");
    // An answer echoing a query we did not send (a replay of an old one).
    let answer = on_query(&ours(), &good, NOW, WINDOW).unwrap().answer;
    let sent = HashMap::from([(theirs.identities[0].id, NOW + 1)]);
    assert_eq!(on_answer(&[theirs], &sent, &answer), None);
}

#[test]
fn a_rotating_tunnels_next_secret_is_asked_about_too() {
    let mut rotating = ours();
    rotating[0].identities.push(TunnelIdentity::derive("client one's next secret"));
    let theirs = tunnel("c1", "client one's next secret", &["10.0.0.0/30", "2001:db8:1::/64"]);
    let asked = on_query(&rotating, &query(&theirs, NOW), NOW, WINDOW).expect("answered");
    assert_eq!((asked.tunnel, asked.agrees), (0, true));
}

#[test]
fn the_verdict_refuses_a_disagreement_and_warns_of_silence() {
    let tunnels = ours();
    let (a, b): (IpAddr, IpAddr) = ("198.51.100.6".parse().unwrap(), "198.51.100.10".parse().unwrap());
    let agree = HashMap::from([(a, HashMap::from([(0, true), (1, true)]))]);
    assert!(verdict(&tunnels, &[a], &agree).unwrap().is_empty());
    let warnings = verdict(&tunnels, &[a, b], &agree).unwrap();
    assert!(warnings.len() == 1 && warnings[0].contains("peer 198.51.100.10 did not answer"), "{warnings:?}");
    let partial = HashMap::from([(a, HashMap::from([(0, true)]))]);
    let warnings = verdict(&tunnels, &[a], &partial).unwrap();
    assert!(warnings.len() == 1 && warnings[0].contains("does not serve tunnel \"c2\""), "{warnings:?}");
    let disagree = HashMap::from([(a, HashMap::from([(0, false), (1, true)]))]);
    let e = format!("{:#}", verdict(&tunnels, &[a], &disagree).unwrap_err());
    assert!(
        e.contains("tunnel \"c1\": the broker at 198.51.100.6 has its secret with other prefixes")
            && e.contains("(10.0.0.0/30, 2001:db8:1::/64)")
            && e.contains("give every broker with a tunnel's secret the same peer_prefixes"),
        "{e}"
    );
}
