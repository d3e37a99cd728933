//! PROC: `note::EXIT` with the wait status, without reaping the child.

#[macro_use]
mod util;

use kevent::{note, Backend, Filter, Flags};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use util::*;

backends_complete_test!();

const P: Filter = Filter::Proc;

backend_test!(child_exit_status, |b: Backend| {
    let kq = kq(b);
    let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let pid = child.id() as u64;
    change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 8)]);
    let e = expect_event(&kq, pid, P);
    assert_eq!(e.data, 3 << 8, "{e:?}");
    assert!(e.fflags & note::EXIT != 0, "{e:?}");
    assert!(e.flags.contains(Flags::EOF), "{e:?}");
    assert_eq!(e.udata, 8);
    // WIFEXITED / WEXITSTATUS apply to data.
    assert!(libc::WIFEXITED(e.data as i32));
    assert_eq!(libc::WEXITSTATUS(e.data as i32), 3);
    // Not reaped: the parent still waits for it.
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(3));
    // Reported once (FreeBSD: EV_EOF | EV_ONESHOT): the knote is gone.
    expect_none(&kq, pid, P);
    assert_errno(
        try_change(&kq, &[ev(pid, P, Flags::DELETE, 0, 0, 0)]),
        libc::ENOENT,
    );
});

backend_test!(child_exit_zero, |b: Backend| {
    let kq = kq(b);
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as u64;
    // Registered possibly after the exit: the zombie is still reported.
    std::thread::sleep(std::time::Duration::from_millis(50));
    change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 0)]);
    let e = expect_event(&kq, pid, P);
    assert_eq!(e.data, 0);
    assert!(e.fflags & note::EXIT != 0);
    assert!(child.wait().unwrap().success());
});

backend_test!(killed_child_reports_the_signal, |b: Backend| {
    let kq = kq(b);
    let mut child = Command::new("sleep").arg("10").spawn().unwrap();
    let pid = child.id() as u64;
    change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 0)]);
    expect_none(&kq, pid, P);
    child.kill().unwrap();
    let e = expect_event(&kq, pid, P);
    let st = e.data as i32;
    assert!(libc::WIFSIGNALED(st), "{e:?}");
    assert_eq!(libc::WTERMSIG(st), libc::SIGKILL);
    assert!(!libc::WIFEXITED(st));
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
});

backend_test!(non_child_exit_is_reported_with_data_zero, |b: Backend| {
    // A grandchild: its exit is seen, but Linux gives the status only to
    // its parent, so data is 0 (the storage documents this).
    let kq = kq(b);
    let mut sh = Command::new("sh")
        .args(["-c", "(sleep 0.5; exit 5) & echo $!"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u64 = line.trim().parse().unwrap();
    change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 0)]);
    let e = expect_event(&kq, pid, P);
    assert!(e.fflags & note::EXIT != 0, "{e:?}");
    assert_eq!(e.data, 0, "{e:?}");
    sh.wait().unwrap();
});

backend_test!(delete_before_exit_reports_nothing, |b: Backend| {
    let kq = kq(b);
    let mut child = Command::new("sleep").arg("10").spawn().unwrap();
    let pid = child.id() as u64;
    change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 0)]);
    change(&kq, &[ev(pid, P, Flags::DELETE, 0, 0, 0)]);
    child.kill().unwrap();
    expect_none(&kq, pid, P);
    child.wait().unwrap();
});

backend_test!(unknown_pid_is_esrch, |b: Backend| {
    let kq = kq(b);
    // Above any pid_max (at most 2^22).
    for pid in [1_000_000_000u64, 0] {
        assert_errno(
            try_change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 0)]),
            libc::ESRCH,
        );
    }
    // A reaped child.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as u64;
    child.wait().unwrap();
    // (The pid could be reused by now only after a pid_max wrap.)
    assert_errno(
        try_change(&kq, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 0)]),
        libc::ESRCH,
    );
});

backend_test!(fork_and_exec_notes_are_eopnotsupp, |b: Backend| {
    let kq = kq(b);
    let mut child = Command::new("sleep").arg("10").spawn().unwrap();
    let pid = child.id() as u64;
    for f in [note::FORK, note::EXEC, note::EXIT | note::FORK] {
        assert_errno(
            try_change(&kq, &[ev(pid, P, Flags::ADD, f, 0, 0)]),
            libc::EOPNOTSUPP,
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
});

backend_test!(exit_without_note_exit_is_dropped_silently, |b: Backend| {
    // FreeBSD filt_proc: a knote not subscribed to NOTE_EXIT gets EV_DROP
    // when the process exits: nothing is reported and the knote is gone.
    let kq = kq(b);
    let mut child = Command::new("sleep").arg("10").spawn().unwrap();
    let pid = child.id() as u64;
    change(&kq, &[ev(pid, P, Flags::ADD, 0, 0, 0)]);
    child.kill().unwrap();
    child.wait().unwrap();
    expect_none(&kq, pid, P);
    assert_errno(
        try_change(&kq, &[ev(pid, P, Flags::DELETE, 0, 0, 0)]),
        libc::ENOENT,
    );
});

backend_test!(
    two_queues_and_a_disabled_knote_see_the_exit,
    |b: Backend| {
        let (kq1, kq2) = (kq(b), kq(b));
        let mut child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = child.id() as u64;
        change(&kq1, &[ev(pid, P, Flags::ADD, note::EXIT, 0, 1)]);
        change(
            &kq2,
            &[ev(pid, P, Flags::ADD | Flags::DISABLE, note::EXIT, 0, 2)],
        );
        assert_eq!(expect_event(&kq1, pid, P).data, 7 << 8);
        // Disabled: the exit waits for ENABLE.
        expect_none(&kq2, pid, P);
        change(&kq2, &[ev(pid, P, Flags::ENABLE, note::EXIT, 0, 3)]);
        let e = expect_event(&kq2, pid, P);
        assert_eq!((e.data, e.udata), (7 << 8, 3));
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }
);

backend_test!(
    late_exit_of_a_deleted_knote_is_not_reported,
    |b: Backend| {
        // The first child's exit is pending in the backend when its knote is
        // deleted and a second child's knote takes the same slot: the late
        // event must not report the live second child as exited.
        let kq = kq(b);
        let mut c1 = Command::new("sleep").arg("0.1").spawn().unwrap();
        let p1 = c1.id() as u64;
        change(&kq, &[ev(p1, P, Flags::ADD, note::EXIT, 0, 1)]);
        // Alive now: nothing yet. The exit then lands in the backend unread.
        let early = poll_now(&kq);
        assert!(early.iter().all(|e| e.ident != p1), "{early:?}");
        std::thread::sleep(std::time::Duration::from_millis(400));
        change(&kq, &[ev(p1, P, Flags::DELETE, 0, 0, 0)]);
        c1.wait().unwrap();
        let mut c2 = Command::new("sleep").arg("5").spawn().unwrap();
        let p2 = c2.id() as u64;
        change(&kq, &[ev(p2, P, Flags::ADD, note::EXIT, 0, 2)]);
        let evs = drain(&kq, QUIET);
        assert!(
            evs.iter().all(|e| e.ident != p2),
            "a live process reported as exited: {evs:?}"
        );
        c2.kill().unwrap();
        c2.wait().unwrap();
    }
);
