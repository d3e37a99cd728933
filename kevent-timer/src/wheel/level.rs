//! One level of the hierarchical wheel, and the slot arithmetic.
//!
//! Level `L` has 64 slots of `64^L` ticks each, so it spans `64^(L+1)` ticks.
//! An entry whose deadline `when` first differs from the wheel's current time
//! `elapsed` in bits `6L..6L+6` lives in level `L`, in slot
//! `(when >> 6L) & 63`. Eleven levels cover every `u64` tick (bits 60..63 use
//! only 16 slots of the top level), so the wheel needs no overflow list: at
//! 1 ms per tick, level 5 already reaches 2.2 years and level 6 139 years.

/// Bits of a tick consumed by one level.
pub(super) const SLOT_BITS: u32 = 6;
/// Slots per level.
pub(super) const LEVEL_SLOTS: usize = 1 << SLOT_BITS;
/// Mask of a slot index.
const SLOT_MASK: u64 = (LEVEL_SLOTS as u64) - 1;
/// Levels needed to cover all 64 bits of a tick.
pub(super) const NUM_LEVELS: usize = 64_usize.div_ceil(SLOT_BITS as usize);
/// End of an intrusive list.
pub(super) const NIL: u32 = u32::MAX;

/// Heads, tails and the occupancy bitmap of one level.
///
/// The lists themselves are threaded through the wheel's slab (`prev`/`next`
/// indices in each entry); a level only knows the ends.
#[derive(Debug, Clone)]
pub(super) struct Level {
    /// Bit `s` is set iff slot `s` holds at least one entry.
    pub(super) occupied: u64,
    pub(super) head: [u32; LEVEL_SLOTS],
    pub(super) tail: [u32; LEVEL_SLOTS],
}

impl Level {
    pub(super) const fn new() -> Self {
        Level {
            occupied: 0,
            head: [NIL; LEVEL_SLOTS],
            tail: [NIL; LEVEL_SLOTS],
        }
    }
}

/// Ticks covered by one slot of `level`, as `log2`.
#[inline]
const fn slot_shift(level: usize) -> u32 {
    SLOT_BITS * level as u32
}

/// Which level an entry due at `when` belongs to, given the wheel's time
/// `elapsed` (`when >= elapsed`): the level of the highest bit in which
/// the two differ. Equal ticks (and ticks in the same 64-tick block) map to
/// level 0.
#[inline]
pub(super) fn level_for(elapsed: u64, when: u64) -> usize {
    debug_assert!(when >= elapsed, "when {when} < elapsed {elapsed}");
    let masked = (elapsed ^ when) | SLOT_MASK;
    let significant = 63 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

/// The slot of `when` in `level`.
#[inline]
pub(super) fn slot_for(when: u64, level: usize) -> usize {
    debug_assert!(level < NUM_LEVELS, "level {level}");
    ((when >> slot_shift(level)) & SLOT_MASK) as usize
}

/// The first occupied slot of a level at or after the slot `elapsed` falls
/// in, and the tick at which that slot starts (the time the wheel must
/// process it: fire what is due, cascade the rest one level down).
///
/// Returns `None` if the level is empty.
#[inline]
pub(super) fn next_occupied(level: usize, occupied: u64, elapsed: u64) -> Option<(usize, u64)> {
    if occupied == 0 {
        return None;
    }
    let shift = slot_shift(level);
    let now_slot = (elapsed >> shift) & SLOT_MASK;
    let rotated = occupied.rotate_right(now_slot as u32);
    let slot = (u64::from(rotated.trailing_zeros()) + now_slot) & SLOT_MASK;
    // Start of the level's current 64-slot block; the top level's block is
    // the whole u64 range.
    let level_shift = shift + SLOT_BITS;
    let level_start = if level_shift >= 64 {
        0
    } else {
        elapsed & !((1u64 << level_shift) - 1)
    };
    let start = level_start + (slot << shift);
    // An entry of level L differs from `elapsed` in the level's own bits and
    // not above, so its slot is never before the current one within this
    // block: no wrap into the next block can happen.
    debug_assert!(
        slot >= now_slot,
        "level {level}: slot {slot} before current slot {now_slot} (elapsed {elapsed}, occupied {occupied:#x})"
    );
    Some((slot as usize, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the smallest level whose 64-slot block holds both ticks.
    fn level_for_naive(elapsed: u64, when: u64) -> usize {
        for level in 0..NUM_LEVELS {
            let shift = SLOT_BITS * (level as u32 + 1);
            if shift >= 64 || elapsed >> shift == when >> shift {
                return level;
            }
        }
        unreachable!()
    }

    fn sample_points() -> Vec<u64> {
        let mut v = vec![0, 1, 62, 63, 64, 65, 4095, 4096, 4097, 123_456_789];
        for level in 1..NUM_LEVELS as u32 {
            let edge = 1u64 << (SLOT_BITS * level).min(63);
            v.extend([
                edge - 1,
                edge,
                edge + 1,
                edge.wrapping_mul(3).wrapping_sub(1),
            ]);
        }
        v.extend([u64::MAX - 64, u64::MAX - 1, u64::MAX]);
        v
    }

    #[test]
    fn num_levels_cover_u64() {
        assert_eq!(NUM_LEVELS, 11);
        assert_eq!(level_for(0, u64::MAX), NUM_LEVELS - 1);
    }

    #[test]
    fn level_for_matches_reference_dense() {
        // Every (elapsed, when) pair in a dense window around each sample.
        for &base in &sample_points() {
            for elapsed in base.saturating_sub(70)..=base.saturating_add(70).min(u64::MAX - 300) {
                for when in elapsed..elapsed + 300 {
                    assert_eq!(
                        level_for(elapsed, when),
                        level_for_naive(elapsed, when),
                        "elapsed {elapsed} when {when}"
                    );
                }
            }
        }
    }

    #[test]
    fn level_for_matches_reference_every_scale() {
        for &elapsed in &sample_points() {
            for level in 0..NUM_LEVELS as u32 {
                for mult in [1u64, 2, 3, 5, 63, 64, 65] {
                    let delta = (1u64 << (SLOT_BITS * level).min(63)).saturating_mul(mult);
                    for d in [delta.saturating_sub(1), delta, delta.saturating_add(1)] {
                        let Some(when) = elapsed.checked_add(d) else {
                            continue;
                        };
                        assert_eq!(
                            level_for(elapsed, when),
                            level_for_naive(elapsed, when),
                            "elapsed {elapsed} when {when}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn level_for_is_level_of_distance_from_block_start() {
        // Within one level-L block, each multiple of the slot size lands in
        // the expected level and slot.
        for level in 0..NUM_LEVELS - 1 {
            let slot_size = 1u64 << (SLOT_BITS * level as u32);
            for slot in 1..LEVEL_SLOTS as u64 {
                let when = slot * slot_size;
                assert_eq!(level_for(0, when), level, "when {when}");
                assert_eq!(slot_for(when, level), slot as usize, "when {when}");
                assert_eq!(level_for(0, when + slot_size - 1), level);
                assert_eq!(slot_for(when + slot_size - 1, level), slot as usize);
            }
        }
    }

    #[test]
    fn slot_for_every_level() {
        for level in 0..NUM_LEVELS {
            let shift = SLOT_BITS * level as u32;
            for &when in &sample_points() {
                let expect = ((when >> shift) % 64) as usize;
                assert_eq!(slot_for(when, level), expect, "when {when} level {level}");
            }
        }
    }

    #[test]
    fn next_occupied_finds_the_first_slot_at_or_after_now() {
        for level in 0..NUM_LEVELS - 1 {
            let slot_size = 1u64 << (SLOT_BITS * level as u32);
            let block = slot_size * 64;
            for base_block in [0u64, 1, 7] {
                for now_slot in 0..64u64 {
                    for offset in [0, slot_size / 2, slot_size - 1] {
                        let elapsed = base_block * block + now_slot * slot_size + offset;
                        for slot in now_slot..64 {
                            // The wanted slot plus everything after it.
                            let occ = !0u64 << slot;
                            let (s, start) = next_occupied(level, occ, elapsed).unwrap();
                            assert_eq!(s, slot as usize, "level {level} elapsed {elapsed}");
                            assert_eq!(start, base_block * block + slot * slot_size);
                        }
                    }
                }
            }
        }
        assert_eq!(next_occupied(3, 0, 12345), None);
    }

    #[test]
    fn next_occupied_top_level() {
        let level = NUM_LEVELS - 1;
        let (slot, start) = next_occupied(level, 1 << 15, 0).unwrap();
        assert_eq!(slot, 15);
        assert_eq!(start, 15u64 << 60);
    }
}
