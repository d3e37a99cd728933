//! kevent-net: socket storage, network AIO, packet channels.
