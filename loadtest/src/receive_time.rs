//! The kernel's receive time of TCP data (`SO_TIMESTAMPNS`): when the last segment a read took
//! arrived, not when this process got a CPU to read it. A reply's latency measured to that time
//! leaves out the client's own scheduling delay, which on a machine shared with the server under
//! test (and busy with this tool's subscribers) can be most of the figure.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime};

/// Asks the kernel to stamp received data on `fd` with its arrival time.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let enable: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a live c_int
    // whose size is passed alongside it.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS_NEW,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The control message's `struct __kernel_timespec`, 64-bit on every architecture.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelTimespec {
    seconds: i64,
    nanoseconds: i64,
}

/// Room for one timestamp control message, aligned as `cmsghdr` requires.
#[repr(C, align(8))]
struct ControlBuffer([u8; 64]);

/// Reads what is there without waiting; how many bytes, and when the last of them arrived
/// (None when the kernel gave no stamp: `enable` not called or refused).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut control = ControlBuffer([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one; its pointers are set just below.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = control.0.len() as _;
    // SAFETY: `header` points at `iov` (which covers `buf`) and `control`, all live and
    // writable for the call's duration, with their true lengths.
    let read = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((read as usize, arrival(&header)))
}

/// The timestamp control message `recvmsg` left in `header`, as wall-clock time.
fn arrival(header: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: `header` was filled by a successful recvmsg, so its control pointer and length
    // describe the messages the kernel wrote; the CMSG macros stay within them.
    let mut message = unsafe { libc::CMSG_FIRSTHDR(header) };
    while !message.is_null() {
        // SAFETY: non-null headers from CMSG_FIRSTHDR/CMSG_NXTHDR lie within the control buffer.
        let current = unsafe { &*message };
        let whole = std::mem::size_of::<KernelTimespec>() as u32;
        // SAFETY: CMSG_LEN only computes a length.
        let stamped = current.cmsg_len as usize >= unsafe { libc::CMSG_LEN(whole) } as usize;
        if current.cmsg_level == libc::SOL_SOCKET
            && current.cmsg_type == libc::SO_TIMESTAMPNS_NEW
            && stamped
        {
            // SAFETY: the kernel writes a __kernel_timespec as this message's data; the read is
            // unaligned because CMSG_DATA only guarantees the alignment of cmsghdr.
            let stamp = unsafe {
                std::ptr::read_unaligned(libc::CMSG_DATA(message).cast::<KernelTimespec>())
            };
            let since_epoch = Duration::new(
                u64::try_from(stamp.seconds).ok()?,
                u32::try_from(stamp.nanoseconds).ok()?,
            );
            return SystemTime::UNIX_EPOCH.checked_add(since_epoch);
        }
        // SAFETY: as for CMSG_FIRSTHDR; returns null past the last message.
        message = unsafe { libc::CMSG_NXTHDR(header, message) };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// A loopback TCP connection: the client's end and the server's.
    fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn received_data_carries_its_arrival_time() {
        let (mut client, server) = connected();
        enable(server.as_raw_fd()).expect("timestamps on");
        let before = SystemTime::now();
        client.write_all(b"reply").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        let (read, arrived) = recv(server.as_raw_fd(), &mut buf).expect("recv");
        let read_at = SystemTime::now();
        assert_eq!(&buf[..read], b"reply");
        let arrived = arrived.expect("a timestamp");
        assert!(arrived >= before, "arrived before it was sent");
        // Read 50 ms after it came: the stamp is the arrival, not the read.
        let waited = read_at
            .duration_since(arrived)
            .expect("arrived before the read");
        assert!(
            waited >= Duration::from_millis(40),
            "stamp {waited:?} before the read"
        );
    }

    #[test]
    fn without_enable_there_is_no_stamp() {
        let (mut client, server) = connected();
        client.write_all(b"x").expect("write");
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 4];
        let (read, arrived) = recv(server.as_raw_fd(), &mut buf).expect("recv");
        assert_eq!((read, arrived), (1, None));
    }
}
