//! Accepting legacy connections: the uid check of every node-ipc listener before anything the
//! peer sends is read (issue 13, [`super::auth`]), and the refusal of a peer that fails it.
//!
//! Invariants: a connection reaches `nodeipc::serve` only with its uid allowed (Unix:
//! `SO_PEERCRED`; loopback TCP: the kernel's socket table) or, on a public TCP address, with
//! the hello token still to check (`Origin::NeedsToken`); a refused peer gets an `error` event
//! saying why and its bytes are drained, never interpreted; an accept error never stops a
//! listener.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tracing::warn;

use super::nodeipc::{self, Origin};
use super::{auth, frame, Shared};

/// Closes a refused connection with an `error` event saying why (node-ipc publishes it).
/// What the peer already sent is read and thrown away (at most 64 KiB, for at most 1 s) before
/// the socket closes: closing with unread input would reset the connection, and the peer would
/// lose the error event.
async fn refuse<S>(mut s: S, peer: &str, why: &str, sh: &Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    sh.stats.refused.fetch_add(1, Ordering::Relaxed);
    warn!(%peer, why, "node-ipc connection refused");
    let mut b = Vec::new();
    frame::write_error(&mut b, why);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = s.write_all(&b).await;
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
    let Ok(local) = s.local_addr() else {
        return refuse(s, &name, "no local address", &sh).await;
    };
    // Reading the socket table is a few file reads; off the runtime's thread all the same.
    let owner = tokio::task::spawn_blocking(move || auth::tcp_peer_uid(peer, local)).await;
    match owner {
        Ok(Ok(Some(uid))) if sh.access.allows(uid) => {
            let (r, w) = s.into_split();
            nodeipc::serve(r, w, name, Origin::Checked, false, sh).await;
        }
        Ok(Ok(Some(uid))) => {
            let why = format!("uid {uid} is not allowed on this bridge");
            refuse(s, &name, &why, &sh).await;
        }
        Ok(Ok(None)) => {
            let why = "the connecting socket's owner is not in the kernel's socket table \
                       (not allowed: only local processes of allowed uids may connect)";
            refuse(s, &name, why, &sh).await;
        }
        Ok(Err(e)) => refuse(s, &name, &format!("socket table: {e}"), &sh).await,
        Err(e) => refuse(s, &name, &format!("socket table: {e}"), &sh).await,
    }
}

/// Accept failed (out of fds, …): log, back off a little, keep serving.
pub(super) async fn accept_error(e: &std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
