//! A hierarchical timer wheel with a 1 ms tick.
//!
//! The algorithm is Varghese & Lauck's hashed and hierarchical timing wheels
//! ("Hashed and Hierarchical Timing Wheels: Data Structures for the Efficient
//! Implementation of a Timer Facility", SOSP 1987), in the shape tokio's
//! `runtime/time/wheel` gave it: levels of 64 slots, a `u64` occupancy bitmap
//! per level, and entries that move one level down ("cascade") as the wheel's
//! time reaches the slot that holds them.
//!
//! - **Ticks** are `u64` milliseconds since an origin the caller picks
//!   ([`TickClock`] converts from [`Instant`]). The wheel only sees ticks.
//! - **Entries** live in a [`slab::Slab`] and form intrusive doubly linked
//!   lists, one per slot, so [`Wheel::insert`] and [`Wheel::cancel`] are O(1)
//!   and, once the slab has grown to the peak number of live timers, allocate
//!   nothing.
//! - **Expiry** ([`Wheel::poll`], [`Wheel::pop_expired`]) delivers every entry
//!   whose deadline is at or before `now`, in deadline order (entries due at
//!   the same tick in insertion order), and never one whose deadline is
//!   after `now`.
//!
//! # Examples
//!
//! ```
//! use kevent_timer::wheel::Wheel;
//!
//! let mut wheel = Wheel::new();
//! let late = wheel.insert(250, "late");
//! wheel.insert(10, "early");
//! assert_eq!(wheel.next_expiration(), Some(10));
//!
//! let mut fired = Vec::new();
//! wheel.poll(100, |_key, v| fired.push(v));
//! assert_eq!(fired, ["early"]);
//! assert_eq!(wheel.cancel(late), Some("late"));
//! assert!(wheel.is_empty());
//! ```

mod level;

use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

use level::{level_for, next_occupied, slot_for, Level, NIL, NUM_LEVELS};

/// Marks an entry that sits in the fired list (due, not yet handed out).
const FIRED: u8 = u8::MAX;

/// Handle to one timer in a [`Wheel`].
///
/// Carries a generation, so a key whose timer already fired or was
/// cancelled never reaches the slab entry that later reuses its slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// The key as one `u64` (for storing in a `kevent`'s `udata`-like field).
    #[must_use]
    pub const fn to_u64(self) -> u64 {
        (self.generation as u64) << 32 | self.index as u64
    }

    /// The inverse of [`Key::to_u64`]. Any value is accepted; a value that
    /// names no live timer simply finds nothing.
    #[must_use]
    pub const fn from_u64(v: u64) -> Self {
        Key {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}v{})", self.index, self.generation)
    }
}

/// One timer handed back by [`Wheel::pop_expired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired<T> {
    /// The key [`Wheel::insert`] returned (now dead).
    pub key: Key,
    /// The tick the timer was due at: its deadline, or the wheel's time when
    /// it was inserted if the deadline had already passed then.
    pub deadline: u64,
    /// The value stored with the timer.
    pub value: T,
}

struct Entry<T> {
    value: T,
    /// Effective deadline: `max(deadline, elapsed at insert)`.
    when: u64,
    prev: u32,
    next: u32,
    generation: u32,
    /// Level the entry is linked in, or [`FIRED`].
    level: u8,
}

/// A hierarchical timer wheel of values `T`; see the [module docs](self).
pub struct Wheel<T> {
    slab: Slab<Entry<T>>,
    /// Boxed: 11 levels of 64 heads and tails are 5.7 KiB, too big to move.
    levels: Box<[Level; NUM_LEVELS]>,
    /// Bit `L` is set iff level `L` has any occupied slot.
    level_mask: u16,
    /// The wheel's time: every entry due at or before it has been moved to
    /// the fired list or handed out.
    elapsed: u64,
    fired_head: u32,
    fired_tail: u32,
    next_generation: u32,
}

impl<T> fmt::Debug for Wheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wheel")
            .field("len", &self.slab.len())
            .field("elapsed", &self.elapsed)
            .field("level_mask", &format_args!("{:#b}", self.level_mask))
            .finish_non_exhaustive()
    }
}

impl<T> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty wheel at tick 0 with room for `capacity` timers before the
    /// slab grows.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Wheel {
            slab: Slab::with_capacity(capacity),
            levels: Box::new([const { Level::new() }; NUM_LEVELS]),
            level_mask: 0,
            elapsed: 0,
            fired_head: NIL,
            fired_tail: NIL,
            next_generation: 0,
        }
    }

    /// The wheel's current tick: the `now` of the last [`poll`](Self::poll)
    /// or [`pop_expired`](Self::pop_expired) that found nothing more to do.
    #[must_use]
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Number of timers in the wheel (pending or due but not yet handed out).
    #[must_use]
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether the wheel holds no timer.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Adds a timer due at tick `deadline` and returns its key.
    ///
    /// A deadline at or before [`elapsed`](Self::elapsed) is due at once: the
    /// next `poll`/`pop_expired` hands it out, whatever its `now`.
    ///
    /// O(1); allocates only when the slab must grow past its peak size.
    ///
    /// # Panics
    ///
    /// If the wheel already holds `u32::MAX - 1` timers.
    pub fn insert(&mut self, deadline: u64, value: T) -> Key {
        let when = deadline.max(self.elapsed);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let index = self.slab.insert(Entry {
            value,
            when,
            prev: NIL,
            next: NIL,
            generation,
            level: 0,
        });
        let index = u32::try_from(index)
            .ok()
            .filter(|&i| i != NIL)
            .expect("timer wheel full: u32::MAX - 1 timers");
        self.link(index, level_for(self.elapsed, when));
        Key { index, generation }
    }

    /// Removes a timer and returns its value, or `None` if the key's timer
    /// has already been handed out or cancelled. O(1).
    pub fn cancel(&mut self, key: Key) -> Option<T> {
        self.entry(key)?;
        self.unlink(key.index);
        Some(self.slab.remove(key.index as usize).value)
    }

    /// The value of a live timer.
    #[must_use]
    pub fn get(&self, key: Key) -> Option<&T> {
        self.entry(key).map(|e| &e.value)
    }

    /// The value of a live timer, mutably.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.entry(key)?;
        Some(&mut self.slab[key.index as usize].value)
    }

    /// The effective deadline of a live timer (see [`Expired::deadline`]).
    #[must_use]
    pub fn deadline(&self, key: Key) -> Option<u64> {
        self.entry(key).map(|e| e.when)
    }

    /// The tick at which the wheel next has work: a timer to hand out, or a
    /// slot to cascade. Never later than the earliest deadline; it may be
    /// earlier (by at most one wake-up per level for a far timer), so a
    /// [`poll`](Self::poll) at that tick can find nothing due. `None` if the
    /// wheel is empty.
    ///
    /// O(1): one look at a level bitmap and one at the lowest non-empty
    /// level's slot bitmap.
    #[must_use]
    pub fn next_expiration(&self) -> Option<u64> {
        if self.fired_head != NIL {
            return Some(self.elapsed);
        }
        self.next_slot().map(|(_, _, start)| start)
    }

    /// The timers of the slot [`next_expiration`](Self::next_expiration)
    /// refers to, as `(tick, value)`: the due timers not yet handed out if
    /// there are any, else every timer of the next slot to process. The
    /// earliest timer of the wheel is always among them (a lower level's
    /// timers are all due before a higher level's, and a level's slots in
    /// order), so a caller that keeps a finer deadline per value finds the
    /// wheel's earliest exact deadline by looking at these alone, without
    /// waking at the slot's start first. Empty iff the wheel is.
    ///
    /// O(1) to start; the iteration visits one slot's timers (at level 0
    /// all due at the same tick; at a higher level the ones the next
    /// cascade moves).
    pub fn peek_next(&self) -> Peek<'_, T> {
        let index = if self.fired_head != NIL {
            self.fired_head
        } else {
            match self.next_slot() {
                Some((level, slot, _)) => self.levels[level].head[slot],
                None => NIL,
            }
        };
        Peek { wheel: self, index }
    }

    /// Hands out the next timer due at or before `now`, in deadline order,
    /// or `None` when none is left (the wheel's time then becomes `now`).
    ///
    /// Between calls the caller may insert and cancel freely, e.g. re-arm a
    /// periodic timer; a timer inserted with a deadline at or before the
    /// wheel's time is handed out by a later call of the same round.
    pub fn pop_expired(&mut self, now: u64) -> Option<Expired<T>> {
        loop {
            if self.fired_head != NIL {
                let index = self.fired_head;
                self.unlink(index);
                let e = self.slab.remove(index as usize);
                return Some(Expired {
                    key: Key {
                        index,
                        generation: e.generation,
                    },
                    deadline: e.when,
                    value: e.value,
                });
            }
            match self.next_slot() {
                Some((level, slot, start)) if start <= now => self.process(level, slot, start),
                _ => {
                    self.elapsed = self.elapsed.max(now);
                    return None;
                }
            }
        }
    }

    /// Hands every timer due at or before `now` to `f`, in deadline order,
    /// and returns how many there were. See [`pop_expired`](Self::pop_expired)
    /// to re-arm timers while draining.
    pub fn poll(&mut self, now: u64, mut f: impl FnMut(Key, T)) -> usize {
        let mut n = 0;
        while let Some(e) = self.pop_expired(now) {
            f(e.key, e.value);
            n += 1;
        }
        n
    }

    fn entry(&self, key: Key) -> Option<&Entry<T>> {
        self.slab
            .get(key.index as usize)
            .filter(|e| e.generation == key.generation)
    }

    /// `(level, slot, slot start)` of the next slot to process.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        if self.level_mask == 0 {
            return None;
        }
        // Entries of a lower level are all due before any entry of a higher
        // one: level L holds ticks in the current level-(L+1) block but not
        // in the current level-L slot, which is where all lower levels live.
        let level = self.level_mask.trailing_zeros() as usize;
        let (slot, start) = next_occupied(level, self.levels[level].occupied, self.elapsed)?;
        Some((level, slot, start))
    }

    /// Processes one slot at its start tick: due entries go to the fired
    /// list (in list order), the others one or more levels down.
    fn process(&mut self, level: usize, slot: usize, start: u64) {
        debug_assert!(
            start >= self.elapsed,
            "slot start {start} < elapsed {}",
            self.elapsed
        );
        self.elapsed = start;
        let lvl = &mut self.levels[level];
        let mut index = lvl.head[slot];
        lvl.head[slot] = NIL;
        lvl.tail[slot] = NIL;
        lvl.occupied &= !(1u64 << slot);
        if lvl.occupied == 0 {
            self.level_mask &= !(1u16 << level);
        }
        while index != NIL {
            let e = &self.slab[index as usize];
            let (next, when) = (e.next, e.when);
            if when <= start {
                self.push_fired(index);
            } else {
                let to = level_for(start, when);
                debug_assert!(
                    to < level,
                    "cascade from {level} to {to}: when {when} start {start}"
                );
                self.link(index, to);
            }
            index = next;
        }
    }

    /// Appends entry `index` (unlinked) to its slot in `level`.
    fn link(&mut self, index: u32, level: usize) {
        let e = &mut self.slab[index as usize];
        let slot = slot_for(e.when, level);
        e.level = level as u8;
        let lvl = &mut self.levels[level];
        let tail = lvl.tail[slot];
        e.prev = tail;
        e.next = NIL;
        if tail == NIL {
            lvl.head[slot] = index;
            lvl.occupied |= 1u64 << slot;
            self.level_mask |= 1u16 << level;
        } else {
            self.slab[tail as usize].next = index;
        }
        lvl.tail[slot] = index;
    }

    fn push_fired(&mut self, index: u32) {
        let tail = self.fired_tail;
        let e = &mut self.slab[index as usize];
        e.level = FIRED;
        e.prev = tail;
        e.next = NIL;
        if tail == NIL {
            self.fired_head = index;
        } else {
            self.slab[tail as usize].next = index;
        }
        self.fired_tail = index;
    }

    /// Unlinks entry `index` from whichever list holds it.
    fn unlink(&mut self, index: u32) {
        let e = &self.slab[index as usize];
        let (prev, next, level, when) = (e.prev, e.next, e.level, e.when);
        if prev != NIL {
            self.slab[prev as usize].next = next;
        }
        if next != NIL {
            self.slab[next as usize].prev = prev;
        }
        if level == FIRED {
            if prev == NIL {
                self.fired_head = next;
            }
            if next == NIL {
                self.fired_tail = prev;
            }
            return;
        }
        let level = level as usize;
        let slot = slot_for(when, level);
        let lvl = &mut self.levels[level];
        if prev == NIL {
            debug_assert_eq!(lvl.head[slot], index, "level {level} slot {slot}");
            lvl.head[slot] = next;
        }
        if next == NIL {
            debug_assert_eq!(lvl.tail[slot], index, "level {level} slot {slot}");
            lvl.tail[slot] = prev;
        }
        if lvl.head[slot] == NIL {
            lvl.occupied &= !(1u64 << slot);
            if lvl.occupied == 0 {
                self.level_mask &= !(1u16 << level);
            }
        }
    }
}

/// Iterator over the timers of the wheel's next slot
/// ([`Wheel::peek_next`]).
pub struct Peek<'a, T> {
    wheel: &'a Wheel<T>,
    index: u32,
}

impl<T> fmt::Debug for Peek<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peek").field("index", &self.index).finish()
    }
}

impl<'a, T> Iterator for Peek<'a, T> {
    type Item = (u64, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index == NIL {
            return None;
        }
        let e = &self.wheel.slab[self.index as usize];
        self.index = e.next;
        Some((e.when, &e.value))
    }
}

/// Converts between [`Instant`]s and the wheel's 1 ms ticks.
///
/// Deadlines round **up** ([`deadline_tick`](Self::deadline_tick)) and the
/// current time rounds **down** ([`now_tick`](Self::now_tick)), so a timer is
/// never handed out before its `Instant`: at worst it is up to one tick
/// late, and the caller that needs better than 1 ms waits for the exact
/// `Instant` after the wheel says the tick is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickClock {
    origin: Instant,
}

impl TickClock {
    /// Length of one tick.
    pub const TICK: Duration = Duration::from_millis(1);

    /// A clock whose tick 0 is `origin`.
    #[must_use]
    pub const fn new(origin: Instant) -> Self {
        TickClock { origin }
    }

    /// The origin (tick 0).
    #[must_use]
    pub const fn origin(&self) -> Instant {
        self.origin
    }

    /// The first tick at or after `t` (instants before the origin map to 0).
    #[must_use]
    pub fn deadline_tick(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        let ms = d.as_millis();
        let ms = if !d.subsec_nanos().is_multiple_of(1_000_000) {
            ms + 1
        } else {
            ms
        };
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// The last tick at or before `t`.
    #[must_use]
    pub fn now_tick(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant tick `tick` starts, or `None` if it does not fit.
    #[must_use]
    pub fn instant(&self, tick: u64) -> Option<Instant> {
        self.origin.checked_add(Duration::from_millis(tick))
    }
}

#[cfg(test)]
mod tests;
