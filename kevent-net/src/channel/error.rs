//! Small typed errors for the channel; the ones on the data path hand the
//! value back.

use std::{error, fmt, io};

use super::PacketDesc;

/// Why [`channel`](super::channel) could not build a channel.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// The capacity is zero, not a power of two, or above
    /// [`MAX_CAPACITY`](super::MAX_CAPACITY). Carries the rejected value.
    Capacity(usize),
    /// The wake-up eventfd could not be created (e.g. `EMFILE`).
    Notifier(io::Error),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Capacity(c) => write!(
                f,
                "channel capacity {c} is not a power of two in 1..={}",
                super::MAX_CAPACITY
            ),
            Self::Notifier(e) => write!(f, "cannot create the channel's eventfd: {e}"),
        }
    }
}

impl error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Self::Capacity(_) => None,
            Self::Notifier(e) => Some(e),
        }
    }
}

/// [`Producer::push`](super::Producer::push) failed; the descriptor is
/// handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// Every slot holds an unconsumed descriptor.
    Full(PacketDesc),
}

impl PushError {
    /// The descriptor that was not pushed.
    #[must_use]
    pub fn into_inner(self) -> PacketDesc {
        match self {
            Self::Full(d) => d,
        }
    }
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("channel is full")
    }
}

impl error::Error for PushError {}

/// [`Consumer::pop`](super::Consumer::pop) found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopError {
    /// No published descriptor is waiting.
    Empty,
}

impl fmt::Display for PopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("channel is empty")
    }
}

impl error::Error for PopError {}

/// A chunk of `n` slots was asked for but fewer are available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Only this many slots (free for a write chunk, filled for a read
    /// chunk) are available right now.
    TooFewSlots(usize),
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFewSlots(n) => write!(f, "only {n} slots available"),
        }
    }
}

impl error::Error for ChunkError {}
