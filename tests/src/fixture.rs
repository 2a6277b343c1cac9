//! A balancer loaded in the kernel and programmed through the daemon's `Dataplane`, run on test
//! frames with BPF_PROG_TEST_RUN. Each VIP gets two rings of the pool, side by side; rings are
//! rebuilt into the VIP's spare ring and switched by one `VIPS` update, as the control plane does.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    hash::{flow_hash, source_hash},
    programs, FlowKey, LbConfig, Real, VipKey, VipMeta, REAL_F_DOWN, REAL_F_IPV6, VIP_F_SOURCE_AFFINITY,
};
use lb_userspace::{
    dataplane::{addr16, Dataplane, LoadOptions},
    maglev::{build_table, MaglevReal},
    test_run::{self, TestRun},
};

use crate::packet::{ip, Frame, L4, ROUTER_MAC};

pub const MTU: u32 = 1500;
/// ICMP "too big" answers per CPU per second, as `lb`'s default.
pub const TOO_BIG_PER_SEC: u32 = 1000;
/// A small prime keeps ring writes quick; one test uses the full default size.
pub const TEST_RING_SIZE: u32 = 257;
/// The fixture's ring pool: room for four VIPs of the full default size.
pub const TEST_RING_SLOTS: u32 = 8 * lb_common::DEFAULT_RING_SIZE;

/// Outer sources: 10.255.0.0/16 and fd00:ffff::/96, low bits from the flow hash.
pub fn test_config() -> LbConfig {
    let mut src_v6 = [0u8; 16];
    src_v6[..4].copy_from_slice(&[0xfd, 0x00, 0xff, 0xff]);
    LbConfig {
        next_hop_mac: ROUTER_MAC,
        _pad: [0; 2],
        mtu: MTU,
        src_v4: [10, 255, 0, 0],
        src_v4_host_bits: 16,
        src_v6,
        src_v6_host_bits: 32,
    }
}

/// A VIP the fixture programmed.
#[derive(Clone, Debug)]
pub struct Vip {
    pub key: VipKey,
    pub meta: VipMeta,
    pub table: Vec<u32>,
    /// Pool slots of its two rings; `meta.ring_base` is one of them.
    pub rings: [u32; 2],
}

pub struct Balancer {
    pub dp: Dataplane,
    prog: i32,
    real_ids: HashMap<IpAddr, u32>,
    reals: HashMap<u32, IpAddr>,
    vips: u32,
    /// The ring pool's first slot not given to a VIP yet.
    next_slot: u32,
}

impl Balancer {
    pub fn new() -> Self {
        Self::with_program(programs::BALANCER)
    }

    /// Loads the object and readies program `name`.
    pub fn with_program(name: &str) -> Self {
        Self::with_options(name, &LoadOptions { conn_table_size: 65_536, ring_slots: TEST_RING_SLOTS })
    }

    pub fn with_options(name: &str, opts: &LoadOptions) -> Self {
        Self::with_dataplane(Dataplane::load(opts).expect("load eBPF object"), name)
    }

    /// Readies program `name` of an object loaded by the caller (e.g. onto maps it made).
    pub fn with_dataplane(mut dp: Dataplane, name: &str) -> Self {
        let prog = dp.program_fd(name).unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        dp.set_config(&test_config()).expect("config");
        dp.set_rate_limit(lb_common::limits::TOO_BIG, &lb_common::RateLimit::per_sec(TOO_BIG_PER_SEC)).expect("rate limit");
        // No flood limits unless a test sets them: tests and benches make flows fast.
        for limit in [lb_common::limits::INSERTS, lb_common::limits::HANDOFFS] {
            dp.set_rate_limit(limit, &lb_common::RateLimit::UNLIMITED).expect("rate limit");
        }
        Self { dp, prog, real_ids: HashMap::new(), reals: HashMap::new(), vips: 0, next_slot: 0 }
    }

    /// The fd of the program `run` runs.
    pub fn fd(&self) -> i32 {
        self.prog
    }

    pub fn run(&self, frame: &[u8]) -> TestRun {
        test_run::run(self.prog, frame, 1).expect("BPF_PROG_TEST_RUN")
    }

    fn real_id(&mut self, addr: IpAddr) -> u32 {
        if let Some(&id) = self.real_ids.get(&addr) {
            return id;
        }
        let id = self.real_ids.len() as u32 + 1;
        let flags = if addr.is_ipv6() { REAL_F_IPV6 } else { 0 };
        self.dp.set_real(id, &Real { addr: addr16(addr), flags, vip_index: 0 }).expect("set real");
        self.real_ids.insert(addr, id);
        self.reals.insert(id, addr);
        id
    }

    /// Programs a VIP `addr:port/proto` (port 0: any port) with `reals` as (address, weight).
    pub fn add_vip(&mut self, addr: &str, port: u16, proto: u8, flags: u32, ring_size: u32, reals: &[(&str, u32)]) -> Vip {
        let key = VipKey { addr: addr16(ip(addr)), port_be: port.to_be(), proto, _pad: 0 };
        let index = self.vips;
        self.vips += 1;
        let rings = [self.next_slot, self.next_slot + ring_size];
        self.next_slot += 2 * ring_size;
        assert!(self.next_slot <= self.dp.ring_slots(), "the ring pool is full");
        let meta = VipMeta { flags, vip_index: index, ring_base: rings[1], ring_size, generation: 0 };
        let mut vip = Vip { key, meta, table: Vec::new(), rings };
        self.set_reals(&mut vip, reals);
        vip
    }

    /// Rebuilds the VIP's table into its spare ring and switches to it.
    pub fn set_reals(&mut self, vip: &mut Vip, reals: &[(&str, u32)]) {
        let maglev: Vec<MaglevReal> = reals
            .iter()
            .map(|&(a, weight)| {
                let addr = ip(a);
                MaglevReal { identity: addr16(addr), id: self.real_id(addr), weight }
            })
            .collect();
        vip.table = build_table(&maglev, vip.meta.ring_size);
        let spare = if vip.meta.ring_base == vip.rings[0] { vip.rings[1] } else { vip.rings[0] };
        self.dp.write_ring(spare, &vip.table).expect("write ring");
        vip.meta.ring_base = spare;
        self.dp.set_vip(&vip.key, &vip.meta).expect("set vip");
    }

    pub fn mark_down(&mut self, addr: &str) {
        let addr = ip(addr);
        let id = self.real_id(addr);
        let flags = REAL_F_DOWN | if addr.is_ipv6() { REAL_F_IPV6 } else { 0 };
        self.dp.set_real(id, &Real { addr: addr16(addr), flags, vip_index: 0 }).expect("set real");
    }

    /// Id of the real at `addr` (registering it if new).
    pub fn real_id_of(&mut self, addr: &str) -> u32 {
        self.real_id(ip(addr))
    }

    /// The real the connection table holds for `frame`'s flow.
    pub fn dp_conn_real(&self, frame: &Frame) -> Option<IpAddr> {
        let id = self.dp.conn_real(&flow_of(frame)).expect("read CONNS")?;
        Some(self.reals[&id])
    }

    /// The real Maglev gives a new flow of `frame` on `vip`.
    pub fn expected_real(&self, vip: &Vip, frame: &Frame) -> IpAddr {
        let flow = flow_of(frame);
        let hash = if vip.meta.flags & VIP_F_SOURCE_AFFINITY != 0 { source_hash(&flow.src) } else { flow_hash(&flow) };
        let id = vip.table[(hash % vip.meta.ring_size) as usize];
        self.reals[&id]
    }
}

impl Default for Balancer {
    fn default() -> Self {
        Self::new()
    }
}

/// The connection-table key of a client frame.
pub fn flow_of(frame: &Frame) -> FlowKey {
    let (proto, src_port, dst_port) = match frame.l4 {
        L4::Tcp { src, dst } => (6, src, dst),
        L4::Udp { src, dst } => (17, src, dst),
        L4::EchoRequest { .. } => panic!("echo has no flow"),
    };
    FlowKey {
        src: addr16(frame.src),
        dst: addr16(frame.dst),
        src_port_be: src_port.to_be(),
        dst_port_be: dst_port.to_be(),
        proto,
        _pad: [0; 3],
    }
}
