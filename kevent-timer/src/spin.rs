//! Spinning before a deadline: paying the wake-up latency early.
//!
//! A thread that sleeps to a deadline wakes after it: the kernel's hrtimer
//! fires on time, but the sleeping CPU must leave its idle state (in a VM
//! whose idle vCPU halts, a VM exit and re-entry: ~30 µs on the project's
//! machine) and the thread must be scheduled. A [`Ticker`](crate::Ticker)
//! can instead sleep until `deadline − S` and busy-wait on the clock for
//! the rest: the latency is then paid inside `S`, before the deadline, and
//! the tick is delivered within a clock read of it. The price is CPU: up
//! to `S` of spinning per tick (`S − latency` on a punctual wake).
//!
//! [`Spin`] chooses `S`: none, a fixed one, or an adaptive one
//! ([`AdaptiveSpin`]) learnt from the wake-ups actually measured. The
//! adaptive rule is [`SpinEstimator`]'s: `S` is a high quantile (p99 by
//! default) of the last [`WINDOW`] sleep latencies plus a margin, capped at
//! a share of the period (20 % by default), so it grows as far as wake-ups
//! are late, shrinks when they are punctual, and never burns more than the
//! cap. Figures: [`crate::ticker`'s docs](crate::ticker#spinning).
//!
//! The spin is never a reason to deliver early: the ticker delivers a tick
//! only once the clock has reached its deadline, spin or not.

use std::fmt;
use std::time::Duration;

/// Sleep latencies the adaptive spin learns from (about 1 s at 1 kHz).
pub const WINDOW: usize = 1024;
/// Samples needed before the adaptive spin trusts its quantile; until then
/// it spins its cap.
pub const MIN_SAMPLES: usize = 32;
/// Histogram buckets between 0 and the cap (one more counts beyond it).
const BUCKETS: usize = 128;
/// Most of the period a spin may take: a vCPU that never halts is one a
/// host deschedules (a 40 ms gap was measured at 99 %).
pub const MAX_SPIN_PERCENT: u32 = 50;

/// How a [`Ticker`](crate::Ticker) spends the last moments before each
/// deadline; see the [module docs](self). Set with
/// [`TickerBuilder::spin`](crate::TickerBuilder::spin).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Spin {
    /// Sleep to the deadline itself: lateness is the wake-up latency.
    Off,
    /// Wake this long before each deadline and spin the rest. Must be
    /// shorter than the period.
    Fixed(Duration),
    /// Learn how early to wake from the measured wake-up latency.
    Adaptive(AdaptiveSpin),
}

impl Spin {
    /// The adaptive spin with its default parameters ([`AdaptiveSpin::new`]).
    pub const ADAPTIVE: Spin = Spin::Adaptive(AdaptiveSpin::new());
}

impl From<Duration> for Spin {
    /// Zero is [`Spin::Off`], anything else [`Spin::Fixed`].
    fn from(d: Duration) -> Spin {
        if d.is_zero() {
            Spin::Off
        } else {
            Spin::Fixed(d)
        }
    }
}

impl From<AdaptiveSpin> for Spin {
    fn from(a: AdaptiveSpin) -> Spin {
        Spin::Adaptive(a)
    }
}

impl fmt::Display for Spin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spin::Off => f.write_str("off"),
            Spin::Fixed(d) => write!(f, "fixed {:.1} µs", d.as_secs_f64() * 1e6),
            Spin::Adaptive(a) => write!(
                f,
                "adaptive (p{} of wake latency + {:.1} µs, ≤ {} % of the period)",
                a.quantile * 100.0,
                a.margin_ns as f64 / 1000.0,
                a.max_percent
            ),
        }
    }
}

/// Parameters of the adaptive spin ([`Spin::Adaptive`]).
///
/// `S = min(quantile of the last WINDOW sleep latencies + margin,
/// max_percent % of the period)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSpin {
    quantile: f64,
    margin_ns: u64,
    max_percent: u32,
}

impl Default for AdaptiveSpin {
    fn default() -> Self {
        Self::new()
    }
}

impl AdaptiveSpin {
    /// p99 of the wake-up latency + 10 µs, at most 20 % of the period.
    #[must_use]
    pub const fn new() -> Self {
        AdaptiveSpin {
            quantile: 0.99,
            margin_ns: 10_000,
            max_percent: 20,
        }
    }

    /// The share of wake-ups the spin should absorb (default 0.99; 0.5 to
    /// 1.0, checked by [`TickerBuilder::build`](crate::TickerBuilder::build)).
    #[must_use]
    pub const fn quantile(mut self, q: f64) -> Self {
        self.quantile = q;
        self
    }

    /// Added to the quantile (default 10 µs).
    #[must_use]
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin_ns = u64::try_from(margin.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// The most of each period the spin may take, in percent (default 20;
    /// 1 to [`MAX_SPIN_PERCENT`], checked by `build`).
    #[must_use]
    pub const fn max_percent(mut self, pct: u32) -> Self {
        self.max_percent = pct;
        self
    }

    /// Why these parameters are unusable, if they are.
    pub(crate) fn invalid(&self) -> Option<&'static str> {
        if !(0.5..=1.0).contains(&self.quantile) {
            Some("adaptive spin quantile must be within 0.5..=1.0")
        } else if !(1..=MAX_SPIN_PERCENT).contains(&self.max_percent) {
            Some("adaptive spin cap must be 1 to 50 % of the period")
        } else {
            None
        }
    }
}

/// The adaptive spin's rule, as pure arithmetic on latency samples (ns).
///
/// Each sample is one sleep's latency: when the sleep returned minus when
/// it was asked to end (`deadline − S`). That does not depend on `S`, so
/// the estimate does not chase its own tail. The last [`WINDOW`] samples
/// sit in a histogram of 128 equal buckets up to the cap plus one
/// beyond it; [`spin_ns`](Self::spin_ns) is the upper edge of the bucket
/// holding the quantile, plus the margin, capped. Until [`MIN_SAMPLES`]
/// samples are in, it is the cap. O(1) memory, no allocation, a walk of at
/// most 129 buckets per sample.
#[derive(Debug, Clone)]
pub struct SpinEstimator {
    cap_ns: u64,
    margin_ns: u64,
    /// Samples in the window allowed above the quantile, per window length.
    quantile: f64,
    bucket_ns: u64,
    ring: [u8; WINDOW],
    pos: usize,
    len: usize,
    counts: [u16; BUCKETS + 1],
    spin_ns: u64,
}

impl SpinEstimator {
    /// An estimator for ticks of `period_ns` under `params`.
    #[must_use]
    pub fn new(period_ns: u64, params: &AdaptiveSpin) -> Self {
        let cap_ns = (u128::from(period_ns) * u128::from(params.max_percent) / 100) as u64;
        let cap_ns = cap_ns.max(1);
        SpinEstimator {
            cap_ns,
            margin_ns: params.margin_ns,
            quantile: params.quantile.clamp(0.5, 1.0),
            bucket_ns: cap_ns.div_ceil(BUCKETS as u64),
            ring: [0; WINDOW],
            pos: 0,
            len: 0,
            counts: [0; BUCKETS + 1],
            spin_ns: cap_ns,
        }
    }

    /// How early to wake now, in ns.
    #[must_use]
    pub fn spin_ns(&self) -> u64 {
        self.spin_ns
    }

    /// The cap, in ns.
    #[must_use]
    pub fn cap_ns(&self) -> u64 {
        self.cap_ns
    }

    /// Samples in the window.
    #[must_use]
    pub fn samples(&self) -> usize {
        self.len
    }

    /// Adds one sleep latency (ns) and updates the spin.
    pub fn record(&mut self, latency_ns: u64) {
        let b = ((latency_ns / self.bucket_ns) as usize).min(BUCKETS);
        if self.len == WINDOW {
            let old = self.ring[self.pos] as usize;
            self.counts[old] -= 1;
        } else {
            self.len += 1;
        }
        self.ring[self.pos] = b as u8;
        self.counts[b] += 1;
        self.pos = (self.pos + 1) % WINDOW;
        self.spin_ns = self.estimate();
    }

    fn estimate(&self) -> u64 {
        if self.len < MIN_SAMPLES {
            return self.cap_ns;
        }
        // Samples that may lie above the quantile (p99 of 1024: 10).
        let above = ((1.0 - self.quantile) * self.len as f64) as usize;
        let mut seen = 0usize;
        for b in (0..=BUCKETS).rev() {
            seen += usize::from(self.counts[b]);
            if seen > above {
                if b == BUCKETS {
                    return self.cap_ns;
                }
                let edge = (b as u64 + 1) * self.bucket_ns;
                return edge.saturating_add(self.margin_ns).min(self.cap_ns);
            }
        }
        self.cap_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    fn est() -> SpinEstimator {
        SpinEstimator::new(MS, &AdaptiveSpin::new())
    }

    #[test]
    fn starts_at_the_cap_until_enough_samples() {
        let mut e = est();
        assert_eq!(e.cap_ns(), 200 * US);
        assert_eq!(e.spin_ns(), 200 * US);
        for _ in 0..MIN_SAMPLES - 1 {
            e.record(5 * US);
            assert_eq!(e.spin_ns(), 200 * US);
        }
        e.record(5 * US);
        assert!(e.spin_ns() < 200 * US);
    }

    #[test]
    fn punctual_wakes_give_quantile_plus_margin() {
        let mut e = est();
        for _ in 0..WINDOW {
            e.record(30 * US);
        }
        // Bucket width 1.5625 µs: the upper edge of 30 µs's bucket + 10 µs.
        let s = e.spin_ns();
        assert!(
            (40 * US..=42 * US).contains(&s),
            "spin {s} ns for 30 µs wakes"
        );
    }

    #[test]
    fn follows_the_p99_not_the_max() {
        let mut e = est();
        // 8 of 1024 wakes at 150 µs are within the quantile's allowance
        // (10 of 1024 may lie above): still the body's figure.
        for i in 0..WINDOW {
            e.record(if i % 128 == 0 { 150 * US } else { 30 * US });
        }
        assert!(e.spin_ns() < 45 * US, "{}", e.spin_ns());
        // 3 % at 150 µs is above it: the spin covers them.
        for i in 0..WINDOW {
            e.record(if i % 33 == 0 { 150 * US } else { 30 * US });
        }
        let s = e.spin_ns();
        assert!((160 * US..=162 * US).contains(&s), "{s}");
    }

    #[test]
    fn never_above_the_cap() {
        let mut e = est();
        for _ in 0..WINDOW {
            e.record(40 * MS);
        }
        assert_eq!(e.spin_ns(), 200 * US);
        let mut e = est();
        for _ in 0..WINDOW {
            e.record(195 * US);
        }
        assert_eq!(e.spin_ns(), 200 * US, "quantile + margin beyond the cap");
    }

    #[test]
    fn shrinks_once_late_wakes_leave_the_window() {
        let mut e = est();
        for _ in 0..WINDOW {
            e.record(120 * US);
        }
        assert!(e.spin_ns() >= 130 * US);
        // Half a window of punctual wakes: the late half still rules.
        for _ in 0..WINDOW / 2 {
            e.record(2 * US);
        }
        assert!(e.spin_ns() >= 130 * US);
        // A full window: only punctual ones left.
        for _ in 0..WINDOW / 2 {
            e.record(2 * US);
        }
        let s = e.spin_ns();
        assert!((12 * US..=14 * US).contains(&s), "{s}");
    }

    #[test]
    fn quantile_margin_and_cap_are_parameters() {
        let p = AdaptiveSpin::new()
            .quantile(0.5)
            .margin(Duration::ZERO)
            .max_percent(10);
        let mut e = SpinEstimator::new(MS, &p);
        assert_eq!(e.cap_ns(), 100 * US);
        for i in 0..WINDOW {
            e.record(if i % 4 == 0 { 90 * US } else { 20 * US });
        }
        // The median is the 20 µs body; no margin.
        let s = e.spin_ns();
        assert!((20 * US..=21 * US).contains(&s), "{s}");
        assert!(p.invalid().is_none());
        assert!(AdaptiveSpin::new().quantile(0.2).invalid().is_some());
        assert!(AdaptiveSpin::new().quantile(f64::NAN).invalid().is_some());
        assert!(AdaptiveSpin::new().max_percent(0).invalid().is_some());
        assert!(AdaptiveSpin::new().max_percent(90).invalid().is_some());
    }

    #[test]
    fn durations_convert() {
        assert_eq!(Spin::from(Duration::ZERO), Spin::Off);
        assert_eq!(
            Spin::from(Duration::from_micros(5)),
            Spin::Fixed(Duration::from_micros(5))
        );
        assert_eq!(Spin::from(AdaptiveSpin::new()), Spin::ADAPTIVE);
    }
}
