//! The queue: changelist, ready list, collection, and waiting threads.
//!
//! # Ground rules
//!
//! - All knote state (the slab, the index, the ready list, every storage)
//!   lives in one `Mutex<State>`. A `kevent()` call holds it except while
//!   it blocks in the backend.
//! - At most one thread blocks in the backend at a time: the *leader*
//!   (`State::polling`). Other waiting threads are *followers* parked on the
//!   condvar. When the leader returns from the backend it publishes what it
//!   harvested to the ready list and, if followers wait, wakes one, which
//!   either collects the leftovers or becomes the next leader.
//! - Collection pops entries under the lock, so a `ONESHOT`, `DISPATCH` or
//!   `CLEAR` event reaches exactly one thread.
//! - A change that makes a knote ready while another thread waits wakes it:
//!   a follower through the condvar, the leader through the backend's
//!   waker.

use crate::event::{Filter, Flags, Kevent};
use crate::knote::{Knote, KnoteId, ACTIVE, DISABLED, QUEUED};
use crate::storage::{self, Context, Core, Errno, Storage, PAYLOAD_BITS, PAYLOAD_MASK};
use crate::sys::{self, Readiness, Sys};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Which kernel interface drives a queue.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring where it works, else epoll (the reason is logged once).
    /// `KEVENT_BACKEND=epoll|uring` in the environment forces one.
    Auto,
    /// epoll, edge-triggered.
    Epoll,
    /// io_uring.
    IoUring,
}

impl Backend {
    /// The backend `KEVENT_BACKEND` asks for, if set: `Ok(None)` when unset,
    /// an `InvalidInput` error for an unknown value.
    pub fn from_env() -> io::Result<Option<Backend>> {
        match std::env::var("KEVENT_BACKEND") {
            Err(_) => Ok(None),
            Ok(v) => match v.as_str() {
                "" | "auto" => Ok(None),
                "epoll" => Ok(Some(Backend::Epoll)),
                "uring" | "io_uring" | "iouring" => Ok(Some(Backend::IoUring)),
                other => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("KEVENT_BACKEND={other:?}: expected epoll or uring"),
                )),
            },
        }
    }
}

/// Fast hasher for `(ident, filter)` keys (one multiply; keys are not
/// attacker-chosen beyond the process's own fds and ids).
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_i16(&mut self, v: i16) {
        self.write_u64(v as u16 as u64)
    }
}

pub(crate) type Index = HashMap<(u64, i16), u32, BuildHasherDefault<KeyHasher>>;

/// A storage as the queue holds it: the fd storage (every queue has it,
/// and it is on the hot path of every readiness event) by value, so its
/// calls are static and inlined; any other behind `dyn Storage`.
#[derive(Debug)]
pub(crate) enum Slot {
    Fd(storage::fd::FdStorage),
    Dyn(Box<dyn Storage>),
}

/// `dispatch!(slot, s => expr)`: evaluate `expr` with `s` bound to the
/// slot's storage, statically for the fd storage.
macro_rules! dispatch {
    ($slot:expr, $s:ident => $e:expr) => {
        match $slot {
            Slot::Fd($s) => $e,
            Slot::Dyn(b) => {
                let $s = &mut **b;
                $e
            }
        }
    };
}

impl Slot {
    fn get(&self) -> &dyn Storage {
        match self {
            Slot::Fd(s) => s,
            Slot::Dyn(b) => &**b,
        }
    }
}

struct State {
    core: Core,
    index: Index,
    storages: Vec<Slot>,
    by_filter: [u8; 16],
    /// Storages that may report a deadline.
    timed: Vec<u8>,
    polling: bool,
    followers: u32,
    /// `kevent()` calls so far; a level knote is reported once per call.
    calls: u64,
    closed: bool,
}

/// The leader's wait buffers, kept outside the state lock so that the
/// leader can wait into them with the lock released.
///
/// Only the thread running `harvest` touches them, and at most one thread
/// runs `harvest` at a time: it is entered only with `State::polling`
/// false under the lock, and a blocking harvest sets `polling` before it
/// releases the lock and clears it after retaking it.
struct LeaderCell<T>(std::cell::UnsafeCell<T>);

// SAFETY: access goes through `get` only, whose contract (the leader
// protocol above) makes it exclusive; `T: Send` lets the buffers move
// between the threads that lead in turn.
unsafe impl<T: Send> Sync for LeaderCell<T> {}

impl<T> LeaderCell<T> {
    /// # Safety
    /// The caller is the leader (see the type's docs) and drops the
    /// reference before giving up leadership.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn get(&self) -> &mut T {
        // SAFETY: exclusive by the caller's contract.
        unsafe { &mut *self.0.get() }
    }
}

/// What [`Kqueue::deliver`] did with a knote.
enum Delivered {
    /// Its condition no longer holds: dropped undelivered.
    No,
    /// Reported.
    Yes,
    /// Reported, and requeued (level).
    Level,
}

/// A kqueue: one queue for every kind of event, with FreeBSD `kevent(2)`
/// semantics.
///
/// ```
/// use kevent_core::{Kqueue, Kevent, Filter, Flags, note};
/// use std::time::Duration;
///
/// let kq = Kqueue::new()?;
/// let mut out = [Kevent::default(); 4];
/// // Register a user event and trigger it in the same call.
/// let n = kq.kevent(
///     &[Kevent::new(42, Filter::User, Flags::ADD | Flags::CLEAR, note::TRIGGER, 0, 7)],
///     &mut out,
///     Some(Duration::from_secs(1)),
/// )?;
/// assert_eq!(n, 1);
/// assert_eq!((out[0].ident, out[0].udata), (42, 7));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Kqueue {
    state: Mutex<State>,
    bufs: LeaderCell<sys::WaitBufs>,
    cond: Condvar,
    sys: Sys,
    backend: Backend,
    exposed: Exposed,
}

/// The pollable face of a queue: an epoll fd watching the backend's fd and
/// an eventfd kept readable while the ready list is not empty (once
/// `armed` by the first `as_fd()`; until then a queue pays nothing for it).
#[derive(Debug)]
struct Exposed {
    ep: OwnedFd,
    pending: OwnedFd,
    /// What `ep` watches once armed.
    backend_fds: [RawFd; 3],
    armed: std::sync::atomic::AtomicBool,
    signalled: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Kqueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kqueue")
            .field("backend", &self.backend)
            .field("fd", &self.sys.pollable())
            .finish_non_exhaustive()
    }
}

fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Kqueue>();
}

const CHANGE_FLAGS: Flags = Flags::ADD
    .union(Flags::DELETE)
    .union(Flags::ENABLE)
    .union(Flags::DISABLE)
    .union(Flags::ERROR)
    .union(Flags::EOF);

impl Kqueue {
    /// A queue on the best backend this machine supports ([`Backend::Auto`]).
    ///
    /// # Errors
    /// Whatever creating the backend's fds fails with (`EMFILE`, `ENOMEM`).
    pub fn new() -> io::Result<Kqueue> {
        Kqueue::with_backend(Backend::Auto)
    }

    /// A queue on the given backend. `Auto` honours `KEVENT_BACKEND`.
    ///
    /// # Errors
    /// `Unsupported` if `IoUring` is asked for and cannot work here (never a
    /// silent fallback); `InvalidInput` for a bad `KEVENT_BACKEND`; else the
    /// OS error from creating the backend.
    pub fn with_backend(backend: Backend) -> io::Result<Kqueue> {
        Kqueue::builder(backend)?.build()
    }

    /// A builder, to add storages from other crates before the queue runs.
    ///
    /// # Errors
    /// As [`Kqueue::with_backend`].
    pub fn builder(backend: Backend) -> io::Result<Builder> {
        let chosen = match backend {
            Backend::Auto => Backend::from_env()?.unwrap_or(Backend::Auto),
            b => b,
        };
        let (sys, used) = match chosen {
            Backend::Epoll => (Sys::Epoll(sys::epoll::Epoll::new()?), Backend::Epoll),
            Backend::IoUring => match sys::uring::Uring::new(false) {
                Ok(u) => (Sys::IoUring(u), Backend::IoUring),
                // Forced: an error, never a silent fallback.
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("io_uring backend unavailable: {e}"),
                    ))
                }
            },
            Backend::Auto => match sys::uring::Uring::new(false) {
                Ok(u) => (Sys::IoUring(u), Backend::IoUring),
                Err(e) => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        log::warn!("kevent: io_uring unavailable ({e}); using epoll");
                    });
                    (Sys::Epoll(sys::epoll::Epoll::new()?), Backend::Epoll)
                }
            },
        };
        let mut b = Builder {
            sys,
            backend: used,
            storages: vec![Slot::Fd(storage::fd::FdStorage::default())],
        };
        b = b
            .storage(Box::new(storage::user::UserStorage))
            .storage(Box::new(storage::signal::SignalStorage::default()))
            .storage(Box::new(storage::proc_::ProcStorage::default()))
            .storage(Box::new(storage::vnode::VnodeStorage::default()));
        Ok(b)
    }

    /// The backend actually in use.
    #[inline]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// FreeBSD `kevent(2)`: apply every change in order, then return up to
    /// `events.len()` ready events. `timeout`: `None` waits until at least
    /// one event, `Some(ZERO)` polls.
    ///
    /// A change that fails, or any change with `RECEIPT`, produces an entry
    /// in `events` with `ERROR` set and `data` = errno (0 for a successful
    /// receipt); if any such entry was written the call returns at once
    /// with just those entries. If a change fails and no room is left for
    /// its entry, the call fails with that errno; a `RECEIPT` change with
    /// no room left ends the call with the entries written so far. Either
    /// way later changes are not applied (FreeBSD's `kern_kevent_generic`).
    ///
    /// # Errors
    /// A change's errno as above; `EINTR` if a signal interrupted the wait
    /// before any event was collected (FreeBSD's behaviour: a signal whose
    /// handler runs ends the wait, `SA_RESTART` or not); `EBADF` once the
    /// queue is closed.
    ///
    /// # Interruptions without a signal
    /// io_uring task work (a ring's completions, and the teardown of a
    /// ring, which queues work to every thread that ever submitted to it)
    /// interrupts a blocking `epoll_wait` of its thread with `EINTR` though
    /// no signal was sent; the kernel never restarts `epoll_wait`. kevent
    /// tells the two apart where it can: the io_uring backend's wait
    /// (`io_uring_enter`) runs task work and goes on waiting, and on a
    /// thread that has driven one of kevent's rings the epoll backend
    /// blocks in `ppoll` on its epoll fd, which the kernel restarts unless
    /// a signal handler ran. An epoll queue on a thread that drives only
    /// *other* libraries' rings can still see such an `EINTR` (its blocking
    /// wait is a plain `epoll_wait`, one syscall); retry it there if no
    /// handler of yours ran.
    pub fn kevent(
        &self,
        changes: &[Kevent],
        events: &mut [Kevent],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.kevent_min(changes, events, 1, timeout)
    }

    /// As [`Kqueue::kevent`], but wait until at least `min` events are ready
    /// (capped at `events.len()`), or until the timeout, returning what
    /// there is then (the 2006 kevent "wake me when 10 timers fired or 1 s
    /// passed"). `min` of 0 behaves as 1.
    ///
    /// # Errors
    /// As [`Kqueue::kevent`].
    pub fn kevent_min(
        &self,
        changes: &[Kevent],
        events: &mut [Kevent],
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        st.core.call_round = st.core.round;
        if !changes.is_empty() || events.is_empty() {
            let mut wake = false;
            if let Some(done) = self.apply_changes(&mut st, changes, events, &mut wake) {
                drop(st);
                self.wake_leader(wake);
                return done;
            }
        }
        let result = self.collect(&mut st, events, min, timeout);
        let wake = self.pass_on(&mut st);
        if st.core.ready.count == 0 && st.followers > 0 && !st.polling {
            // A follower takes over an idle leadership.
            self.cond.notify_one();
        }
        drop(st);
        self.wake_leader(wake);
        result
    }

    /// Wake the leader blocked in the backend, after the state lock was
    /// released: woken under the lock, it would find the lock taken and
    /// sleep again on it (a futex round trip per wake: ~3 µs here).
    #[inline]
    fn wake_leader(&self, wake: bool) {
        if wake {
            let _ = self.sys.wake();
        }
    }

    /// Apply the changelist. `Some(result)` if the call ends here (error or
    /// receipt entries written, no room for events, or a failing change
    /// without room for its entry); `None` to go on collecting.
    #[cold]
    fn apply_changes(
        &self,
        st: &mut MutexGuard<'_, State>,
        changes: &[Kevent],
        events: &mut [Kevent],
        wake: &mut bool,
    ) -> Option<io::Result<usize>> {
        let mut nerr = 0usize;
        for ch in changes {
            let res = self.apply(st, ch);
            if res.is_err() || ch.flags.contains(Flags::RECEIPT) {
                let errno = res.err().unwrap_or(0);
                if nerr == events.len() {
                    // FreeBSD (`kern_kevent_generic`): no room left for the
                    // entry ends the call; later changes are not applied.
                    *wake = self.pass_on(st);
                    if errno != 0 {
                        return Some(Err(io::Error::from_raw_os_error(errno)));
                    }
                    return Some(Ok(nerr));
                }
                let mut e = *ch;
                e.flags = Flags::ERROR;
                e.data = errno as i64;
                events[nerr] = e;
                nerr += 1;
            }
        }
        if nerr > 0 || events.is_empty() {
            *wake = self.pass_on(st);
            return Some(Ok(nerr));
        }
        None
    }

    /// Collect events: from the ready list, from the backend, waiting as
    /// the timeout allows, until `min` are in.
    #[inline]
    fn collect(
        &self,
        st: &mut MutexGuard<'_, State>,
        events: &mut [Kevent],
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let need = min.clamp(1, events.len());
        let poll_only = timeout == Some(Duration::ZERO);
        let deadline = match timeout {
            Some(t) if !t.is_zero() => Instant::now().checked_add(t),
            _ => None,
        };
        st.calls += 1;
        let call = st.calls;
        let mut got = 0;
        let mut harvested = false;
        let result = loop {
            // Take OS events when the ready list alone cannot fill the
            // buffer. With nothing queued, skip the zero-timeout peek: the
            // blocking wait returns at once if the backend has events (one
            // syscall instead of two per blocking call, on both backends).
            let queued = st.core.ready.count;
            let mut held = 0;
            if queued > 0 {
                if !harvested && queued < events.len() - got && !st.polling {
                    if let Err(e) = self.harvest(st, Some(Duration::ZERO)) {
                        break Err(e);
                    }
                    harvested = true;
                }
                let (n, h) = self.scan(st, &mut events[got..], call);
                got += n;
                held = h;
                if got >= need || got == events.len() {
                    break Ok(got);
                }
            } else if poll_only && !harvested && !st.polling {
                if let Err(e) = self.harvest(st, Some(Duration::ZERO)) {
                    break Err(e);
                }
                harvested = true;
                continue;
            }
            if st.closed {
                break Ok(got);
            }
            let remaining = match deadline {
                None if poll_only => break Ok(got),
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    // Timed out before the backend was looked at: look once.
                    _ if !harvested && !st.polling => Some(Duration::ZERO),
                    _ => break Ok(got),
                },
            };
            if st.core.ready.count > held {
                continue;
            }
            if st.polling {
                st.followers += 1;
                match deadline {
                    Some(d) => {
                        self.cond.wait_until(st, d);
                    }
                    None => self.cond.wait(st),
                }
                st.followers -= 1;
            } else if let Err(e) = self.harvest(st, remaining) {
                if got > 0 && e.kind() == io::ErrorKind::Interrupted {
                    break Ok(got);
                }
                break Err(e);
            }
            harvested = true;
        };
        if st.closed && got == 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        result
    }

    /// Close the queue: every thread waiting in it wakes and later calls
    /// fail with `EBADF`. Registered knotes are dropped with the queue.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        self.cond.notify_all();
        self.sync_exposed(&st);
        let wake = st.polling;
        drop(st);
        self.wake_leader(wake);
    }

    /// Activate the `USER` knote `ident` as a `NOTE_TRIGGER` change would,
    /// without building a changelist. Wakes a waiting thread.
    ///
    /// # Errors
    /// `ENOENT` if there is no such USER knote.
    pub fn trigger(&self, ident: u64) -> io::Result<()> {
        let ch = Kevent::new(
            ident,
            Filter::User,
            Flags::empty(),
            crate::note::TRIGGER,
            0,
            0,
        );
        let mut st = self.state.lock();
        let key = st.index.get(&(ident, Filter::User.raw())).copied();
        let Some(key) = key else {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        let udata = st.core.knotes[key as usize].udata;
        self.apply(&mut st, &Kevent { udata, ..ch })
            .map_err(io::Error::from_raw_os_error)?;
        let wake = self.pass_on(&mut st);
        drop(st);
        self.wake_leader(wake);
        Ok(())
    }

    /// Apply one change. Returns the errno on failure.
    fn apply(&self, st: &mut State, ch: &Kevent) -> Result<(), Errno> {
        let sidx = st.by_filter[ch.filter.slot()];
        if sidx == u8::MAX {
            return Err(libc::EINVAL);
        }
        let State {
            core,
            index,
            storages,
            ..
        } = st;
        let mut cx = Context {
            core,
            sys: &self.sys,
            storage: sidx,
            index,
        };
        dispatch!(&mut storages[sidx as usize], storage => Self::apply_to(storage, &mut cx, ch))
    }

    /// [`Kqueue::apply`] for one storage (monomorphised for the fd storage).
    #[inline(always)]
    fn apply_to<S: Storage + ?Sized>(
        storage: &mut S,
        cx: &mut Context<'_>,
        ch: &Kevent,
    ) -> Result<(), Errno> {
        let sidx = cx.storage;
        storage.resolve(cx, ch)?;
        let existing = cx.index.get(&(ch.ident, ch.filter.raw())).copied();
        let id = match existing {
            None => {
                if !ch.flags.contains(Flags::ADD) {
                    return Err(libc::ENOENT);
                }
                let gen = cx.core.next_gen;
                cx.core.next_gen = gen.wrapping_add(1);
                let mut status = 0;
                if ch.flags.contains(Flags::DISABLE) {
                    status |= DISABLED;
                }
                let key = cx.core.knotes.insert(Knote {
                    ident: ch.ident,
                    filter: ch.filter,
                    flags: ch.flags.difference(CHANGE_FLAGS),
                    sfflags: ch.fflags,
                    sdata: ch.data,
                    udata: ch.udata,
                    fflags: 0,
                    data: 0,
                    status,
                    storage: sidx,
                    gen,
                    seq: 0,
                    fresh_round: 0,
                    hint: 0,
                    hook: 0,
                    hook2: 0,
                    delivered_in: 0,
                });
                if key > u32::MAX as usize {
                    cx.core.knotes.remove(key);
                    return Err(libc::ENOMEM);
                }
                let id = KnoteId {
                    key: key as u32,
                    gen,
                };
                cx.index.insert((ch.ident, ch.filter.raw()), key as u32);
                if let Err(e) = storage.attach(cx, id) {
                    cx.drop_knote(id);
                    return Err(e);
                }
                id
            }
            Some(key) => {
                let id = KnoteId {
                    key,
                    gen: cx.core.knotes[key as usize].gen,
                };
                if ch.flags.contains(Flags::DELETE) {
                    storage.detach(cx, id);
                    cx.drop_knote(id);
                    return Ok(());
                }
                // FreeBSD sets udata before `f_touch`; a storage may read
                // it in `modify`. A failed change leaves the knote as it
                // was, udata too.
                let old_udata =
                    std::mem::replace(&mut cx.core.knotes[key as usize].udata, ch.udata);
                if let Err(e) = storage.modify(cx, id, ch) {
                    if let Some(k) = cx.try_knote_mut(id) {
                        k.udata = old_udata;
                    }
                    return Err(e);
                }
                id
            }
        };
        let core = &mut *cx.core;
        let k = &mut core.knotes[id.key as usize];
        if ch.flags.contains(Flags::DISABLE) {
            k.status |= DISABLED;
            core.ready.remove(k);
        }
        if ch.flags.contains(Flags::ENABLE) {
            k.status &= !DISABLED;
        }
        // FreeBSD re-evaluates the filter after every change
        // (`kqueue_register` calls `f_event`): queue the knote so that
        // collection re-checks it; a condition that does not hold is
        // dropped there undelivered.
        if existing.is_some() && k.status & (DISABLED | QUEUED) == 0 {
            k.status |= ACTIVE;
            core.ready.push(k, id.key);
            core.compact_ready();
        }
        Ok(())
    }

    /// Before a call returns: events it leaves on the ready list (made
    /// ready by its changes, or left over when its buffer was full) belong
    /// to another waiter. A follower is notified here; `true` asks the
    /// caller to wake the leader blocked in the backend once the lock is
    /// released ([`Kqueue::wake_leader`]).
    fn pass_on(&self, st: &mut State) -> bool {
        let mut wake = false;
        if st.core.ready.count > 0 {
            if st.followers > 0 {
                self.cond.notify_one();
            } else if st.polling {
                wake = true;
            }
        }
        self.sync_exposed(st);
        wake
    }

    /// One round of OS events: wait (without the lock unless polling), then
    /// hand each event to its storage and run due deadlines.
    fn harvest(&self, st: &mut MutexGuard<'_, State>, timeout: Option<Duration>) -> io::Result<()> {
        let mut timeout = timeout;
        let mut now = None;
        if !st.timed.is_empty() {
            let earliest = st
                .timed
                .iter()
                .filter_map(|&i| st.storages[i as usize].get().deadline())
                .min();
            if let Some(d) = earliest {
                let n = Instant::now();
                now = Some(n);
                let until = d.saturating_duration_since(n);
                timeout = Some(timeout.map_or(until, |t| t.min(until)));
            }
        }
        // SAFETY: this thread is the leader: `harvest` runs only with
        // `polling` false under the lock, and a blocking wait sets it
        // before releasing the lock (see `LeaderCell`).
        let bufs = unsafe { self.bufs.get() };
        let res = if timeout == Some(Duration::ZERO) {
            // SAFETY: the leader (above) is the only thread that waits.
            unsafe { self.sys.wait(bufs, timeout) }
        } else {
            st.polling = true;
            // SAFETY: as above.
            let r = MutexGuard::unlocked(st, || unsafe { self.sys.wait(bufs, timeout) });
            st.polling = false;
            now = None;
            r
        };
        let st = &mut **st;
        st.core.round += 1;
        // epoll fills `raw`, io_uring `out`.
        for ev in bufs.raw.iter() {
            if ev.u64 != sys::epoll::WAKE_TOKEN {
                Self::dispatch_os(&self.sys, st, ev.u64, Readiness(ev.events), 0);
            }
        }
        bufs.raw.clear();
        for ev in bufs.out.iter() {
            Self::dispatch_os(&self.sys, st, ev.token, ev.ready, ev.res);
        }
        bufs.out.clear();
        if !st.timed.is_empty() {
            // Deadlines may have moved while the lock was released: ask
            // again, and read the clock only if one is set.
            for i in 0..st.timed.len() {
                let s = st.timed[i] as usize;
                let Some(d) = st.storages[s].get().deadline() else {
                    continue;
                };
                let now = *now.get_or_insert_with(Instant::now);
                if d <= now {
                    let mut cx = Context {
                        core: &mut st.core,
                        sys: &self.sys,
                        storage: s as u8,
                        index: &mut st.index,
                    };
                    dispatch!(&mut st.storages[s], s => s.expire(&mut cx, now));
                }
            }
        }
        if st.followers > 0 {
            self.cond.notify_one();
        }
        res
    }

    /// Hand one backend event to the storage its token names.
    #[inline(always)]
    fn dispatch_os(sys: &Sys, st: &mut State, token: u64, ready: Readiness, res: i32) {
        let idx = (token >> PAYLOAD_BITS) as usize;
        let Some(slot) = st.storages.get_mut(idx.wrapping_sub(1)) else {
            return;
        };
        let mut cx = Context {
            core: &mut st.core,
            sys,
            storage: (idx - 1) as u8,
            index: &mut st.index,
        };
        let payload = token & PAYLOAD_MASK;
        if ready.0 & sys::COMPLETION != 0 {
            let flags = ready.0 & !sys::COMPLETION;
            dispatch!(slot, s => s.completion(&mut cx, payload, res, flags));
        } else {
            dispatch!(slot, s => s.os_event(&mut cx, payload, ready));
        }
    }

    /// Collect up to `out.len()` events from the ready list, applying each
    /// knote's mode. Visits each entry present at the start at most once;
    /// a level knote already reported in call `call` stays queued but is
    /// not reported again (FreeBSD's scan marker). Returns (events, level
    /// knotes held back or requeued).
    fn scan(&self, st: &mut State, out: &mut [Kevent], call: u64) -> (usize, usize) {
        let mut n = 0;
        let mut held = 0;
        let mut budget = st.core.ready.raw_len();
        while n < out.len() && budget > 0 {
            budget -= 1;
            let Some((key, seq)) = st.core.ready.pop_raw() else {
                break;
            };
            let Some(k) = st.core.knotes.get_mut(key as usize) else {
                continue;
            };
            if k.status & QUEUED == 0 || k.seq != seq {
                continue;
            }
            if k.delivered_in == call {
                st.core.ready.requeue(k, key);
                held += 1;
                continue;
            }
            k.status &= !QUEUED;
            st.core.ready.count -= 1;
            let id = KnoteId { key, gen: k.gen };
            let sidx = k.storage;
            let mut cx = Context {
                core: &mut st.core,
                sys: &self.sys,
                storage: sidx,
                index: &mut st.index,
            };
            let slot = &mut st.storages[sidx as usize];
            let delivered = dispatch!(slot, s => Self::deliver(s, &mut cx, id, &mut out[n], call));
            match delivered {
                Delivered::No => {}
                Delivered::Yes => n += 1,
                Delivered::Level => {
                    n += 1;
                    held += 1;
                }
            }
        }
        (n, held)
    }

    /// Re-check one knote taken off the ready list and, if its condition
    /// holds, report it into `out` and apply its mode.
    #[inline(always)]
    fn deliver<S: Storage + ?Sized>(
        storage: &mut S,
        cx: &mut Context<'_>,
        id: KnoteId,
        out: &mut Kevent,
        call: u64,
    ) -> Delivered {
        if !storage.event(cx, id, out) {
            // The storage may have dropped the knote (its fd closed).
            if let Some(k) = cx.try_knote_mut(id) {
                k.status &= !ACTIVE;
            }
            return Delivered::No;
        }
        let k = &mut cx.core.knotes[id.key as usize];
        k.delivered_in = call;
        let flags = k.flags;
        if flags.contains(Flags::ONESHOT) {
            storage.detach(cx, id);
            cx.drop_knote(id);
        } else if flags.intersects(Flags::CLEAR | Flags::DISPATCH) {
            if flags.contains(Flags::CLEAR) {
                k.data = 0;
                k.fflags = 0;
            }
            if flags.contains(Flags::DISPATCH) {
                k.status |= DISABLED;
            }
            k.status &= !ACTIVE;
            if flags.contains(Flags::CLEAR) {
                storage.clear(cx, id);
            }
        } else {
            // Level: stays queued; re-checked before the next delivery.
            cx.core.ready.push(k, id.key);
            return Delivered::Level;
        }
        Delivered::Yes
    }

    fn sync_exposed(&self, st: &State) {
        use std::sync::atomic::Ordering;
        let x = &self.exposed;
        if !x.armed.load(Ordering::Relaxed) {
            return;
        }
        let want = st.core.ready.count > 0 || st.closed;
        if want != x.signalled.load(Ordering::Relaxed) {
            x.signalled.store(want, Ordering::Relaxed);
            let _ = if want {
                sys::eventfd_signal(x.pending.as_raw_fd())
            } else {
                sys::eventfd_drain(x.pending.as_raw_fd())
            };
        }
    }
}

impl Exposed {
    /// The pollable face: an epoll fd that will watch the backend's fds and
    /// an eventfd that mirrors "the ready list is not empty". Both are made
    /// with the queue (so running out of fds surfaces from `Kqueue::new`),
    /// but the watches are added only by the first `as_fd()`: a backend fd
    /// nested in another epoll makes every wake-up of the backend's own
    /// epoll walk the outer one too (the kernel's nested-epoll callbacks),
    /// a cost on every event of a queue nobody polls from outside.
    fn new(backend_fds: [RawFd; 3]) -> io::Result<Exposed> {
        let ep = sys::syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: `ep` was just created and is owned by no one else.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let pending = sys::eventfd()?;
        Ok(Exposed {
            ep,
            pending,
            backend_fds,
            armed: std::sync::atomic::AtomicBool::new(false),
            signalled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Add the watches (once, under the queue's lock).
    fn arm(&self) {
        let [a, b, c] = self.backend_fds;
        for fd in [a, b, c, self.pending.as_raw_fd()]
            .into_iter()
            .filter(|&fd| fd >= 0)
        {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            if let Err(e) = sys::syscall!(epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev
            )) {
                log::warn!("kevent: the queue's pollable fd cannot watch fd {fd}: {e}");
            }
        }
    }
}

impl AsFd for Kqueue {
    /// An fd readable while events are pending (the ready list is not
    /// empty or the backend has events), so a queue nests in another queue
    /// (`Filter::Read`), in epoll, or in tokio's `AsyncFd`. It is set up and
    /// kept in sync from the first call on; until then a queue pays nothing
    /// for it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        use std::sync::atomic::Ordering;
        if !self.exposed.armed.load(Ordering::Acquire) {
            let st = self.state.lock();
            if !self.exposed.armed.load(Ordering::Relaxed) {
                self.exposed.arm();
                self.exposed.armed.store(true, Ordering::Release);
                self.sync_exposed(&st);
            }
        }
        self.exposed.ep.as_fd()
    }
}

impl AsRawFd for Kqueue {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Kqueue {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        let State {
            core,
            index,
            storages,
            ..
        } = st;
        let ids: Vec<(u8, KnoteId)> = core
            .knotes
            .iter()
            .map(|(key, k)| {
                (
                    k.storage,
                    KnoteId {
                        key: key as u32,
                        gen: k.gen,
                    },
                )
            })
            .collect();
        for (sidx, id) in ids {
            let mut cx = Context {
                core,
                sys: &self.sys,
                storage: sidx,
                index,
            };
            dispatch!(&mut storages[sidx as usize], s => s.detach(&mut cx, id));
        }
        // End the ring's requests before the storages (and the buffers
        // their ops lent the kernel) go; their final completions still
        // reach the storages.
        let mut done = Vec::new();
        self.sys.shutdown(&mut done);
        for ev in done {
            Self::dispatch_os(&self.sys, st, ev.token, ev.ready, ev.res);
        }
    }
}

/// Builds a [`Kqueue`] with extra storages (timers, network AIO, channels).
pub struct Builder {
    sys: Sys,
    backend: Backend,
    storages: Vec<Slot>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("backend", &self.backend)
            .field("storages", &self.storages)
            .finish()
    }
}

impl Builder {
    /// Add a storage. A later storage for a filter replaces an earlier one.
    #[must_use]
    pub fn storage(mut self, s: Box<dyn Storage>) -> Builder {
        self.storages.push(Slot::Dyn(s));
        self
    }

    /// The backend the queue will use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Declare that one thread only — the one calling this — will collect
    /// events from the queue (other threads may still apply changes and
    /// trigger USER events). On io_uring the ring is then set up with
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions are processed inside
    /// that thread's own wait, never by interrupting it, which is cheaper
    /// and can cause no spurious `EINTR` (see `Kqueue::kevent`). A wait
    /// from another thread then fails with an error. No effect on epoll;
    /// if the kernel refuses these flags the shared ring is kept (logged).
    #[must_use]
    pub fn single_thread(mut self) -> Builder {
        if let Sys::IoUring(_) = self.sys {
            match sys::uring::Uring::new(true) {
                Ok(u) => self.sys = Sys::IoUring(u),
                Err(e) => log::warn!(
                    "kevent: single-issuer io_uring unavailable ({e}); keeping the shared ring"
                ),
            }
        }
        self
    }

    /// Build the queue.
    ///
    /// # Errors
    /// `InvalidInput` if more than 254 storages were added.
    pub fn build(self) -> io::Result<Kqueue> {
        if self.storages.len() > 254 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many storages",
            ));
        }
        let mut by_filter = [u8::MAX; 16];
        let mut timed = Vec::new();
        for (i, s) in self.storages.iter().enumerate() {
            let s = s.get();
            for f in s.filters() {
                by_filter[f.slot()] = i as u8;
            }
            if s.timed() {
                timed.push(i as u8);
            }
        }
        let exposed = Exposed::new(self.sys.readiness_fds())?;
        Ok(Kqueue {
            state: Mutex::new(State {
                core: Core::default(),
                index: Index::default(),
                storages: self.storages,
                by_filter,
                timed,
                polling: false,
                followers: 0,
                calls: 0,
                closed: false,
            }),
            bufs: LeaderCell(std::cell::UnsafeCell::new(sys::WaitBufs::default())),
            cond: Condvar::new(),
            sys: self.sys,
            backend: self.backend,
            exposed,
        })
    }
}
