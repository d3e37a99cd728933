//! evserver in its default `--mode readiness` (READ/WRITE knotes): every
//! shared behaviour test of `tests/util/evserver.rs` (the same bodies run
//! for `--mode aio` in `http_evserver_aio.rs`), plus the command line's
//! checks. Runs the built example binary on each backend.

#[macro_use]
mod util;
#[macro_use]
#[path = "util/evserver.rs"]
mod evserver;

use evserver::{backend_arg, evserver_bin, example_bin, Mode};
use kevent::Backend;
use std::process::Command;

backends_complete_test!();

evserver_tests!(Mode::Readiness);

backend_test!(absurd_float_arguments_are_clap_errors, |b: Backend| {
    let ev = |flag: &str, v: &str| {
        Command::new(evserver_bin())
            .args([
                "--backend",
                backend_arg(b),
                "--addr",
                "127.0.0.1:0",
                flag,
                v,
            ])
            .output()
            .unwrap()
    };
    let load = |flag: &str, v: &str| {
        Command::new(example_bin("httpload"))
            .args(["--backend", backend_arg(b), "--port", "9", flag, v])
            .output()
            .unwrap()
    };
    for v in ["inf", "NaN", "-1", "1e300", "0", "abc"] {
        for (bin, flag, out) in [
            ("evserver", "--idle-timeout", ev("--idle-timeout", v)),
            ("httpload", "--timeout", load("--timeout", v)),
            ("httpload", "--duration", load("--duration", v)),
            ("httpload", "--rate", load("--rate", v)),
        ] {
            if flag == "--rate" && v == "0" {
                continue; // 0 is serial mode
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bin} {flag} {v}: {err}");
            assert!(err.contains(flag), "{bin} {flag} {v}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
});
