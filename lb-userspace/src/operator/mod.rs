//! The operator's tools, each a reader of the live state: `lb flow` / `lb flows` (where a flow
//! goes and why, from the live maps), `lb capture` (what the data plane drops, hands off or does
//! not know, into pcapng) and `lb doctor` (findings with evidence and the action to take; `evidence` samples
//! what it judges). None
//! writes what the reconciler owns.

pub mod capture;
pub mod cid;
pub mod doctor;
pub mod evidence;
pub mod flow;
