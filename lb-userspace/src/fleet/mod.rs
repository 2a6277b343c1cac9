//! The fleet: one document in etcd for every node of every site (docs/fleet.md).
//!
//! - `doc`: the fleet document (sites, VIPs, each site's reals), its checks and diff;
//! - `store`: the keys in etcd and the calls on them;
//! - `follow`: a node's task that watches the document and hands each revision to the daemon;
//! - `report`: what a node tells the fleet about itself, under a lease;
//! - `rollout`: a canary's store calls in a staged rollout (halt, promote).

pub mod doc;
pub mod follow;
pub mod report;
pub mod rollout;
pub mod store;

pub use doc::{diff, is_fleet_document, is_site_name, parse, parse_valid, RawFleet, RawFleetVip, RawSite};

/// This host's name, lower-cased: a node's default name in its site.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname NUL-terminates within it or
    // truncates, and the slice below stops at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase()
}
