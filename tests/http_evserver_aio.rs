//! evserver `--mode aio` (network AIO completions: multishot accept,
//! pooled multishot receive, send, sendfile): every shared behaviour test
//! of `tests/util/evserver.rs`, the same bodies `http_evserver.rs` runs
//! for readiness mode. Runs the built example binary on each backend.

#[macro_use]
mod util;
#[macro_use]
#[path = "util/evserver.rs"]
mod evserver;

use evserver::Mode;
use kevent::Backend;

backends_complete_test!();

evserver_tests!(Mode::Aio);
