//! A balancer loaded in the kernel and programmed through the daemon's own `Reconciler` (the code
//! `lb run` runs: real ids, ring pool, spare rings and switches), run on test frames with
//! BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use lb_common::{
    hash::{flow_hash, source_hash},
    programs, FlowKey, LbConfig, VipKey, VipMeta, VIP_F_SECOND_CHANCE, VIP_F_SOURCE_AFFINITY,
};
use lb_userspace::{
    config::{self, CheckKind, Config, Forwarding, HealthCheck, InterfaceCheck, NextHop, Proto, RealConfig, VipId},
    dataplane::{Dataplane, Handoff, LoadOptions},
    reconcile::{lb_config, ReconcileError, Reconciler},
};

use crate::{
    packet::{ip, Frame, L4, ROUTER_MAC},
    test_run::{self, TestRun},
};

pub const MTU: u32 = 1500;
/// ICMP "too big" answers (and echo replies) per CPU per second, as `lb`'s defaults.
pub const TOO_BIG_PER_SEC: u32 = 1000;
/// A small prime keeps ring writes quick; one test uses the full default size.
pub const TEST_RING_SIZE: u32 = 257;
/// The fixture's ring pool: room for four VIPs of the full default size.
pub const TEST_RING_SLOTS: u32 = 8 * lb_common::DEFAULT_RING_SIZE;

/// Forwarding as the fixture programs it: outer sources 10.255.0.0/16 and fd00:ffff::/96, low
/// bits from the flow hash.
pub fn forwarding() -> Forwarding {
    Forwarding {
        next_hop: NextHop::Mac(ROUTER_MAC),
        mtu: MTU,
        source_v4: ("10.255.0.0".parse().unwrap(), 16),
        source_v6: ("fd00:ffff::".parse().unwrap(), 32),
        too_big_per_sec: TOO_BIG_PER_SEC,
        echo_per_sec: TOO_BIG_PER_SEC,
    }
}

/// The `CONFIG` entry the fixture writes.
pub fn test_config() -> LbConfig {
    lb_config(&forwarding(), ROUTER_MAC, false)
}

/// A VIP the fixture programmed, as the maps hold it after the last change.
#[derive(Clone, Debug)]
pub struct Vip {
    pub id: VipId,
    pub key: VipKey,
    pub meta: VipMeta,
    /// The live ring.
    pub table: Vec<u32>,
}

pub struct Balancer {
    rec: Reconciler<Dataplane>,
    prog: i32,
    /// What the fixture asked for so far; every change applies the whole of it, as a reload does.
    config: Config,
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
    pub fn with_dataplane(dp: Dataplane, name: &str) -> Self {
        let mut lb = Self::with_dataplane_unapplied(dp, name, Reconciler::new);
        lb.apply();
        lb
    }

    /// The base config (forwarding, no flood limits, no VIPs), not yet applied.
    fn with_dataplane_unapplied(mut dp: Dataplane, name: &str, reconciler: impl FnOnce(Dataplane) -> Reconciler<Dataplane>) -> Self {
        let prog = dp.program_fd(name).unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        let mut config = config::parse("[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n", InterfaceCheck::Skip).expect("base config");
        config.forwarding = forwarding();
        // No flood limits unless a test sets them: tests and benches make flows fast.
        config.flood = config::Flood { inserts_per_sec: u32::MAX, handoffs_per_sec: u32::MAX };
        Self { rec: reconciler(dp), prog, config }
    }

    /// A balancer over maps an earlier one left (pinned): the reconciler picks up what they
    /// hold, as `lb run` does after a restart, and `config` (the earlier one's) is applied.
    pub fn recovered(dp: Dataplane, name: &str, config: Config) -> Self {
        let mut lb = Self::with_dataplane_unapplied(dp, name, |dp| {
            let programmed = dp.programmed().expect("read the pinned maps");
            Reconciler::recover(dp, &programmed)
        });
        lb.config = config;
        lb.apply();
        lb
    }

    /// What the fixture asked for so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Takes the VIP out of the config, as a reload without it does.
    pub fn remove_vip(&mut self, vip: &Vip) {
        self.config.vips.retain(|v| v.id != vip.id);
        self.apply();
    }

    pub fn dp(&self) -> &Dataplane {
        self.rec.dataplane()
    }

    /// For what the reconciler does not write (attaching, test-only pokes at the maps).
    pub fn dp_mut(&mut self) -> &mut Dataplane {
        self.rec.dataplane_mut()
    }

    /// The fd of the program `run` runs.
    pub fn fd(&self) -> i32 {
        self.prog
    }

    pub fn run(&self, frame: &[u8]) -> TestRun {
        test_run::run(self.prog, frame, 1).expect("BPF_PROG_TEST_RUN")
    }

    fn apply(&mut self) {
        self.rec.apply(&self.config, ROUTER_MAC).expect("reconcile");
    }

    /// The VIP as the reconciler programmed it after the last change.
    pub fn vip(&self, id: VipId) -> Vip {
        self.programmed(id)
    }

    /// The VIP as the reconciler programmed it.
    fn programmed(&self, id: VipId) -> Vip {
        let meta = self.rec.vip_meta(&id).expect("programmed");
        let table = self.rec.live_table(&id).expect("built").to_vec();
        Vip { id, key: lb_userspace::reconcile::vip_key(&id), meta, table }
    }

    /// Programs a VIP `addr:port/proto` (port 0: any port) with `reals` as (address, weight).
    pub fn add_vip(&mut self, addr: &str, port: u16, proto: u8, flags: u32, ring_size: u32, reals: &[(&str, u32)]) -> Vip {
        let proto = match proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            other => panic!("protocol {other}"),
        };
        let id = VipId { addr: ip(addr), port, proto };
        let vip = config::Vip {
            name: format!("vip{}", self.config.vips.len()),
            id,
            source_affinity: flags & VIP_F_SOURCE_AFFINITY != 0,
            ring_size,
            min_healthy: 1,
            second_chance: (flags & VIP_F_SECOND_CHANCE != 0).then(|| std::time::Duration::from_secs(600)),
            quic_lb: None,
            adapt: None,
            reals: Vec::new(),
        };
        self.config.vips.push(vip);
        self.set_reals_of(id, reals);
        self.programmed(id)
    }

    /// Programs a UDP VIP with QUIC-LB `quic` and `reals` as (address, server ID), weight 1.
    pub fn add_quic_vip(&mut self, addr: &str, port: u16, quic: &lb_userspace::quic_lb::QuicLbConfig, reals: &[(&str, &[u8])]) -> Vip {
        let vip = self.add_vip(addr, port, 17, 0, TEST_RING_SIZE, &reals.iter().map(|&(a, _)| (a, 1)).collect::<Vec<_>>());
        let v = self.config.vips.iter_mut().find(|v| v.id == vip.id).expect("added");
        v.quic_lb = Some(config::QuicLb {
            config_id: quic.config_id,
            server_id_len: quic.server_id_len,
            nonce_len: quic.nonce_len,
            cid_len: quic.cid_len,
            key_file: quic.key.map(|_| "/test/key".into()),
            key: quic.key,
            server_id_hold: std::time::Duration::from_secs(3600),
        });
        for (real, (_, sid)) in v.reals.iter_mut().zip(reals) {
            real.server_id = Some(sid.to_vec());
        }
        self.apply();
        self.programmed(vip.id)
    }

    fn set_reals_of(&mut self, id: VipId, reals: &[(&str, u32)]) {
        let no_check =
            HealthCheck { kind: CheckKind::None, port: 0, interval: Default::default(), timeout: Default::default(), rise: 1, fall: 1 };
        let vip = self.config.vips.iter_mut().find(|v| v.id == id).expect("added");
        let old = std::mem::take(&mut vip.reals);
        vip.reals = reals
            .iter()
            .map(|&(a, weight)| {
                let server_id = old.iter().find(|r| r.addr == ip(a)).and_then(|r| r.server_id.clone());
                RealConfig { addr: ip(a), weight, health: no_check.clone(), server_id }
            })
            .collect();
        self.apply();
    }

    /// Gives the VIP these reals (as a reload would): a new table into its spare ring, then the
    /// switch.
    pub fn set_reals(&mut self, vip: &mut Vip, reals: &[(&str, u32)]) {
        self.set_reals_of(vip.id, reals);
        *vip = self.programmed(vip.id);
    }

    /// A failed health check of `addr` on every VIP that has it: it leaves their rings and its
    /// established flows move on.
    pub fn mark_down(&mut self, addr: &str) {
        let ids: Vec<VipId> = self.config.vips.iter().filter(|v| v.reals.iter().any(|r| r.addr == ip(addr))).map(|v| v.id).collect();
        for id in ids {
            self.rec.set_health(&id, ip(addr), false).expect("health flip");
        }
    }

    /// Programs handoff through the reconciler: `peers` are up and configured.
    pub fn set_handoff(&mut self, node: Option<IpAddr>, peers: &[IpAddr], adopt: bool) -> Result<bool, ReconcileError> {
        self.set_handoff_with_sources(node, peers, peers, adopt)
    }

    /// Programs handoff: hands to `peers` (those up), takes handoffs from `sources` (every
    /// configured peer).
    pub fn set_handoff_with_sources(
        &mut self,
        node: Option<IpAddr>,
        peers: &[IpAddr],
        sources: &[IpAddr],
        adopt: bool,
    ) -> Result<bool, ReconcileError> {
        self.rec.set_handoff(&Handoff { node, peers: peers.to_vec(), sources: sources.to_vec(), adopt })
    }

    /// Id of the real at `addr` in the first VIP that has it.
    pub fn real_id_of(&mut self, addr: &str) -> u32 {
        let vip = self.config.vips.iter().find(|v| v.reals.iter().any(|r| r.addr == ip(addr))).expect("a VIP with that real");
        self.rec.real_id(&vip.id, ip(addr)).expect("programmed")
    }

    /// The real the connection table holds for `frame`'s flow.
    pub fn dp_conn_real(&self, frame: &Frame) -> Option<IpAddr> {
        let id = self.dp().conn_real(&flow_of(frame)).expect("read CONNS")?;
        Some(self.rec.real_address(id).expect("a programmed real"))
    }

    /// The real Maglev gives a new flow of `frame` on `vip`.
    pub fn expected_real(&self, vip: &Vip, frame: &Frame) -> IpAddr {
        let flow = flow_of(frame);
        let hash = if vip.meta.flags & VIP_F_SOURCE_AFFINITY != 0 { source_hash(&flow.src) } else { flow_hash(&flow) };
        let id = vip.table[(hash % vip.meta.ring_size) as usize];
        self.rec.real_address(id).expect("a programmed real")
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
    lb_common::FlowKey::new(frame.src, src_port, frame.dst, dst_port, proto)
}
