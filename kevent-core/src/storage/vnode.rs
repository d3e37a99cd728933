//! VNODE: file changes through one inotify fd per queue.
//!
//! `ident` is an open fd; the watch is placed on its inode (through
//! `/proc/self/fd/N`), so several knotes on one inode share one watch.
//! Notes are merged into `fflags` while the knote waits. Mapping:
//!
//! | note | inotify |
//! |---|---|
//! | `WRITE` | `IN_MODIFY`; for a directory, an entry created, deleted or moved |
//! | `EXTEND` | `IN_MODIFY` with the size grown |
//! | `ATTRIB` | `IN_ATTRIB` with the link count unchanged |
//! | `LINK` | link count changed (`IN_ATTRIB`); a subdirectory made or removed |
//! | `DELETE` | link count reached 0 (`IN_ATTRIB` on unlink), or `IN_DELETE_SELF` |
//! | `RENAME` | `IN_MOVE_SELF` |
//! | `REVOKE` | `IN_UNMOUNT` |
//!
//! As on FreeBSD the knote is not implicitly `CLEAR`: without `CLEAR` it
//! keeps firing with the notes it has collected; with `CLEAR` each report
//! carries only what happened since the last.
//!
//! **Close and reuse.** FreeBSD drops a VNODE knote when its fd is closed
//! (`knote_fdclose`). Linux tells no one about a close, and the inotify
//! watch lives on the inode, so each knote remembers the `(st_dev,
//! st_ino)` its fd named at `ADD` and checks it wherever it could report:
//! for every inotify event and at collection. An fd that was closed (or
//! whose number now names another file) has its knote detached and
//! dropped there, undelivered, and the next change for the number starts
//! clean (`ADD` watches the new file). Between the close and that check
//! the knote still exists: a `DELETE` in that window finds it.

use super::{Context, Errno, Storage};
use crate::event::{note, Filter, Kevent};
use crate::knote::KnoteId;
use crate::sys::{self, Interest, Readiness};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ALL_NOTES: u32 = note::DELETE
    | note::WRITE
    | note::EXTEND
    | note::ATTRIB
    | note::LINK
    | note::RENAME
    | note::REVOKE;

const MASK: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO;

/// The VNODE storage.
#[derive(Debug, Default)]
pub(crate) struct VnodeStorage {
    ifd: Option<OwnedFd>,
    /// watch descriptor → knotes on that inode.
    watches: HashMap<i32, Vec<KnoteId>>,
    /// knote key → watch descriptor.
    wd_of: HashMap<u32, i32>,
    /// knote key → `(st_dev, st_ino)` of the file the fd named at `ADD`:
    /// an fd closed and its number reused must not report the old file.
    ident_of: HashMap<u32, (u64, u64)>,
    buf: Vec<u8>,
    /// Knotes found stale while walking a watch list, dropped after it.
    stale: Vec<KnoteId>,
}

impl VnodeStorage {
    /// The inotify queue overflowed and events were lost: report, for every
    /// knote, what its fd's `fstat` proves changed since its last event
    /// (size: WRITE/EXTEND; link count: LINK/DELETE), rather than nothing.
    fn resync(&mut self, cx: &mut Context<'_>) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            log::warn!("kevent: inotify queue overflowed; VNODE notes re-derived from fstat")
        });
        for list in self.watches.values() {
            for &id in list {
                let Some(st) = same_file(&self.ident_of, cx, id) else {
                    self.stale.push(id);
                    continue;
                };
                let Some(k) = cx.try_knote_mut(id) else {
                    continue;
                };
                let mut notes = 0;
                if st.st_size as u64 != k.hook {
                    notes |= note::WRITE;
                    if st.st_size as u64 > k.hook {
                        notes |= note::EXTEND;
                    }
                }
                if st.st_nlink != k.hook2 {
                    notes |= if st.st_nlink == 0 {
                        note::DELETE
                    } else {
                        note::LINK
                    };
                }
                k.hook = st.st_size as u64;
                k.hook2 = st.st_nlink;
                notes &= k.sfflags();
                if notes != 0 {
                    k.set_fflags(k.fflags() | notes);
                    cx.activate(id);
                }
            }
        }
        self.drop_stale(cx);
    }

    /// Detach and drop the knotes found stale (their fd closed or reused).
    fn drop_stale(&mut self, cx: &mut Context<'_>) {
        while let Some(id) = self.stale.pop() {
            if cx.try_knote_mut(id).is_some() {
                self.detach(cx, id);
                cx.drop_knote(id);
            }
        }
    }
}

/// `fstat` of the knote's fd if it still names the file the knote was
/// added for; `None` once the fd was closed or its number reused.
fn same_file(
    ident_of: &HashMap<u32, (u64, u64)>,
    cx: &Context<'_>,
    id: KnoteId,
) -> Option<libc::stat> {
    let want = *ident_of.get(&id.key)?;
    let fd = i32::try_from(cx.knote(id).ident()).ok()?;
    sys::fstat(fd)
        .ok()
        .filter(|st| (st.st_dev, st.st_ino) == want)
}

impl Storage for VnodeStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Vnode]
    }

    fn attach(&mut self, cx: &mut Context<'_>, id: KnoteId) -> Result<(), Errno> {
        let k = cx.knote(id);
        if k.sfflags() & !ALL_NOTES != 0 {
            return Err(libc::EINVAL);
        }
        if k.ident() > i32::MAX as u64 {
            return Err(libc::EBADF);
        }
        let fd = k.ident() as i32;
        let st = sys::fstat(fd).map_err(|_| libc::EBADF)?;
        if self.ifd.is_none() {
            let ifd = sys::syscall!(inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE))?;
            // SAFETY: a new fd returned by inotify_init1, owned by no one else.
            let ifd = unsafe { OwnedFd::from_raw_fd(ifd) };
            cx.watch_fd(ifd.as_raw_fd(), Interest::Read, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
            self.ifd = Some(ifd);
            self.buf = vec![0u8; 4096];
        }
        let ifd = self.ifd.as_ref().expect("created").as_raw_fd();
        let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
        let wd = sys::syscall!(inotify_add_watch(ifd, path.as_ptr(), MASK))
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EBADF))?;
        self.watches.entry(wd).or_default().push(id);
        self.wd_of.insert(id.key, wd);
        self.ident_of.insert(id.key, (st.st_dev, st.st_ino));
        let k = cx.knote_mut(id);
        k.hook = st.st_size as u64;
        k.hook2 = st.st_nlink;
        Ok(())
    }

    fn resolve(&mut self, cx: &mut Context<'_>, ch: &Kevent) -> Result<(), Errno> {
        if ch.ident > i32::MAX as u64 {
            return Err(libc::EBADF);
        }
        let st = sys::fstat(ch.ident as i32).ok();
        if let Some(id) = cx.lookup(ch.ident, Filter::Vnode) {
            let same =
                st.is_some_and(|st| self.ident_of.get(&id.key) == Some(&(st.st_dev, st.st_ino)));
            if !same {
                // The fd was closed (and maybe reused): the knote went with
                // it, as FreeBSD drops knotes at close.
                self.detach(cx, id);
                cx.drop_knote(id);
            }
        }
        st.map(drop).ok_or(libc::EBADF)
    }

    fn detach(&mut self, _cx: &mut Context<'_>, id: KnoteId) {
        self.ident_of.remove(&id.key);
        let Some(wd) = self.wd_of.remove(&id.key) else {
            return;
        };
        if let Some(list) = self.watches.get_mut(&wd) {
            list.retain(|k| *k != id);
            if list.is_empty() {
                self.watches.remove(&wd);
                if let Some(ifd) = &self.ifd {
                    // EINVAL if the kernel dropped the watch already.
                    let _ = sys::syscall!(inotify_rm_watch(ifd.as_raw_fd(), wd));
                }
            }
        }
    }

    fn os_event(&mut self, cx: &mut Context<'_>, _payload: u64, _ready: Readiness) {
        let Some(ifd) = self.ifd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        loop {
            let n = match sys::syscall!(read(ifd, self.buf.as_mut_ptr().cast(), self.buf.len())) {
                Ok(n) if n > 0 => n as usize,
                _ => break,
            };
            let mut off = 0;
            let hdr = std::mem::size_of::<libc::inotify_event>();
            while off + hdr <= n {
                // SAFETY: the kernel wrote whole inotify_event records;
                // read_unaligned copes with the byte buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(self.buf.as_ptr().add(off).cast()) };
                off += hdr + ev.len as usize;
                if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    self.resync(cx);
                    continue;
                }
                if ev.mask & libc::IN_IGNORED != 0 {
                    // The kernel dropped the watch (inode gone, unmount):
                    // forget it, so a later detach cannot remove a reused
                    // watch descriptor.
                    if let Some(list) = self.watches.remove(&ev.wd) {
                        for id in list {
                            self.wd_of.remove(&id.key);
                        }
                    }
                    continue;
                }
                let Some(list) = self.watches.get(&ev.wd) else {
                    continue;
                };
                for &id in list {
                    if cx.try_knote_mut(id).is_none() {
                        continue;
                    }
                    // Every note, the directory and self events too, only
                    // while the fd still names the watched file: a closed
                    // or reused fd drops the knote (FreeBSD drops it at
                    // close). Size and link count come from this fstat.
                    let Some(st) = same_file(&self.ident_of, cx, id) else {
                        self.stale.push(id);
                        continue;
                    };
                    let k = cx.knote_mut(id);
                    let mut notes = 0u32;
                    let m = ev.mask;
                    if m & libc::IN_MODIFY != 0 {
                        notes |= note::WRITE;
                        if st.st_size as u64 > k.hook {
                            notes |= note::EXTEND;
                        }
                        // Only a MODIFY moves the size mark: an
                        // earlier ATTRIB read later must not hide
                        // the growth from it (merged events).
                        k.hook = st.st_size as u64;
                    }
                    if m & libc::IN_ATTRIB != 0 {
                        // FreeBSD reports the last unlink as
                        // DELETE alone, not LINK too.
                        if st.st_nlink == 0 {
                            notes |= note::DELETE;
                        } else if st.st_nlink != k.hook2 {
                            notes |= note::LINK;
                        } else {
                            notes |= note::ATTRIB;
                        }
                        k.hook2 = st.st_nlink;
                    }
                    if m & (libc::IN_CREATE
                        | libc::IN_DELETE
                        | libc::IN_MOVED_FROM
                        | libc::IN_MOVED_TO)
                        != 0
                    {
                        notes |= note::WRITE;
                        if m & libc::IN_ISDIR != 0 && m & (libc::IN_CREATE | libc::IN_DELETE) != 0 {
                            notes |= note::LINK;
                        }
                    }
                    if m & libc::IN_DELETE_SELF != 0 {
                        notes |= note::DELETE;
                    }
                    if m & libc::IN_MOVE_SELF != 0 {
                        notes |= note::RENAME;
                    }
                    if m & libc::IN_UNMOUNT != 0 {
                        notes |= note::REVOKE;
                    }
                    notes &= k.sfflags();
                    if notes != 0 {
                        k.set_fflags(k.fflags() | notes);
                        cx.activate(id);
                    }
                }
                self.drop_stale(cx);
            }
        }
    }

    fn modify(&mut self, cx: &mut Context<'_>, id: KnoteId, ch: &Kevent) -> Result<(), Errno> {
        // As at `ADD`: a re-`ADD` with notes VNODE does not know fails and
        // leaves the knote as it was.
        if ch.fflags & !ALL_NOTES != 0 {
            return Err(libc::EINVAL);
        }
        let k = cx.knote_mut(id);
        k.set_sfflags(ch.fflags);
        k.sdata = ch.data;
        Ok(())
    }

    fn event(&mut self, cx: &mut Context<'_>, id: KnoteId, out: &mut Kevent) -> bool {
        let k = cx.knote(id);
        *out = k.to_event();
        if k.fflags() == 0 {
            return false;
        }
        // Notes collected before the fd was closed (or its number reused)
        // are not reported: the knote went with the fd.
        if same_file(&self.ident_of, cx, id).is_none() {
            self.detach(cx, id);
            cx.drop_knote(id);
            return false;
        }
        true
    }
}
