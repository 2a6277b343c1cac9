//! The single writer: config + health + runtime weight changes -> Maglev tables -> data plane.
//!
//! Each VIP owns two rings in the slot pool (`ring_pool`). A rebuild writes the changed slots of
//! the spare ring, then switches the VIP to it with one `VIPS` update, so a packet never sees a
//! half-written table; a VIP whose reals, health and weights did not change is not rebuilt. A real
//! coming up is marked up before the switch; a real going down is marked down after it, which
//! moves its established flows (their connection entries stop counting). Weight 0 drains: the
//! real leaves the ring but stays up, so its flows stay. Real ids belong to one VIP each and are
//! recovered from the pinned maps after a restart, so connection entries keep their meaning.
//!
//! Every change is a transaction: it is first planned on a copy of the state (VIP indexes, real
//! ids, ring regions and tables, and the ordered list of map writes, each with what it replaces),
//! so running out of anything fails before a single write. Then the writes run in order; if one
//! fails, the ones before it are undone in reverse and the state stays as it was.

//!
//! - `reconciler`: `Reconciler`, which runs a plan's writes and undoes them on failure, and what
//!   it answers about the state;
//! - `plan`: the state and the planning of each kind of change;
//! - `write`: the map writes, what each entry holds, and the undo of each write;
//! - `entries`: config -> map keys and values; `ring_pool`: where each ring lives in the pool;
//!   `error`.

mod entries;
mod error;
mod plan;
mod reconciler;
mod ring_pool;
#[cfg(test)]
pub(crate) mod tests;
mod write;

pub use self::{
    entries::{lb_config, vip_key},
    error::ReconcileError,
    reconciler::Reconciler,
    ring_pool::Region,
};
