//! A TIMER change's encoding: units, `ABSTIME`, and the extension bits for
//! the missed-tick policy and the catch-up cap; parsing it into a [`Spec`].
//!
//! `fflags` layout (FreeBSD uses bits 0..=4; everything else is ours):
//!
//! | bits     | meaning                                                  |
//! |----------|----------------------------------------------------------|
//! | 0..=3    | unit: `note::SECONDS`, `MSECONDS` (or none), `USECONDS`, `NSECONDS` |
//! | 4        | `note::ABSTIME`                                          |
//! | 8..=23   | catch-up cap ([`CATCHUP_CAP_MASK`]), only with [`POLICY_CATCHUP`]; 0 = [`DEFAULT_CATCHUP_CAP`] |
//! | 24..=27  | missed-tick policy ([`POLICY_MASK`])                     |
//!
//! Any other bit is `EINVAL`, as FreeBSD's `filt_timervalidate` rejects
//! every bit but the unit and `NOTE_ABSTIME`.

use std::time::Duration;

use kevent_core::{note, Errno, Filter, Flags, Kevent};

use crate::policy::{MissedTickPolicy, DEFAULT_CATCHUP_CAP};
use crate::sys;

/// Mask of the missed-tick policy bits in a TIMER change's `fflags`.
pub const POLICY_MASK: u32 = 0x0F00_0000;
/// `fflags` value: [`MissedTickPolicy::Merge`] (the default).
pub const POLICY_MERGE: u32 = 0x0000_0000;
/// `fflags` value: [`MissedTickPolicy::Catchup`].
pub const POLICY_CATCHUP: u32 = 0x0100_0000;
/// `fflags` value: [`MissedTickPolicy::Skip`].
pub const POLICY_SKIP: u32 = 0x0200_0000;
/// `fflags` value: [`MissedTickPolicy::Delay`].
pub const POLICY_DELAY: u32 = 0x0300_0000;

/// Mask of the catch-up cap in a TIMER change's `fflags` (bits 8..=23): the
/// most events that stand for one backlog under [`POLICY_CATCHUP`]
/// (1..=65535; 0 means [`DEFAULT_CATCHUP_CAP`]). Set with
/// [`catchup_cap_fflags`]; nonzero with another policy is `EINVAL`.
pub const CATCHUP_CAP_MASK: u32 = 0x00FF_FF00;
/// Shift of the catch-up cap in `fflags`.
pub const CATCHUP_CAP_SHIFT: u32 = 8;

pub(super) const UNITS: u32 = note::SECONDS | note::MSECONDS | note::USECONDS | note::NSECONDS;
const KNOWN: u32 = UNITS | note::ABSTIME | POLICY_MASK | CATCHUP_CAP_MASK;
const NS_PER_MS: u64 = 1_000_000;

/// The `fflags` bits that select `policy`.
#[must_use]
pub const fn policy_fflags(policy: MissedTickPolicy) -> u32 {
    match policy {
        MissedTickPolicy::Merge => POLICY_MERGE,
        MissedTickPolicy::Catchup => POLICY_CATCHUP,
        MissedTickPolicy::Skip => POLICY_SKIP,
        MissedTickPolicy::Delay => POLICY_DELAY,
    }
}

/// The `fflags` bits that bound a catch-up backlog to `cap` events (0: the
/// default, [`DEFAULT_CATCHUP_CAP`]). Or it with [`POLICY_CATCHUP`].
#[must_use]
pub const fn catchup_cap_fflags(cap: u16) -> u32 {
    (cap as u32) << CATCHUP_CAP_SHIFT
}

/// `(unit, data)` for `period` in the finest unit that holds it (ns up to
/// 292 years, else seconds, saturating).
fn period_data(period: Duration) -> (u32, i64) {
    match i64::try_from(period.as_nanos()) {
        Ok(ns) => (note::NSECONDS, ns),
        Err(_) => (
            note::SECONDS,
            i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
        ),
    }
}

/// An `ADD` change for a periodic timer `ident` of `period` under `policy`,
/// in the finest unit that holds it (ns up to 292 years). A `Catchup`
/// timer gets the default cap ([`catchup_timer`] chooses one).
///
/// ```
/// use kevent_timer::storage::timer;
/// use kevent_timer::MissedTickPolicy;
/// use std::time::Duration;
///
/// let ch = timer(7, Duration::from_millis(1), MissedTickPolicy::Skip, 0);
/// assert_eq!(ch.data, 1_000_000);
/// ```
#[must_use]
pub fn timer(ident: u64, period: Duration, policy: MissedTickPolicy, udata: u64) -> Kevent {
    let (unit, data) = period_data(period);
    Kevent::new(
        ident,
        Filter::Timer,
        Flags::ADD,
        unit | policy_fflags(policy),
        data,
        udata,
    )
}

/// An `ADD` change for a periodic [`MissedTickPolicy::Catchup`] timer whose
/// backlog is bounded to `cap` events (0: [`DEFAULT_CATCHUP_CAP`]).
///
/// ```
/// use kevent_timer::storage::{catchup_timer, CATCHUP_CAP_MASK, CATCHUP_CAP_SHIFT};
/// use std::time::Duration;
///
/// let ch = catchup_timer(1, Duration::from_millis(1), 16, 0);
/// assert_eq!((ch.fflags & CATCHUP_CAP_MASK) >> CATCHUP_CAP_SHIFT, 16);
/// ```
#[must_use]
pub fn catchup_timer(ident: u64, period: Duration, cap: u16, udata: u64) -> Kevent {
    let (unit, data) = period_data(period);
    Kevent::new(
        ident,
        Filter::Timer,
        Flags::ADD,
        unit | POLICY_CATCHUP | catchup_cap_fflags(cap),
        data,
        udata,
    )
}

/// What a change asks for, in monotonic ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spec {
    pub(super) first_ns: u64,
    pub(super) period_ns: Option<u64>,
    pub(super) policy: MissedTickPolicy,
    /// Catch-up cap in events (`Catchup` only; at least 1).
    pub(super) cap: u64,
    /// The `data` to keep as the knote's `sdata` (FreeBSD stores 1 for a
    /// periodic timer asked with 0).
    pub(super) sdata: i64,
}

/// How an `ABSTIME` time (since the Unix epoch) maps to `CLOCK_MONOTONIC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Abs {
    /// No `ABSTIME` in the change: no clock but the monotonic one read.
    Unused,
    /// `CLOCK_REALTIME − CLOCK_MONOTONIC` now, in ns (the wall time at
    /// the monotonic clock's origin, boot).
    Offset(i128),
}

/// Parses a TIMER change: units, `ABSTIME`, policy, cap. Pure.
///
/// `now_mono` is `CLOCK_MONOTONIC` now; `abs` the offset to convert an
/// `ABSTIME` value with.
pub(super) fn parse(
    fflags: u32,
    data: i64,
    oneshot: bool,
    now_mono: u64,
    abs: Abs,
) -> Result<Spec, Errno> {
    if data < 0 || fflags & !KNOWN != 0 {
        return Err(libc::EINVAL);
    }
    let unit_ns: u64 = match fflags & UNITS {
        0 | note::MSECONDS => NS_PER_MS,
        note::SECONDS => 1_000_000_000,
        note::USECONDS => 1_000,
        note::NSECONDS => 1,
        _ => return Err(libc::EINVAL),
    };
    let policy = match fflags & POLICY_MASK {
        POLICY_MERGE => MissedTickPolicy::Merge,
        POLICY_CATCHUP => MissedTickPolicy::Catchup,
        POLICY_SKIP => MissedTickPolicy::Skip,
        POLICY_DELAY => MissedTickPolicy::Delay,
        _ => return Err(libc::EINVAL),
    };
    let cap_bits = u64::from((fflags & CATCHUP_CAP_MASK) >> CATCHUP_CAP_SHIFT);
    if cap_bits != 0 && policy != MissedTickPolicy::Catchup {
        return Err(libc::EINVAL);
    }
    let cap = if cap_bits == 0 {
        DEFAULT_CATCHUP_CAP
    } else {
        cap_bits
    };
    // Saturate: a time too far to represent never comes.
    let value_ns = (data as u64).saturating_mul(unit_ns);
    let (first_ns, period_ns, sdata) = if fflags & note::ABSTIME != 0 {
        let Abs::Offset(offset) = abs else {
            return Err(libc::EINVAL);
        };
        // FreeBSD subtracts its boot time and rejects what lands before
        // it; here the origin is CLOCK_MONOTONIC's. A time past but after
        // boot keeps its place in the past (so due timers fire in deadline
        // order), it is not moved to "now".
        let mono = i128::from(value_ns) - offset;
        if mono < 0 {
            return Err(libc::EINVAL);
        }
        (u64::try_from(mono).unwrap_or(u64::MAX), None, data)
    } else if oneshot {
        (now_mono.saturating_add(value_ns), None, data)
    } else {
        let period_ns = value_ns.max(unit_ns);
        (
            now_mono.saturating_add(period_ns),
            Some(period_ns),
            data.max(1),
        )
    };
    Ok(Spec {
        first_ns,
        period_ns,
        policy,
        cap,
        sdata,
    })
}

/// Converts `ABSTIME` values with one `CLOCK_REALTIME − CLOCK_MONOTONIC`
/// offset for as long as the clocks keep it, as FreeBSD converts with its
/// stored boot time: equal absolute times get equal deadlines (and so
/// fire in one round, in the order they were added), rather than each
/// change's own reading of two clocks a few tens of ns apart.
///
/// Every `ABSTIME` change still reads both clocks; a reading more than
/// [`OffsetCache::TOLERANCE_NS`] away from the kept offset (a step of the
/// wall clock, or NTP's slew adding up) replaces it. The kept offset can
/// be off by up to the tolerance either way, so a deadline is placed that
/// much later than the conversion says: never early, at most twice the
/// tolerance (4 µs) late.
#[derive(Debug, Default)]
pub(super) struct OffsetCache {
    kept: Option<i128>,
}

impl OffsetCache {
    /// How far a fresh reading may stray from the kept offset, in ns.
    pub(super) const TOLERANCE_NS: i128 = 2_000;

    /// `(CLOCK_MONOTONIC now, Abs)` for a change with `fflags`.
    pub(super) fn clocks_for(&mut self, fflags: u32) -> (u64, Abs) {
        if fflags & note::ABSTIME == 0 {
            return (sys::monotonic_ns(), Abs::Unused);
        }
        let (mono, real) = clocks_now();
        let fresh = i128::from(real) - i128::from(mono);
        let kept = match self.kept {
            Some(k) if (k - fresh).abs() <= Self::TOLERANCE_NS => k,
            _ => {
                self.kept = Some(fresh);
                fresh
            }
        };
        (mono, Abs::Offset(kept - Self::TOLERANCE_NS))
    }
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `(monotonic, realtime)` read as one instant: the pair whose realtime
/// reads bracket the monotonic read most tightly of a few tries, so a
/// preemption between the reads cannot skew an `ABSTIME` conversion.
fn clocks_now() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..4 {
        let r0 = realtime_ns();
        let m = sys::monotonic_ns();
        let r1 = realtime_ns();
        let width = r1.saturating_sub(r0);
        if width < best.0 {
            best = (width, m, r0 + width / 2);
        }
        if width < 2_000 {
            break;
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000_000;
    const REAL: u64 = 1_700_000_000_000_000_000;
    const ABS: Abs = Abs::Offset(REAL as i128 - NOW as i128);

    fn p(fflags: u32, data: i64, oneshot: bool) -> Result<Spec, Errno> {
        parse(fflags, data, oneshot, NOW, ABS)
    }

    #[test]
    fn units() {
        let period = |f, d| p(f, d, false).unwrap().period_ns;
        assert_eq!(period(0, 5), Some(5_000_000));
        assert_eq!(period(note::MSECONDS, 5), Some(5_000_000));
        assert_eq!(period(note::SECONDS, 2), Some(2_000_000_000));
        assert_eq!(period(note::USECONDS, 250), Some(250_000));
        assert_eq!(period(note::NSECONDS, 1), Some(1));
        // Zero period: the smallest of its unit, as FreeBSD (which also
        // stores 1 as the knote's data).
        assert_eq!(period(note::USECONDS, 0), Some(1_000));
        assert_eq!(p(note::USECONDS, 0, false).unwrap().sdata, 1);
        assert_eq!(p(note::USECONDS, 0, true).unwrap().sdata, 0);
        let s = p(0, 5, false).unwrap();
        assert_eq!(s.first_ns, NOW + 5_000_000);
    }

    #[test]
    fn errors() {
        assert_eq!(p(0, -1, false), Err(libc::EINVAL));
        assert_eq!(p(0, i64::MIN, true), Err(libc::EINVAL));
        assert_eq!(
            p(note::SECONDS | note::USECONDS, 1, false),
            Err(libc::EINVAL)
        );
        assert_eq!(p(0x0400_0000, 1, false), Err(libc::EINVAL));
        // Every bit outside the known ones.
        for bit in 0..32 {
            let f = 1u32 << bit;
            // Policy values 4..=15 (bits 26, 27) are unassigned.
            let known = f & KNOWN != 0 && f & 0x0C00_0000 == 0;
            let extra = if f & CATCHUP_CAP_MASK != 0 {
                POLICY_CATCHUP
            } else {
                0
            };
            // An absolute time after boot (ms).
            let data = if f == note::ABSTIME {
                (REAL / 1_000_000) as i64
            } else {
                1
            };
            let r = p(f | extra, data, false);
            assert_eq!(r.is_ok(), known, "bit {bit}: {r:?}");
        }
        // A cap with another policy.
        assert_eq!(p(catchup_cap_fflags(3), 1, false), Err(libc::EINVAL));
        assert_eq!(
            p(POLICY_SKIP | catchup_cap_fflags(3), 1, false),
            Err(libc::EINVAL)
        );
        // ABSTIME needs the offset.
        assert_eq!(
            parse(note::ABSTIME, 1, false, NOW, Abs::Unused),
            Err(libc::EINVAL)
        );
    }

    #[test]
    fn oneshot_and_abstime() {
        let s = p(note::USECONDS, 0, true).unwrap();
        assert_eq!((s.first_ns, s.period_ns), (NOW, None));
        // Absolute, 2 s in the future / in the past.
        let s = p(
            note::ABSTIME | note::SECONDS,
            (REAL / 1_000_000_000 + 2) as i64,
            false,
        )
        .unwrap();
        assert_eq!(s.period_ns, None);
        assert!(s.first_ns > NOW + 1_000_000_000 && s.first_ns <= NOW + 2_000_000_000);
        let s = p(note::ABSTIME | note::NSECONDS, (REAL - 5) as i64, false).unwrap();
        assert_eq!(s.first_ns, NOW - 5);
        // Before the monotonic clock's origin (boot): EINVAL, as FreeBSD.
        assert_eq!(p(note::ABSTIME, 0, false), Err(libc::EINVAL));
        let boot_ms = ((REAL - NOW) / 1_000_000) as i64;
        assert_eq!(p(note::ABSTIME, boot_ms - 1, false), Err(libc::EINVAL));
        assert!(p(note::ABSTIME, boot_ms + 1, false).is_ok());
        // Far future saturates rather than overflowing.
        let s = p(note::ABSTIME | note::SECONDS, i64::MAX, false).unwrap();
        assert_eq!(s.first_ns, u64::MAX - (REAL - NOW));
    }

    #[test]
    fn policies_caps_and_saturation() {
        for (f, pol) in [
            (POLICY_MERGE, MissedTickPolicy::Merge),
            (POLICY_CATCHUP, MissedTickPolicy::Catchup),
            (POLICY_SKIP, MissedTickPolicy::Skip),
            (POLICY_DELAY, MissedTickPolicy::Delay),
        ] {
            let s = p(f, 1, false).unwrap();
            assert_eq!((s.policy, s.cap), (pol, DEFAULT_CATCHUP_CAP));
            assert_eq!(policy_fflags(pol), f);
        }
        let s = p(POLICY_CATCHUP | catchup_cap_fflags(7), 1, false).unwrap();
        assert_eq!(s.cap, 7);
        let s = p(POLICY_CATCHUP | catchup_cap_fflags(u16::MAX), 1, false).unwrap();
        assert_eq!(s.cap, 65_535);
        for unit in [
            note::SECONDS,
            note::MSECONDS,
            note::USECONDS,
            note::NSECONDS,
        ] {
            let s = p(unit, i64::MAX, false).unwrap();
            let far = NOW.saturating_add((i64::MAX as u64).saturating_mul(unit_of(unit)));
            assert_eq!(s.first_ns, far, "unit {unit:#x}");
            if unit != note::NSECONDS {
                assert_eq!(s.first_ns, u64::MAX, "unit {unit:#x}: saturates");
            }
            let s = p(unit, i64::MAX, true).unwrap();
            assert_eq!(
                s.first_ns,
                NOW.saturating_add((i64::MAX as u64).saturating_mul(unit_of(unit)))
            );
        }
    }

    fn unit_of(unit: u32) -> u64 {
        match unit {
            note::SECONDS => 1_000_000_000,
            note::MSECONDS => 1_000_000,
            note::USECONDS => 1_000,
            _ => 1,
        }
    }

    #[test]
    fn change_builders_round_trip() {
        let ch = timer(3, Duration::from_micros(1500), MissedTickPolicy::Delay, 9);
        let s = p(ch.fflags, ch.data, false).unwrap();
        assert_eq!(s.period_ns, Some(1_500_000));
        assert_eq!(s.policy, MissedTickPolicy::Delay);
        assert_eq!((ch.ident, ch.udata, ch.filter), (3, 9, Filter::Timer));
        let ch = catchup_timer(4, Duration::from_millis(2), 5, 0);
        let s = p(ch.fflags, ch.data, false).unwrap();
        assert_eq!(
            (s.policy, s.cap, s.period_ns),
            (MissedTickPolicy::Catchup, 5, Some(2_000_000))
        );
        // Longer than i64 ns: seconds.
        let ch = timer(1, Duration::from_secs(u64::MAX), MissedTickPolicy::Merge, 0);
        assert_eq!((ch.fflags & UNITS, ch.data), (note::SECONDS, i64::MAX));
    }

    #[test]
    fn offset_cache_keeps_equal_times_equal_and_never_early() {
        let mut c = OffsetCache::default();
        let (m1, a1) = c.clocks_for(note::ABSTIME);
        let (_, a2) = c.clocks_for(note::ABSTIME);
        assert_eq!(a1, a2, "one kept offset");
        let Abs::Offset(o) = a1 else { panic!() };
        // The kept offset is lowered by the tolerance: deadlines land late,
        // never early, against a fresh reading.
        let (mono, real) = clocks_now();
        let fresh = i128::from(real) - i128::from(mono);
        assert!(o <= fresh + 200, "offset {o} fresh {fresh}");
        assert!(o >= fresh - 2 * OffsetCache::TOLERANCE_NS - 200);
        assert!(m1 <= mono);
        assert_eq!(c.clocks_for(0).1, Abs::Unused);
        // A step of the wall clock (here: a kept value far off) is noticed.
        c.kept = Some(fresh + 1_000_000);
        let (_, a3) = c.clocks_for(note::ABSTIME);
        let Abs::Offset(o3) = a3 else { panic!() };
        assert!((o3 - (fresh - OffsetCache::TOLERANCE_NS)).abs() < 100_000);
    }
}
