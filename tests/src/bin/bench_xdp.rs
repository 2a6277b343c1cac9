//! `cargo xtask bench-xdp`: kernel ns per packet of each balancer path, beside an empty XDP
//! program (the floor), one BPF_PROG_TEST_RUN call per packet.
//!
//! Every call has repeat = 1 and starts from its input frame: no wrapper undoes the rewrite, and
//! each case runs what a packet on the wire runs. A new flow is recorded on its handshake's ACK,
//! so its case is two calls, the SYN and the ACK, compared with two calls of the empty program. The kernel reports each call's duration; a
//! case's figure for a round is the sum over its calls divided by the calls. Rounds run every
//! case once, the order rotating each round, the empty program among them; the table shows the
//! median over rounds, the min-max of the rounds and the 99th percentile of single calls.
//!
//! Each case proves its path: every call returns the verdict and the output length the case
//! names, and the program's own counters grew by exactly the number of calls (hits, new flows,
//! passes, echo replies, handoffs).

use std::sync::LazyLock;

use anyhow::{ensure, Result};
use lb_common::{
    programs,
    stats::{Counter, DecapCounter},
    FlowKey,
};
use lb_tests::{
    fixture::{flow_of, Balancer},
    packet::{ip, Frame},
    test_run::{self, action_name},
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};

/// Calls per case per round, and rounds (`LB_BENCH_CALLS`, `LB_BENCH_ROUNDS` change them for a
/// quick look).
static CALLS: LazyLock<usize> = LazyLock::new(|| from_env("LB_BENCH_CALLS", 100_000));
static ROUNDS: LazyLock<usize> = LazyLock::new(|| from_env("LB_BENCH_ROUNDS", 10));
/// VIPs loaded on the measured balancer (`LB_BENCH_VIPS`): the two measured ones and as many
/// others, half IPv4 and half IPv6, each with its own address (so in the pre-filter).
static VIPS: LazyLock<usize> = LazyLock::new(|| from_env("LB_BENCH_VIPS", 4096).max(2));

fn from_env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Holds every new flow of every round of both families (no eviction: checked at the end).
const CONN_TABLE: u32 = 4 << 20;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Targets of the performance issue, as ratios to the floor measured in the same run.
const TARGET_HIT: f64 = 2.4;
const TARGET_NEW_FLOW: f64 = 10.5;
const TARGET_PASS: f64 = 1.25;

/// The second chance's cases, on their own balancer (index 3).
const SECOND_CHANCE_CASES: [&str; 6] = [
    "miss with an alternative (second chance), IPv4",
    "miss with an alternative (second chance), IPv6",
    "hit with an alternative (second chance), IPv4",
    "hit with an alternative (second chance), IPv6",
    "backend forward (second chance, lb_decap), IPv4",
    "backend forward (second chance, lb_decap), IPv6",
];

/// QUIC-LB's cases, on their own balancers: one with QUIC-LB VIPs (index `lbs.len()` when
/// loaded) and one with the same UDP VIP but no QUIC-LB anywhere (the next).
const QUIC_CASES: [&str; 7] = [
    "UDP 5-tuple hit, node without QUIC-LB, IPv4",
    "UDP 5-tuple hit, node with QUIC-LB, IPv4",
    "QUIC short header by CID, plaintext, IPv4",
    "QUIC short header by CID, encrypted single pass, IPv4",
    "QUIC short header by CID, encrypted 4-pass (3 AES), IPv4",
    "QUIC short header by CID, encrypted 4-pass (4 AES), IPv4",
    "QUIC short header fallback (unknown server ID) + 5-tuple hit, IPv4",
];
/// The QUIC VIPs' ports: plaintext, single pass, four passes with a short and a long server ID.
const QUIC_PORTS: [u16; 4] = [443, 444, 445, 446];
const UDP_PORT: u16 = 53;

const VIP4: &str = "10.0.0.1";
const VIP6: &str = "2001:db8::10";

/// Which of the program's counters proves that a call took the case's path.
#[derive(Clone, Copy)]
enum Proof {
    /// The empty program counts nothing; verdict and length are checked.
    None,
    Global(Counter),
    /// `VipStats::conn_hits` of the VIP at this index.
    ConnHits(u32),
    /// `VipStats::new_flows` of the VIP at this index (each flow's SYN and ACK both miss).
    NewFlows(u32),
    /// A counter of the backend's program.
    Decap(DecapCounter),
}

impl Proof {
    fn read(self, dp: &Dataplane) -> Result<u64> {
        Ok(match self {
            Proof::None => 0,
            Proof::Global(c) => dp.counter(c)?,
            Proof::Decap(c) => dp.decap_counter(c)?,
            Proof::ConnHits(vip) => dp.vip_stats(vip)?.conn_hits,
            Proof::NewFlows(vip) => {
                let s = dp.vip_stats(vip)?;
                ensure!(2 * s.new_flows == s.conn_misses, "new flows {} for misses {}", s.new_flows, s.conn_misses);
                s.new_flows
            }
        })
    }
}

/// The frame of each call.
enum Input {
    Same(Vec<u8>),
    /// Call `n` sends frame `n % len`.
    Cycle(Vec<Vec<u8>>),
    /// The `n`th new flow of this case, from a source no earlier call used: its SYN, then its
    /// handshake's ACK, which records it. One "call" of the case is both, their times summed.
    NewFlow(fn(u32) -> Frame),
    /// The `n`th flow's mid-flow packet, from a source no earlier call used: a miss every call.
    Fresh(fn(u32) -> Frame),
}

struct Case {
    name: &'static str,
    /// Index into the balancers.
    lb: usize,
    fd: i32,
    input: Input,
    action: u32,
    /// Output length minus input length.
    grows: usize,
    proof: Proof,
    target: Option<f64>,
    /// Calls made so far (new-flow cases number their flows with it).
    calls: u32,
    /// Per round: mean kernel ns per call.
    rounds: Vec<f64>,
    /// Per round, for a case of two packets (a new flow): the mean of each packet's own call, so
    /// the SYN's and the ACK's shares show.
    by_packet: [Vec<f64>; 2],
    /// Every call's kernel ns.
    each: Vec<u32>,
}

impl Case {
    /// One round: `CALLS` calls, each checked, then the counters.
    fn round(&mut self, lbs: &[Balancer]) -> Result<()> {
        let dp = lbs[self.lb].dp();
        let before = self.proof.read(dp)?;
        let mut total = 0u64;
        let mut packet_totals = [0u64; 2];
        for _ in 0..*CALLS {
            let frames = match &self.input {
                Input::Same(frame) => vec![frame.clone()],
                Input::Cycle(frames) => vec![frames[self.calls as usize % frames.len()].clone()],
                Input::NewFlow(make) => {
                    let flow = make(self.calls);
                    vec![flow.clone().syn().build(), flow.build()]
                }
                Input::Fresh(make) => vec![make(self.calls).build()],
            };
            let mut ns = 0;
            for (i, frame) in frames.iter().enumerate() {
                let out = test_run::run(self.fd, frame, 1)?;
                ensure!(
                    out.action == self.action && out.data.len() == frame.len() + self.grows,
                    "{}: {} with {} bytes out of {}",
                    self.name,
                    action_name(out.action),
                    out.data.len(),
                    frame.len()
                );
                ns += out.duration_ns;
                packet_totals[i] += out.duration_ns as u64;
            }
            total += ns as u64;
            self.each.push(ns);
            self.calls += 1;
        }
        if !matches!(self.proof, Proof::None) {
            let counted = self.proof.read(dp)? - before;
            ensure!(counted == *CALLS as u64, "{}: the program counted {counted} of {} calls on this path", self.name, *CALLS);
        }
        self.rounds.push(total as f64 / *CALLS as f64);
        if matches!(self.input, Input::NewFlow(_)) {
            for (rounds, t) in self.by_packet.iter_mut().zip(packet_totals) {
                rounds.push(t as f64 / *CALLS as f64);
            }
        }
        Ok(())
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The `n`th new IPv4 flow: sources count up from 100.64.0.0 (a /10: 4M of them).
fn new_flow4(n: u32) -> Frame {
    Frame::tcp(&std::net::Ipv4Addr::from(0x6440_0000 + n).to_string(), 40_000, VIP4, 80)
}

fn new_flow6(n: u32) -> Frame {
    Frame::tcp(&format!("2001:db8:f::{:x}:{:x}", n >> 16, n & 0xffff), 40_000, VIP6, 80)
}

/// The `n`th unknown mid-flow IPv4 flow of the second-chance balancer.
fn fresh_flow4(n: u32) -> Frame {
    Frame::tcp(&std::net::Ipv4Addr::from(0x6440_0000 + n).to_string(), 40_002, VIP4, 80)
}

fn fresh_flow6(n: u32) -> Frame {
    Frame::tcp(&format!("2001:db8:f::{:x}:{:x}", n >> 16, n & 0xffff), 40_002, VIP6, 80)
}

/// Reals of the second-chance balancer: the ring before its change (8 reals) and after (8 others).
fn second_chance_reals(ipv6: bool, after: bool) -> Vec<String> {
    let first = if after { 9 } else { 1 };
    (first..first + 8).map(|i| if ipv6 { format!("fd00:1::{i:x}") } else { format!("10.1.0.{i}") }).collect()
}

/// A balancer whose two VIPs have the second chance and just changed rings completely (reals
/// 1-8 drained, 9-16 added): every unknown mid-flow packet carries its previous real along.
fn second_chance_balancer() -> Result<Balancer> {
    let ring_slots = 4 * lb_common::DEFAULT_RING_SIZE;
    let mut lb = Balancer::with_options(programs::BALANCER, &LoadOptions { conn_table_size: CONN_TABLE / 2, ring_slots });
    for (vip, ipv6) in [(VIP4, false), (VIP6, true)] {
        let (before, after) = (second_chance_reals(ipv6, false), second_chance_reals(ipv6, true));
        let weights = |w_before, w_after| -> Vec<(&str, u32)> {
            before.iter().map(|r| (r.as_str(), w_before)).chain(after.iter().map(|r| (r.as_str(), w_after))).collect()
        };
        let mut meta = lb.add_vip(vip, 80, 6, lb_common::VIP_F_SECOND_CHANCE, lb_common::DEFAULT_RING_SIZE, &weights(1, 0));
        lb.set_reals(&mut meta, &weights(0, 1));
    }
    // As a backend of it: the reals after the change are local, the balancer's sources trusted.
    let dp = lb.dp_mut();
    let local: Vec<std::net::IpAddr> =
        second_chance_reals(false, true).iter().chain(&second_chance_reals(true, true)).map(|r| ip(r)).collect();
    dp.set_decap_addrs(&local)?;
    dp.set_decap_vips(&[ip(VIP4), ip(VIP6)])?;
    dp.set_decap_sources(&[(ip("10.255.0.0"), 16), (ip("fd00:ffff::"), 96)])?;
    Ok(lb)
}

/// The QUIC-LB parameters of `QUIC_PORTS`' VIPs: (server ID length, nonce length, key).
fn quic_params(port: u16) -> lb_userspace::quic_lb::QuicLbConfig {
    let key = Some([0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f]);
    let (sid, nonce, key) = match port {
        443 => (2, 6, None),
        444 => (4, 12, key),
        445 => (2, 6, key),
        _ => (9, 4, key),
    };
    lb_userspace::quic_lb::QuicLbConfig { config_id: 1, server_id_len: sid, nonce_len: nonce, cid_len: 1 + sid + nonce + 2, key }
}

/// The `QUIC_CASES` balancers: UDP VIP 10.0.0.1:53 (16 reals, no QUIC-LB) on both, and on the
/// first the QUIC-LB VIPs of `QUIC_PORTS` (16 reals with server IDs each).
fn quic_balancers() -> Result<[Balancer; 2]> {
    let reals: Vec<String> = (1..=16).map(|i| format!("10.1.0.{i}")).collect();
    let ring_slots = 4 * lb_common::DEFAULT_RING_SIZE + 2 * 8 * lb_tests::fixture::TEST_RING_SIZE;
    let load = || Balancer::with_options(programs::BALANCER, &LoadOptions { conn_table_size: 1 << 16, ring_slots });
    let (mut with, mut without) = (load(), load());
    for lb in [&mut with, &mut without] {
        lb.add_vip(VIP4, UDP_PORT, 17, 0, lb_common::DEFAULT_RING_SIZE, &weighted(&reals));
    }
    for port in QUIC_PORTS {
        let config = quic_params(if port == UDP_PORT { QUIC_PORTS[0] } else { port });
        let sids: Vec<Vec<u8>> = (1..=16u8).map(|r| (0..config.server_id_len).map(|i| r ^ i.wrapping_mul(29)).collect()).collect();
        let with_ids: Vec<(&str, &[u8])> = reals.iter().zip(&sids).map(|(r, s)| (r.as_str(), s.as_slice())).collect();
        with.add_quic_vip(VIP4, port, &config, &with_ids);
    }
    Ok([with, without])
}

/// A QUIC short-header packet to `port` with a connection ID for real 5's server ID (or one no
/// real has), 1,200 octets as QUIC sends them. The 5-tuple rows send it to the UDP VIP: every
/// row copies the same bytes in and out.
fn quic_packet(port: u16, known: bool) -> Frame {
    let config = quic_params(port);
    let sid: Vec<u8> = (0..config.server_id_len).map(|i| if known { 5 ^ i.wrapping_mul(29) } else { 0xee }).collect();
    let nonce: Vec<u8> = (0..config.nonce_len).map(|i| i.wrapping_mul(77)).collect();
    let mut payload = vec![0x41];
    payload.extend(config.encode(&sid, &nonce, 3, &[0xab; 2]));
    payload.resize(1200, 0x5a);
    let mut f = Frame::udp("192.0.2.1", 40_000, VIP4, port);
    f.payload = payload;
    f
}

fn weighted(reals: &[String]) -> Vec<(&str, u32)> {
    reals.iter().map(|r| (r.as_str(), 1)).collect()
}

/// Address of the `i`th VIP beside the two measured ones: 10.100.0.0/16, 2001:db8:100::/48.
fn other_vip(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("10.100.{}.{}", i / 2 / 250, i / 2 % 250 + 1)
    } else {
        format!("2001:db8:100::{:x}", i / 2 + 1)
    }
}

/// The balancer with a TCP VIP per family, 16 reals each on full-size rings, `others` more VIPs
/// (small rings, the same reals), and optionally a handoff node address with two peers.
fn balancer(others: usize, handoff: Option<(&str, [&str; 2])>) -> Result<Balancer> {
    let small = lb_tests::fixture::TEST_RING_SIZE;
    let ring_slots = 4 * lb_common::DEFAULT_RING_SIZE + 2 * small * others as u32;
    let mut lb = Balancer::with_options(programs::BALANCER, &LoadOptions { conn_table_size: CONN_TABLE, ring_slots });
    let reals4: Vec<String> = (1..=16).map(|i| format!("10.1.0.{i}")).collect();
    let reals6: Vec<String> = (1..=16).map(|i| format!("fd00:1::{i:x}")).collect();
    for (vip, reals) in [(VIP4, &reals4), (VIP6, &reals6)] {
        lb.add_vip(vip, 80, 6, 0, lb_common::DEFAULT_RING_SIZE, &weighted(reals));
    }
    for i in 0..others {
        let vip = other_vip(i);
        lb.add_vip(&vip, 80, 6, 0, small, &weighted(if i % 2 == 0 { &reals4 } else { &reals6 }));
    }
    if let Some((node, peers)) = handoff {
        lb.set_handoff(Some(ip(node)), &peers.map(ip), false)?;
    }
    // The echo rows measure the reply path, the rate check included: a limit that never bites
    // (the default, 1,000 a second per CPU, would drop most of 100,000 pings a round).
    use lb_userspace::dataplane::DataplaneOps as _;
    lb.dp_mut().set_rate_limit(lb_common::limits::ECHO, &lb_common::RateLimit::per_sec(u32::MAX))?;
    Ok(lb)
}

/// 4,096 destinations that are no VIP (198.18.0.0/15, 2001:db8:ffff::/48), and how many of them
/// share a pre-filter bit with a VIP address, so take the hash lookup as well.
fn non_vip_destinations(ipv6: bool, vips: &[String]) -> (Vec<Vec<u8>>, usize) {
    let bits: std::collections::HashSet<u32> = vips.iter().map(|v| lb_common::hash::addr_filter_bit(&lb_common::addr16(ip(v)))).collect();
    let dsts: Vec<String> = (0..4096u32)
        .map(|i| {
            if ipv6 {
                format!("2001:db8:ffff::{:x}:{:x}", i, i * 7919 % 65_536 + 1)
            } else {
                std::net::Ipv4Addr::from(0xc612_0000 + i * 37 + 1).to_string()
            }
        })
        .collect();
    let shared = dsts.iter().filter(|d| bits.contains(&lb_common::hash::addr_filter_bit(&lb_common::addr16(ip(d))))).count();
    let src = if ipv6 { "2001:db8:c::1" } else { "192.0.2.1" };
    (dsts.iter().map(|d| Frame::tcp(src, 40_000, d, 80).build()).collect(), shared)
}

fn main() -> Result<()> {
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap_or_default();
    println!(
        "bpf_jit_enable = {}; one BPF_PROG_TEST_RUN call per packet (repeat 1); {} calls per case per round, {} rounds; {} VIPs loaded",
        jit.trim(),
        *CALLS,
        *ROUNDS,
        *VIPS
    );

    // The balancer as most nodes run it (no handoff), and one node per family with handoff
    // peers, for the handoff-send cases.
    let others = *VIPS - 2;
    let mut lbs = vec![
        balancer(others, None)?,
        balancer(0, Some(("10.20.9.2", ["10.20.1.2", "10.20.2.2"])))?,
        balancer(0, Some(("fd00:20:9::2", ["fd00:20:1::2", "fd00:20:2::2"])))?,
    ];
    // `LB_BENCH_ONLY=a,b`: only the cases whose names contain one of these (and the floor).
    let only: Option<Vec<String>> = std::env::var("LB_BENCH_ONLY").ok().map(|o| o.split(',').map(str::to_owned).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|keys| keys.iter().any(|k| name.contains(k.as_str())));
    // The second chance's balancer (its own connection table and rings) is loaded only when one
    // of its cases runs, so the other cases run in the same process as before it existed.
    let second_chance = SECOND_CHANCE_CASES.iter().any(|name| wanted(name));
    if second_chance {
        lbs.push(second_chance_balancer()?);
    }
    let quic = QUIC_CASES.iter().any(|name| wanted(name));
    let quic_lb = lbs.len();
    if quic {
        lbs.extend(quic_balancers()?);
    }
    let vip_addrs: Vec<String> = [VIP4.to_owned(), VIP6.to_owned()].into_iter().chain((0..others).map(other_vip)).collect();
    let (spread4, shared4) = non_vip_destinations(false, &vip_addrs);
    let (spread6, shared6) = non_vip_destinations(true, &vip_addrs);
    println!(
        "of 4096 non-VIP destinations, {shared4} (IPv4) and {shared6} (IPv6) share a pre-filter bit with one of the {} VIP addresses",
        vip_addrs.len()
    );
    let (vip4_index, vip6_index) = (0, 1);
    let floor_fd = lbs[0].dp_mut().program_fd(programs::PASS)?;
    let fds: Vec<i32> = lbs.iter_mut().map(|lb| lb.dp_mut().program_fd(programs::BALANCER)).collect::<Result<_, _>>()?;
    let hit4 = Frame::tcp("192.0.2.1", 40_000, VIP4, 80);
    let hit6 = Frame::tcp("2001:db8:c::1", 40_000, VIP6, 80);
    for (frame, family) in [(&hit4, "IPv4"), (&hit6, "IPv6")] {
        // The handshake makes the entry the hit cases find.
        for packet in [frame.clone().syn(), frame.clone()] {
            let out = lbs[0].run(&packet.build());
            ensure!(out.action == XDP_TX, "{family} handshake not forwarded: {}", action_name(out.action));
        }
        ensure!(lbs[0].dp().conn_real(&flow_of(frame))?.is_some(), "{family} handshake made no entry");
    }
    let handoff4 = Frame::tcp("192.0.2.1", 40_001, VIP4, 80);
    let handoff6 = Frame::tcp("2001:db8:c::1", 40_001, VIP6, 80);

    let case = |name, lb: usize, input, action, grows, proof, target| Case {
        name,
        lb,
        fd: if matches!(proof, Proof::None) { floor_fd } else { fds[lb] },
        input,
        action,
        grows,
        proof,
        target,
        calls: 0,
        rounds: Vec::new(),
        by_packet: [Vec::new(), Vec::new()],
        each: Vec::new(),
    };
    let same = |f: &Frame| Input::Same(f.build());
    let other4 = Frame::tcp("192.0.2.1", 40_000, "10.0.0.99", 80);
    let other6 = Frame::tcp("2001:db8:c::1", 40_000, "2001:db8::99", 80);
    let pass = Proof::Global(Counter::Pass);
    let echo = Proof::Global(Counter::IcmpEchoReplied);
    let sent = Proof::Global(Counter::HandoffSent);
    let mut cases = vec![
        case("empty program (floor)", 0, same(&hit4), XDP_PASS, 0, Proof::None, None),
        case("non-VIP pass, IPv4", 0, same(&other4), XDP_PASS, 0, pass, Some(TARGET_PASS)),
        case("non-VIP pass, IPv6", 0, same(&other6), XDP_PASS, 0, pass, Some(TARGET_PASS)),
        case("non-VIP pass, IPv4, 4096 destinations", 0, Input::Cycle(spread4), XDP_PASS, 0, pass, Some(TARGET_PASS)),
        case("non-VIP pass, IPv6, 4096 destinations", 0, Input::Cycle(spread6), XDP_PASS, 0, pass, Some(TARGET_PASS)),
        case("conn-table hit, IPv4", 0, same(&hit4), XDP_TX, 20, Proof::ConnHits(vip4_index), Some(TARGET_HIT)),
        case("conn-table hit, IPv6", 0, same(&hit6), XDP_TX, 40, Proof::ConnHits(vip6_index), Some(TARGET_HIT)),
        case("new flow (SYN + ACK), IPv4", 0, Input::NewFlow(new_flow4), XDP_TX, 20, Proof::NewFlows(vip4_index), Some(TARGET_NEW_FLOW)),
        case("new flow (SYN + ACK), IPv6", 0, Input::NewFlow(new_flow6), XDP_TX, 40, Proof::NewFlows(vip6_index), Some(TARGET_NEW_FLOW)),
        case("ICMP echo reply, IPv4", 0, same(&Frame::echo("192.0.2.1", VIP4)), XDP_TX, 0, echo, None),
        case("ICMP echo reply, IPv6", 0, same(&Frame::echo("2001:db8:c::1", VIP6)), XDP_TX, 0, echo, None),
        case("handoff send, IPv4", 1, same(&handoff4), XDP_TX, 20, sent, None),
        case("handoff send, IPv6", 2, same(&handoff6), XDP_TX, 40, sent, None),
    ];
    if second_chance {
        let decap_fd = lbs[3].dp_mut().program_fd(programs::DECAP)?;
        // What the balancer sends a real for an unknown mid-flow packet (far from the cases' flows):
        // the backend's input, which it forwards to the previous real (no socket holds the flow).
        // Its first packet also makes the entry (with the alternative) the hit-with-alternative
        // cases find.
        let mut tunnelled = Vec::new();
        let (alt_hit4, alt_hit6) = (fresh_flow4(1 << 21), fresh_flow6(1 << 21));
        for frame in [&alt_hit4, &alt_hit6] {
            let out = lbs[3].run(&frame.build());
            ensure!(out.action == XDP_TX, "second chance not sent: {}", action_name(out.action));
            ensure!(lbs[3].dp().conn_real(&flow_of(frame))?.is_some(), "no entry made with the alternative");
            tunnelled.push(out.data);
        }
        let alternative = Proof::Global(Counter::SecondChanceSent);
        let forwarded = Proof::Decap(DecapCounter::SecondChanceForwarded);
        let (gue4, gue6) = (lb_common::second_chance::GUE4_OVERHEAD as usize, lb_common::second_chance::GUE6_OVERHEAD as usize);
        let [miss4, miss6, alt_hit4_name, alt_hit6_name, forward4, forward6] = SECOND_CHANCE_CASES;
        cases.extend([
            case(miss4, 3, Input::Fresh(fresh_flow4), XDP_TX, gue4, alternative, None),
            case(miss6, 3, Input::Fresh(fresh_flow6), XDP_TX, gue6, alternative, None),
            case(alt_hit4_name, 3, same(&alt_hit4), XDP_TX, gue4, Proof::ConnHits(vip4_index), None),
            case(alt_hit6_name, 3, same(&alt_hit6), XDP_TX, gue6, Proof::ConnHits(vip6_index), None),
            Case { fd: decap_fd, ..case(forward4, 3, Input::Same(tunnelled[0].clone()), XDP_TX, 0, forwarded, None) },
            Case { fd: decap_fd, ..case(forward6, 3, Input::Same(tunnelled[1].clone()), XDP_TX, 0, forwarded, None) },
        ]);
    }
    if quic {
        // The 5-tuple rows' flow is recorded by its first packet (UDP is recorded at once),
        // and so is the fallback row's, whose connection ID names no real.
        let mut udp = quic_packet(QUIC_PORTS[0], true);
        udp.l4 = lb_tests::packet::L4::Udp { src: 40_000, dst: UDP_PORT };
        let fallback = quic_packet(QUIC_PORTS[0], false);
        for (lb, frame) in [(quic_lb, &udp), (quic_lb + 1, &udp), (quic_lb, &fallback)] {
            ensure!(lbs[lb].run(&frame.build()).action == XDP_TX, "{frame:?} not forwarded");
            ensure!(lbs[lb].dp().conn_real(&flow_of(frame))?.is_some(), "no entry made for {frame:?}");
        }
        let [five_tuple, five_tuple_quic_node, plaintext, single, four3, four4, unknown] = QUIC_CASES;
        let by_cid = Proof::Global(Counter::QuicRoutedByCid);
        let udp_vip =
            lbs[quic_lb].vip(lb_userspace::config::VipId { addr: ip(VIP4), port: UDP_PORT, proto: lb_userspace::config::Proto::Udp });
        let udp_hits = Proof::ConnHits(udp_vip.meta.vip_index);
        cases.extend([
            case(five_tuple, quic_lb + 1, same(&udp), XDP_TX, 20, udp_hits, None),
            case(five_tuple_quic_node, quic_lb, same(&udp), XDP_TX, 20, udp_hits, None),
            case(plaintext, quic_lb, same(&quic_packet(QUIC_PORTS[0], true)), XDP_TX, 20, by_cid, None),
            case(single, quic_lb, same(&quic_packet(QUIC_PORTS[1], true)), XDP_TX, 20, by_cid, None),
            case(four3, quic_lb, same(&quic_packet(QUIC_PORTS[2], true)), XDP_TX, 20, by_cid, None),
            case(four4, quic_lb, same(&quic_packet(QUIC_PORTS[3], true)), XDP_TX, 20, by_cid, None),
            case(unknown, quic_lb, same(&fallback), XDP_TX, 20, Proof::Global(Counter::QuicUnknownServerId), None),
        ]);
    }
    cases.retain(|c| matches!(c.proof, Proof::None) || wanted(c.name));

    for round in 0..*ROUNDS {
        let n = cases.len();
        for i in 0..n {
            cases[(i + round) % n].round(&lbs)?;
        }
    }
    // No new flow was lost to eviction: each new-flow case's first flow is still in the table.
    let mut new_flows = Vec::new();
    for c in &cases {
        if let Input::NewFlow(make) = c.input {
            let first: FlowKey = flow_of(&make(0));
            ensure!(lbs[c.lb].dp().conn_real(&first)?.is_some(), "{}: the connection table evicted the first flow", c.name);
            new_flows.push(format!("{} {}", c.calls, c.name));
        }
    }
    ensure!(lbs[0].dp().counter(Counter::ConnInsertFailed)? == 0, "the connection table refused inserts");

    let floor = sorted(cases[0].rounds.clone())[*ROUNDS / 2];
    // A new flow is two packets, so two calls: its floor is two empty-program calls.
    println!("\n| case | ns (median of rounds) | min-max of rounds | p99 of calls | ns above floor | x floor | target | |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for c in &cases {
        let r = sorted(c.rounds.clone());
        let mut each = c.each.clone();
        each.sort_unstable();
        let p99 = each[each.len() * 99 / 100];
        let median = r[*ROUNDS / 2];
        let calls = if matches!(c.input, Input::NewFlow(_)) { 2.0 } else { 1.0 };
        let ratio = median / (calls * floor);
        let (target, verdict) = match c.target {
            Some(t) => (format!("<= {t:.2}"), if ratio <= t { "met" } else { "MISSED" }),
            None => (String::new(), ""),
        };
        println!(
            "| {} | {median:.1} | {:.1}-{:.1} | {p99} | {:.1} | {ratio:.2} | {target} | {verdict} |",
            c.name,
            r[0],
            r[*ROUNDS - 1],
            median - calls * floor
        );
    }
    let two_packets: Vec<&Case> = cases.iter().filter(|c| matches!(c.input, Input::NewFlow(_))).collect();
    if !two_packets.is_empty() {
        println!("\n| new flow, by packet | SYN ns (median of rounds) | ACK ns (median of rounds) | SYN above floor | ACK above floor |");
        println!("|---|---:|---:|---:|---:|");
        for c in two_packets {
            let [syn, ack] = [0, 1].map(|i| sorted(c.by_packet[i].clone())[*ROUNDS / 2]);
            println!("| {} | {syn:.1} | {ack:.1} | {:.1} | {:.1} |", c.name, syn - floor, ack - floor);
        }
    }
    if !new_flows.is_empty() {
        println!("\nconnection table of {CONN_TABLE} entries; inserted {}; none evicted", new_flows.join(", "));
    }
    Ok(())
}
