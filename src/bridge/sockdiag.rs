//! The owner uid of a local TCP socket by its addresses, from the kernel's `sock_diag` netlink
//! interface (what `ss` uses): one exact lookup (`SOCK_DIAG_BY_FAMILY` without `NLM_F_DUMP`,
//! answered from the kernel's socket hash), where reading `/proc/net/tcp` costs time in
//! proportion to every TCP socket of the network namespace (29 ms a read at 2,800 sockets,
//! measured; paid once per accepted connection, 1,000 Socket.IO connections took minutes).
//!
//! Invariants: the request names the connecting socket exactly (its local address is the
//! peer's, its remote address our accepted socket's local one); an answer counts only if it is
//! for exactly that pair (the kernel falls back to a listening socket on the peer's address,
//! which is not the peer) and has an inode (TIME_WAIT and orphaned sockets have none, so no
//! owner); `ENOENT` is "no such socket" (`Ok(None)`); any other failure is an `Err`, on which
//! the caller may read the /proc tables instead. No unsafe code: nix's safe socket calls.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct nlmsghdr`.
const HDR: usize = 16;
/// `struct inet_diag_sockid`: sport, dport (big-endian), src, dst (4 × be32), if, cookie.
const SOCKID: usize = 48;
/// The part of the sockid an answer must repeat: ports and both addresses.
const SOCKID_MATCH: usize = 36;
/// `struct inet_diag_msg`: family, state, timer, retrans, id, expires, rqueue, wqueue, uid,
/// inode.
const MSG_UID: usize = 4 + SOCKID + 12;
const MSG_INODE: usize = MSG_UID + 4;

/// The sockid of the socket whose local address is `src` and remote address is `dst`.
fn sockid(src: SocketAddr, dst: SocketAddr) -> [u8; SOCKID] {
    let mut b = [0u8; SOCKID];
    b[0..2].copy_from_slice(&src.port().to_be_bytes());
    b[2..4].copy_from_slice(&dst.port().to_be_bytes());
    let put = |b: &mut [u8], ip: IpAddr| match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
    };
    put(&mut b[4..20], src.ip());
    put(&mut b[20..36], dst.ip());
    b[40..48].fill(0xff); // INET_DIAG_NOCOOKIE
    b
}

/// One `SOCK_DIAG_BY_FAMILY` request for a TCP socket in any state.
fn request(family: u8, id: &[u8; SOCKID]) -> Vec<u8> {
    let len = HDR + 8 + SOCKID;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(id);
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the kernel's answer to [`request`]: the owner uid, `None` if there is no such live
/// socket.
fn parse(answer: &[u8], id: &[u8; SOCKID]) -> io::Result<Option<u32>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "sock_diag: malformed answer");
    let mut at = 0;
    while at + HDR <= answer.len() {
        let len = u32_at(answer, at).ok_or_else(bad)? as usize;
        let kind = u16::from_ne_bytes([answer[at + 4], answer[at + 5]]);
        let body = answer.get(at + HDR..at + len).ok_or_else(bad)?;
        match kind {
            NLMSG_ERROR => {
                let errno = -(u32_at(body, 0).ok_or_else(bad)? as i32);
                if errno == nix::errno::Errno::ENOENT as i32 {
                    return Ok(None);
                }
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
            NLMSG_DONE => return Ok(None),
            SOCK_DIAG_BY_FAMILY => {
                if body.get(4..4 + SOCKID_MATCH) != Some(&id[..SOCKID_MATCH]) {
                    return Ok(None); // another socket (a listener on the peer's address)
                }
                let uid = u32_at(body, MSG_UID).ok_or_else(bad)?;
                let inode = u32_at(body, MSG_INODE).ok_or_else(bad)?;
                return Ok((inode != 0).then_some(uid));
            }
            _ => {}
        }
        if len < HDR {
            return Err(bad());
        }
        at += (len + 3) & !3;
    }
    Err(bad())
}

/// One lookup of the socket `src` → `dst` in one address family.
fn lookup(family: u8, src: SocketAddr, dst: SocketAddr) -> io::Result<Option<u32>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    let id = sockid(src, dst);
    sendto(
        fd.as_raw_fd(),
        &request(family, &id),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse(&buf[..n], &id)
}

/// The owner uid of the connecting socket of a TCP connection `peer` → `local` (both as
/// `accept` and `local_addr` give them); `None` if no live socket is connected so.
pub fn peer_uid(peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => Some(a),
    };
    // A v4-mapped pair may be an IPv4 socket (connected to 127.0.0.1) or an IPv6 one
    // (connected to ::ffff:127.0.0.1): ask for both.
    if let (Some(p), Some(l)) = (mapped(peer), mapped(local)) {
        if let Some(uid) = lookup(AF_INET, p, l)? {
            return Ok(Some(uid));
        }
        if peer.is_ipv4() {
            return Ok(None);
        }
    }
    match (peer, local) {
        (SocketAddr::V6(_), SocketAddr::V6(_)) => lookup(AF_INET6, peer, local),
        _ => Ok(None),
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn finds_a_real_socket_and_nothing_else() {
        let euid = nix::unistd::geteuid().as_raw();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        let local = s.local_addr().unwrap();
        assert_eq!(peer_uid(peer, local).unwrap(), Some(euid));
        // Not a socket: an unused port.
        let gone = SocketAddr::new(peer.ip(), 1);
        assert_eq!(peer_uid(gone, local).unwrap(), None);
        // The listener's own address is found as a listening socket by the kernel's lookup;
        // it is not the peer, so it does not count.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(peer_uid(other.local_addr().unwrap(), local).unwrap(), None);
        drop(c);
        // IPv6 loopback, where the host has it.
        if let Ok(l6) = std::net::TcpListener::bind("[::1]:0") {
            let _c6 = std::net::TcpStream::connect(l6.local_addr().unwrap()).unwrap();
            let (s6, peer6) = l6.accept().unwrap();
            assert_eq!(
                peer_uid(peer6, s6.local_addr().unwrap()).unwrap(),
                Some(euid)
            );
        }
    }

    #[test]
    fn parses_errors_and_mismatches() {
        let id = sockid(
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:8000".parse().unwrap(),
        );
        let err = |errno: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&(-errno).to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        assert_eq!(parse(&err(2), &id).unwrap(), None);
        assert!(parse(&err(13), &id).is_err());
        assert!(parse(&[1, 2, 3], &id).is_err());
        let msg = |sid: &[u8; SOCKID], uid: u32, inode: u32| {
            let mut m = Vec::new();
            m.extend_from_slice(&((HDR + MSG_INODE + 4) as u32).to_ne_bytes());
            m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&[AF_INET, 1, 0, 0]);
            m.extend_from_slice(sid);
            m.extend_from_slice(&[0; 12]);
            m.extend_from_slice(&uid.to_ne_bytes());
            m.extend_from_slice(&inode.to_ne_bytes());
            m
        };
        assert_eq!(parse(&msg(&id, 1234, 99), &id).unwrap(), Some(1234));
        assert_eq!(parse(&msg(&id, 0, 0), &id).unwrap(), None, "TIME_WAIT");
        let listener = sockid(
            "127.0.0.1:5000".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
        );
        assert_eq!(parse(&msg(&listener, 1234, 99), &id).unwrap(), None);
    }
}
