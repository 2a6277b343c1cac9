//! The site's announcements: which VIPs to announce (servable ones, unless the site is drained
//! or `lb` is exiting), the router task's reports, the site drain, and the graceful shutdown
//! (RFC 8326) that comes before a withdrawal by choice.

use std::time::Duration;

use tracing::{info, warn};

use super::state::{Daemon, GracefulShutdown};
use crate::{
    admin::{AdminError, Reply},
    bgp::{bird::Announcement, RouterEvent},
    dataplane::DataplaneOps,
    status::SiteStage,
};

impl<D: DataplaneOps> Daemon<D> {
    /// The site withdraws by choice: drained (`lb site drain` or `lb fleet drain`), or `lb`
    /// exiting.
    pub(super) fn withdrawing(&self) -> bool {
        self.journal.site_drained || self.fleet.as_ref().is_some_and(|f| f.drained) || self.exiting
    }

    /// The VIPs this site should announce now: servable ones, unless the site is drained or
    /// `lb` is exiting (then nothing, after the graceful shutdown's wait).
    pub(super) fn wanted_announcements(&self) -> Vec<Announcement> {
        let Some(bgp) = &self.config.bgp else { return Vec::new() };
        let withdrawing = self.withdrawing();
        if withdrawing && self.graceful.is_none() {
            return Vec::new();
        }
        let mut list: Vec<Announcement> = self
            .rec
            .status()
            .iter()
            .filter(|v| v.servable())
            .map(|v| Announcement {
                prefix: v.vip.addr,
                prepend: bgp.prepend_below.is_some_and(|t| v.capacity() < t),
                graceful_shutdown: withdrawing,
            })
            .collect();
        list.sort();
        list.dedup_by(|a, b| {
            a.prefix == b.prefix && {
                b.prepend |= a.prepend;
                true
            }
        });
        list
    }

    /// Hands the wanted announcements to the router task (which skips a list it already applied).
    pub(super) fn publish_announcements(&mut self) {
        let wanted = self.wanted_announcements();
        self.out.announce.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
    }

    /// The router task's report.
    pub fn router_event(&mut self, event: RouterEvent) {
        match event {
            RouterEvent::Applied(list) => {
                let shown: Vec<String> =
                    list.iter().map(|a| format!("{}{}", a.prefix, if a.prepend { " (prepended)" } else { "" })).collect();
                info!(announced = %shown.join(", "), drained = self.journal.site_drained, "BGP announcements updated");
                self.announced = Some(list);
                self.bird_failing = None;
            }
            RouterEvent::Failed { error, retry_in } => {
                self.bird_errors += 1;
                self.bird_failing = Some(error.to_string());
                warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "BIRD did not take the announcements; forwarding continues");
            }
            RouterEvent::Sessions(sessions) => {
                let down = |s: &Option<Vec<crate::bgp::Session>>| -> Vec<String> {
                    s.iter().flatten().filter(|s| !s.established).map(|s| s.name.clone()).collect()
                };
                if down(&sessions) != down(&self.bgp_sessions) {
                    warn!(down = ?down(&sessions), "BGP sessions not established changed");
                }
                self.bgp_sessions = sessions;
            }
        }
    }

    pub(super) fn site_drain(&mut self, drained: bool, reply: Reply<()>) {
        if self.config.bgp.is_none() {
            let _ = reply.send(Err(AdminError::Conflict("no [bgp] section: this site announces nothing".into())));
            return;
        }
        let was_announcing = !self.withdrawing();
        self.journal.site_drained = drained;
        info!(drained, "site drain changed");
        self.drain_changed(was_announcing);
        self.save_journal(Some(reply));
    }

    /// After a drain or an undrain (the site's own or the fleet's), by whether the site was
    /// announcing before it.
    pub(super) fn drain_changed(&mut self, was_announcing: bool) {
        self.sync_handoff(); // adopt before the withdrawal moves our flows to peers
        let withdrawing = self.withdrawing();
        if withdrawing && was_announcing {
            self.begin_graceful_shutdown();
        } else if !withdrawing {
            self.graceful = None; // an undrain cancels a graceful shutdown under way
        }
        self.publish_announcements();
        // A fleet node tells the store at once, not on the next tick: GeoDNS follows it.
        self.publish_report();
    }

    /// Starts the wait before a withdrawal, when `[bgp] graceful_shutdown_ms` asks for one: the
    /// VIPs stay announced, with GRACEFUL_SHUTDOWN, until the timer reports back.
    pub(super) fn begin_graceful_shutdown(&mut self) {
        let wait = self.config.bgp.as_ref().map_or(Duration::ZERO, |b| b.graceful_shutdown);
        if wait.is_zero() {
            return;
        }
        self.graceful_count += 1;
        let number = self.graceful_count;
        self.graceful = Some(GracefulShutdown { until: tokio::time::Instant::now() + wait, number });
        info!(wait_ms = wait.as_millis() as u64, "graceful shutdown: announcing with GRACEFUL_SHUTDOWN (65535:0), then withdrawing");
        let over = self.out.graceful_over.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = over.send(number).await;
        });
    }

    /// The graceful shutdown's wait is over: withdraw (unless an undrain cancelled it).
    pub fn graceful_shutdown_over(&mut self, number: u64) {
        if self.graceful.is_some_and(|g| g.number == number) {
            self.graceful = None;
            info!("graceful shutdown: wait over, withdrawing");
            self.publish_announcements();
        }
    }

    /// How long the graceful shutdown under way still waits.
    pub fn graceful_remaining(&self) -> Option<Duration> {
        self.graceful.map(|g| g.until.saturating_duration_since(tokio::time::Instant::now()))
    }

    pub(super) fn site_stage(&self) -> SiteStage {
        if self.config.bgp.is_none() {
            return SiteStage::NoBgp;
        }
        match (self.withdrawing(), self.graceful_remaining()) {
            (false, _) => SiteStage::Announcing,
            (true, Some(left)) => SiteStage::GracefulShutdown { withdraw_in_ms: left.as_millis() as u64 },
            (true, None) => SiteStage::Withdrawn,
        }
    }

    /// On the way out: probers stop; if the config says so, handoff adopts (we keep forwarding:
    /// flows handed back to us after the withdrawal are ours) and the VIPs are withdrawn. Returns
    /// whether there is a withdrawal to wait for.
    pub fn begin_exit(&mut self) -> bool {
        self.probers.stop_all();
        if let Some((_, task)) = self.next_hop_watch.take() {
            task.abort();
        }
        if !self.config.bgp.as_ref().is_some_and(|b| b.withdraw_on_exit) {
            return false;
        }
        let was_announcing = !self.withdrawing();
        self.exiting = true;
        self.sync_handoff();
        if was_announcing {
            self.begin_graceful_shutdown();
        }
        self.publish_announcements();
        true
    }
}
