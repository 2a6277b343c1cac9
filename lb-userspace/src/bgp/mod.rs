//! Telling the routers what to announce. The daemon publishes the announcements it wants on a
//! `watch` channel; `run_router` owns the (slow, fallible) conversation with BIRD, always works
//! toward the latest wanted list, retries with a backoff, and reports each outcome back as an
//! event. A frozen BIRD costs this task its timeouts, never the state loop.

use std::{future::Future, path::PathBuf, time::Duration};

use tokio::sync::{mpsc, watch};

pub mod bird;

use self::bird::{Announcement, BirdError};

/// Something that announces a list of VIP prefixes (replacing what it announced before).
pub trait Router: Send + 'static {
    fn announce(&mut self, list: &[Announcement]) -> impl Future<Output = Result<(), BirdError>> + Send;
}

/// BIRD over its control socket: writes the include file and asks BIRD to reconfigure.
pub struct BirdRouter {
    pub include: PathBuf,
    pub socket: PathBuf,
    /// Bound on connecting, each write and each reply.
    pub limit: Duration,
}

impl Router for BirdRouter {
    async fn announce(&mut self, list: &[Announcement]) -> Result<(), BirdError> {
        bird::apply(&self.include, &self.socket, &bird::render(list), self.limit).await
    }
}

/// What the router task tells the state loop.
#[derive(Debug, Clone, PartialEq)]
pub enum RouterEvent {
    /// The router now announces exactly this list.
    Applied(Vec<Announcement>),
    /// An attempt failed; the task retries after `retry_in` (sooner if the wanted list changes).
    Failed { error: String, retry_in: Duration },
    /// BIRD's BGP sessions, as `show protocols` lists them (`None`: BIRD did not answer).
    Sessions(Option<Vec<Session>>),
}

/// One BGP protocol of BIRD's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub name: String,
    pub established: bool,
    /// BIRD's state and info columns ("start  Active  Socket: Connection refused").
    pub info: String,
}

/// The BGP sessions in a `show protocols` reply's text (its lines without their codes).
pub fn parse_sessions(text: &str) -> Vec<Session> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (name, proto) = (words.next()?, words.next()?);
            if proto != "BGP" {
                return None;
            }
            // Table, state, since (date and time in some formats), info: keep what follows the table.
            let rest: Vec<&str> = words.skip(1).collect();
            Some(Session { name: name.to_owned(), established: rest.contains(&"Established"), info: rest.join(" ") })
        })
        .collect()
}

/// Asks BIRD for its BGP sessions every `every`, reporting each answer (or its absence), until
/// the receiver is gone. Its own task: a frozen BIRD delays only these reports.
pub async fn watch_sessions(socket: PathBuf, every: Duration, limit: Duration, events: mpsc::Sender<RouterEvent>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sessions = match bird::command(&socket, "show protocols", limit).await {
            Ok(bird::Reply::Ok { text, .. }) => Some(parse_sessions(&text)),
            _ => None,
        };
        if events.send(RouterEvent::Sessions(sessions)).await.is_err() {
            return;
        }
    }
}

/// Retry delays after consecutive failures: doubling from `first` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff { first: Duration::from_millis(250), max: Duration::from_secs(4) };

    fn after(&self, failures: u32) -> Duration {
        self.first.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(self.max)
    }
}

/// Brings the router to the latest wanted list, for as long as the daemon holds the sender.
/// Ends when the sender is dropped (after bringing the router to the last list it was sent).
pub async fn run_router(
    mut router: impl Router,
    mut wanted: watch::Receiver<Vec<Announcement>>,
    events: mpsc::Sender<RouterEvent>,
    backoff: Backoff,
) {
    let mut failures = 0;
    let mut applied: Option<Vec<Announcement>> = None;
    loop {
        let target = wanted.borrow_and_update().clone();
        if applied.as_ref() != Some(&target) {
            match router.announce(&target).await {
                Ok(()) => {
                    failures = 0;
                    applied = Some(target.clone());
                    let _ = events.send(RouterEvent::Applied(target)).await;
                }
                Err(e) => {
                    failures += 1;
                    let retry_in = backoff.after(failures);
                    let _ = events.send(RouterEvent::Failed { error: e.to_string(), retry_in }).await;
                    tokio::select! {
                        _ = tokio::time::sleep(retry_in) => {}
                        // A new list is tried at once; a dropped sender means the daemon is gone.
                        changed = wanted.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
            }
        }
        if wanted.changed().await.is_err() {
            // The daemon is gone; the last list it sent was handled above.
            return;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records every list it is asked to announce; fails while `failing` is above zero.
    #[derive(Clone, Default)]
    pub(crate) struct FakeRouter {
        pub calls: Arc<Mutex<Vec<Vec<Announcement>>>>,
        pub failing: Arc<Mutex<u32>>,
    }

    impl Router for FakeRouter {
        async fn announce(&mut self, list: &[Announcement]) -> Result<(), BirdError> {
            self.calls.lock().unwrap().push(list.to_vec());
            let mut failing = self.failing.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(BirdError::Refused { code: 8002, text: "fake failure".into() });
            }
            Ok(())
        }
    }

    fn vip(s: &str) -> Announcement {
        Announcement { prefix: s.parse().unwrap(), prepend: false, graceful_shutdown: false }
    }

    pub(crate) const FAST: Backoff = Backoff { first: Duration::from_millis(10), max: Duration::from_millis(40) };

    #[tokio::test]
    async fn failures_are_reported_and_retried_until_the_router_takes_the_list() {
        let router = FakeRouter::default();
        *router.failing.lock().unwrap() = 3;
        let (wanted_tx, wanted_rx) = watch::channel(vec![vip("10.0.0.1")]);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(run_router(router.clone(), wanted_rx, tx, FAST));
        let mut delays = Vec::new();
        for _ in 0..3 {
            match rx.recv().await.unwrap() {
                RouterEvent::Failed { retry_in, .. } => delays.push(retry_in),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [10, 20, 40].map(Duration::from_millis), "doubling backoff");
        assert_eq!(rx.recv().await.unwrap(), RouterEvent::Applied(vec![vip("10.0.0.1")]));
        // A new list goes out at once; an unchanged one is not sent again.
        wanted_tx.send(vec![vip("10.0.0.1"), vip("10.0.0.2")]).unwrap();
        assert_eq!(rx.recv().await.unwrap(), RouterEvent::Applied(vec![vip("10.0.0.1"), vip("10.0.0.2")]));
        wanted_tx.send_replace(vec![vip("10.0.0.1"), vip("10.0.0.2")]);
        wanted_tx.send(vec![]).unwrap();
        assert_eq!(rx.recv().await.unwrap(), RouterEvent::Applied(vec![]));
        drop(wanted_tx);
        task.await.unwrap();
        assert_eq!(router.calls.lock().unwrap().len(), 6, "4 tries of the first list, then 2 lists");
    }

    #[test]
    fn sessions_are_read_from_show_protocols() {
        let text = "Name       Proto      Table      State  Since         Info\n\
                    device1    Device     ---        up     10:00:01.000  \n\
                    upstream   BGP        ---        up     10:00:02.000  Established   \n\
                    backup     BGP        ---        start  10:00:03.000  Active        Socket: Connection refused\n\
                    lb_vips4   Static     master4    up     10:00:01.000  ";
        let sessions = parse_sessions(text);
        assert_eq!(sessions.iter().map(|s| (s.name.as_str(), s.established)).collect::<Vec<_>>(), [("upstream", true), ("backup", false)]);
        assert!(sessions[1].info.contains("Connection refused"), "{:?}", sessions[1]);
    }

    #[tokio::test]
    async fn a_change_during_the_backoff_is_tried_at_once() {
        let router = FakeRouter::default();
        *router.failing.lock().unwrap() = 1;
        let slow = Backoff { first: Duration::from_secs(60), max: Duration::from_secs(60) };
        let (wanted_tx, wanted_rx) = watch::channel(vec![vip("10.0.0.1")]);
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(run_router(router.clone(), wanted_rx, tx, slow));
        assert!(matches!(rx.recv().await.unwrap(), RouterEvent::Failed { .. }));
        wanted_tx.send(vec![]).unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("not after the 60 s backoff");
        assert_eq!(event.unwrap(), RouterEvent::Applied(vec![]));
    }
}
