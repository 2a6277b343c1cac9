//! The only module that talks to aya: loads the eBPF object, attaches programs, and reads and
//! writes the maps with the typed values of `lb_common`.
//!
//! - `loader`: loading (pinned or not), attaching, what an earlier `lb` left in the maps;
//! - `writer`: the map writes, one entry each, behind `DataplaneOps` (the reconciler plans them);
//! - `ring_memory`: the Maglev slot pool mapped into this process;
//! - `memory`: a data plane held in memory, for simulating many nodes in one process;
//! - `counters`, `live`, `capture`: readers opened from the pins, for metrics, `lb flow` /
//!   `lb doctor` and `lb capture`, off the loop that owns the writer;
//! - `pins`: where each program's pins live; `layout`: the pinned maps' layouts, checked
//!   before a start reuses them;
//! - `ops`: the seam the reconciler writes through; `error`.

mod capture;
mod counters;
mod error;
mod layout;
mod live;
mod loader;
mod memory;
mod ops;
pub mod pins;
mod ring_memory;
mod writer;

pub use self::{
    capture::{CaptureBuffer, CaptureMaps},
    counters::{monotonic_ns, Counters},
    error::DataplaneError,
    live::LiveMaps,
    loader::{Dataplane, LoadOptions, Programmed},
    memory::Memory,
    ops::{DataplaneOps, Handoff},
};
