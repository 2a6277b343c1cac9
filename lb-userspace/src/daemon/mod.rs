//! `lb run`: load and attach (pinned), program the maps from the config, and run one loop that
//! owns all state. Health probers, the admin API, signals, the router task, the next-hop watcher
//! and reload preparation send it events; it answers from memory and writes only to the data
//! plane (through the reconciler). Everything slow (BIRD, netlink, files) runs in other tasks.
//!
//! Exiting leaves the programs attached and the maps pinned under /sys/fs/bpf/anycast-lb-<instance>: traffic
//! keeps flowing on the last state, and the next `lb run` (same or newer binary) picks it up,
//! connection table included. `lb stop --instance NAME` removes everything.

//!
//! - `state`: what the daemon holds and where its decisions go; `run`: `lb run` and `lb stop`;
//! - `events`: each event the loop takes, to what handles it;
//! - `announce`: the site's announcements, drain and graceful shutdown; `handoff`: handoff
//!   peers; `changes`: admin commands that change state; `reload`: reloads;
//! - `snapshot`: what `lb doctor` and metrics get from the loop; `fleet`: a fleet node's
//!   revisions, rollout judgement and report; `server_ids`: QUIC-LB server IDs held for their
//!   reals; `adapt`: weights that follow the backends (the controllers and their steps).

mod adapt;
mod announce;
mod changes;
mod events;
pub mod fleet;
mod handoff;
mod reload;
mod run;
mod server_ids;
mod snapshot;
mod state;
#[cfg(test)]
mod tests;

pub use self::{
    reload::{effective_config, prepare_reload},
    run::{run, stop},
    server_ids::ServerIdRecord,
    state::{Daemon, Outputs, Prepared, PreparedReload},
};
