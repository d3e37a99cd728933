//! Running accuracy statistics of a tick source.
//!
//! dahdi_test's accuracy figure only sees the average rate; a source that
//! is 3 ms late every tenth tick and early-corrected after can score
//! 100 %. So the stats keep what that figure hides: missed ticks (more than
//! one expiration per wake), the lateness distribution, the longest gap
//! between wakes, and the tick actually measured (a kernel that silently
//! clamps a short period, as `hrtimer_forward` does below the clock's
//! resolution, shows up as a measured tick longer than asked).

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Wakes whose intervals give the measured tick.
const PROBE_WAKES: usize = 128;
/// Lateness recorded up to 60 s, 3 significant digits.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Lateness in µs at the usual percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lateness {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// Running statistics of one tick source; see the [module docs](self).
///
/// Recording allocates nothing: the histogram and the probe buffer are
/// sized up front.
#[derive(Debug, Clone)]
pub struct TickStats {
    period_ns: u64,
    lateness: Histogram<u64>,
    ticks: u64,
    events: u64,
    wakes: u64,
    missed: u64,
    last_wake_ns: Option<u64>,
    longest_gap_ns: u64,
    probe: [u64; PROBE_WAKES],
    probed: usize,
}

impl TickStats {
    /// Empty statistics for a source of period `period`.
    #[must_use]
    pub fn new(period: Duration) -> Self {
        TickStats {
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            lateness: Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3)
                .expect("static histogram bounds are valid"),
            ticks: 0,
            events: 0,
            wakes: 0,
            missed: 0,
            last_wake_ns: None,
            longest_gap_ns: 0,
            probe: [0; PROBE_WAKES],
            probed: 0,
        }
    }

    /// Records one delivered event at `now_ns` whose oldest tick was due at
    /// `deadline_ns`.
    ///
    /// `wake` is false for a catch-up event delivered back to back after
    /// another (no new wake-up); `expired` is the number of deadlines due at
    /// a wake (each one past the first is a missed tick) and `consumed` the
    /// grid deadlines this event retired.
    pub fn record(
        &mut self,
        now_ns: u64,
        deadline_ns: u64,
        expired: u64,
        consumed: u64,
        wake: bool,
    ) {
        self.events += 1;
        self.ticks += consumed;
        let late = now_ns.saturating_sub(deadline_ns).clamp(1, MAX_TRACKED_NS);
        self.lateness.saturating_record(late);
        if !wake {
            return;
        }
        self.wakes += 1;
        self.missed += expired.saturating_sub(1);
        if let Some(last) = self.last_wake_ns {
            let gap = now_ns.saturating_sub(last);
            self.longest_gap_ns = self.longest_gap_ns.max(gap);
            if self.probed < PROBE_WAKES {
                self.probe[self.probed] = gap;
                self.probed += 1;
            }
        }
        self.last_wake_ns = Some(now_ns);
    }

    /// Empties the statistics, keeping their allocation.
    pub fn clear(&mut self) {
        self.lateness.reset();
        self.ticks = 0;
        self.events = 0;
        self.wakes = 0;
        self.missed = 0;
        self.last_wake_ns = None;
        self.longest_gap_ns = 0;
        self.probed = 0;
    }

    /// Grid ticks that passed (delivered, merged or dropped).
    #[must_use]
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Events delivered.
    #[must_use]
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Wake-ups (events that were not catch-up continuations).
    #[must_use]
    pub fn wakes(&self) -> u64 {
        self.wakes
    }

    /// Ticks that were not the only one due at their wake.
    #[must_use]
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Longest interval between two wakes.
    #[must_use]
    pub fn longest_gap(&self) -> Duration {
        Duration::from_nanos(self.longest_gap_ns)
    }

    /// Median interval between the first wakes (up to 128), or `None`
    /// before two wakes.
    #[must_use]
    pub fn measured_period(&self) -> Option<Duration> {
        if self.probed == 0 {
            return None;
        }
        let mut v = self.probe;
        let v = &mut v[..self.probed];
        v.sort_unstable();
        Some(Duration::from_nanos(v[v.len() / 2]))
    }

    /// Whether the measured tick is clearly longer than the period asked
    /// for (more than 1.5×): the kernel or the hypervisor clamps it.
    #[must_use]
    pub fn clamped(&self) -> bool {
        self.measured_period()
            .is_some_and(|m| m.as_nanos() * 2 > u128::from(self.period_ns) * 3)
    }

    /// Lateness percentiles in µs (event delivery time minus the deadline
    /// of the oldest tick it carries).
    #[must_use]
    pub fn lateness_us(&self) -> Lateness {
        if self.lateness.is_empty() {
            return Lateness::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Lateness {
            p50: us(self.lateness.value_at_quantile(0.5)),
            p99: us(self.lateness.value_at_quantile(0.99)),
            p999: us(self.lateness.value_at_quantile(0.999)),
            max: us(self.lateness.max()),
        }
    }

    /// The raw lateness histogram (ns), e.g. to plot it.
    #[must_use]
    pub fn lateness_histogram(&self) -> &Histogram<u64> {
        &self.lateness
    }

    /// Adds another source's statistics of the same period into these
    /// (e.g. several runs).
    pub fn merge(&mut self, other: &TickStats) {
        let _ = self.lateness.add(&other.lateness);
        self.ticks += other.ticks;
        self.events += other.events;
        self.wakes += other.wakes;
        self.missed += other.missed;
        self.longest_gap_ns = self.longest_gap_ns.max(other.longest_gap_ns);
        for &g in &other.probe[..other.probed] {
            if self.probed < PROBE_WAKES {
                self.probe[self.probed] = g;
                self.probed += 1;
            }
        }
    }
}

impl fmt::Display for TickStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.lateness_us();
        write!(
            f,
            "ticks {} missed {} longest gap {:.1} µs; lateness µs p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
            self.ticks,
            self.missed,
            self.longest_gap_ns as f64 / 1000.0,
            l.p50,
            l.p99,
            l.p999,
            l.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_missed_gaps_and_lateness() {
        let mut s = TickStats::new(Duration::from_millis(1));
        // On-time-ish wakes every 1 ms, 10 µs late.
        for i in 1..=10u64 {
            s.record(i * 1_000_000 + 10_000, i * 1_000_000, 1, 1, true);
        }
        // A 3 ms stall: 3 ticks due at one wake.
        s.record(13_000_000 + 500, 11_000_000, 3, 3, true);
        assert_eq!(
            (s.ticks(), s.missed(), s.wakes(), s.events()),
            (13, 2, 11, 11)
        );
        assert_eq!(s.longest_gap(), Duration::from_nanos(2_990_500));
        let l = s.lateness_us();
        assert!((l.p50 - 10.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 2000.5).abs() < 2.0, "{l:?}");
        assert_eq!(s.measured_period(), Some(Duration::from_millis(1)));
        assert!(!s.clamped());
        s.clear();
        assert_eq!((s.ticks(), s.missed(), s.wakes(), s.events()), (0, 0, 0, 0));
        assert_eq!(s.longest_gap(), Duration::ZERO);
        assert_eq!(s.measured_period(), None);
        assert_eq!(s.lateness_us(), Lateness::default());
    }

    #[test]
    fn catchup_continuations_are_not_wakes() {
        let mut s = TickStats::new(Duration::from_millis(1));
        s.record(3_500_000, 1_000_000, 3, 1, true);
        s.record(3_500_100, 2_000_000, 2, 1, false);
        s.record(3_500_200, 3_000_000, 1, 1, false);
        assert_eq!((s.ticks(), s.missed(), s.wakes(), s.events()), (3, 2, 1, 3));
    }

    #[test]
    fn detects_a_clamped_tick() {
        // Asked for 100 µs, woke every 4 ms (a HZ=250 fallback).
        let mut s = TickStats::new(Duration::from_micros(100));
        for i in 1..=20u64 {
            s.record(i * 4_000_000, i * 4_000_000 - 3_900_000, 40, 40, true);
        }
        assert_eq!(s.measured_period(), Some(Duration::from_millis(4)));
        assert!(s.clamped());
    }
}
