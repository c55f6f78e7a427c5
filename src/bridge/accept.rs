//! Accepting legacy connections: the uid check of every node-ipc listener (and of a Socket.IO
//! listener without a token, [`check_loopback`]) before anything the peer sends is read
//! (issue 13, [`super::auth`]), and the refusal of a peer that fails it ([`refuse_with`]).
//!
//! Invariants: a connection reaches `nodeipc::serve` only with its uid allowed (Unix:
//! `SO_PEERCRED`; loopback TCP: the kernel's socket table) or, on a public TCP address, with
//! the hello token still to check (`Origin::NeedsToken`); a refused peer gets an `error` event
//! saying why and its bytes are drained, never interpreted; an accept error never stops a
//! listener. A loopback TCP peer that closed without sending a byte (a port probe) is closed
//! quietly: not found in the table either, but with nothing to refuse.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tracing::{debug, warn};

use super::nodeipc::{self, Origin};
use super::{auth, frame, Shared};

/// Closes a refused connection after writing `answer` (what the listener's protocol says to
/// a refused peer: node-ipc's `error` event, Socket.IO's HTTP 403). What the peer already
/// sent is read and thrown away (at most 64 KiB, for at most 1 s), never interpreted, before
/// the socket closes: closing with unread input would reset the connection, and the peer
/// would lose the answer.
pub(super) async fn refuse_with<S>(
    mut s: S,
    listener: &str,
    peer: &str,
    why: &str,
    answer: &[u8],
    sh: &Shared,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    sh.stats.refused.fetch_add(1, Ordering::Relaxed);
    warn!(%peer, why, "{listener} connection refused");
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = s.write_all(answer).await;
        let _ = s.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Closes a refused node-ipc connection with an `error` event saying why (node-ipc publishes
/// it), as [`refuse_with`] does.
async fn refuse<S>(s: S, peer: &str, why: &str, sh: &Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut b = Vec::new();
    frame::write_error(&mut b, why);
    refuse_with(s, "node-ipc", peer, why, &b, sh).await;
}

/// A node-ipc connection on the Unix socket: its uid (SO_PEERCRED) must be allowed.
pub(super) async fn accept_unix(s: UnixStream, sh: Arc<Shared>) {
    match s.peer_cred() {
        Ok(c) if sh.access.allows(c.uid()) => {
            let peer = format!("unix pid {}", c.pid().unwrap_or(0));
            let (r, w) = s.into_split();
            nodeipc::serve(r, w, peer, Origin::Checked, true, sh).await;
        }
        Ok(c) => {
            let why = format!("uid {} is not allowed on this bridge", c.uid());
            refuse(s, &format!("unix pid {}", c.pid().unwrap_or(0)), &why, &sh).await;
        }
        Err(e) => refuse(s, "unix", &format!("no peer credentials: {e}"), &sh).await,
    }
}

/// What [`check_loopback`] found about a loopback TCP peer.
pub(super) enum LoopbackPeer {
    /// The owner of the connecting socket is on the allow-list.
    Allowed,
    /// The peer closed without sending a byte (a port probe): close quietly.
    Probe,
    /// Refused, and why (for the peer and the log).
    Refused(String),
}

/// The uid check of a loopback TCP peer (node-ipc, and Socket.IO without a token): the owner
/// of the connecting socket, from the kernel's socket table, must be on the allow-list.
/// Reads nothing the peer sent (a probe is told apart with a peek).
pub(super) async fn check_loopback(
    s: &TcpStream,
    peer: std::net::SocketAddr,
    sh: &Shared,
) -> LoopbackPeer {
    let Ok(local) = s.local_addr() else {
        return LoopbackPeer::Refused("no local address".into());
    };
    // Reading the socket table is a few file reads; off the runtime's thread all the same.
    let owner = tokio::task::spawn_blocking(move || auth::tcp_peer_uid(peer, local)).await;
    match owner {
        Ok(Ok(Some(uid))) if sh.access.allows(uid) => LoopbackPeer::Allowed,
        Ok(Ok(Some(uid))) => {
            LoopbackPeer::Refused(format!("uid {uid} is not allowed on this bridge"))
        }
        Ok(Ok(None)) if closed_unused(s).await => LoopbackPeer::Probe,
        Ok(Ok(None)) => LoopbackPeer::Refused(
            "the connecting socket's owner is not in the kernel's socket table \
             (not allowed: only local processes of allowed uids may connect)"
                .into(),
        ),
        Ok(Err(e)) => LoopbackPeer::Refused(format!("socket table: {e}")),
        Err(e) => LoopbackPeer::Refused(format!("socket table: {e}")),
    }
}

/// A node-ipc connection over TCP: on loopback, the owner of the connecting socket (the
/// kernel's socket table) must be allowed; on a public address the hello carries the token.
pub(super) async fn accept_tcp(
    s: TcpStream,
    peer: std::net::SocketAddr,
    public: bool,
    sh: Arc<Shared>,
) {
    let _ = s.set_nodelay(true);
    let name = peer.to_string();
    if public {
        let (r, w) = s.into_split();
        return nodeipc::serve(r, w, name, Origin::NeedsToken, false, sh).await;
    }
    match check_loopback(&s, peer, &sh).await {
        LoopbackPeer::Allowed => {
            let (r, w) = s.into_split();
            nodeipc::serve(r, w, name, Origin::Checked, false, sh).await;
        }
        LoopbackPeer::Probe => {
            debug!(peer = %name, "loopback TCP connection closed before it sent a byte (a probe)");
        }
        LoopbackPeer::Refused(why) => refuse(s, &name, &why, &sh).await,
    }
}

/// How long a peer whose socket is not in the table gets for its FIN to arrive, in
/// [`closed_unused`].
const PROBE_FIN_WAIT: Duration = Duration::from_millis(100);

/// Whether a loopback peer closed its connection without sending a byte: a port probe (bash's
/// `/dev/tcp`, a health check). By the time its owner is looked up its socket is an orphan
/// with no owner in the table, so the lookup finds nothing; but there is nothing to refuse
/// (nothing was sent, nobody reads the answer), so this is not logged as a refusal. A peer
/// that sent anything, or whose connection is still open after [`PROBE_FIN_WAIT`], is
/// refused as before.
async fn closed_unused(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(PROBE_FIN_WAIT, s.peek(&mut b)).await,
        Ok(Ok(0))
    )
}

/// Accept failed (out of fds, …): log, back off a little, keep serving.
pub(super) async fn accept_error(e: &std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
