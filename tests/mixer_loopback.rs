//! The mixer end to end on loopback, on every backend: 3 simulated
//! participants send constant-valued frames; each must hear exactly the
//! saturated sum of the other two (or, for a tick where a frame was
//! missing, of a subset of them — never anything else).

#[macro_use]
mod util;

#[path = "../examples/mixer/bridge.rs"]
mod bridge;
#[path = "../examples/mixer/mix.rs"]
mod mix;
#[path = "../examples/mixer/sim.rs"]
mod sim;

use std::time::Duration;

use kevent::Backend;

backends_complete_test!();

fn config(b: Backend, rx: bridge::Rx) -> bridge::Config {
    bridge::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        frame_ms: 20,
        rate: 8000,
        simulate: 3,
        jitter_ms: 0,
        loss: 0.0,
        seconds: 1.5,
        warmup: Duration::from_millis(300),
        max_participants: 3,
        backend: b,
        rx,
        verify: true,
        cpu: None,
        fifo: None,
        alloc_count: None,
    }
}

fn run(b: Backend, rx: bridge::Rx) {
    let cfg = config(b, rx);
    let r = bridge::run(&cfg).unwrap();
    let s = r.sim.unwrap();
    eprintln!("{b:?} {rx:?}: {r:?}");
    assert_eq!(r.participants, 3);
    assert_eq!(r.backend, format!("{b:?}"));
    assert!(r.ticks >= 50, "{} ticks in 1.5 s of 20 ms", r.ticks);
    assert_eq!(r.frames_mixed + r.skipped_frames, 3 * r.ticks);
    assert_eq!(s.bad, 0, "a frame that is no sum of the others: {s:?}");
    assert!(s.received >= 100, "{s:?}");
    // Most frames carry both others; under load some ticks miss a frame
    // (then the frame is a partial sum, checked exactly by `sim`).
    assert!(
        s.exact_full * 2 >= s.received,
        "most frames carry both others exactly: {s:?}"
    );
    assert_eq!(r.malformed, 0);
}

backend_test!(three_participants_hear_the_others_tick_rx, |b: Backend| {
    run(b, bridge::Rx::Tick)
});

backend_test!(three_participants_hear_the_others_event_rx, |b: Backend| {
    run(b, bridge::Rx::Event)
});

backend_test!(absurd_values_are_errors_not_panics, |b: Backend| {
    type Bad = fn(&mut bridge::Config);
    let cases: [(&str, Bad); 9] = [
        ("jitter", |c| c.jitter_ms = u32::MAX),
        ("jitter", |c| c.jitter_ms = bridge::MAX_JITTER_MS + 1),
        ("loss", |c| c.loss = f64::NAN),
        ("loss", |c| c.loss = 1.5),
        ("seconds", |c| c.seconds = f64::INFINITY),
        ("seconds", |c| c.seconds = 0.0),
        ("participants", |c| c.simulate = usize::MAX),
        ("participants", |c| c.max_participants = 1 << 40),
        ("frame", |c| c.frame_ms = 0),
    ];
    for (what, bad) in cases {
        let mut cfg = config(b, bridge::Rx::Tick);
        bad(&mut cfg);
        let e = bridge::run(&cfg).expect_err(what);
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{what}: {e}");
    }
    // The largest jitter accepted runs (no overflow, no huge allocation).
    let mut cfg = config(b, bridge::Rx::Tick);
    cfg.jitter_ms = bridge::MAX_JITTER_MS;
    cfg.seconds = 0.2;
    cfg.warmup = Duration::ZERO;
    cfg.verify = false;
    let r = bridge::run(&cfg).unwrap();
    assert!(r.ticks >= 5, "{r:?}");
    // The timer's schedule was bracketed by the ADD call.
    assert!(r.tick_schedule_uncertainty_us > 0.0, "{r:?}");
});
