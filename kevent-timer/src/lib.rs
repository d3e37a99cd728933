//! kevent-timer: the timer side of kevent.
//!
//! - [`wheel`]: a hierarchical timer wheel (Varghese & Lauck) with a 1 ms
//!   tick, O(1) insert and cancel, entries in a slab.
//! - [`policy`]: periodic schedules on an absolute grid and the
//!   [`MissedTickPolicy`] each periodic timer follows when ticks are late.
//! - [`TimerStorage`]: `EVFILT_TIMER` for a kevent queue, with FreeBSD's
//!   semantics and a missed-tick policy per timer.
//! - [`Ticker`]: a 1 kHz (or any rate) tick source that reports its own
//!   health, [`spin`]: how it wakes early and spins to each deadline, and
//!   [`stats`]: the accuracy statistics it keeps.
//!
//! # Examples
//!
//! ```
//! use kevent_timer::policy::{step, MissedTickPolicy, Schedule};
//!
//! // A 1 ms grid from t = 0 (ns); the consumer wakes 3.5 ms in.
//! let s = Schedule::new(0, 1_000_000)?;
//! let merged = step(MissedTickPolicy::Merge, s, 3_500_000).unwrap();
//! assert_eq!(merged.data, 3); // one event standing for 3 ticks
//! assert_eq!(merged.schedule.next_deadline(), 4_000_000); // still on the grid
//! # Ok::<(), kevent_timer::policy::ZeroPeriod>(())
//! ```

pub mod policy;
pub mod spin;
pub mod stats;
pub mod storage;
mod sys;
pub mod ticker;
pub mod wheel;

pub use policy::{MissedTickPolicy, DEFAULT_CATCHUP_CAP};
pub use spin::{AdaptiveSpin, Spin};
pub use stats::TickStats;
pub use storage::{TimerStorage, Wakeup};
pub use ticker::{
    pin_current_thread, set_realtime, Health, Tick, Ticker, TickerBuilder, TickerError, WaitMethod,
};
pub use wheel::{Key, TickClock, Wheel};
