//! A canary node's part in a staged rollout, the store side: halting the rollout when this node
//! judged the candidate bad, and promoting it once every canary judged it good. The loop judges
//! (`daemon/fleet.rs`); this task does the calls, each a compare-and-swap, so that of several
//! canaries exactly one halts or promotes.

use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    report::NodeReport,
    store::{self, Canary, StoreAccess},
};

/// What the loop asks of the rollout task.
#[derive(Debug, Clone)]
pub enum RolloutAction {
    /// This node judged the candidate bad.
    Halt { key_rev: i64, canary: Canary, reason: String },
    /// This node judged it good: promote it once every canary has.
    Promote { key_rev: i64, canary: Canary },
}

/// How often the canaries' reports are read while waiting to promote.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(access: StoreAccess, mut actions: mpsc::UnboundedReceiver<RolloutAction>) {
    while let Some(action) = actions.recv().await {
        if let Err(e) = act(&access, &action).await {
            warn!(error = %format!("{e:#}"), ?action, "rollout: the store call failed");
        }
    }
}

async fn act(access: &StoreAccess, action: &RolloutAction) -> Result<()> {
    match action {
        RolloutAction::Halt { key_rev, canary, reason } => {
            let mut client = access.connect().await?;
            if store::halt_canary(&mut client, access, *key_rev, canary, reason).await? {
                warn!(%reason, "rollout halted: the canaries go back to the document");
            }
        }
        RolloutAction::Promote { key_rev, canary } => {
            // Bounded: a rollout whose other canaries never judge ends with the next apply.
            let limit = Duration::from_secs(canary.hold_s.max(1) * 10 + 60);
            let started = tokio::time::Instant::now();
            while started.elapsed() < limit {
                let mut client = access.connect().await?;
                match store::read_canary(&mut client, access).await? {
                    Some((rev, c)) if rev == *key_rev && c.halted.is_none() => {}
                    _ => return Ok(()), // halted, promoted or replaced meanwhile
                }
                let reports: Vec<NodeReport> = store::node_reports(&mut client, access)
                    .await?
                    .into_iter()
                    .filter_map(|(_, text)| serde_json::from_str(&text).ok())
                    .collect();
                let good = |name: &String| {
                    reports.iter().any(|r| {
                        r.node == *name
                            && r.canary.as_ref().is_some_and(|c| c.revision == *key_rev && c.state == super::report::CANARY_GOOD)
                    })
                };
                if canary.canaries.iter().all(good) {
                    if store::promote_canary(&mut client, access, *key_rev, canary).await? {
                        info!(canaries = ?canary.canaries, "rollout promoted: every node follows the candidate now");
                    }
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
            warn!(canaries = ?canary.canaries, "rollout: not every canary judged the candidate in time; not promoted");
        }
    }
    Ok(())
}
