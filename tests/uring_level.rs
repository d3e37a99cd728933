//! Level knotes after their delivery, on both backends: a condition that
//! still holds comes back, to another waiting thread too, shows on the
//! queue's own pollable fd, and wakes no edge-mode knote of the other
//! direction. (Written for a kernel re-arm of the registration, measured
//! and dropped — see `storage/fd.rs` — they hold for any scheme.)

#[macro_use]
mod util;

use kevent::{Backend, Filter, Flags, Kevent};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::*;

backends_complete_test!();

const R: Filter = Filter::Read;

backend_test!(
    a_level_condition_still_true_reaches_another_waiting_thread,
    |b: Backend| {
        // This thread leads (blocked in the backend), B waits behind it; the
        // data arrives, this thread collects it and returns without reading
        // it: the condition still holds, so B must get the event too, at once
        // (B is already inside its call: nothing new will happen for it).
        let kq = Arc::new(kq(b));
        let (rx, tx) = pipe();
        let fd = id(&rx);
        change(&kq, &[ev(fd, R, Flags::ADD, 0, 0, 1)]);
        let follower = {
            let kq = Arc::clone(&kq);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut out = [Kevent::default(); 4];
                let t = Instant::now();
                let n = kq
                    .kevent(&[], &mut out, Some(Duration::from_secs(3)))
                    .unwrap();
                (out[..n].iter().any(|e| e.ident == fd), t.elapsed())
            })
        };
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            write_all(&tx, b"keep");
            tx
        });
        let mut out = [Kevent::default(); 4];
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(3)))
            .unwrap();
        let (got, took) = follower.join().unwrap();
        let _tx = writer.join().unwrap();
        assert!(
            out[..n].iter().any(|e| e.ident == fd) || got,
            "{b:?}: nobody got the event"
        );
        assert!(
            got,
            "{b:?}: the waiting thread missed the level event (waited {took:?})"
        );
        assert!(
            took < Duration::from_secs(2),
            "{b:?}: the waiting thread got it only after {took:?}"
        );
        assert_eq!(fionread(&rx), 4);
    }
);

backend_test!(
    a_delivered_level_condition_keeps_the_queue_fd_readable,
    |b: Backend| {
        let kq = kq(b);
        let (rx, tx) = pipe();
        change(&kq, &[ev(id(&rx), R, Flags::ADD, 0, 0, 1)]);
        let qfd = kq.as_raw_fd();
        write_all(&tx, b"abc");
        let readable = |ms: i32| {
            let mut p = libc::pollfd {
                fd: qfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut p, 1, ms) == 1 }
        };
        assert!(
            readable(2000),
            "{b:?}: queue fd not readable with an event pending"
        );
        expect_data(&kq, id(&rx), R, 3);
        // Not consumed: the condition holds, so the queue stays readable.
        assert!(
            readable(2000),
            "{b:?}: queue fd not readable although a level condition holds"
        );
        assert_eq!(
            drain(&kq, Duration::from_millis(500))
                .iter()
                .filter(|e| e.ident == id(&rx))
                .count(),
            1
        );
        // Consumed: nothing more once the re-check ran.
        assert_eq!(read_avail(&rx), 3);
        let _ = drain(&kq, Duration::from_millis(50));
        expect_none(&kq, id(&rx), R);
    }
);

backend_test!(
    a_level_knote_on_a_socket_with_a_clear_write_knote_is_redelivered_alone,
    |b: Backend| {
        // The other direction's CLEAR knote must not be woken by the level
        // READ knote's re-check (epoll re-reports every direction of a
        // registration it re-arms).
        let kq = kq(b);
        let (a, p) = socketpair();
        let n = a.as_raw_fd() as u64;
        change(
            &kq,
            &[
                ev(n, R, Flags::ADD, 0, 0, 1),
                ev(n, Filter::Write, Flags::ADD | Flags::CLEAR, 0, 0, 2),
            ],
        );
        expect_event(&kq, n, Filter::Write);
        write_all(&p, b"0123");
        expect_data(&kq, n, R, 4);
        for _ in 0..5 {
            let evs = drain(&kq, Duration::from_millis(20));
            assert!(
                evs.iter().any(|e| e.ident == n && e.filter == R),
                "{b:?}: level READ not redelivered: {evs:?}"
            );
            assert!(
                !evs.iter()
                    .any(|e| e.ident == n && e.filter == Filter::Write),
                "{b:?}: CLEAR WRITE woken without new activity: {evs:?}"
            );
        }
        drop(p);
    }
);
