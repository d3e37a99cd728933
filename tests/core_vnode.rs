//! VNODE: each note, merging while pending, level vs CLEAR, directories.

#[macro_use]
mod util;

use kevent::{note, Backend, Filter, Flags};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use util::*;

backends_complete_test!();

const V: Filter = Filter::Vnode;
const ALL: u32 = note::DELETE
    | note::WRITE
    | note::EXTEND
    | note::ATTRIB
    | note::LINK
    | note::RENAME
    | note::REVOKE;

/// A temp file with `len` bytes, opened read-only (the watched fd).
fn file(tag: &str, len: usize) -> (TempPath, File) {
    let t = TempPath::new(tag);
    std::fs::write(t.path(), vec![b'a'; len]).unwrap();
    let f = File::open(t.path()).unwrap();
    (t, f)
}

fn writer(t: &TempPath) -> File {
    OpenOptions::new().write(true).open(t.path()).unwrap()
}

backend_test!(write_and_extend, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("write", 10);
    change(&kq, &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, ALL, 0, 5)]);
    expect_none(&kq, id(&f), V);
    // Overwrite in place: WRITE only.
    writer(&t).write_all_at(b"bbbb", 0).unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!((e.fflags, e.udata), (note::WRITE, 5), "{e:?}");
    // Append: WRITE and EXTEND.
    let mut w = writer(&t);
    w.seek(SeekFrom::End(0)).unwrap();
    w.write_all(b"more").unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!(e.fflags, note::WRITE | note::EXTEND, "{e:?}");
    expect_none(&kq, id(&f), V);
});

backend_test!(extend_by_truncate, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("extend", 10);
    change(
        &kq,
        &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, note::EXTEND, 0, 0)],
    );
    writer(&t).set_len(4096).unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!(e.fflags, note::EXTEND, "{e:?}");
    // Shrinking is not EXTEND (and WRITE is not subscribed).
    writer(&t).set_len(1).unwrap();
    expect_none(&kq, id(&f), V);
});

backend_test!(attrib_via_chmod, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("attrib", 1);
    change(&kq, &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, ALL, 0, 0)]);
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!(e.fflags, note::ATTRIB, "{e:?}");
});

backend_test!(link_via_hard_link, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("link", 1);
    change(&kq, &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, ALL, 0, 0)]);
    let l = t.with_suffix(".link");
    std::fs::hard_link(t.path(), &l).unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!(e.fflags, note::LINK, "{e:?}");
    // Removing one of two links changes the link count too.
    std::fs::remove_file(&l).unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!(e.fflags, note::LINK, "{e:?}");
});

backend_test!(delete_via_unlink, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("delete", 1);
    change(&kq, &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, ALL, 0, 0)]);
    std::fs::remove_file(t.path()).unwrap();
    let e = expect_event(&kq, id(&f), V);
    // FreeBSD reports NOTE_DELETE alone for the unlink.
    assert_eq!(e.fflags, note::DELETE, "{e:?}");
});

backend_test!(delete_only_subscription, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("delonly", 1);
    change(&kq, &[ev(id(&f), V, Flags::ADD, note::DELETE, 0, 0)]);
    writer(&t).write_all(b"zz").unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    expect_none(&kq, id(&f), V);
    std::fs::remove_file(t.path()).unwrap();
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::DELETE);
});

backend_test!(rename, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("rename", 1);
    change(&kq, &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, ALL, 0, 0)]);
    std::fs::rename(t.path(), t.with_suffix(".renamed")).unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!(e.fflags, note::RENAME, "{e:?}");
});

backend_test!(notes_merge_while_pending, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("merge", 4);
    change(&kq, &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, ALL, 0, 0)]);
    // No kevent() call in between: one event with every note.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut w = writer(&t);
    w.seek(SeekFrom::End(0)).unwrap();
    w.write_all(b"grow").unwrap();
    std::fs::hard_link(t.path(), t.with_suffix(".link")).unwrap();
    std::fs::rename(t.path(), t.with_suffix(".renamed")).unwrap();
    let want = note::ATTRIB | note::WRITE | note::EXTEND | note::LINK | note::RENAME;
    let evs = drain(&kq, WAIT);
    let mine: Vec<_> = evs.iter().filter(|e| e.ident == id(&f)).collect();
    assert_eq!(mine.len(), 1, "{evs:?}");
    assert_eq!(mine[0].fflags, want, "{:?}", mine[0]);
    expect_none(&kq, id(&f), V);
});

backend_test!(level_knote_keeps_reporting_its_notes, |b: Backend| {
    // Not implicitly CLEAR (FreeBSD): the collected notes stay until deleted.
    let kq = kq(b);
    let (t, f) = file("level", 1);
    change(&kq, &[ev(id(&f), V, Flags::ADD, ALL, 0, 0)]);
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::ATTRIB);
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::ATTRIB);
    writer(&t).write_all_at(b"x", 0).unwrap();
    let e = expect_where(&kq, "ATTRIB|WRITE", |e| {
        e.ident == id(&f) && e.fflags == note::ATTRIB | note::WRITE
    });
    assert_eq!(e.filter, V);
    change(&kq, &[ev(id(&f), V, Flags::DELETE, 0, 0, 0)]);
    expect_none(&kq, id(&f), V);
});

backend_test!(directory_entries, |b: Backend| {
    let kq = kq(b);
    let t = TempPath::new("dir");
    std::fs::create_dir(t.path()).unwrap();
    let d = File::open(t.path()).unwrap();
    change(&kq, &[ev(id(&d), V, Flags::ADD | Flags::CLEAR, ALL, 0, 0)]);
    std::fs::write(t.path().join("f"), b"x").unwrap();
    assert!(expect_event(&kq, id(&d), V).fflags & note::WRITE != 0);
    expect_none(&kq, id(&d), V);
    // A subdirectory changes the directory's link count.
    std::fs::create_dir(t.path().join("sub")).unwrap();
    let e = expect_event(&kq, id(&d), V);
    assert_eq!(e.fflags, note::WRITE | note::LINK, "{e:?}");
});

backend_test!(two_knotes_on_one_inode, |b: Backend| {
    let kq = kq(b);
    let (t, f) = file("twofds", 1);
    let g = File::open(t.path()).unwrap();
    change(
        &kq,
        &[
            ev(id(&f), V, Flags::ADD | Flags::CLEAR, note::WRITE, 0, 1),
            ev(id(&g), V, Flags::ADD | Flags::CLEAR, note::ATTRIB, 0, 2),
        ],
    );
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(expect_event(&kq, id(&g), V).fflags, note::ATTRIB);
    expect_none(&kq, id(&f), V);
    // Deleting one knote keeps the shared watch for the other.
    change(&kq, &[ev(id(&g), V, Flags::DELETE, 0, 0, 0)]);
    writer(&t).write_all_at(b"q", 0).unwrap();
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::WRITE);
});

backend_test!(invalid_registrations, |b: Backend| {
    let kq = kq(b);
    let (_t, f) = file("invalid", 1);
    assert_errno(
        try_change(&kq, &[ev(999_999, V, Flags::ADD, note::WRITE, 0, 0)]),
        libc::EBADF,
    );
    assert_errno(
        try_change(&kq, &[ev(id(&f), V, Flags::ADD, 0x1000, 0, 0)]),
        libc::EINVAL,
    );
});

backend_test!(closed_and_reused_fd_drops_the_old_knote, |b: Backend| {
    // FreeBSD drops a VNODE knote when its fd is closed; a new file at the
    // same number is a new registration, and the old file reports nothing.
    let kq = kq(b);
    let a = TempPath::new("vn-a");
    let bp = TempPath::new("vn-b");
    std::fs::write(a.path(), b"a").unwrap();
    std::fs::write(bp.path(), b"b").unwrap();
    let fa = File::open(a.path()).unwrap();
    let n = fa.as_raw_fd_u64();
    change(
        &kq,
        &[ev(n, V, Flags::ADD | Flags::CLEAR, note::WRITE, 0, 1)],
    );
    // Put B on A's number in one step (dup2 closes A's file there), so no
    // other test thread can take the number in between.
    let other = File::open(bp.path()).unwrap();
    let raw = fa.into_raw_fd();
    // SAFETY: `raw` is A's number, given up by `fa`; dup2 closes A's file
    // there and makes the number name B's open file.
    assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), raw) }, raw);
    drop(other);
    // SAFETY: `raw` names B's open file now and nothing else owns it.
    let fb = unsafe { File::from_raw_fd(raw) };
    assert_eq!(fb.as_raw_fd_u64(), n);
    change(
        &kq,
        &[ev(n, V, Flags::ADD | Flags::CLEAR, note::WRITE, 0, 2)],
    );
    OpenOptions::new()
        .append(true)
        .open(a.path())
        .unwrap()
        .write_all(b"x")
        .unwrap();
    expect_none(&kq, n, V);
    OpenOptions::new()
        .append(true)
        .open(bp.path())
        .unwrap()
        .write_all(b"y")
        .unwrap();
    let e = expect_event(&kq, n, V);
    assert_eq!((e.fflags & note::WRITE, e.udata), (note::WRITE, 2));
});

trait RawU64 {
    fn as_raw_fd_u64(&self) -> u64;
}

impl RawU64 for File {
    fn as_raw_fd_u64(&self) -> u64 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd() as u64
    }
}

backend_test!(extend_is_not_lost_when_inotify_overflows, |b: Backend| {
    // Fill the queue's inotify buffer past its limit with events the knote
    // does not subscribe to (alternating ATTRIB and MOVE_SELF: identical
    // consecutive events would merge), then grow the file: its MODIFY is
    // dropped by the kernel, and only a resync after the overflow can
    // report EXTEND.
    let kq = kq(b);
    let (t, f) = file("overflow", 0);
    change(
        &kq,
        &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, note::EXTEND, 0, 0)],
    );
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    let other = t.with_suffix(".moved");
    for i in 0..max / 2 + 64 {
        let mode = if i % 2 == 0 { 0o600 } else { 0o644 };
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(t.path(), &other).unwrap();
        std::fs::rename(&other, t.path()).unwrap();
    }
    writer(&t).write_all_at(b"grown", 0).unwrap();
    let e = expect_event(&kq, id(&f), V);
    assert_eq!(e.fflags & note::EXTEND, note::EXTEND, "{e:?}");
});

/// Watch file A on fd N, then make N name file B (`dup2`: the close and
/// the reuse in one step, race-free with other test threads). Returns
/// (A's path, B's path, B's file now at N, N).
fn watch_a_then_reuse_n_for_b(
    kq: &kevent::kevent_core::Kqueue,
    flags: Flags,
    udata: u64,
) -> (TempPath, TempPath, std::os::fd::OwnedFd, u64) {
    let a = TempPath::new("vn-stale-a");
    let bp = TempPath::new("vn-stale-b");
    std::fs::write(a.path(), b"a").unwrap();
    std::fs::write(bp.path(), b"b").unwrap();
    let fa = File::open(a.path()).unwrap();
    let n = fa.as_raw_fd_u64();
    change(kq, &[ev(n, V, Flags::ADD | flags, ALL, 0, udata)]);
    let fb = File::open(bp.path()).unwrap();
    // fa's number is taken over by B: A's fd is closed.
    let reused = reuse_number(fa, &fb);
    drop(fb);
    (a, bp, reused, n)
}

backend_test!(
    reused_fd_reports_nothing_of_the_old_file_without_readd,
    |b: Backend| {
        // No change names N after the reuse: the inotify events of A
        // (write, attrib, rename, delete) must not be reported for N, and
        // the knote is gone with A's fd (FreeBSD drops it at close).
        let kq = kq(b);
        let (a, bp, reused, n) = watch_a_then_reuse_n_for_b(&kq, Flags::CLEAR, 1);
        OpenOptions::new()
            .append(true)
            .open(a.path())
            .unwrap()
            .write_all(b"more")
            .unwrap();
        std::fs::set_permissions(a.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let moved = a.with_suffix(".renamed");
        std::fs::rename(a.path(), &moved).unwrap();
        std::fs::remove_file(&moved).unwrap();
        expect_none(&kq, n, V);
        // B, now at N, was never added: its changes are not reported.
        writer(&bp).write_all_at(b"bb", 0).unwrap();
        expect_none(&kq, n, V);
        // The old knote is gone: DELETE finds nothing ...
        assert_errno(
            try_change(&kq, &[ev(n, V, Flags::DELETE, 0, 0, 0)]),
            libc::ENOENT,
        );
        // ... and the next ADD on N works and watches B.
        change(&kq, &[ev(n, V, Flags::ADD | Flags::CLEAR, ALL, 0, 2)]);
        expect_none(&kq, n, V);
        writer(&bp).write_all_at(b"bbb", 0).unwrap();
        let e = expect_event(&kq, n, V);
        assert_eq!((e.fflags & note::WRITE, e.udata), (note::WRITE, 2), "{e:?}");
        drop(reused);
    }
);

backend_test!(
    notes_pending_when_the_fd_is_reused_are_not_reported,
    |b: Backend| {
        // A level knote holds A's WRITE when N is closed and reused: the
        // next collection must not report it (the knote went with A's fd).
        let kq = kq(b);
        let a = TempPath::new("vn-pending-a");
        let bp = TempPath::new("vn-pending-b");
        std::fs::write(a.path(), b"a").unwrap();
        std::fs::write(bp.path(), b"b").unwrap();
        let fa = File::open(a.path()).unwrap();
        let n = fa.as_raw_fd_u64();
        change(&kq, &[ev(n, V, Flags::ADD, note::WRITE, 0, 1)]);
        writer(&a).write_all_at(b"x", 0).unwrap();
        // Level: reported, and still pending for the next call.
        assert_eq!(expect_event(&kq, n, V).fflags, note::WRITE);
        assert_eq!(expect_event(&kq, n, V).fflags, note::WRITE);
        let fb = File::open(bp.path()).unwrap();
        let reused = reuse_number(fa, &fb);
        drop(fb);
        expect_none(&kq, n, V);
        assert_errno(
            try_change(&kq, &[ev(n, V, Flags::DELETE, 0, 0, 0)]),
            libc::ENOENT,
        );
        change(&kq, &[ev(n, V, Flags::ADD, note::WRITE, 0, 2)]);
        expect_none(&kq, n, V);
        writer(&bp).write_all_at(b"y", 0).unwrap();
        assert_eq!(expect_event(&kq, n, V).udata, 2);
        drop(reused);
    }
);

backend_test!(
    directory_entry_events_of_a_reused_fd_are_not_reported,
    |b: Backend| {
        // Directory events (create, delete, rename of an entry) carry no
        // size or link count to check; they must be identity-checked too.
        let kq = kq(b);
        let d = TempPath::new("vn-stale-dir");
        std::fs::create_dir(d.path()).unwrap();
        let fd_dir = File::open(d.path()).unwrap();
        let n = fd_dir.as_raw_fd_u64();
        change(&kq, &[ev(n, V, Flags::ADD | Flags::CLEAR, ALL, 0, 1)]);
        let other = TempPath::new("vn-stale-other");
        std::fs::write(other.path(), b"o").unwrap();
        let fo = File::open(other.path()).unwrap();
        let reused = reuse_number(fd_dir, &fo);
        drop(fo);
        let entry = d.path().join("entry");
        std::fs::write(&entry, b"e").unwrap();
        std::fs::rename(&entry, d.path().join("entry2")).unwrap();
        std::fs::remove_file(d.path().join("entry2")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        expect_none(&kq, n, V);
        drop(reused);
    }
);
