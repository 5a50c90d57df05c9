//! A turn of the runtime's driver for a task with long work to do in slices.
//!
//! monoio reaps io_uring completions only once its run queue is empty, so a task that wakes
//! itself between slices would keep every read, accept and write completion waiting until it is
//! done. A timer frees the queue, but costs a millisecond a slice even when nothing else waits.
//! Instead the task writes a byte into a socket pair and waits, through io_uring, for the other
//! end to be readable: that completion comes with the next reap, after which the task goes on.

use std::io;
use std::os::fd::AsRawFd;

use monoio::net::UnixStream;

use super::io as socket;

/// One shard's socket pair for driver turns.
pub struct DriverTurn {
    ping: UnixStream,
    pong: UnixStream,
}

impl DriverTurn {
    pub fn new() -> io::Result<DriverTurn> {
        let (ping, pong) = UnixStream::pair()?;
        Ok(DriverTurn { ping, pong })
    }

    /// Returns once the driver has reaped completions and the tasks they woke have had a turn.
    pub async fn take(&self) -> io::Result<()> {
        // A byte already waiting (a turn cut short) makes the pair readable just the same.
        socket::send_some(self.ping.as_raw_fd(), &[1])?;
        self.pong.readable(false).await?;
        let mut drained = [0u8; 16];
        socket::recv(self.pong.as_raw_fd(), &mut drained)?;
        Ok(())
    }
}
