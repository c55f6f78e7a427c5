//! The thin syscall layer. Every raw syscall shmbus makes lives in this module, and every
//! one of them goes through nix. File descriptors become [`OwnedFd`] the moment they exist.
//!
//! Errors are returned as [`std::io::Error`], converted from nix's `Errno`.

use std::ffi::CStr;
use std::io::{self, IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

// ---------------------------------------------------------------------------------------------
// memfd segments
// ---------------------------------------------------------------------------------------------

/// Seals every shmbus segment carries: its size can never change (so no peer can cause a
/// SIGBUS by truncating it), and the seal set itself is frozen.
const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Creates an anonymous, sealed, close-on-exec memfd of exactly `len` bytes.
///
/// The contents start zeroed. The size is sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`),
/// so whoever holds the fd can write the bytes but never resize the file.
pub fn memfd_sealed(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let fd =
        memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(errno)?;
    let off = i64::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    nix::unistd::ftruncate(&fd, off).map_err(errno)?;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(REQUIRED_SEALS)).map_err(errno)?;
    Ok(fd)
}

/// Checks that `fd` is a memfd whose size is sealed and returns its length in bytes.
///
/// A segment received from a peer must pass this before it is mapped: an unsealed file could
/// be truncated under the mapping, and any later access would raise SIGBUS.
pub fn check_sealed_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(errno)?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "segment fd is not sealed against resizing",
        ));
    }
    let st = nix::sys::stat::fstat(fd).map_err(errno)?;
    usize::try_from(st.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment has a negative size"))
}

/// Creates a memfd of exactly `len` bytes for one writer and many read-only readers.
///
/// Returns the fd and the writer's read-write mapping. The fd is then sealed with
/// `F_SEAL_FUTURE_WRITE` besides the size seals: from now on nobody — not even a process that
/// reopens it through `/proc` — can `write(2)` to it or map it writable. Only the mapping
/// returned here can change the bytes.
pub fn memfd_single_writer(name: &CStr, len: usize) -> io::Result<(OwnedFd, Mapping)> {
    let fd =
        memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(errno)?;
    let off = i64::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    nix::unistd::ftruncate(&fd, off).map_err(errno)?;
    // Size first (a mapping needs it), then the writable mapping, then the seals that forbid
    // any other writable mapping and freeze the seal set.
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .map_err(errno)?;
    let map = Mapping::map(fd.as_fd(), len, true)?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(REQUIRED_SEALS.union(SealFlag::F_SEAL_FUTURE_WRITE)),
    )
    .map_err(errno)?;
    Ok((fd, map))
}

/// Whether `fd` carries `F_SEAL_FUTURE_WRITE` (no new writable mapping is possible).
pub fn is_write_sealed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(errno)?;
    Ok(SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_FUTURE_WRITE))
}

/// Opens the file behind `fd` again, read-only, through `/proc/self/fd`: the new fd can only
/// ever be mapped `PROT_READ`.
pub fn reopen_readonly(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(errno)
}

/// `CLOCK_MONOTONIC` in nanoseconds (vDSO, no syscall). Every process on the host shares this
/// clock, so a deadline written by one process means the same instant to all.
#[inline]
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// A shared mapping of a whole file. Unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: a Mapping is a plain address range. Every access to the bytes behind it goes through
// raw pointers whose synchronisation is the caller's job (the ring uses atomics), so moving or
// sharing the handle between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see the `Send` impl; `&Mapping` only hands out the base pointer and the length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-write or read-only.
    ///
    /// It checks what makes every byte of the mapping safe to touch for as long as it
    /// lives: `fd` is a memfd sealed against shrinking (`F_SEAL_SHRINK`, so no one can cut
    /// the file under the mapping and turn an access into SIGBUS) and at least `len` bytes
    /// long. Anything else is an `InvalidData` error, not a mapping.
    pub fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        let nz = NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        let seals = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a sealable memfd ({e}); refusing to map it"),
            )
        })?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "memfd is not sealed against shrinking; refusing to map it",
            ));
        }
        let size = nix::sys::stat::fstat(fd).map_err(errno)?.st_size;
        if u64::try_from(size).map_or(true, |s| s < len as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("memfd has {size} bytes, fewer than the {len} to map"),
            ));
        }
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: we ask the kernel for a fresh mapping (no fixed address), so no existing Rust
        // object is affected. The file is at least `len` bytes and sealed against shrinking
        // (both checked above; a seal can never be removed), so the whole range stays backed.
        let ptr = unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, fd, 0) }.map_err(errno)?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            writable,
        })
    }

    /// Base address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the mapping was made with `PROT_WRITE`.
    pub fn writable(&self) -> bool {
        self.writable
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and every borrow of the mapped
        // bytes is tied to an owner that keeps this Mapping alive (through an Arc).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

// ---------------------------------------------------------------------------------------------
// eventfd
// ---------------------------------------------------------------------------------------------

/// A non-blocking, close-on-exec eventfd used as a doorbell.
#[derive(Debug)]
pub struct Bell(EventFd);

impl Bell {
    /// A fresh doorbell with count 0.
    pub fn new() -> io::Result<Bell> {
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map(Bell)
            .map_err(errno)
    }

    /// Wraps an eventfd received from a peer. It is switched to non-blocking mode.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Bell> {
        let fl = fcntl(&fd, FcntlArg::F_GETFL).map_err(errno)?;
        let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(fl)).map_err(errno)?;
        // SAFETY: `fd` came from a peer that the handshake says sent an eventfd. If it is some
        // other kind of fd, reads and writes of 8 bytes simply fail or misbehave as I/O on that
        // fd; no memory safety depends on it being an eventfd.
        Ok(Bell(unsafe { EventFd::from_owned_fd(fd) }))
    }

    /// Adds 1 to the count, waking any poller. A full counter (EAGAIN) already means "woken".
    pub fn ring(&self) -> io::Result<()> {
        match self.0.write(1) {
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Resets the count to zero without blocking. Returns the count that was read.
    pub fn drain(&self) -> io::Result<u64> {
        match self.0.read() {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(errno(e)),
        }
    }
}

impl AsFd for Bell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A blocking eventfd (for the eventfd floor benchmark: one `read` per wake-up, no poll).
pub fn eventfd_blocking() -> io::Result<OwnedFd> {
    let e = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map_err(errno)?;
    e.as_fd().try_clone_to_owned()
}

/// Blocking read of an eventfd (resets its count). Retries on EINTR.
pub fn eventfd_read(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Ok(8) => return Ok(u64::from_ne_bytes(b)),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short eventfd read",
                ))
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Adds 1 to an eventfd's count.
pub fn eventfd_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(errno(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// poll
// ---------------------------------------------------------------------------------------------

/// What `poll` reported for one fd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Data can be read.
    pub readable: bool,
    /// The peer hung up (`POLLHUP`) or the fd is in error.
    pub hangup: bool,
}

/// Polls up to 4 fds for the given events until one is ready or `timeout` passes
/// (`None` = forever). Retries on EINTR with the remaining time.
pub fn poll_fds<const N: usize>(
    fds: &[(BorrowedFd<'_>, PollFlags); N],
    timeout: Option<Duration>,
) -> io::Result<[Ready; N]> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut pfds: [PollFd<'_>; N] = std::array::from_fn(|i| PollFd::new(fds[i].0, fds[i].1));
        let to = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that a sub-millisecond remainder still sleeps instead of spinning.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut pfds, to) {
            Ok(_) => {
                let mut out = [Ready::default(); N];
                for (o, p) in out.iter_mut().zip(pfds.iter()) {
                    match p.revents() {
                        Some(r) => {
                            o.readable = r.contains(PollFlags::POLLIN);
                            o.hangup = r.intersects(
                                PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL,
                            );
                        }
                        // Bits nix cannot name (POLLRDHUP): something happened; report both
                        // and let the caller re-check.
                        None => {
                            o.readable = true;
                            o.hangup = true;
                        }
                    }
                }
                return Ok(out);
            }
            Err(Errno::EINTR) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok([Ready::default(); N]);
                }
            }
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Events to ask for on a control socket to learn of the peer's death without consuming any
/// byte from it: none. `POLLHUP` is always reported, and a Unix stream socket reports it as
/// soon as its peer is closed (or its process died). (`POLLRDHUP` would also do, but nix's
/// `PollFd::revents` cannot represent that bit and returns `None` for the whole set.)
pub const HANGUP_EVENTS: PollFlags = PollFlags::empty();

/// True if the stream peer of `fd` has closed its end (or died). Never blocks, never reads.
pub fn peer_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let [r] = poll_fds(&[(fd, HANGUP_EVENTS)], Some(Duration::ZERO))?;
    Ok(r.hangup)
}

// ---------------------------------------------------------------------------------------------
// SCM_RIGHTS and SO_PEERCRED
// ---------------------------------------------------------------------------------------------

/// Most fds one control message may carry.
pub const MAX_FDS: usize = 8;

/// Sends `bytes` (all of them, in one `sendmsg`) with `fds` attached as `SCM_RIGHTS`.
pub fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "too many fds for one control message");
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short sendmsg on a control message",
                ))
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Receives one message into `buf` together with any fds attached to it (close-on-exec).
/// Returns the byte count (0 = EOF) and the fds. Any fds beyond [`MAX_FDS`] are closed.
pub fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let res = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        match res {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(errno)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: the kernel just installed `r` in our fd table for us, and
                            // nothing else refers to it, so we are its only owner.
                            fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                        }
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "peer sent more fds than a control message may carry",
                    ));
                }
                return Ok((msg.bytes, fds));
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(errno(e)),
        }
    }
}

/// The credentials of the process at the other end of a Unix socket, as the kernel saw them
/// when the connection was made (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// Reads `SO_PEERCRED` from a connected Unix socket.
pub fn peer_cred(sock: &UnixStream) -> io::Result<PeerCred> {
    let c = getsockopt(sock, sockopt::PeerCredentials).map_err(errno)?;
    Ok(PeerCred {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// This process's effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

// ---------------------------------------------------------------------------------------------
// CPU affinity (benchmarks)
// ---------------------------------------------------------------------------------------------

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(errno)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(errno)
}

/// Number of CPUs online on the machine (whatever this process's affinity is).
pub fn cpus_online() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 1,
    }
}

/// Sends `SIGKILL` to a process (tests and the crash drills).
pub fn kill9(pid: i32) -> io::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(errno)
}

// ---------------------------------------------------------------------------------------------
// epoll (the hub's event loop)
// ---------------------------------------------------------------------------------------------

/// An epoll instance: many fds, one wait.
#[derive(Debug)]
pub struct Poller(nix::sys::epoll::Epoll);

/// One readiness report from [`Poller::wait`].
#[derive(Clone, Copy, Debug)]
pub struct PollEvent {
    /// The token the fd was registered with.
    pub token: u64,
    /// Readable.
    pub readable: bool,
    /// Hung up / error.
    pub hangup: bool,
}

impl AsFd for Poller {
    /// The epoll fd (the federation's runtime watches it, so the hub can park inside it).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0 .0.as_fd()
    }
}

impl Poller {
    /// A new epoll fd (close-on-exec).
    pub fn new() -> io::Result<Poller> {
        nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)
            .map(Poller)
            .map_err(errno)
    }

    /// Watches `fd` for readability (and hang-up, for sockets: `hangup = true` asks for
    /// `EPOLLRDHUP` without `EPOLLIN`, so unread data does not wake us). `edge` = edge
    /// triggered (eventfds that are never read).
    pub fn add(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        hangup_only: bool,
        edge: bool,
    ) -> io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let mut fl = if hangup_only {
            EpollFlags::EPOLLRDHUP
        } else {
            EpollFlags::EPOLLIN
        };
        if edge {
            fl |= EpollFlags::EPOLLET;
        }
        self.0.add(fd, EpollEvent::new(fl, token)).map_err(errno)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.0.delete(fd).map_err(errno)
    }

    /// Waits up to `timeout` (`None` = forever) and appends what is ready to `out`.
    pub fn wait(&self, out: &mut Vec<PollEvent>, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_up_to::<64>(out, timeout)
    }

    /// [`wait`](Poller::wait), reporting at most `N` events per call (the rest stay ready
    /// for the next call). For a poller that watches at most `N` fds, such as a park's two:
    /// the event array is zeroed on every call, and 64 of them cost a `memset` per park.
    pub fn wait_up_to<const N: usize>(
        &self,
        out: &mut Vec<PollEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};
        let mut evs = [EpollEvent::empty(); N];
        let to = match timeout {
            None => EpollTimeout::NONE,
            Some(t) => {
                let ms = t.as_micros().div_ceil(1000).min(i32::MAX as u128 - 1) as i32;
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
            }
        };
        let n = match self.0.wait(&mut evs, to) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(errno(e)),
        };
        for e in &evs[..n] {
            let f = e.events();
            out.push(PollEvent {
                token: e.data(),
                readable: f.contains(EpollFlags::EPOLLIN),
                hangup: f.intersects(
                    EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLERR,
                ),
            });
        }
        Ok(())
    }
}

#[cfg(all(test, not(shmbus_loom), not(miri)))]
mod tests;
