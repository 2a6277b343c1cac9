//! GeoDNS for clients anycast serves badly (docs/geodns.md): `lb geodns` runs beside a gdnsd and
//! tells it, per site and VIP, whether DNS may send clients to the site's unicast addresses.
//!
//! - `judge`: a site's state for a VIP from the fleet document, the nodes' reports and the
//!   drain keys: UP exactly when one of its nodes announces the VIP with capacity;
//! - `gdnsd`: what gdnsd reads: the config snippets (`lb geodns render`), the extfile state
//!   file, and the same state as JSON for other DNS servers;
//! - `agent`: the task that follows the store and writes the state files.

pub mod agent;
pub mod gdnsd;
pub mod judge;

pub use judge::{judge, SiteAnswer};
