//! kevent-timer: timer wheel, EVFILT_TIMER storage, the 1 kHz tick source.

pub mod wheel;
