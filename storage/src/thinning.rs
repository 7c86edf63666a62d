//! Thinned history: which automatic snapshots a sandbox keeps.
//!
//! Every retained snapshot that shares tree blocks with the live workspace
//! makes the next snapshot of a large workspace slower (Btrfs back
//! references; `docs/benchmarks.md`), so the number kept must be bounded by
//! design. The policy, applied after every automatic snapshot:
//!
//! * the newest [`Thinning::keep_recent`] automatic snapshots (default 64);
//! * older ones: the first snapshot of each 5-minute slot whose start is
//!   less than an hour before the newest automatic snapshot, the first of
//!   each hour for the last 24 hours, the first of each (UTC) day beyond;
//! * at most [`Thinning::max_auto`] automatic snapshots in all (the oldest
//!   daily ones go first).
//!
//! Kept snapshots (`initial`, named, pinned, memory) are not automatic and
//! are never thinned. So a sandbox holds at most `keep_recent` + 12 + 24
//! automatic snapshots plus one per day of activity, whatever its command
//! rate. Ages are measured from the newest automatic snapshot, not the wall
//! clock, so an idle sandbox's history does not thin while nobody uses it.
//!
//! The rule is stable: a snapshot thinned once would be thinned by every
//! later evaluation too (slots nest — 5 minutes in an hour in a day — and a
//! slot leaves a tier as a whole, by its start), so applying it after each
//! command keeps exactly the set it would pick from the full history. The
//! one exception is the cap: daily snapshots it thinned stay thinned when
//! the count later falls (the kept set is then a subset of that pick).
//! Snapshots of failed commands get no special treatment: a failing command
//! in a loop would otherwise grow the history without bound.

use std::time::{SystemTime, UNIX_EPOCH};

/// Default number of newest automatic snapshots always kept.
pub const DEFAULT_KEEP_RECENT: usize = 64;

/// Why a snapshot is (still) in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Named, pinned or `initial`: never thinned.
    Kept,
    /// One of the newest `keep_recent` automatic snapshots.
    Recent,
    /// First of its 5-minute slot in the last hour.
    FiveMinutes,
    /// First of its hour in the last 24 hours.
    Hourly,
    /// First of its UTC day.
    Daily,
    /// Thinned into the cold tier (`storage.cold_history`): archived, still
    /// restorable, more slowly.
    Cold,
}

/// One tier of the spread: the first snapshot of each `slot_secs` slot
/// starting less than `span_secs` before the newest is kept.
struct Tier {
    slot_secs: u64,
    span_secs: u64,
    reason: Retention,
}

const TIERS: [Tier; 3] = [
    Tier {
        slot_secs: 300,
        span_secs: 3600,
        reason: Retention::FiveMinutes,
    },
    Tier {
        slot_secs: 3600,
        span_secs: 86_400,
        reason: Retention::Hourly,
    },
    Tier {
        slot_secs: 86_400,
        span_secs: u64::MAX,
        reason: Retention::Daily,
    },
];

/// The thinning policy's two knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thinning {
    /// Newest automatic snapshots always kept.
    pub keep_recent: usize,
    /// Hard cap on automatic snapshots kept.
    pub max_auto: usize,
}

impl Thinning {
    /// For the creation times of a sandbox's automatic snapshots, oldest
    /// first: why each one is kept, or `None` where it is to be thinned.
    pub fn plan(&self, created: &[SystemTime]) -> Vec<Option<Retention>> {
        let secs: Vec<u64> = created.iter().map(|t| unix_secs(*t)).collect();
        let newest = secs.iter().copied().max().unwrap_or(0);
        let recent_from = secs
            .len()
            .saturating_sub(self.keep_recent.min(self.max_auto));
        let mut plan: Vec<Option<Retention>> = (0..secs.len())
            .map(|i| (i >= recent_from).then_some(Retention::Recent))
            .collect();
        for tier in &TIERS {
            apply_tier(tier, &secs, newest, &mut plan);
        }
        cap(&mut plan, self.max_auto);
        plan
    }
}

/// Marks the first snapshot of each slot of `tier` that is still in the
/// tier's span, unless an earlier rule already keeps it.
fn apply_tier(tier: &Tier, secs: &[u64], newest: u64, plan: &mut [Option<Retention>]) {
    let mut previous_slot = None;
    for (i, &t) in secs.iter().enumerate() {
        let slot = t / tier.slot_secs;
        if previous_slot == Some(slot) {
            continue;
        }
        previous_slot = Some(slot);
        let slot_age = newest.saturating_sub(slot * tier.slot_secs);
        if plan[i].is_none() && slot_age < tier.span_secs {
            plan[i] = Some(tier.reason);
        }
    }
}

/// Thins the oldest kept snapshots until at most `max_auto` remain.
fn cap(plan: &mut [Option<Retention>], max_auto: usize) {
    let mut excess = plan.iter().flatten().count().saturating_sub(max_auto);
    for entry in plan.iter_mut() {
        if excess == 0 {
            break;
        }
        if entry.take().is_some() {
            excess -= 1;
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const POLICY: Thinning = Thinning {
        keep_recent: 64,
        max_auto: 1000,
    };

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Simulates `runs` commands `gap(i)` seconds apart, thinning after
    /// each one as the service does; returns (full history, survivors).
    fn simulate(
        policy: Thinning,
        runs: u64,
        gap: impl Fn(u64) -> u64,
    ) -> (Vec<SystemTime>, Vec<SystemTime>) {
        let (mut history, mut alive) = (Vec::new(), Vec::new());
        let mut now = 1_700_000_000;
        for i in 0..runs {
            now += gap(i);
            history.push(at(now));
            alive.push(at(now));
            let plan = policy.plan(&alive);
            alive = alive
                .into_iter()
                .zip(plan)
                .filter_map(|(t, p)| p.map(|_| t))
                .collect();
        }
        (history, alive)
    }

    fn kept_of(policy: Thinning, history: &[SystemTime]) -> Vec<SystemTime> {
        let plan = policy.plan(history);
        history
            .iter()
            .zip(plan)
            .filter_map(|(t, p)| p.map(|_| *t))
            .collect()
    }

    #[test]
    fn plan_keeps_everything_up_to_keep_recent() {
        let times: Vec<_> = (0..64).map(at).collect();

        let plan = POLICY.plan(&times);

        assert_eq!(plan, vec![Some(Retention::Recent); 64]);
    }

    #[test]
    fn plan_keeps_first_of_each_slot_with_reason() {
        // 70 snapshots one second apart from 10:00:00, then the newest
        // 64 are recent; of the 6 older ones only the slot's first stays.
        let start = 1_700_006_400; // a multiple of 3600 and 300
        let times: Vec<_> = (0..70).map(|i| at(start + i)).collect();

        let plan = POLICY.plan(&times);

        assert_eq!(plan[0], Some(Retention::FiveMinutes));
        assert_eq!(plan[1..6], [None; 5]);
        assert_eq!(plan[6..], [Some(Retention::Recent); 64]);
    }

    #[test]
    fn plan_moves_old_slots_to_coarser_tiers() {
        // One snapshot every 5 minutes for 3 days, then 64 more in a burst.
        let mut times: Vec<_> = (0..864).map(|i| at(1_699_920_000 + i * 300)).collect();
        let last = 1_699_920_000 + 863 * 300;
        times.extend((1..=64).map(|i| at(last + i)));

        let plan = POLICY.plan(&times);
        let count = |r| plan.iter().filter(|p| **p == Some(r)).count();

        assert_eq!(count(Retention::Recent), 64);
        assert_eq!(count(Retention::FiveMinutes), 12);
        assert_eq!(count(Retention::Hourly), 23);
        assert_eq!(count(Retention::Daily), 2);
        assert_eq!(plan.iter().flatten().count(), 64 + 12 + 23 + 2);
    }

    #[test]
    fn plan_caps_automatic_snapshots_at_max_auto() {
        let policy = Thinning {
            keep_recent: 3,
            max_auto: 3,
        };
        let times: Vec<_> = (0..6).map(|i| at(1_700_000_000 + i * 86_400)).collect();

        let plan = policy.plan(&times);

        assert_eq!(plan[..3], [None; 3]);
        assert_eq!(plan[3..], [Some(Retention::Recent); 3]);
    }

    #[test]
    fn plan_of_no_snapshots_is_empty() {
        assert_eq!(POLICY.plan(&[]), Vec::new());
    }

    #[test]
    fn thinning_after_each_of_2000_fast_runs_keeps_the_documented_set() {
        // 2000 commands 1-3 s apart (~67 minutes).
        let (history, alive) = simulate(POLICY, 2000, |i| 1 + i % 3);

        assert_eq!(alive, kept_of(POLICY, &history));
        assert!(alive.len() <= 64 + 12 + 2, "{} kept", alive.len());
    }

    #[test]
    fn thinning_after_each_of_2000_slow_runs_keeps_the_documented_set() {
        // 2000 commands 10-200 s apart (several days).
        let (history, alive) = simulate(POLICY, 2000, |i| 10 + (i * 37) % 191);

        assert_eq!(alive, kept_of(POLICY, &history));
        assert!(alive.len() <= 64 + 12 + 24 + 3, "{} kept", alive.len());
    }

    #[test]
    fn thinning_with_a_small_cap_keeps_the_documented_set() {
        let policy = Thinning {
            keep_recent: 8,
            max_auto: 20,
        };

        let (history, alive) = simulate(policy, 2000, |i| 60 + (i * 53) % 900);

        // Once the cap bit, daily snapshots the cap thinned stay thinned:
        // the survivors are a fixed point of the plan and a subset of what
        // the plan picks from the full history.
        let from_history = kept_of(policy, &history);
        assert_eq!(alive, kept_of(policy, &alive));
        assert!(alive.iter().all(|t| from_history.contains(t)));
        assert!(alive.len() <= 20, "{} kept", alive.len());
        assert_eq!(alive[alive.len() - 8..], history[history.len() - 8..]);
    }
}
