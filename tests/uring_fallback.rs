//! `Backend::Auto` falls back to epoll when io_uring is refused, and says
//! why once; forcing io_uring where it cannot work is an error, never a
//! fallback; `KEVENT_BACKEND` forces a backend.
//!
//! io_uring is refused the way seccomp does it in containers: a filter in
//! this test's own thread makes `io_uring_setup` fail with `EPERM` (a
//! seccomp filter applies to the thread that installs it, so the rest of
//! the machine is untouched). One test function: the environment is
//! process-wide.

use kevent::{note, Backend, Filter, Flags, Kevent, Kqueue};
use std::sync::Mutex;
use std::time::Duration;

static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            LOGGED.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Install a seccomp filter in the calling thread: `io_uring_setup` fails
/// with `EPERM`, every other syscall is allowed.
fn refuse_io_uring_setup() {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        f(ld, 0, 0, 4), // seccomp_data.arch
        f(jeq, 1, 0, AUDIT_ARCH_X86_64),
        f(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
        f(ld, 0, 0, 0), // seccomp_data.nr
        f(jeq, 0, 1, libc::SYS_io_uring_setup as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `fprog` points to a live filter program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let rc = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

/// A USER round trip: the queue works.
fn works(kq: &Kqueue) {
    let ch = Kevent::new(
        1,
        Filter::User,
        Flags::ADD | Flags::CLEAR,
        note::TRIGGER,
        0,
        5,
    );
    let mut out = [Kevent::default(); 2];
    let n = kq
        .kevent(&[ch], &mut out, Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!((n, out[0].udata), (1, 5));
}

#[test]
fn auto_falls_back_and_forcing_is_an_error() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    std::env::remove_var("KEVENT_BACKEND");

    // This machine runs io_uring: Auto takes it.
    let kq = Kqueue::new().unwrap();
    assert_eq!(kq.backend(), Backend::IoUring);
    works(&kq);

    // KEVENT_BACKEND forces a backend; a bad value is a clear error.
    std::env::set_var("KEVENT_BACKEND", "epoll");
    assert_eq!(Kqueue::new().unwrap().backend(), Backend::Epoll);
    std::env::set_var("KEVENT_BACKEND", "kqueue");
    let e = Kqueue::new().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    std::env::remove_var("KEVENT_BACKEND");

    // Now io_uring is refused (seccomp, as in many containers).
    refuse_io_uring_setup();
    assert!(LOGGED.lock().unwrap().is_empty());
    let a = Kqueue::new().unwrap();
    assert_eq!(a.backend(), Backend::Epoll);
    works(&a);
    let b = Kqueue::with_backend(Backend::Auto).unwrap();
    assert_eq!(b.backend(), Backend::Epoll);
    let logged = LOGGED.lock().unwrap().clone();
    assert_eq!(logged.len(), 1, "the reason is logged once: {logged:?}");
    assert!(logged[0].contains("io_uring"), "{logged:?}");

    // Forcing io_uring where it cannot work is an error, not a fallback.
    let e = Kqueue::with_backend(Backend::IoUring).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    std::env::set_var("KEVENT_BACKEND", "uring");
    let e = Kqueue::new().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    std::env::remove_var("KEVENT_BACKEND");
}
