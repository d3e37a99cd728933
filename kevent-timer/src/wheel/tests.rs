//! Unit tests of the wheel against a `BTreeMap` model.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::level::NUM_LEVELS;
use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// The wheel beside a model: `(effective deadline, insertion seq) -> key`.
struct Checked {
    wheel: Wheel<u64>,
    model: BTreeMap<(u64, u64), Key>,
    seq: u64,
}

impl Checked {
    fn new() -> Self {
        Checked {
            wheel: Wheel::new(),
            model: BTreeMap::new(),
            seq: 0,
        }
    }

    fn insert(&mut self, deadline: u64) -> Key {
        let seq = self.seq;
        self.seq += 1;
        let key = self.wheel.insert(deadline, seq);
        let when = deadline.max(self.wheel.elapsed());
        assert_eq!(self.wheel.deadline(key), Some(when));
        self.model.insert((when, seq), key);
        key
    }

    fn cancel_random(&mut self, rng: &mut Rng) {
        if self.model.is_empty() {
            return;
        }
        let nth = rng.below(self.model.len() as u64) as usize;
        let (&(when, seq), &key) = self.model.iter().nth(nth).unwrap();
        self.model.remove(&(when, seq));
        assert_eq!(self.wheel.cancel(key), Some(seq));
        assert_eq!(self.wheel.cancel(key), None, "double cancel");
    }

    /// Polls to `now`, checking order, never-early and never-missed.
    #[track_caller]
    fn poll(&mut self, now: u64) -> usize {
        if let (Some(next), Some((&(first, _), _))) =
            (self.wheel.next_expiration(), self.model.first_key_value())
        {
            assert!(
                next <= first,
                "next_expiration {next} after earliest deadline {first}"
            );
        }
        // The next slot holds the earliest timer, and nothing before it.
        if let Some((&(first, seq), _)) = self.model.first_key_value() {
            let peeked: Vec<(u64, u64)> = self.wheel.peek_next().map(|(w, &v)| (w, v)).collect();
            assert!(
                peeked.contains(&(first, seq)),
                "peek misses the earliest {first}"
            );
            assert!(peeked.iter().all(|&(w, _)| w >= first));
        } else {
            assert_eq!(self.wheel.peek_next().count(), 0);
        }
        let mut n = 0;
        while let Some(e) = self.wheel.pop_expired(now) {
            let ((when, seq), key) = self
                .model
                .pop_first()
                .expect("wheel fired more than the model");
            assert!(
                e.deadline <= now,
                "fired early: deadline {} now {now}",
                e.deadline
            );
            assert_eq!(
                (e.deadline, e.value, e.key),
                (when, seq, key),
                "order at now {now}"
            );
            n += 1;
        }
        if let Some((&(first, _), _)) = self.model.first_key_value() {
            assert!(first > now, "deadline {first} not fired by now {now}");
        }
        assert_eq!(self.wheel.len(), self.model.len());
        assert_eq!(self.wheel.is_empty(), self.model.is_empty());
        n
    }
}

#[test]
fn empty_wheel() {
    let mut w: Wheel<()> = Wheel::new();
    assert_eq!(w.next_expiration(), None);
    assert!(w.pop_expired(u64::MAX / 2).is_none());
    assert_eq!(w.elapsed(), u64::MAX / 2);
    assert_eq!(w.poll(10, |_, _| unreachable!()), 0);
    assert_eq!(w.elapsed(), u64::MAX / 2, "time never goes back");
}

#[test]
fn every_deadline_from_every_start_fires_exactly_on_its_tick() {
    // Every (elapsed, deadline) pair over a window crossing level-1 and
    // level-2 boundaries, walked tick by tick.
    for start in [0u64, 1, 63, 64, 4000, 4095, 4096, 262_143] {
        for delta in (0..300).chain([4095, 4096, 4097, 262_143, 262_144, 262_145]) {
            let mut w = Wheel::new();
            w.pop_expired(start);
            let deadline = start + delta;
            let key = w.insert(deadline, ());
            for now in start..deadline {
                assert!(
                    w.pop_expired(now).is_none(),
                    "start {start} deadline {deadline}: early at {now}"
                );
                assert!(w.next_expiration().unwrap() <= deadline);
            }
            let e = w.pop_expired(deadline).expect("not fired on its tick");
            assert_eq!((e.key, e.deadline), (key, deadline));
            assert!(w.is_empty());
        }
    }
}

#[test]
fn jumping_by_next_expiration_never_early_at_every_scale() {
    for level in 0..NUM_LEVELS as u32 {
        let span = 1u64 << (6 * level).min(63);
        for start in [0u64, 17, 1 << 20] {
            for d in [
                span - 1,
                span,
                span + 1,
                span.saturating_mul(5).saturating_add(3),
            ] {
                let mut w = Wheel::new();
                w.pop_expired(start);
                let deadline = start.saturating_add(d);
                w.insert(deadline, ());
                let mut wakes = 0;
                loop {
                    let next = w.next_expiration().unwrap();
                    assert!(next <= deadline);
                    if let Some(e) = w.pop_expired(next) {
                        assert_eq!(e.deadline, deadline);
                        assert_eq!(next, deadline, "fired at {next}, due {deadline}");
                        break;
                    }
                    wakes += 1;
                    assert!(wakes <= NUM_LEVELS, "too many cascades");
                }
            }
        }
    }
}

#[test]
fn random_deadlines_fire_in_order_at_every_scale() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for max in [
        64u64,
        4096,
        100_000,
        10_000_000,
        1 << 36,
        1 << 44,
        u64::MAX / 2,
    ] {
        let mut c = Checked::new();
        for _ in 0..2_000 {
            let d = c.wheel.elapsed() + rng.below(max);
            c.insert(d);
        }
        // Walk in random steps of the same scale, inserting and cancelling
        // along the way, until everything fired.
        let mut now = 0u64;
        while !c.model.is_empty() {
            now = now.saturating_add(1 + rng.below(max / 50 + 1));
            c.poll(now);
            if rng.below(4) == 0 {
                let d = now.saturating_add(rng.below(max));
                c.insert(d);
            }
            if rng.below(4) == 0 {
                c.cancel_random(&mut rng);
            }
        }
    }
}

#[test]
fn random_ops_against_model() {
    let mut rng = Rng(42);
    let mut c = Checked::new();
    let mut now: u64 = 0;
    for _ in 0..200_000 {
        match rng.below(10) {
            0..=4 => {
                // Mostly near deadlines, some far, some in the past.
                let d = match rng.below(8) {
                    0 => now.saturating_sub(rng.below(100)),
                    1 => now + rng.below(1 << 30),
                    _ => now + rng.below(5_000),
                };
                c.insert(d);
            }
            5 | 6 => c.cancel_random(&mut rng),
            _ => {
                now += rng.below(300);
                c.poll(now);
            }
        }
    }
    c.poll(u64::MAX);
    assert!(c.wheel.is_empty());
}

#[test]
fn equal_deadlines_fire_in_insertion_order_across_cascades() {
    let mut c = Checked::new();
    // Same deadline inserted from different wheel times, so the entries
    // start in different levels.
    let deadline = 300_000;
    for now in [0, 1, 70, 5000, 262_143, 262_144, 299_000, 299_990, 299_998] {
        c.poll(now);
        c.insert(deadline);
        c.insert(deadline - 1);
    }
    assert_eq!(c.poll(deadline), 18);
}

#[test]
fn past_deadlines_fire_on_next_poll() {
    let mut w = Wheel::new();
    w.pop_expired(1000);
    let a = w.insert(5, 'a');
    let b = w.insert(1000, 'b');
    assert_eq!(w.next_expiration(), Some(1000));
    assert_eq!(w.deadline(a), Some(1000));
    let got: Vec<_> = std::iter::from_fn(|| w.pop_expired(1000))
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(got, [(a, 'a'), (b, 'b')]);
}

#[test]
fn reinsert_while_draining() {
    // A periodic timer re-armed at each expiry, as the timer storage does.
    let mut w = Wheel::new();
    w.insert(1, 1u64);
    let mut fired = Vec::new();
    for now in [10, 25, 26] {
        while let Some(e) = w.pop_expired(now) {
            fired.push(e.deadline);
            w.insert(e.deadline + 3, e.value);
        }
    }
    assert_eq!(fired, [1, 4, 7, 10, 13, 16, 19, 22, 25]);
    assert_eq!(w.next_expiration(), Some(28));
}

#[test]
fn cancel_every_position_of_every_level() {
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for level in 0..NUM_LEVELS as u32 {
        let slot_size = 1u64 << (6 * level).min(63);
        for slot in [1u64, 2, 31, 63] {
            if level == NUM_LEVELS as u32 - 1 && slot > 15 {
                continue;
            }
            let base = slot * slot_size;
            for order in &orders {
                let mut w = Wheel::new();
                // Three entries in one slot, plus one elsewhere.
                let keys: Vec<Key> = (0..3)
                    .map(|i| w.insert(base + i * (slot_size / 3), i))
                    .collect();
                let other = w.insert(u64::MAX, 99);
                for (n, &i) in order.iter().enumerate() {
                    assert_eq!(w.cancel(keys[i]), Some(i as u64));
                    assert_eq!(w.cancel(keys[i]), None);
                    assert_eq!(w.len(), 3 - n);
                }
                // The slot's bit is clear: the next expiration is the other.
                assert_eq!(w.next_expiration(), Some(15 << 60));
                assert!(w.pop_expired(u64::MAX - 1).is_none());
                assert_eq!(w.cancel(other), Some(99));
                assert!(w.is_empty());
                assert_eq!(w.next_expiration(), None);
                assert_eq!(w.level_mask, 0);
                assert!(w.levels.iter().all(|l| l.occupied == 0));
            }
        }
    }
}

#[test]
fn cancel_in_fired_list() {
    // Entries moved to the fired list but not yet handed out can still be
    // cancelled, from any position.
    for victim in 0..4 {
        let mut w = Wheel::new();
        let keys: Vec<Key> = (0..4).map(|i| w.insert(5000, i)).collect();
        let first = w.pop_expired(5000).unwrap();
        assert_eq!(first.key, keys[0]);
        if victim > 0 {
            assert_eq!(w.cancel(keys[victim]), Some(victim));
        }
        let rest: Vec<usize> = std::iter::from_fn(|| w.pop_expired(5000))
            .map(|e| e.value)
            .collect();
        let expect: Vec<usize> = (1..4).filter(|&i| i != victim).collect();
        assert_eq!(rest, expect);
        assert!(w.is_empty());
    }
}

#[test]
fn stale_keys_find_nothing() {
    let mut w = Wheel::new();
    let a = w.insert(10, 'a');
    assert_eq!(w.cancel(a), Some('a'));
    let b = w.insert(10, 'b');
    assert_eq!(a.index, b.index, "slab slot reused");
    assert_eq!(w.cancel(a), None);
    assert_eq!(w.get(a), None);
    assert_eq!(w.get(b), Some(&'b'));
    *w.get_mut(b).unwrap() = 'c';
    let fired = w.pop_expired(10).unwrap();
    assert_eq!((fired.key, fired.value), (b, 'c'));
    assert_eq!(w.cancel(b), None, "fired key is dead");
    assert_eq!(Key::from_u64(b.to_u64()), b);
    assert_eq!(w.cancel(Key::from_u64(u64::MAX)), None);
}

#[test]
fn hundred_thousand_timers_fire_in_order() {
    let mut rng = Rng(7);
    let mut w = Wheel::with_capacity(100_000);
    let mut deadlines = Vec::with_capacity(100_000);
    for i in 0..100_000u64 {
        let d = rng.below(600_000);
        w.insert(d, i);
        deadlines.push((d, i));
    }
    deadlines.sort_unstable();
    let mut got = Vec::with_capacity(100_000);
    // Tick by tick over the first 10 s, then by next_expiration.
    for now in 0..10_000 {
        w.poll(now, |_, v| got.push((now, v)));
    }
    while let Some(next) = w.next_expiration() {
        w.poll(next, |_, v| got.push((next, v)));
    }
    assert_eq!(got.len(), 100_000);
    for (&(d, i), &(fired_at, v)) in deadlines.iter().zip(&got) {
        assert_eq!(i, v);
        assert!(fired_at >= d, "timer {i} due {d} fired at {fired_at}");
        if d >= 10_000 {
            assert_eq!(fired_at, d, "jumps land on the deadline");
        }
    }
}

#[test]
fn far_future_deadlines() {
    let year: u64 = 365 * 24 * 3600 * 1000;
    let mut c = Checked::new();
    for d in [
        year,
        2 * year,
        3 * year,
        100 * year,
        1 << 50,
        u64::MAX - 1,
        u64::MAX,
    ] {
        c.insert(d);
    }
    let mut steps = 0;
    while let Some(next) = c.wheel.next_expiration() {
        c.poll(next);
        steps += 1;
    }
    assert!(c.model.is_empty());
    assert!(steps <= 7 * NUM_LEVELS, "{steps} wakes");
}

#[test]
fn no_allocation_after_warm_up() {
    let mut w = Wheel::new();
    let keys: Vec<Key> = (0..1000).map(|i| w.insert(i * 7, i)).collect();
    for k in keys {
        w.cancel(k);
    }
    let cap = w.slab.capacity();
    let mut rng = Rng(3);
    for round in 0..50u64 {
        let keys: Vec<Key> = (0..1000)
            .map(|i| w.insert(round * 100 + rng.below(1 << 20), i))
            .collect();
        w.poll(round * 100 + 50, |_, _| {});
        for k in keys {
            w.cancel(k);
        }
        assert_eq!(w.slab.capacity(), cap, "slab grew");
    }
}

#[test]
fn tick_clock_rounds_deadlines_up_and_now_down() {
    let origin = Instant::now();
    let c = TickClock::new(origin);
    assert_eq!(c.deadline_tick(origin), 0);
    assert_eq!(c.now_tick(origin), 0);
    let t = origin + Duration::from_micros(1500);
    assert_eq!(c.deadline_tick(t), 2);
    assert_eq!(c.now_tick(t), 1);
    let t = origin + Duration::from_millis(3);
    assert_eq!(c.deadline_tick(t), 3);
    assert_eq!(c.now_tick(t), 3);
    let t = origin + Duration::from_nanos(1);
    assert_eq!(c.deadline_tick(t), 1);
    assert_eq!(c.instant(3), Some(origin + Duration::from_millis(3)));
    if let Some(before) = origin.checked_sub(Duration::from_secs(1)) {
        assert_eq!(c.deadline_tick(before), 0);
    }
}
