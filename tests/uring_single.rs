//! `Builder::single_thread`: on io_uring a `SINGLE_ISSUER | DEFER_TASKRUN`
//! ring, waited on by the building thread only; other threads may still
//! change and trigger. On epoll it changes nothing. Both backends.

#[macro_use]
mod util;

use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use util::*;

backends_complete_test!();

fn single(b: Backend) -> Kqueue {
    let q = Kqueue::builder(b).unwrap().single_thread().build().unwrap();
    assert_eq!(q.backend(), b);
    q
}

backend_test!(single_thread_queue_runs_an_edge_loop, |b: Backend| {
    let kq = single(b);
    let (rx, tx) = pipe();
    change(
        &kq,
        &[ev(
            id(&rx),
            Filter::Read,
            Flags::ADD | Flags::CLEAR,
            0,
            0,
            7,
        )],
    );
    let mut out = [Kevent::default(); 4];
    let mut buf = [0u8; 8];
    for i in 0..200 {
        write_all(&tx, b"ab");
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(3)))
            .unwrap();
        assert_eq!(n, 1, "round {i}");
        assert_eq!((out[0].ident, out[0].data, out[0].udata), (id(&rx), 2, 7));
        assert_eq!((&rx).read(&mut buf).unwrap(), 2);
    }
    // A zero-timeout poll sees new readiness too (DEFER_TASKRUN: the
    // completion is posted only inside an enter of this thread).
    write_all(&tx, b"c");
    let e = expect_data(&kq, id(&rx), Filter::Read, 1);
    assert_eq!(e.udata, 7);
    write_all(&tx, b"d");
    std::thread::sleep(Duration::from_millis(20));
    let got = poll_now(&kq);
    assert!(
        got.iter().any(|e| e.ident == id(&rx) && e.data == 2),
        "{got:?}"
    );
});

backend_test!(
    single_thread_queue_takes_triggers_from_other_threads,
    |b: Backend| {
        let kq = Arc::new(single(b));
        change(
            &kq,
            &[ev(5, Filter::User, Flags::ADD | Flags::CLEAR, 0, 0, 0)],
        );
        let t = {
            let kq = Arc::clone(&kq);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                kq.trigger(5).unwrap();
            })
        };
        let mut out = [Kevent::default(); 4];
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(5)))
            .unwrap();
        t.join().unwrap();
        assert_eq!((n, out[0].ident), (1, 5));
    }
);

backend_test!(
    single_thread_queue_refuses_a_wait_on_another_thread,
    |b: Backend| {
        let kq = Arc::new(single(b));
        let other = {
            let kq = Arc::clone(&kq);
            std::thread::spawn(move || {
                let mut out = [Kevent::default(); 4];
                kq.kevent(&[], &mut out, Some(Duration::from_millis(20)))
            })
        };
        let res = other.join().unwrap();
        match b {
            // single_thread changes nothing on epoll.
            Backend::Epoll => assert_eq!(res.unwrap(), 0),
            _ => {
                let e = res.expect_err("a wait from another thread must fail");
                assert!(e.to_string().contains("single_thread"), "{e}");
            }
        }
        // The building thread still waits fine.
        assert!(drain(&kq, Duration::from_millis(10)).is_empty());
    }
);
