//! SIGNAL: counts deliveries of a signal through one `signalfd` per queue.
//!
//! # The signal mask
//! Linux hands a signal to a `signalfd` only while it is blocked in the
//! receiving thread; otherwise it runs the disposition. Adding a SIGNAL
//! knote blocks the signal in the **calling thread**
//! (`pthread_sigmask(SIG_BLOCK)`); threads created afterwards inherit the
//! mask. Threads that already exist must block it themselves (or call
//! [`crate::block_signals`] before spawning), or the kernel may deliver it
//! to one of them instead. Deleting the knote does not unblock it.
//!
//! **Several queues.** Each queue reads its own signalfd, and Linux hands a
//! pending signal to one reader only: with SIGNAL knotes for the same signal
//! in two queues, each delivery reaches one of them (FreeBSD reports it to
//! every queue). Watch a signal in one queue and fan it out from there.
//!
//! FreeBSD counts every delivery attempt, even of an ignored signal. Linux
//! keeps at most one pending instance of a standard signal, so signals sent
//! faster than the queue reads them merge into one count (real-time
//! signals queue and count exactly). The knote is implicitly `CLEAR`;
//! `data` is the count since the last delivery.

use super::{Context, Errno, Storage};
use crate::event::{Filter, Flags, Kevent};
use crate::knote::KnoteId;
use crate::sys::{self, Interest, Readiness};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The SIGNAL storage.
#[derive(Debug, Default)]
pub(crate) struct SignalStorage {
    sfd: Option<OwnedFd>,
    knotes: Vec<Option<KnoteId>>,
}

fn sigset(sigs: impl Iterator<Item = i32>) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid (empty) value of this plain
    // C struct; sigemptyset below makes it so officially.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // Neither fails for a valid set and, as here, a checked signal number.
    let _ = sys::syscall!(sigemptyset(&mut set));
    for s in sigs {
        let _ = sys::syscall!(sigaddset(&mut set, s));
    }
    set
}

/// Block `signals` in the calling thread, so that SIGNAL knotes (and not
/// handlers or other threads) see them. Call before spawning threads to
/// cover the whole process.
///
/// # Errors
/// `EINVAL` for an invalid signal number.
pub fn block_signals(signals: &[i32]) -> std::io::Result<()> {
    for &s in signals {
        if !(1..=64).contains(&s) {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
    }
    let set = sigset(signals.iter().copied());
    // `set` is a valid sigset; a null old-set pointer is allowed.
    sys::syscall!(errno pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()))
}

impl SignalStorage {
    fn update_mask(&mut self) -> std::io::Result<()> {
        let set = sigset(
            self.knotes
                .iter()
                .enumerate()
                .filter(|(_, k)| k.is_some())
                .map(|(s, _)| s as i32),
        );
        let cur = self.sfd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let fd = sys::syscall!(signalfd(cur, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))?;
        if cur == -1 {
            // SAFETY: a new fd returned by signalfd, owned by no one else.
            self.sfd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(())
    }
}

impl Storage for SignalStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Signal]
    }

    fn attach(&mut self, cx: &mut Context<'_>, id: KnoteId) -> Result<(), Errno> {
        let sig = cx.knote(id).ident();
        if !(1..=64).contains(&sig) || sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            return Err(libc::EINVAL);
        }
        let sig = sig as usize;
        block_signals(&[sig as i32]).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
        if self.knotes.len() <= sig {
            self.knotes.resize(65, None);
        }
        self.knotes[sig] = Some(id);
        let new = self.sfd.is_none();
        if let Err(e) = self.update_mask() {
            self.knotes[sig] = None;
            return Err(e.raw_os_error().unwrap_or(libc::EINVAL));
        }
        if new {
            let fd = self.sfd.as_ref().expect("created").as_raw_fd();
            if let Err(e) = cx.watch_fd(fd, Interest::Read, 0) {
                self.knotes[sig] = None;
                self.sfd = None;
                return Err(e.raw_os_error().unwrap_or(libc::EINVAL));
            }
        }
        cx.knote_mut(id).set_flags(Flags::CLEAR, true);
        Ok(())
    }

    fn detach(&mut self, _cx: &mut Context<'_>, id: KnoteId) {
        if let Some(slot) = self.knotes.iter_mut().find(|k| **k == Some(id)) {
            *slot = None;
            let _ = self.update_mask();
        }
    }

    fn os_event(&mut self, cx: &mut Context<'_>, _payload: u64, _ready: Readiness) {
        let Some(fd) = self.sfd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        // SAFETY: all-zero is a valid signalfd_siginfo.
        let mut infos: [libc::signalfd_siginfo; 16] = unsafe { std::mem::zeroed() };
        loop {
            let n = match sys::syscall!(read(
                fd,
                infos.as_mut_ptr().cast(),
                std::mem::size_of_val(&infos)
            )) {
                Ok(n) if n > 0 => n as usize / std::mem::size_of::<libc::signalfd_siginfo>(),
                _ => break,
            };
            for info in &infos[..n] {
                let sig = info.ssi_signo as usize;
                if let Some(Some(id)) = self.knotes.get(sig).copied() {
                    if let Some(k) = cx.try_knote_mut(id) {
                        k.set_data(k.data() + 1);
                        cx.activate(id);
                    }
                }
            }
        }
    }

    fn event(&mut self, cx: &mut Context<'_>, id: KnoteId, out: &mut Kevent) -> bool {
        let k = cx.knote(id);
        *out = k.to_event();
        k.data() > 0
    }
}
