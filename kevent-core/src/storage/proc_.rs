//! PROC: `note::EXIT` through a pidfd per knote.
//!
//! `data` is the wait status in `wait(2)`'s encoding (`WIFEXITED`,
//! `WEXITSTATUS`, `WTERMSIG` apply), read with `waitid(P_PIDFD, WNOWAIT)`
//! so the process is **not** reaped: the parent still waits for it, as on
//! FreeBSD. The exit of a process that is not our child is reported too
//! (the pidfd becomes readable), but Linux does not give its status to
//! anyone but its parent: `data` is then 0. After `EXIT` the knote is
//! deleted (FreeBSD sets `EV_EOF | EV_ONESHOT`); a knote registered
//! without `note::EXIT` is dropped at exit without an event (FreeBSD's
//! `EV_DROP`). `note::FORK`, `note::EXEC`
//! and tracking have no unprivileged Linux equivalent and are refused with
//! `EOPNOTSUPP`; an unknown pid is `ESRCH`.

use super::{Context, Errno, Storage, PAYLOAD_MASK};
use crate::event::{note, Filter, Flags, Kevent};
use crate::knote::KnoteId;
use crate::sys::{self, Interest, Readiness};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const P_PIDFD: libc::idtype_t = 3;

/// The PROC storage.
#[derive(Debug, Default)]
pub(crate) struct ProcStorage {
    /// registration number (the token payload) → knote and pidfd. A
    /// number is never reused, so a late event of a deleted registration
    /// finds nothing (slab keys are reused at once).
    pidfds: HashMap<u64, (KnoteId, OwnedFd)>,
    /// knote key → registration number.
    reg_of: HashMap<u32, u64>,
    next_reg: u64,
}

/// Whether the pidfd is readable, i.e. the process has exited.
fn exited(pidfd: i32) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    matches!(sys::syscall!(poll(&mut p, 1, 0)), Ok(1)) && p.revents & libc::POLLIN != 0
}

fn wait_status(pidfd: i32) -> i64 {
    // SAFETY: all-zero is a valid siginfo_t.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = sys::syscall!(waitid(
        P_PIDFD,
        pidfd as libc::id_t,
        &mut info,
        libc::WEXITED | libc::WNOWAIT | libc::WNOHANG
    ));
    if r.is_err() {
        return 0;
    }
    // SAFETY: waitid filled a CLD_* siginfo; si_status is valid for it.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => ((status & 0xff) << 8) as i64,
        libc::CLD_KILLED => (status & 0x7f) as i64,
        libc::CLD_DUMPED => ((status & 0x7f) | 0x80) as i64,
        _ => 0,
    }
}

impl Storage for ProcStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Proc]
    }

    fn attach(&mut self, cx: &mut Context<'_>, id: KnoteId) -> Result<(), Errno> {
        let k = cx.knote(id);
        if k.sfflags() & !note::EXIT != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let pid = k.ident();
        if pid == 0 || pid > i32::MAX as u64 {
            return Err(libc::ESRCH);
        }
        // pidfd_open takes a pid and flags; no pointers.
        let fd = sys::syscall!(syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0))
            .map_err(|e| e.raw_os_error().unwrap_or(libc::ESRCH))?;
        // SAFETY: a new fd returned by pidfd_open, owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        self.next_reg += 1;
        let reg = self.next_reg & PAYLOAD_MASK;
        cx.watch_fd(fd.as_raw_fd(), Interest::Read, reg)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
        cx.knote_mut(id).set_flags(Flags::CLEAR, true);
        self.pidfds.insert(reg, (id, fd));
        self.reg_of.insert(id.key, reg);
        Ok(())
    }

    fn modify(&mut self, cx: &mut Context<'_>, id: KnoteId, ch: &Kevent) -> Result<(), Errno> {
        // As at `ADD`; a refused change leaves the knote as it was.
        if ch.fflags & !note::EXIT != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let k = cx.knote_mut(id);
        k.set_sfflags(ch.fflags);
        k.sdata = ch.data;
        Ok(())
    }

    fn detach(&mut self, cx: &mut Context<'_>, id: KnoteId) {
        let Some(reg) = self.reg_of.remove(&id.key) else {
            return;
        };
        if let Some((_, fd)) = self.pidfds.remove(&reg) {
            let _ = cx.unwatch_fd(fd.as_raw_fd());
        }
    }

    fn os_event(&mut self, cx: &mut Context<'_>, payload: u64, _ready: Readiness) {
        let Some((id, fd)) = self.pidfds.get(&payload) else {
            return;
        };
        let (id, raw) = (*id, fd.as_raw_fd());
        // A readable pidfd is the only proof of exit (a spurious or late
        // wake-up must not report a live process as gone).
        if !exited(raw) {
            return;
        }
        let status = wait_status(raw);
        if let Some(k) = cx.try_knote_mut(id) {
            let want = k.sfflags() & note::EXIT;
            if want == 0 {
                // FreeBSD's EV_DROP: not subscribed to EXIT, nothing to
                // report, and the knote ends with the process.
                self.reg_of.remove(&id.key);
                if let Some((_, fd)) = self.pidfds.remove(&payload) {
                    let _ = cx.unwatch_fd(fd.as_raw_fd());
                }
                cx.drop_knote(id);
                return;
            }
            k.set_data(status);
            k.set_fflags(want);
            k.set_flags(Flags::EOF | Flags::ONESHOT, true);
            cx.activate(id);
        }
    }

    fn event(&mut self, cx: &mut Context<'_>, id: KnoteId, out: &mut Kevent) -> bool {
        let k = cx.knote(id);
        *out = k.to_event();
        k.flags().contains(Flags::EOF)
    }
}
