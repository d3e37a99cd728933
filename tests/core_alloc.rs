//! `kevent()` does not allocate after warm-up: a USER trigger loop and a
//! pipe READ loop (level and `CLEAR`), counted by a global allocator that
//! counts only the allocations of the thread being measured (the work of
//! `kevent()` runs on the calling thread; other test threads and the test
//! harness allocate as they like).

#[macro_use]
mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::time::Duration;

use kevent::{note, Backend, Filter, Flags, Kevent};
use util::*;

struct Counting;

thread_local! {
    /// Whether this thread's allocations are being counted.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// This thread's allocations while counting.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: forwards to the system allocator unchanged; only counts (the
// thread-locals are const-initialised without destructors, so touching
// them never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(|n| n.get())
}

backends_complete_test!();

const WARM: usize = 200;
const ROUNDS: usize = 2000;

/// Run `round` [`WARM`] times, then count this thread's allocations in
/// `rounds` more.
fn allocations_after_warm_up(rounds: usize, mut round: impl FnMut()) -> u64 {
    for _ in 0..WARM {
        round();
    }
    allocations_in(|| (0..rounds).for_each(|_| round()))
}

#[test]
fn the_counter_sees_allocations() {
    // The measurement can fail: an allocation on this thread is counted.
    let n = allocations_in(|| {
        let v: Vec<u64> = Vec::with_capacity(16);
        std::hint::black_box(&v);
    });
    assert_eq!(n, 1);
}

backend_test!(user_trigger_loop_does_not_allocate, |b: Backend| {
    let kq = core_kq(b);
    let u = Filter::User;
    change(&kq, &[ev(1, u, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    change(&kq, &[ev(2, u, Flags::ADD, 0, 0, 0)]);
    let mut out = [Kevent::default(); 8];
    // Trigger and collect in one call, and trigger then wait.
    let trig = [ev(1, u, Flags::empty(), note::TRIGGER, 0, 7)];
    let round = || {
        let n = kq.kevent(&trig, &mut out, Some(Duration::ZERO)).unwrap();
        assert_eq!((n, out[0].ident, out[0].udata), (1, 1, 7));
        kq.trigger(1).unwrap();
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!((n, out[0].ident), (1, 1));
    };
    let n = allocations_after_warm_up(ROUNDS, round);
    assert_eq!(n, 0, "{n} allocations in {ROUNDS} USER rounds on {b:?}");
    // A level knote re-checked on every call allocates nothing either.
    change(&kq, &[ev(2, u, Flags::empty(), note::TRIGGER, 0, 0)]);
    let level = || {
        let n = kq.kevent(&[], &mut out, Some(Duration::ZERO)).unwrap();
        assert_eq!((n, out[0].ident), (1, 2));
    };
    let n = allocations_after_warm_up(ROUNDS, level);
    assert_eq!(n, 0, "{n} allocations re-reporting a level USER knote");
});

fn pipe_loop(b: Backend, flags: Flags) {
    let kq = core_kq(b);
    let (mut rx, mut tx) = pipe();
    change(
        &kq,
        &[ev(id(&rx), Filter::Read, Flags::ADD | flags, 0, 0, 3)],
    );
    let mut out = [Kevent::default(); 8];
    let mut byte = [0u8; 1];
    let round = || {
        tx.write_all(b"x").unwrap();
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(n, 1, "{:?}", &out[..n]);
        assert_eq!((out[0].ident, out[0].data, out[0].udata), (id(&rx), 1, 3));
        rx.read_exact(&mut byte).unwrap();
    };
    let n = allocations_after_warm_up(ROUNDS, round);
    assert_eq!(
        n, 0,
        "{n} allocations in {ROUNDS} pipe READ rounds ({flags:?}) on {b:?}"
    );
}

backend_test!(pipe_read_level_loop_does_not_allocate, |b: Backend| {
    pipe_loop(b, Flags::empty())
});

backend_test!(pipe_read_clear_loop_does_not_allocate, |b: Backend| {
    pipe_loop(b, Flags::CLEAR)
});

backend_test!(
    change_only_calls_do_not_grow_the_ready_list,
    |b: Backend| {
        // Knote 1 stays queued and is never collected, so the ready list never
        // empties; knote 2 is queued and unqueued again by every pair of
        // change-only calls (an empty eventlist collects nothing). Removal is
        // lazy, so without compaction each cycle leaves a stale entry behind
        // and the ring keeps growing (allocating) for as long as the program
        // only makes changes.
        let kq = core_kq(b);
        let u = Filter::User;
        change(&kq, &[ev(1, u, Flags::ADD, note::TRIGGER, 0, 0)]);
        change(&kq, &[ev(2, u, Flags::ADD, 0, 0, 0)]);
        let cycles: [[Kevent; 1]; 4] = [
            // USER's own trigger and reset.
            [ev(2, u, Flags::empty(), note::TRIGGER, 0, 0)],
            [ev(2, u, Flags::CLEAR, 0, 0, 0)],
            // The queue's DISABLE (unqueues) and ENABLE (queues again).
            [ev(1, u, Flags::DISABLE, 0, 0, 0)],
            [ev(1, u, Flags::ENABLE, 0, 0, 0)],
        ];
        let round = || {
            for c in &cycles {
                assert_eq!(kq.kevent(c, &mut [], Some(Duration::ZERO)).unwrap(), 0);
            }
        };
        let n = allocations_after_warm_up(ROUNDS * 4, round);
        assert_eq!(n, 0, "{n} allocations in change-only calls on {b:?}");
        // Knote 1 is reported once; knote 2, reset last, is not.
        let mut out = [Kevent::default(); 8];
        let n = kq.kevent(&[], &mut out, Some(Duration::ZERO)).unwrap();
        let mut ids: Vec<u64> = out[..n].iter().map(|e| e.ident).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1], "{:?}", &out[..n]);
    }
);
