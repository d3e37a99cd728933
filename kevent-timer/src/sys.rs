//! The one door to the OS for this crate: clocks, timerfd, clock_nanosleep,
//! timer slack and scheduling policy. Every call turns `-1`/errno (or the
//! returned error number, for `clock_nanosleep`) into `io::Result`; fds
//! become `OwnedFd` at once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NS_PER_SEC: u64 = 1_000_000_000;

/// `-1` + errno → `io::Error`.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        // Monotonic ns fit i64 seconds for 292 years of uptime.
        tv_sec: (ns / NS_PER_SEC) as libc::time_t,
        tv_nsec: (ns % NS_PER_SEC) as libc::c_long,
    }
}

fn ns(ts: &libc::timespec) -> u64 {
    (ts.tv_sec as u64) * NS_PER_SEC + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` now, in ns (vDSO: no syscall).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = timespec(0);
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(r, 0);
    ns(&ts)
}

/// `clock_getres(CLOCK_MONOTONIC)` in ns.
pub(crate) fn monotonic_resolution_ns() -> io::Result<u64> {
    let mut ts = timespec(0);
    // SAFETY: `ts` is a valid, writable timespec.
    cvt(unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) })?;
    Ok(ns(&ts))
}

/// `prctl(PR_SET_TIMERSLACK, ns)` for the calling thread. `ns = 0` would mean
/// "back to the default", so the minimum is 1.
pub(crate) fn set_timer_slack(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long; no pointers.
    cvt(unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns.max(1) as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

thread_local! {
    /// Whether [`min_timer_slack_once`] already ran on this thread.
    static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets the calling thread's timer slack to 1 ns, once per thread: later
/// calls cost a thread-local read, no syscall. A failure is logged once
/// per thread and not retried (the thread keeps its slack).
pub(crate) fn min_timer_slack_once() {
    SLACK_SET.with(|done| {
        if !done.replace(true) {
            if let Err(e) = set_timer_slack(1) {
                log::warn!("kevent-timer: cannot set this thread's timer slack: {e}");
            }
        }
    });
}

/// `prctl(PR_GET_TIMERSLACK)` for the calling thread, in ns.
pub(crate) fn timer_slack() -> io::Result<u64> {
    // SAFETY: PR_GET_TIMERSLACK takes no pointer arguments.
    let r = cvt(unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) })?;
    Ok(r as u64)
}

/// Puts the calling thread under `SCHED_FIFO` at `priority`.
pub(crate) fn set_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    cvt(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) })?;
    Ok(())
}

/// `sched_get_priority_min/max(SCHED_FIFO)`.
pub(crate) fn fifo_priority_range() -> (i32, i32) {
    // SAFETY: plain integer syscalls.
    unsafe {
        (
            libc::sched_get_priority_min(libc::SCHED_FIFO),
            libc::sched_get_priority_max(libc::SCHED_FIFO),
        )
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in ns. Not
/// in the vDSO: one syscall.
pub(crate) fn thread_cpu_ns() -> io::Result<u64> {
    let mut ts = timespec(0);
    // SAFETY: `ts` is a valid, writable timespec.
    cvt(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) })?;
    Ok(ns(&ts))
}

/// The CPUs the calling thread may run on (`sched_getaffinity`), ascending.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a writable cpu_set_t of
    // the size passed.
    cvt(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) })?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` < CPU_SETSIZE, the set's size in bits.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`). `EINVAL` for a
/// CPU outside the set the thread may use (or beyond `CPU_SETSIZE`).
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE was checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the
    // size passed.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

/// The CPU the calling thread runs on now (`sched_getcpu`).
#[cfg(test)]
pub(crate) fn current_cpu() -> io::Result<usize> {
    // SAFETY: no arguments.
    let r = cvt(unsafe { libc::sched_getcpu() })?;
    Ok(r as usize)
}

/// Sleeps until `CLOCK_MONOTONIC` reaches `deadline_ns`. Restarts on EINTR
/// with the same absolute deadline, so a signal costs no drift.
pub(crate) fn sleep_until(deadline_ns: u64) -> io::Result<()> {
    let ts = timespec(deadline_ns);
    loop {
        // SAFETY: `ts` is a valid timespec; the remainder pointer may be null
        // with TIMER_ABSTIME.
        let r = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        match r {
            0 => return Ok(()),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// A `CLOCK_MONOTONIC` timerfd.
#[derive(Debug)]
pub(crate) struct Timerfd {
    fd: OwnedFd,
}

impl Timerfd {
    pub(crate) fn new() -> io::Result<Self> {
        Self::with_flags(libc::TFD_CLOEXEC)
    }

    /// A timerfd whose reads never block (for one watched by a queue).
    pub(crate) fn new_nonblocking() -> io::Result<Self> {
        Self::with_flags(libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
    }

    fn with_flags(flags: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = cvt(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timerfd { fd })
    }

    /// Arms the timer: first expiry at absolute `first_ns`, then every
    /// `period_ns` (0: one-shot). With `TFD_TIMER_ABSTIME` the kernel keeps
    /// the grid `first + n·period` itself (hrtimer_forward), so there is no
    /// drift however late the reads are.
    pub(crate) fn set_abs(&self, first_ns: u64, period_ns: u64) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: timespec(period_ns),
            // A zero it_value would disarm; an already-past time fires at once.
            it_value: timespec(first_ns.max(1)),
        };
        // SAFETY: valid fd, valid itimerspec, null old value.
        cvt(unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Stops the timer.
    pub(crate) fn disarm(&self) -> io::Result<()> {
        let zero = timespec(0);
        let spec = libc::itimerspec {
            it_interval: zero,
            it_value: zero,
        };
        // SAFETY: valid fd, valid itimerspec, null old value.
        cvt(unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) })?;
        Ok(())
    }

    /// The raw fd, to register with a queue.
    pub(crate) fn raw(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Blocks until the timer has expired at least once; returns the number
    /// of expirations since the last read. Restarts on EINTR.
    pub(crate) fn wait(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        loop {
            // SAFETY: `buf` is 8 writable bytes, the size timerfd requires.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r == 8 {
                return Ok(u64::from_ne_bytes(buf));
            }
            let err = io::Error::last_os_error();
            if r < 0 && err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if r < 0 {
                err
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, "short timerfd read")
            });
        }
    }
}

impl AsRawFd for Timerfd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_monotonic_and_resolution_sane() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        let res = monotonic_resolution_ns().unwrap();
        assert!((1..=10_000_000).contains(&res), "resolution {res} ns");
    }

    #[test]
    fn timer_slack_round_trip() {
        std::thread::spawn(|| {
            set_timer_slack(1).unwrap();
            assert_eq!(timer_slack().unwrap(), 1);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn min_timer_slack_once_sets_it_once_per_thread() {
        std::thread::spawn(|| {
            assert_ne!(
                timer_slack().unwrap(),
                1,
                "a new thread starts with the default"
            );
            min_timer_slack_once();
            assert_eq!(timer_slack().unwrap(), 1);
            // Once only: a slack changed since is left alone.
            set_timer_slack(50_000).unwrap();
            min_timer_slack_once();
            assert_eq!(timer_slack().unwrap(), 50_000);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn thread_cpu_clock_counts_this_thread_only() {
        std::thread::spawn(|| {
            let a = thread_cpu_ns().unwrap();
            // Sleeping costs (almost) no CPU; spinning costs all of it.
            sleep_until(monotonic_ns() + 20_000_000).unwrap();
            let b = thread_cpu_ns().unwrap();
            let end = monotonic_ns() + 20_000_000;
            while monotonic_ns() < end {
                std::hint::spin_loop();
            }
            let c = thread_cpu_ns().unwrap();
            assert!(b - a < 10_000_000, "a 20 ms sleep cost {} ns", b - a);
            // Lower bound loose: the host may take the vCPU meanwhile.
            assert!(c - b > 1_000_000, "a 20 ms spin cost {} ns", c - b);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pinning_to_an_allowed_cpu_and_refusing_others() {
        std::thread::spawn(|| {
            let allowed = allowed_cpus().unwrap();
            assert!(!allowed.is_empty());
            let cpu = *allowed.last().unwrap();
            pin_to_cpu(cpu).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
            assert_eq!(current_cpu().unwrap(), cpu);
            for bad in [libc::CPU_SETSIZE as usize, usize::MAX] {
                let e = pin_to_cpu(bad).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad}");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn sleep_until_never_early() {
        for _ in 0..20 {
            let deadline = monotonic_ns() + 300_000;
            sleep_until(deadline).unwrap();
            assert!(monotonic_ns() >= deadline);
        }
        // A past deadline returns at once.
        sleep_until(1).unwrap();
    }

    #[test]
    fn timerfd_periodic_counts_and_never_early() {
        let t = Timerfd::new().unwrap();
        let start = monotonic_ns();
        let period = 1_000_000;
        t.set_abs(start + period, period).unwrap();
        let mut seen = 0;
        while seen < 5 {
            seen += t.wait().unwrap();
            assert!(monotonic_ns() >= start + seen * period, "early expiry");
        }
    }
}
