//! `cargo xtask bench-e2e`: end-to-end figures on this machine.
//!
//! 1. Packets/s through one LB node: an AF_PACKET generator in a neighbouring namespace sends UDP
//!    frames to the VIP (1024 flows) over a veth; the node runs (a) the balancer or (b) a program
//!    that only bounces frames (XDP_TX), the limit of this path, in alternating rounds. Frames
//!    that come back are counted and dropped in XDP on the generator's side (`xdp_sink`), so
//!    both programs' frames cost the receiver the same whatever their addresses.
//! 2. Requests/s through one site: short TCP request/answer connections from one and from
//!    several client threads through the real `lb` daemon.
//! 3. Failover: a backend killed (until both nodes' rings drop it) and a site withdrawn with
//!    `lb site drain` (until the last answer from the old site).

use std::time::{Duration, Instant};

use lb_common::{programs, stats::Counter};
use lb_tests::{
    anycast::Anycast,
    bird::wait_for,
    fixture::{Balancer, TEST_RING_SIZE},
    netns::{veth, End, NetNs},
    topology::{ask, Site},
};
use lb_userspace::{
    config::AttachMode,
    dataplane::{Dataplane, LoadOptions},
};

const PACKETS: usize = 2_000_000;
const BATCH: usize = 256;
const FLOWS: u16 = 1024;
/// Concurrent clients for the request rate (the machine has 2 cores; more threads mostly wait).
const CLIENT_THREADS: usize = 4;
/// Rounds of the packet-rate comparison, each running the three programs.
const RATE_ROUNDS: usize = 5;
/// The packet-rate programs, in the order of round 0 (each round rotates it by one).
const RATE_PROGRAMS: [&str; 3] = [programs::BALANCER, programs::BOUNCE, programs::LEAST_ENCAP];

/// Short request/answer connections for 3 s from `threads` client threads: (answered, failed, seconds).
fn request_rate(net: &Anycast, threads: usize) -> (usize, usize, f64) {
    let start = Instant::now();
    let counts: Vec<(usize, usize)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    net.client.run(|| {
                        let (mut ok, mut failed) = (0, 0);
                        while start.elapsed() < Duration::from_secs(3) {
                            match ask(Site::vip_addr(), "x") {
                                Ok(_) => ok += 1,
                                Err(_) => failed += 1,
                            }
                        }
                        (ok, failed)
                    })
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("client thread")).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    (counts.iter().map(|c| c.0).sum(), counts.iter().map(|c| c.1).sum(), secs)
}

/// A UDP frame from 10.50.0.1:port to the VIP.
fn frame(port: u16) -> Vec<u8> {
    lb_tests::packet::Frame::udp("10.50.0.1", port, "10.99.0.1", 9000).payload(18).build()
}

/// Sends `PACKETS` frames (`FLOWS` flows) on `ifname`; returns (sent, elapsed).
fn generate(ifname: &str) -> (usize, Duration) {
    // One frame per flow, sent round and round (the generator sends them BATCH at a time).
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(|i| frame(20_000 + i)).collect();
    let out = lb_tests::packetgen::send(ifname, &frames, PACKETS, Duration::from_secs(30));
    (out.sent, out.took)
}

/// One run: frames sent, the rates, and what the programs counted.
struct Rate {
    sent: usize,
    offered_pps: f64,
    returned_pps: f64,
    /// Frames the sink counted (and dropped).
    sunk: u64,
    /// The balancer's own `tx` counter (the bounce program counts nothing; the least-encap one
    /// counts the packets it gave the whole balancer).
    lb_tx: Option<u64>,
}

/// Sends `PACKETS` frames through program `which` on the LB side and counts what comes back.
fn packet_rate(which: &str) -> Rate {
    let gen = NetNs::new("gen", false);
    let lb = NetNs::new("lb", false);
    veth(
        End { ns: &gen, dev: "g0", mac: "02:00:00:00:00:03", addrs: &["10.50.0.1/24"] },
        End { ns: &lb, dev: "lb0", mac: "02:00:00:00:00:02", addrs: &["10.50.0.2/24"] },
    );
    let sink = gen.run(|| {
        let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16, ring_slots: 2 }).expect("load");
        dp.attach(programs::SINK, "g0", AttachMode::Native).expect("sink");
        dp
    });
    let balancer = lb.run(|| {
        let mut b = Balancer::new();
        b.add_vip("10.99.0.1", 9000, 17, 0, TEST_RING_SIZE, &[("10.1.0.1", 1), ("10.1.0.2", 1), ("10.1.0.3", 1)]);
        b.dp_mut().attach(which, "lb0", AttachMode::Native).expect("attach");
        b
    });
    let (sent, elapsed) = gen.run(|| generate("g0"));
    std::thread::sleep(Duration::from_millis(200));
    let sunk = sink.counter(Counter::Drop).expect("sink count");
    let [tx, drop] = [Counter::Tx, Counter::Drop].map(|c| balancer.dp().counter(c).expect("balancer counter"));
    let vip_packets = balancer.dp().vip_stats(0).expect("vip stats").packets;
    let lb_tx = match which {
        // The balancer's path: every VIP frame it saw went back out encapsulated, none was
        // dropped. (The kernel's own IPv6 neighbour discovery on the link passes.)
        programs::BALANCER => {
            assert_eq!((drop, vip_packets), (0, tx), "the balancer dropped frames, or sent others than the VIP's");
            Some(tx)
        }
        // Only a flow's first frames took the whole balancer (which recorded the flow); every
        // other frame came back, so the least path sent it.
        programs::LEAST_ENCAP => {
            assert_eq!((drop, vip_packets), (0, tx), "the balancer dropped frames, or sent others than the VIP's");
            assert!(tx <= 4 * FLOWS as u64, "{tx} frames took the whole balancer, not the least path");
            assert!(sunk >= sent as u64, "{sunk} of {sent} frames came back");
            Some(tx)
        }
        _ => None,
    };
    let secs = elapsed.as_secs_f64();
    Rate { sent, offered_pps: sent as f64 / secs, returned_pps: sunk as f64 / secs, sunk, lb_tx }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // SAFETY: no arguments, no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench-e2e needs root");
        std::process::exit(1);
    }
    println!("1. packets/s through one LB node ({PACKETS} UDP frames per run, {FLOWS} flows, AF_PACKET sendmmsg x{BATCH} from a neighbouring namespace, native XDP on veth; returned frames counted and dropped by XDP on the generator's side; {RATE_ROUNDS} rounds, the order rotating)");
    println!(
        "| round | program | offered pps | returned pps | frames sent | sink counted | balancer tx |\n|---|---|---:|---:|---:|---:|---:|"
    );
    // Per program (in RATE_PROGRAMS' order), the returned pps of each round.
    let mut returned = [const { Vec::new() }; 3];
    for round in 0..RATE_ROUNDS {
        for k in 0..RATE_PROGRAMS.len() {
            let i = (k + RATE_PROGRAMS.len() - round % RATE_PROGRAMS.len()) % RATE_PROGRAMS.len();
            let which = RATE_PROGRAMS[i];
            let r = packet_rate(which);
            let tx = r.lb_tx.map_or("-".to_owned(), |t| t.to_string());
            println!("| {round} | {which} | {:.0} | {:.0} | {} | {} | {tx} |", r.offered_pps, r.returned_pps, r.sent, r.sunk);
            returned[i].push(r.returned_pps);
        }
    }
    let [balancer_pps, bounce_pps, least_pps] = &returned;
    let per_round = |of: &[f64]| -> (String, f64) {
        let ratios: Vec<f64> = of.iter().zip(bounce_pps).map(|(a, b)| a / b).collect();
        (ratios.iter().map(|r| format!("{:.0}%", 100.0 * r)).collect::<Vec<_>>().join(", "), median(ratios))
    };
    let (balancer_rounds, balancer_median) = per_round(balancer_pps);
    let (least_rounds, least_median) = per_round(least_pps);
    println!(
        "balancer {:.0} pps, least encap {:.0} pps, bounce {:.0} pps (medians)",
        median(balancer_pps.clone()),
        median(least_pps.clone()),
        median(bounce_pps.clone())
    );
    println!("balancer / bounce per round: {balancer_rounds}; median {:.0}% (target >= 95%)", 100.0 * balancer_median);
    println!(
        "least encap / bounce per round: {least_rounds}; median {:.0}% (the least an encapsulating balancer does)",
        100.0 * least_median
    );
    println!("(veth xmit runs the peer's XDP in the sender's context, so offered = what the path carried)");

    println!("\n2. requests/s through one site (short TCP connections, {CLIENT_THREADS} client threads, 3 s)");
    let net = Anycast::new(&[1, 1], &[3, 3]);
    let _a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    wait_for(Duration::from_secs(30), "route via site A", || net.next_hops() == ["10.20.1.2"]);
    for threads in [1, CLIENT_THREADS] {
        let (ok, failed, secs) = request_rate(&net, threads);
        println!("{threads} client thread(s): {ok} requests answered ({failed} failed) in {secs:.1} s: {:.0} requests/s", ok as f64 / secs);
    }

    println!("\n3. failover");
    let stopped = {
        let servers = &_a;
        servers.stop(2);
        Instant::now()
    };
    wait_for(Duration::from_secs(5), "backend 2 out of the ring", || net.sites[0].nodes[0].lb.status()[0].reals[2].slots == 0);
    println!("backend failover (fall 2 x 100 ms): {:?} from the kill to the ring without it", stopped.elapsed());
    let (last_a, drained_at) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            net.client.run(|| {
                let start = Instant::now();
                let mut last_a = None;
                while start.elapsed() < Duration::from_secs(3) {
                    if let Ok(a) = ask(Site::vip_addr(), "x") {
                        if a.text.starts_with("site A") {
                            last_a = Some(Instant::now());
                        }
                    }
                }
                last_a
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        let drained_at = Instant::now();
        assert!(net.sites[0].nodes[0].lb.cli(&["site", "drain"]).status.success());
        (load.join().expect("load"), drained_at)
    });
    match last_a {
        Some(t) if t > drained_at => println!("site failover (lb site drain -> last answer from site A): {:?}", t - drained_at),
        _ => println!("site failover: no answer from site A after the drain command"),
    }
}
