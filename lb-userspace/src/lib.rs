//! anycast-lb control plane library: Maglev, the data-plane loader and map access.

pub mod api;
pub mod bird;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod reconcile;
pub mod test_run;

/// The eBPF object, embedded so the binary runs from anywhere and tests load the same bytes.
pub const LB_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
