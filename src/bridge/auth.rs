//! Who may use the bridge's listeners (issue 13): the hub's uid rules applied to every peer.
//!
//! * **Unix socket** (node-ipc): the peer's uid from `SO_PEERCRED`, checked against the
//!   [`AccessList`] (the hub's uid, the bridge's own uid, and `--allow-uid`).
//! * **Loopback TCP** (node-ipc, and Socket.IO without `--socketio-token`): unchanged clients
//!   send nothing we could check, so the owner of the *connecting* socket is looked up in the
//!   kernel, as identd does: by one exact `sock_diag` netlink query ([`super::sockdiag`]), or
//!   where that fails, in `/proc/net/tcp` and `/proc/net/tcp6`, which list every socket of
//!   this network namespace with its owner uid; the peer's socket is the one whose local
//!   address is the peer's address and whose remote address is our accepted socket's local
//!   address. Sockets without an inode (TIME_WAIT: no owner any more) never match. The same
//!   [`AccessList`] applies.
//! * **Public TCP** (node-ipc on a non-loopback address, only with `--node-ipc-tcp-public`):
//!   the `hello` must carry the token; WebSocket: the single `Authorization` header must be the
//!   token; Socket.IO with `--socketio-token` (required on a non-loopback address): the
//!   handshake's `auth.token`. Tokens are compared with [`ct_eq`], whose time depends only on
//!   the expected token.
//!
//! Invariant: nothing a peer sends is interpreted before its uid (or, for token listeners, its
//! hello or upgrade request, within the pre-hello limits) has been checked; a refused peer's
//! bytes are only drained and dropped, so that closing does not reset its connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uids allowed on the bridge's uid-checked listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessList {
    uids: Vec<u32>,
}

impl AccessList {
    /// The hub's uid, the bridge's own uid and the extra uids (`--allow-uid`).
    pub fn new(hub_uid: u32, own_uid: u32, extra: &[u32]) -> AccessList {
        let mut uids = vec![hub_uid, own_uid];
        uids.extend_from_slice(extra);
        uids.sort_unstable();
        uids.dedup();
        AccessList { uids }
    }

    /// Whether `uid` may connect.
    pub fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    /// Whether only `uid` itself is allowed (then the Unix socket can be mode 0600).
    pub fn only(&self, uid: u32) -> bool {
        self.uids == [uid]
    }

    /// The allowed uids, sorted.
    pub fn uids(&self) -> &[u32] {
        &self.uids
    }
}

// Shared with the hub's token check.
pub use crate::ct::ct_eq;

/// IPv4-mapped IPv6 addresses as IPv4 (a v6 socket connected to 127.0.0.1 is listed so).
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Whether an address is loopback (also as an IPv4-mapped IPv6 address).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// One `ADDR:PORT` field of /proc/net/tcp{,6}: the address as the kernel prints it (each
/// 32-bit word in host byte order, `%08X`), the port big-endian (`%04X`).
fn parse_endpoint(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// The owner uid of the socket whose local address is `peer` and remote address is `local`,
/// in one /proc/net/tcp{,6} table. Lines that do not parse are skipped.
pub fn find_owner(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (peer, local) = (canonical(peer), canonical(local));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
        if f.len() < 10 {
            return None;
        }
        if parse_endpoint(f[1])? != peer || parse_endpoint(f[2])? != local {
            return None;
        }
        if f[9] == "0" {
            return None; // no inode: a TIME_WAIT entry, owned by nobody
        }
        f[7].parse().ok()
    })
}

/// The owner uid of the connecting socket of a loopback TCP connection (`peer` → `local`):
/// one exact `sock_diag` netlink lookup ([`super::sockdiag`]), or where that is not available,
/// the kernel's socket tables ([`proc_peer_uid`]); `None` if no live socket matches.
pub fn tcp_peer_uid(peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
    match super::sockdiag::peer_uid(peer, local) {
        Ok(r) => Ok(r),
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag lookup failed; reading /proc/net/tcp");
            proc_peer_uid(peer, local)
        }
    }
}

/// [`tcp_peer_uid`] from `/proc/net/tcp{,6}` (the whole table is read: its cost grows with
/// the number of TCP sockets of the network namespace).
pub fn proc_peer_uid(peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{table}: {e}"))),
        };
        if let Some(uid) = find_owner(&text, peer, local) {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1234        0 2002 1 0 20 4 30 10 -1
   2: 0100007F:1F40 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0 20 4 30 10 -1
   3: 0100007F:D432 0100007F:1F40 06 00000000:00000000 03:00000fa0 00000000     0        0 0 3
";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn finds_the_connecting_socket() {
        // 0xD431 = 54321.
        assert_eq!(
            find_owner(TABLE, a("127.0.0.1:54321"), a("127.0.0.1:8000")),
            Some(1234)
        );
        // Our own accepted socket is the reverse entry: never taken for the peer's.
        assert_eq!(
            find_owner(TABLE, a("127.0.0.1:8000"), a("127.0.0.1:54321")),
            Some(0)
        );
        // TIME_WAIT (no inode) never matches; unknown peers do not either.
        assert_eq!(
            find_owner(TABLE, a("127.0.0.1:54322"), a("127.0.0.1:8000")),
            None
        );
        assert_eq!(
            find_owner(TABLE, a("127.0.0.1:1"), a("127.0.0.1:8000")),
            None
        );
        // Garbage lines are skipped.
        assert_eq!(
            find_owner(
                "x\nnot a table\n   0: zz",
                a("127.0.0.1:1"),
                a("127.0.0.1:2")
            ),
            None
        );
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let t = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:1F40 01 00000000:00000000 00:00000000 00000000  4321        0 77 1
   1: 0000000000000000FFFF00000100007F:D433 0000000000000000FFFF00000100007F:1F40 01 00000000:00000000 00:00000000 00000000  999        0 78 1
";
        assert_eq!(find_owner(t, a("[::1]:54321"), a("[::1]:8000")), Some(4321));
        assert_eq!(
            find_owner(t, a("127.0.0.1:54323"), a("127.0.0.1:8000")),
            Some(999)
        );
    }

    #[test]
    fn looks_up_a_real_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let euid = Some(nix::unistd::geteuid().as_raw());
        assert_eq!(tcp_peer_uid(peer, s.local_addr().unwrap()).unwrap(), euid);
        assert_eq!(proc_peer_uid(peer, s.local_addr().unwrap()).unwrap(), euid);
    }

    #[test]
    fn access_list_and_tokens() {
        let l = AccessList::new(1000, 1000, &[]);
        assert!(l.only(1000) && l.allows(1000) && !l.allows(0));
        let l = AccessList::new(1000, 0, &[2000]);
        assert!(l.allows(0) && l.allows(1000) && l.allows(2000) && !l.allows(3000));
        assert!(!l.only(0));
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secreT", b"secret"));
        assert!(!ct_eq(b"secret-and-more", b"secret"));
        assert!(!ct_eq(b"", b"secret"));
        assert!(!ct_eq(b"s", b""));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("127.0.0.2".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
        assert!(!is_loopback("192.0.2.2".parse().unwrap()));
    }
}
