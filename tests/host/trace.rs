//! `footunnel broker --trace`: loaded with the trace on, the programs log
//! each control message's verdict through aya-log; loaded with it off (the
//! default), the verifier removes the logging from the program.

use std::sync::{Arc, Mutex};

use aya::programs::Xdp;
use footunnel::broker::dataplane::XDP_PROGRAM;
use footunnel_tests::{
    broker::{Broker, FOU_PORT, XDP_DROP, XDP_PASS, now_ns},
    frame::Udp4,
};

const CLIENT: [u8; 4] = [203, 0, 113, 5];
const BROKER: [u8; 4] = [198, 51, 100, 1];

/// The trace's lines as aya-log formats them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

/// Runs a valid heartbeat, a forged one and FoU data through the XDP entry
/// point; the lines the trace logged.
fn traced(broker: &mut Broker) -> Vec<String> {
    let lines = Lines::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut broker.ebpf, lines.clone()).expect("aya-log");
    let t0 = now_ns();
    let mut forged = broker.heartbeat(t0 + 1);
    forged[39] ^= 1;
    let inner = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
    assert_eq!(broker.xdp(&Udp4::new(CLIENT, 40001, BROKER, FOU_PORT, &broker.heartbeat(t0)).build()), XDP_DROP);
    assert_eq!(broker.xdp(&Udp4::new(CLIENT, 40002, BROKER, FOU_PORT, &forged).build()), XDP_DROP);
    assert_eq!(broker.xdp(&Udp4::new(CLIENT, 40001, BROKER, FOU_PORT, &inner).build()), XDP_PASS);
    logger.flush();
    lines.0.lock().unwrap().clone()
}

#[test]
fn with_the_trace_on_each_control_message_is_logged_with_its_verdict() {
    let lines = traced(&mut Broker::loaded(false, true));
    assert_eq!(
        lines,
        [
            format!(
                "control message ::ffff:203.0.113.5 port 40001 -> ::ffff:198.51.100.1 port {FOU_PORT}: accepted heartbeat"
            ),
            format!(
                "control message ::ffff:203.0.113.5 port 40002 -> ::ffff:198.51.100.1 port {FOU_PORT}: dropped bad_tag"
            ),
        ],
        "one line per control message, none for FoU data"
    );
}

#[test]
fn with_the_trace_off_nothing_is_logged_and_the_verifier_removes_the_logging() {
    let mut off = Broker::new(false);
    assert_eq!(traced(&mut off), Vec::<String>::new());
    let on = Broker::loaded(false, true);
    let size = |b: &Broker| {
        let xdp: &Xdp = b.ebpf.program(XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.info().unwrap().size_translated().expect("the kernel reports the translated size")
    };
    let (off, on) = (size(&off), size(&on));
    // The log call is hundreds of instructions; a runtime branch left in
    // would keep them.
    eprintln!("translated XDP program: {off} bytes with the trace off, {on} with it on");
    assert!(off + 800 < on, "translated XDP program: {off} bytes with the trace off, {on} with it on");
}
