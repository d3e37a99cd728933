//! One door for syscalls: `-1` + errno becomes an `io::Error` here and
//! nowhere else (mio's `syscall!`).

use std::io;

/// Turns the C convention (`-1` and `errno`) into an `io::Result`.
pub(crate) fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Return types of libc calls that signal failure with `-1`.
pub(crate) trait IsMinusOne: Copy {
    fn is_minus_one(self) -> bool;
}

impl IsMinusOne for libc::c_int {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl IsMinusOne for libc::ssize_t {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}
