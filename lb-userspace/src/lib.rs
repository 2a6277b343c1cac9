//! anycast-lb's control plane: `lb run` (the daemon), `lb backend`, the admin API and CLI, and
//! the operator's tools. docs/architecture.md is the map; each folder's `mod.rs` says what lives
//! there.

pub mod adapt;
pub mod admin;
pub mod backend;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod durable;
pub mod fleet;
pub mod geodns;
pub mod health;
pub mod http;
pub mod journal;
pub mod maglev;
pub mod metrics;
pub mod next_hop;
pub mod operator;
pub mod quic_lb;
pub mod reconcile;
pub mod serve;
pub mod status;
/// The eBPF object, embedded so the binary runs from anywhere and tests load the same bytes.
pub const LB_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSymbol as _};

    /// A panic path left in the eBPF object (say `clamp` where LLVM then cannot rule out a
    /// division by zero) becomes a subprogram ending in a call, which the kernel refuses with
    /// "last insn is not an exit or jmp". Name the culprit here rather than at load time.
    #[test]
    fn the_ebpf_object_has_no_panic_path() {
        let file = object::File::parse(super::LB_EBPF).expect("parse the eBPF object");
        let panics: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).filter(|n| n.contains("panicking")).collect();
        assert!(panics.is_empty(), "the eBPF object calls core's panic functions: {panics:?}");
    }
}
