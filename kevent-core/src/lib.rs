//! kevent-core
