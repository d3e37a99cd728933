//! The filter × flag matrix across filters: `RECEIPT` for USER, SIGNAL,
//! PROC and VNODE; `ONESHOT` and `DISPATCH` for SIGNAL, VNODE and PROC;
//! `DISABLE`/`ENABLE` for VNODE; `udata` replaced on re-`ADD` for SIGNAL
//! and VNODE, and kept by a re-`ADD` that fails; READ/WRITE with their
//! `data` on an eventfd and on a pty.
//!
//! Signals are thread-directed and blocked first (see `core_signal.rs`):
//! the thread that raises is the thread that calls `kevent()`.

#[macro_use]
mod util;

use kevent::{block_signals, note, Backend, Filter, Flags, Kevent};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};
use util::*;

backends_complete_test!();

const S: Filter = Filter::Signal;
const V: Filter = Filter::Vnode;
const P: Filter = Filter::Proc;
const U: Filter = Filter::User;
const R: Filter = Filter::Read;
const W: Filter = Filter::Write;

/// A temp file with one byte and a read-only fd on it (the watched fd).
fn watched_file(tag: &str) -> (TempPath, File) {
    let t = TempPath::new(tag);
    std::fs::write(t.path(), b"a").unwrap();
    let f = File::open(t.path()).unwrap();
    (t, f)
}

fn overwrite(t: &TempPath) {
    OpenOptions::new()
        .write(true)
        .open(t.path())
        .unwrap()
        .write_all_at(b"b", 0)
        .unwrap();
}

/// A child that lives until killed (`sleep 30`).
fn sleeper() -> std::process::Child {
    Command::new("sleep").arg("30").spawn().unwrap()
}

// ---- RECEIPT ---------------------------------------------------------------

backend_test!(receipt_for_user_signal_proc_vnode, |b: Backend| {
    // Each change with RECEIPT comes back at once as an ERROR entry with
    // data = errno (0 on success), the change's ident and udata echoed,
    // even with a long timeout and an event ready to collect.
    let kq = kq(b);
    let sig = rt(3);
    block_signals(&[sig]).unwrap();
    let mut child = sleeper();
    let pid = child.id() as u64;
    let (_t, f) = watched_file("receipt");
    let rc = Flags::RECEIPT;
    let cases: &[(&str, Kevent, i32)] = &[
        // An ADD that triggers at once: only the receipt comes back.
        (
            "user add+trigger",
            ev(40, U, Flags::ADD | rc, note::TRIGGER, 0, 1),
            0,
        ),
        (
            "user trigger of a missing knote",
            ev(41, U, rc, note::TRIGGER, 0, 2),
            libc::ENOENT,
        ),
        ("signal add", ev(sig as u64, S, Flags::ADD | rc, 0, 0, 3), 0),
        ("signal 0", ev(0, S, Flags::ADD | rc, 0, 0, 4), libc::EINVAL),
        (
            "signal SIGKILL",
            ev(libc::SIGKILL as u64, S, Flags::ADD | rc, 0, 0, 5),
            libc::EINVAL,
        ),
        ("proc add", ev(pid, P, Flags::ADD | rc, note::EXIT, 0, 6), 0),
        (
            "proc re-add with FORK",
            ev(pid, P, Flags::ADD | rc, note::FORK, 0, 7),
            libc::EOPNOTSUPP,
        ),
        (
            "proc unknown pid",
            ev(i32::MAX as u64, P, Flags::ADD | rc, note::EXIT, 0, 8),
            libc::ESRCH,
        ),
        (
            "vnode add",
            ev(id(&f), V, Flags::ADD | rc, note::WRITE, 0, 9),
            0,
        ),
        (
            "vnode re-add with an unknown note",
            ev(id(&f), V, Flags::ADD | rc, 0x1000, 0, 10),
            libc::EINVAL,
        ),
        (
            "vnode bad fd",
            ev(999_999, V, Flags::ADD | rc, note::WRITE, 0, 11),
            libc::EBADF,
        ),
        (
            "vnode delete",
            ev(id(&f), V, Flags::DELETE | rc, 0, 0, 12),
            0,
        ),
        (
            "vnode delete again",
            ev(id(&f), V, Flags::DELETE | rc, 0, 0, 13),
            libc::ENOENT,
        ),
    ];
    for (what, ch, errno) in cases {
        let mut out = [Kevent::default(); 4];
        let t = Instant::now();
        let n = kq
            .kevent(&[*ch], &mut out, Some(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(t.elapsed() < Duration::from_secs(2), "{what}: waited");
        assert_eq!(n, 1, "{what}: {:?}", &out[..n]);
        let e = out[0];
        assert_error_entry(&e, ch.ident, *errno);
        assert_eq!((e.filter, e.udata), (ch.filter, ch.udata), "{what}: {e:?}");
    }
    // The USER knote's trigger was kept for the next call.
    let e = expect_event(&kq, 40, U);
    assert!(!e.flags.contains(Flags::ERROR), "{e:?}");
    // The PROC knote kept its udata through the refused re-ADD.
    child.kill().unwrap();
    let e = expect_event(&kq, pid, P);
    assert_eq!((e.fflags, e.udata), (note::EXIT, 6), "{e:?}");
    child.wait().unwrap();
    // Several receipts in one call come back together, in order.
    let chs = [
        ev(50, U, Flags::ADD | rc, 0, 0, 0),
        ev(0, S, Flags::ADD | rc, 0, 0, 0),
        ev(51, U, Flags::ADD | rc, 0, 0, 0),
    ];
    let mut out = [Kevent::default(); 8];
    let n = kq.kevent(&chs, &mut out, None).unwrap();
    assert_eq!(n, 3);
    assert_error_entry(&out[0], 50, 0);
    assert_error_entry(&out[1], 0, libc::EINVAL);
    assert_error_entry(&out[2], 51, 0);
});

// ---- ONESHOT ---------------------------------------------------------------

backend_test!(oneshot_signal_delivers_once_then_deletes, |b: Backend| {
    let kq = kq(b);
    let sig = rt(4);
    block_signals(&[sig]).unwrap();
    change(
        &kq,
        &[ev(sig as u64, S, Flags::ADD | Flags::ONESHOT, 0, 0, 1)],
    );
    raise(sig, 2);
    let e = expect_event(&kq, sig as u64, S);
    assert_eq!((e.data, e.udata), (2, 1), "{e:?}");
    raise(sig, 1);
    expect_none(&kq, sig as u64, S);
    assert_errno(
        try_change(&kq, &[ev(sig as u64, S, Flags::DELETE, 0, 0, 0)]),
        libc::ENOENT,
    );
});

backend_test!(oneshot_vnode_delivers_once_then_deletes, |b: Backend| {
    let kq = kq(b);
    let (t, f) = watched_file("oneshot");
    change(
        &kq,
        &[ev(
            id(&f),
            V,
            Flags::ADD | Flags::ONESHOT,
            note::WRITE,
            0,
            1,
        )],
    );
    overwrite(&t);
    let e = expect_event(&kq, id(&f), V);
    assert_eq!((e.fflags, e.udata), (note::WRITE, 1), "{e:?}");
    overwrite(&t);
    expect_none(&kq, id(&f), V);
    assert_errno(
        try_change(&kq, &[ev(id(&f), V, Flags::DELETE, 0, 0, 0)]),
        libc::ENOENT,
    );
});

backend_test!(oneshot_proc_delivers_the_exit_once, |b: Backend| {
    let kq = kq(b);
    let mut child = sleeper();
    let pid = child.id() as u64;
    change(
        &kq,
        &[ev(pid, P, Flags::ADD | Flags::ONESHOT, note::EXIT, 0, 2)],
    );
    expect_none(&kq, pid, P);
    child.kill().unwrap();
    let e = expect_event(&kq, pid, P);
    assert_eq!((e.data, e.udata), (libc::SIGKILL as i64, 2), "{e:?}");
    assert!(e.flags.contains(Flags::ONESHOT | Flags::EOF), "{e:?}");
    expect_none(&kq, pid, P);
    assert_errno(
        try_change(&kq, &[ev(pid, P, Flags::DELETE, 0, 0, 0)]),
        libc::ENOENT,
    );
    child.wait().unwrap();
});

// ---- DISPATCH --------------------------------------------------------------

backend_test!(dispatch_signal_counts_while_disabled, |b: Backend| {
    let kq = kq(b);
    let sig = rt(5);
    block_signals(&[sig]).unwrap();
    change(
        &kq,
        &[ev(sig as u64, S, Flags::ADD | Flags::DISPATCH, 0, 0, 1)],
    );
    raise(sig, 1);
    assert_eq!(expect_event(&kq, sig as u64, S).data, 1);
    // Disabled by the delivery: more signals are counted, not reported.
    raise(sig, 2);
    expect_none(&kq, sig as u64, S);
    change(&kq, &[ev(sig as u64, S, Flags::ENABLE, 0, 0, 2)]);
    let e = expect_event(&kq, sig as u64, S);
    assert_eq!((e.data, e.udata), (2, 2), "{e:?}");
    // Disabled again.
    raise(sig, 1);
    expect_none(&kq, sig as u64, S);
});

backend_test!(dispatch_vnode_needs_enable, |b: Backend| {
    let kq = kq(b);
    let (t, f) = watched_file("dispatch");
    change(
        &kq,
        &[ev(
            id(&f),
            V,
            Flags::ADD | Flags::DISPATCH | Flags::CLEAR,
            note::WRITE | note::ATTRIB,
            0,
            1,
        )],
    );
    overwrite(&t);
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::WRITE);
    // Disabled: notes collect while it is.
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    expect_none(&kq, id(&f), V);
    change(
        &kq,
        &[ev(
            id(&f),
            V,
            Flags::ENABLE,
            note::WRITE | note::ATTRIB,
            0,
            1,
        )],
    );
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::ATTRIB);
    // CLEAR: nothing new, nothing reported (and disabled again anyway).
    change(
        &kq,
        &[ev(
            id(&f),
            V,
            Flags::ENABLE,
            note::WRITE | note::ATTRIB,
            0,
            1,
        )],
    );
    expect_none(&kq, id(&f), V);
});

backend_test!(dispatch_proc_exit_ends_the_knote, |b: Backend| {
    // The exit sets EOF | ONESHOT (FreeBSD): delivered once, then gone
    // even though DISPATCH would only disable it.
    let kq = kq(b);
    let mut child = Command::new("sh").args(["-c", "exit 4"]).spawn().unwrap();
    let pid = child.id() as u64;
    change(
        &kq,
        &[ev(pid, P, Flags::ADD | Flags::DISPATCH, note::EXIT, 0, 3)],
    );
    let e = expect_event(&kq, pid, P);
    assert_eq!((e.data, e.udata), (4 << 8, 3), "{e:?}");
    assert_errno(
        try_change(&kq, &[ev(pid, P, Flags::ENABLE, note::EXIT, 0, 0)]),
        libc::ENOENT,
    );
    assert_eq!(child.wait().unwrap().code(), Some(4));
});

// ---- DISABLE / ENABLE ------------------------------------------------------

backend_test!(disable_enable_vnode, |b: Backend| {
    let kq = kq(b);
    let (t, f) = watched_file("disable");
    change(
        &kq,
        &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, note::WRITE, 0, 1)],
    );
    change(&kq, &[ev(id(&f), V, Flags::DISABLE, note::WRITE, 0, 1)]);
    overwrite(&t);
    expect_none(&kq, id(&f), V);
    // What happened while disabled is reported at ENABLE (FreeBSD).
    change(&kq, &[ev(id(&f), V, Flags::ENABLE, note::WRITE, 0, 1)]);
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::WRITE);
    expect_none(&kq, id(&f), V);
    // DISABLE drains a pending report: a level knote stops reporting.
    // (A re-ADD keeps the knote's mode, so a new knote without CLEAR.)
    change(&kq, &[ev(id(&f), V, Flags::DELETE, 0, 0, 0)]);
    change(&kq, &[ev(id(&f), V, Flags::ADD, note::WRITE, 0, 2)]);
    overwrite(&t);
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::WRITE);
    assert_eq!(expect_event(&kq, id(&f), V).fflags, note::WRITE);
    change(&kq, &[ev(id(&f), V, Flags::DISABLE, note::WRITE, 0, 2)]);
    expect_none(&kq, id(&f), V);
    change(&kq, &[ev(id(&f), V, Flags::ENABLE, note::WRITE, 0, 2)]);
    assert_eq!(expect_event(&kq, id(&f), V).udata, 2);
});

// ---- udata -----------------------------------------------------------------

backend_test!(readd_replaces_udata_for_signal_and_vnode, |b: Backend| {
    let kq = kq(b);
    let sig = rt(6);
    block_signals(&[sig]).unwrap();
    change(&kq, &[ev(sig as u64, S, Flags::ADD, 0, 0, 1)]);
    change(&kq, &[ev(sig as u64, S, Flags::ADD, 0, 0, 2)]);
    raise(sig, 1);
    let e = expect_event(&kq, sig as u64, S);
    assert_eq!((e.data, e.udata), (1, 2), "{e:?}");

    let (t, f) = watched_file("udata");
    change(
        &kq,
        &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, note::WRITE, 0, 3)],
    );
    change(
        &kq,
        &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, note::WRITE, 0, 4)],
    );
    overwrite(&t);
    let e = expect_event(&kq, id(&f), V);
    assert_eq!((e.fflags, e.udata), (note::WRITE, 4), "{e:?}");
});

backend_test!(failed_readd_leaves_the_knote_unchanged, |b: Backend| {
    // The change fails in the storage's modify (after the queue found the
    // knote): udata and the subscription must stay as they were.
    let kq = kq(b);
    let (t, f) = watched_file("failed-readd");
    change(
        &kq,
        &[ev(id(&f), V, Flags::ADD | Flags::CLEAR, note::WRITE, 0, 1)],
    );
    assert_errno(
        try_change(&kq, &[ev(id(&f), V, Flags::ADD, 0x1000, 0, 9)]),
        libc::EINVAL,
    );
    overwrite(&t);
    let e = expect_event(&kq, id(&f), V);
    assert_eq!((e.fflags, e.udata), (note::WRITE, 1), "{e:?}");

    let mut child = sleeper();
    let pid = child.id() as u64;
    change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 2)]);
    assert_errno(
        try_change(&kq, &[ev(pid, P, Flags::ADD, note::EXEC, 0, 9)]),
        libc::EOPNOTSUPP,
    );
    child.kill().unwrap();
    let e = expect_event(&kq, pid, P);
    assert_eq!((e.fflags, e.udata), (note::EXIT, 2), "{e:?}");
    child.wait().unwrap();

    // A periodic timer re-added with a negative period.
    let tm = Filter::Timer;
    change(&kq, &[ev(77, tm, Flags::ADD, note::MSECONDS, 5, 3)]);
    assert_errno(
        try_change(&kq, &[ev(77, tm, Flags::ADD, note::MSECONDS, -1, 9)]),
        libc::EINVAL,
    );
    let e = expect_event(&kq, 77, tm);
    assert_eq!(e.udata, 3, "{e:?}");
    let e = expect_event(&kq, 77, tm);
    assert_eq!(e.udata, 3, "the timer kept its 5 ms period: {e:?}");
});

// ---- eventfd and pty -------------------------------------------------------

fn eventfd() -> File {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd owned by no one else.
    unsafe { File::from_raw_fd(fd) }
}

backend_test!(eventfd_read_and_write, |b: Backend| {
    // An eventfd reports data 1 when readable/writable (its counter is not
    // a byte count).
    let kq = kq(b);
    let mut efd = eventfd();
    change(
        &kq,
        &[
            ev(id(&efd), R, Flags::ADD, 0, 0, 1),
            ev(id(&efd), W, Flags::ADD, 0, 0, 2),
        ],
    );
    let e = expect_event(&kq, id(&efd), W);
    assert_eq!((e.data, e.udata), (1, 2));
    expect_none(&kq, id(&efd), R);
    efd.write_all(&5u64.to_ne_bytes()).unwrap();
    let e = expect_event(&kq, id(&efd), R);
    assert_eq!((e.data, e.udata), (1, 1));
    let mut buf = [0u8; 8];
    efd.read_exact(&mut buf).unwrap();
    assert_eq!(u64::from_ne_bytes(buf), 5);
    expect_none(&kq, id(&efd), R);
    // At its maximum the counter takes no more: not writable.
    efd.write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
    expect_event(&kq, id(&efd), R);
    expect_none(&kq, id(&efd), W);
    efd.read_exact(&mut buf).unwrap();
    let e = expect_event(&kq, id(&efd), W);
    assert_eq!(e.data, 1);
});

/// A pty pair `(master, slave)`, both non-blocking, the slave in raw mode
/// (no echo, no line discipline editing or output processing).
fn pty() -> (File, File) {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: posix_openpt takes flags only.
    let m = unsafe { libc::posix_openpt(flags) };
    assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd owned by no one else.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt/unlockpt on the master fd just opened.
    assert_eq!(unsafe { libc::grantpt(m) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::unlockpt(m) }, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name into `name`.
    let rc = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    assert_eq!(rc, 0);
    // SAFETY: `name` is NUL-terminated (ptsname_r succeeded).
    let s = unsafe { libc::open(name.as_ptr(), flags) };
    assert!(s >= 0, "open slave: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd owned by no one else.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: an all-zero termios is valid storage for tcgetattr to fill.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr/tcsetattr on the slave with a live termios.
    assert_eq!(unsafe { libc::tcgetattr(s, &mut tio) }, 0);
    // SAFETY: cfmakeraw edits the termios given.
    unsafe { libc::cfmakeraw(&mut tio) };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcsetattr(s, libc::TCSANOW, &tio) }, 0);
    (File::from(master), File::from(slave))
}

backend_test!(pty_read_and_write_with_data, |b: Backend| {
    let kq = kq(b);
    let (mut master, mut slave) = pty();
    change(
        &kq,
        &[
            ev(id(&master), R, Flags::ADD, 0, 0, 1),
            ev(id(&slave), R, Flags::ADD, 0, 0, 2),
            ev(id(&slave), W, Flags::ADD | Flags::ONESHOT, 0, 0, 3),
        ],
    );
    // A tty is writable: data 1 (Linux has no portable free-space count).
    let e = expect_event(&kq, id(&slave), W);
    assert_eq!((e.data, e.udata), (1, 3));
    expect_none(&kq, id(&master), R);
    expect_none(&kq, id(&slave), R);
    // Bytes typed at the master are readable on the slave: data = count.
    master.write_all(b"hello").unwrap();
    let e = expect_data(&kq, id(&slave), R, 5);
    assert_eq!(e.udata, 2);
    assert_eq!(read_n(&mut slave, 5), b"hello");
    expect_none(&kq, id(&slave), R);
    // And the slave's output on the master.
    slave.write_all(b"abc").unwrap();
    expect_data(&kq, id(&master), R, 3);
    assert_eq!(read_n(&mut master, 3), b"abc");
    expect_none(&kq, id(&master), R);
    // The slave's last close hangs the master up: EOF.
    drop(slave);
    let e = expect_where(&kq, "master READ with EOF", |e| {
        e.ident == id(&master) && e.filter == R && e.is_eof()
    });
    assert_eq!(e.udata, 1);
});
