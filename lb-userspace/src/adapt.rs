//! Weights that follow the backends (docs/operations.md, "Weights that follow the backends"):
//! per VIP that opts in, each real's effective weight is its configured weight times a factor
//! the controller here moves from what the health checks measure, its round-trip time against
//! the VIP's median (`latency`) or the load `lb backend` reports against a target (`load`).
//!
//! The factor is bounded (never below `floor`, never above 1), damped (at most `step` per
//! interval), held when the wanted change is below `hysteresis`, and a whole multiple of
//! `QUANTUM_PERCENT`, so the ring is rebuilt only when a change is worth a Maglev diff. Down and
//! drained reals are not adapted (their factor stays where it was). A leaf: the daemon feeds it
//! samples and applies what it answers.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// Factors are whole percents, multiples of this: a change smaller than one step never rebuilds
/// a ring.
pub const QUANTUM_PERCENT: u32 = 5;
/// Weight of a new sample in the smoothed signal (an exponentially weighted mean).
pub const SMOOTHING: f64 = 0.3;

/// What a VIP's weights follow.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "signal")]
pub enum Signal {
    /// The health check's round-trip time: a real slower than `slow_ratio` times the VIP's
    /// median gets `slow_ratio * median / its time` of its weight.
    Latency { slow_ratio: f64 },
    /// The load `lb backend` reports (0..1): above `target`, the factor falls linearly to the
    /// floor at load 1.
    Load { target: f64 },
}

/// A VIP's adaptation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Adaptation {
    pub signal: Signal,
    /// The least factor (0 < floor <= 1): an adapted real keeps this share of its weight.
    pub floor: f64,
    /// The most the factor moves per interval.
    pub step: f64,
    /// Wanted changes smaller than this are ignored.
    pub hysteresis: f64,
    pub interval: Duration,
}

/// One real's measurement, as the health checks gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Round-trip time of a passed check.
    pub latency: Option<Duration>,
    /// The load the backend reported (0..1).
    pub load: Option<f64>,
}

/// What the controller holds about one real.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RealAdapt {
    /// The smoothed signal: seconds of round trip, or load.
    pub smoothed: Option<f64>,
    /// The factor in force, in percent (100 until the controller moves it).
    pub percent: u32,
}

/// The controller of one VIP.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    pub reals: HashMap<IpAddr, RealAdapt>,
}

/// A factor that changed, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub real: IpAddr,
    /// Percent.
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// `factor` (0..1) in whole percents, a multiple of `QUANTUM_PERCENT`.
fn percent(factor: f64) -> u32 {
    ((factor * 100.0 / QUANTUM_PERCENT as f64).round() as u32 * QUANTUM_PERCENT).min(100)
}

impl Controller {
    /// Takes one check's result of `real` into its smoothed signal.
    pub fn observe(&mut self, a: &Adaptation, real: IpAddr, sample: Sample) {
        let value = match a.signal {
            Signal::Latency { .. } => sample.latency.map(|d| d.as_secs_f64()),
            Signal::Load { .. } => sample.load,
        };
        let Some(value) = value else { return };
        let r = self.reals.entry(real).or_insert(RealAdapt { smoothed: None, percent: 100 });
        r.smoothed = Some(match r.smoothed {
            Some(s) => s + SMOOTHING * (value - s),
            None => value,
        });
    }

    /// The factor `real` should have now, from the smoothed signals of `adaptable` (the VIP's
    /// reals that are up and not drained): bounded, not yet damped.
    fn wanted(&self, a: &Adaptation, real: IpAddr, adaptable: &[IpAddr]) -> Option<(f64, String)> {
        let mine = self.reals.get(&real)?.smoothed?;
        let (factor, reason) = match a.signal {
            Signal::Latency { slow_ratio } => {
                let mut times: Vec<f64> = adaptable.iter().filter_map(|r| self.reals.get(r)?.smoothed).collect();
                if times.len() < 2 {
                    return Some((1.0, "too few reals measured to compare".into()));
                }
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                let limit = slow_ratio * median;
                let factor = if mine <= limit || mine <= 0.0 { 1.0 } else { limit / mine };
                (factor, format!("round trip {:.1} ms, VIP median {:.1} ms", mine * 1e3, median * 1e3))
            }
            Signal::Load { target } => {
                let factor = if mine <= target { 1.0 } else { 1.0 - (mine - target) / (1.0 - target) };
                (factor, format!("load {mine:.2}, target {target:.2}"))
            }
        };
        Some((factor.clamp(a.floor, 1.0), reason))
    }

    /// One interval's step for every real of `reals` (address, up, drained): the factors that
    /// change. Down and drained reals keep theirs; reals that left are forgotten.
    pub fn step(&mut self, a: &Adaptation, reals: &[(IpAddr, bool, bool)]) -> Vec<Change> {
        self.reals.retain(|addr, _| reals.iter().any(|(r, _, _)| r == addr));
        let adaptable: Vec<IpAddr> = reals.iter().filter(|(_, up, drained)| *up && !drained).map(|(r, _, _)| *r).collect();
        let (floor, step, hysteresis) = (percent(a.floor).max(QUANTUM_PERCENT), percent(a.step), percent(a.hysteresis));
        let mut changes = Vec::new();
        for &real in &adaptable {
            let Some((wanted, reason)) = self.wanted(a, real, &adaptable) else { continue };
            let wanted = percent(wanted).clamp(floor, 100);
            let r = self.reals.get_mut(&real).expect("wanted() found it");
            let diff = wanted.abs_diff(r.percent);
            // At the bounds a smaller step still reaches them: otherwise a factor could stop
            // one hysteresis short of 100% after a recovery.
            let to_bound = wanted == 100 || wanted == floor;
            if diff == 0 || (diff < hysteresis && !to_bound) {
                continue;
            }
            let next = if wanted > r.percent { r.percent + diff.min(step) } else { r.percent - diff.min(step) };
            changes.push(Change { real, from: r.percent, to: next, reason });
            r.percent = next;
        }
        changes
    }

    /// `real`'s smoothed signal, for `lb status` (None: not measured yet).
    pub fn describe(&self, a: &Adaptation, real: &IpAddr) -> Option<String> {
        let s = self.reals.get(real)?.smoothed?;
        Some(match a.signal {
            Signal::Latency { .. } => format!("round trip {:.1} ms", s * 1e3),
            Signal::Load { .. } => format!("load {s:.2}"),
        })
    }

    /// The factor in force for `real`, in percent (100 when not adapted).
    pub fn percent(&self, real: &IpAddr) -> u32 {
        self.reals.get(real).map_or(100, |r| r.percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u8) -> IpAddr {
        IpAddr::from([10, 1, 0, i])
    }

    fn latency() -> Adaptation {
        Adaptation {
            signal: Signal::Latency { slow_ratio: 2.0 },
            floor: 0.1,
            step: 0.25,
            hysteresis: 0.1,
            interval: Duration::from_secs(1),
        }
    }

    fn ms(n: f64) -> Sample {
        Sample { latency: Some(Duration::from_secs_f64(n / 1e3)), load: None }
    }

    fn all_up(n: u8) -> Vec<(IpAddr, bool, bool)> {
        (1..=n).map(|i| (ip(i), true, false)).collect()
    }

    /// Feeds `rounds` intervals of samples from `each` (real -> ms), stepping after each;
    /// returns every change.
    fn run(c: &mut Controller, a: &Adaptation, rounds: usize, each: impl Fn(u8, usize) -> f64) -> Vec<Change> {
        let mut changes = Vec::new();
        for round in 0..rounds {
            for i in 1..=3 {
                c.observe(a, ip(i), ms(each(i, round)));
            }
            changes.extend(c.step(a, &all_up(3)));
        }
        changes
    }

    #[test]
    fn a_slow_real_falls_by_steps_to_its_share_and_no_lower_than_the_floor() {
        let (a, mut c) = (latency(), Controller::default());
        // Real 1 answers in 50 ms, the others in 1 ms: wanted 2 * 1 / 50 = 0.04, below the floor.
        let changes = run(&mut c, &a, 10, |i, _| if i == 1 { 50.0 } else { 1.0 });
        let factors: Vec<u32> = changes.iter().map(|ch| ch.to).collect();
        assert_eq!(factors, [75, 50, 25, 10], "{changes:?}");
        assert!(changes.iter().all(|ch| ch.real == ip(1)));
        assert!(changes[0].reason.contains("VIP median 1.0 ms"), "{}", changes[0].reason);
        assert_eq!((c.percent(&ip(2)), c.percent(&ip(3))), (100, 100));
    }

    #[test]
    fn recovery_brings_the_factor_back_to_one() {
        let (a, mut c) = (latency(), Controller::default());
        run(&mut c, &a, 10, |i, _| if i == 1 { 50.0 } else { 1.0 });
        let back = run(&mut c, &a, 20, |_, _| 1.0);
        assert_eq!(c.percent(&ip(1)), 100, "{back:?}");
        // As the smoothed time comes down, the factor only rises.
        assert!(back.iter().all(|ch| ch.to > ch.from), "{back:?}");
    }

    #[test]
    fn noise_within_the_hysteresis_changes_nothing_and_never_oscillates() {
        let (a, mut c) = (latency(), Controller::default());
        // Every real jitters between 1 and 2.5 ms (up to 2.5x a median of about 1.7 ms at times).
        let changes = run(&mut c, &a, 200, |i, round| 1.0 + 1.5 * (((round * 7 + i as usize * 13) % 11) as f64 / 10.0));
        assert!(changes.len() <= 2, "noise moved the factors {} times: {changes:?}", changes.len());
        // A signal that sits near a boundary does not flap: it may settle, not go back and forth.
        let (a, mut c) = (latency(), Controller::default());
        let changes = run(&mut c, &a, 200, |i, round| if i == 1 { 2.6 + 0.4 * ((round % 2) as f64) } else { 1.0 });
        let reversals = changes.windows(2).filter(|w| (w[0].to > w[0].from) != (w[1].to > w[1].from)).count();
        assert!(reversals <= 1, "{changes:?}");
    }

    #[test]
    fn the_load_signal_follows_the_target() {
        let a = Adaptation { signal: Signal::Load { target: 0.6 }, ..latency() };
        let mut c = Controller::default();
        let load = |c: &mut Controller, real: u8, l: f64| c.observe(&a, ip(real), Sample { latency: None, load: Some(l) });
        for _ in 0..10 {
            load(&mut c, 1, 0.95);
            load(&mut c, 2, 0.3);
            c.step(&a, &all_up(2));
        }
        // 1 - (0.95 - 0.6) / 0.4 = 0.125: 10% (whole multiples of 5, the floor 10%) or 15%.
        assert!(c.percent(&ip(1)) <= 15, "{}", c.percent(&ip(1)));
        assert_eq!(c.percent(&ip(2)), 100);
    }

    #[test]
    fn down_and_drained_reals_keep_their_factor_and_departed_ones_are_forgotten() {
        let (a, mut c) = (latency(), Controller::default());
        run(&mut c, &a, 2, |i, _| if i == 1 { 50.0 } else { 1.0 });
        let held = c.percent(&ip(1));
        assert!(held < 100);
        for _ in 0..10 {
            c.observe(&a, ip(1), ms(1.0));
            let changes = c.step(&a, &[(ip(1), false, false), (ip(2), true, false), (ip(3), true, true)]);
            assert!(changes.iter().all(|ch| ch.real != ip(1) && ch.real != ip(3)), "{changes:?}");
        }
        assert_eq!(c.percent(&ip(1)), held);
        c.step(&a, &[(ip(2), true, false)]);
        assert!(!c.reals.contains_key(&ip(1)));
    }
}
