//! kevent
