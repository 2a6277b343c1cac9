//! The XDP programs of anycast-lb: the balancer, the backend decapsulator, and small helpers
//! (a pass stub for veth peers, a bouncer and a counting sink for benches).
#![no_std]
#![no_main]
// BPF instructions for packet accesses at any alignment (`pkt`); the eBPF crate builds with
// nightly anyway (`-Z build-std=core`).
#![feature(asm_experimental_arch)]

mod balancer;
mod capture;
mod conntrack;
mod csum;
mod decap;
mod encap;
mod handoff;
mod icmp;
mod limit;
mod maglev;
mod maps;
mod packet;
mod parse;
mod pkt;
mod quic;
mod redirect;
mod stats;
mod step;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use decap::Decap;
use lb_common::stats::DecapCounter;

/// The balancer, on the edge node's NIC.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    balancer::run(&ctx)
}

/// The decapsulator, on a backend's NIC.
#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    stats::count_decap(match decap::try_decap(&ctx) {
        Ok(Decap::Stripped(tunnel, decided)) => {
            stats::count_decap(tunnel);
            if let Some(why) = decided {
                stats::count_decap(why);
            }
            DecapCounter::Decapsulated
        }
        Ok(Decap::NotOurs) => DecapCounter::Pass,
        Ok(Decap::Forwarded(action)) => {
            stats::count_decap(DecapCounter::SecondChanceForwarded);
            return action;
        }
        Err(reason) => {
            stats::count_decap(reason);
            return xdp_action::XDP_DROP;
        }
    });
    xdp_action::XDP_PASS
}

/// Passes everything: put on a veth peer so frames sent with XDP_TX are received. The bench floor.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Bounces every frame back out: the limit of the XDP_TX path.
#[xdp]
pub fn xdp_bounce(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The least an encapsulating balancer does for a known flow (`balancer::least`): bench-e2e's
/// reference between the bounce and the balancer.
#[xdp]
pub fn xdp_least_encap(ctx: XdpContext) -> u32 {
    balancer::least(&ctx)
}

/// Counts every frame (its object's `drop` verdict counter) and drops it: the end-to-end bench's
/// receiver, which costs the same for every frame whatever its addresses.
#[xdp]
pub fn xdp_sink(_ctx: XdpContext) -> u32 {
    stats::count(lb_common::stats::Counter::Drop);
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
