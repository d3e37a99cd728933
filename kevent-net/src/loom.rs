//! A facade over the synchronization primitives, in the pattern of tokio's
//! `src/loom/`: the real `std` types normally, loom's model-checked ones
//! under `--cfg loom`.
//!
//! Only what the lock-free code in this crate touches goes through here:
//! the channel indices, the need-wakeup flag, the fences and the slot
//! cells. Under loom every slot access is tracked, so a missing
//! happens-before edge between a slot write and its read is reported as a
//! data race.

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{fence, AtomicU64, AtomicUsize};
    pub(crate) use std::sync::Arc;

    /// `std::cell::UnsafeCell` with loom's closure-based accessors.
    ///
    /// `#[repr(transparent)]`: a slice of these has the layout of a slice of
    /// `T`, which the burst (chunk) API relies on.
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{fence, AtomicU64, AtomicUsize};
    pub(crate) use loom::sync::Arc;
}

pub(crate) use imp::*;
