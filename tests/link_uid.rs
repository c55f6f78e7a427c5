//! The uid access policy of `LinkListener`, with a real foreign-uid connection when the
//! tests run as root.
//!
//! Each test function first checks `util::role()`: in a child process (re-executed test
//! binary) it plays the child part.
#![cfg(not(shmbus_loom))]

mod util;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use shmbus::sys::PeerCred;
use shmbus::{AccessPolicy, Error, Link, LinkConfig, LinkListener};

use util::link::*;

// ---------------------------------------------------------------------------------------------
// 6. Access policy
// ---------------------------------------------------------------------------------------------

const FOREIGN_UID: u32 = 4242;

fn uid_child() {
    let _w = util::watchdog("uid child", 30);
    let sock = util::arg("SOCK");
    let parent: i32 = util::arg("PARENT").parse().unwrap();
    let uid: u32 = util::arg("UID").parse().unwrap();
    if uid != shmbus::sys::euid() {
        nix::unistd::setgid(nix::unistd::Gid::from_raw(uid)).expect("setgid");
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).expect("setuid");
        assert_eq!(shmbus::sys::euid(), uid);
    }
    let r = Link::connect(&sock, &LinkConfig::default());
    match util::arg("EXPECT").as_str() {
        "ok" => {
            let link = r.expect("connect should be accepted");
            assert_eq!(
                link.peer_cred().pid,
                parent,
                "SO_PEERCRED names the listener"
            );
            let (mut tx, mut rx) = link.into_channel::<u32, u32>();
            tx.send(uid).unwrap();
            assert_eq!(rx.recv().unwrap(), uid + 1);
        }
        "refused" => match r {
            Err(Error::Handshake(m)) => {
                assert!(m.contains("refused") && m.contains(&uid.to_string()), "{m}")
            }
            Err(e) => panic!("expected a refusal, got {e:?}"),
            Ok(_) => panic!("uid {uid} was accepted"),
        },
        e => panic!("bad EXPECT {e}"),
    }
}

#[test]
fn wrong_uid_is_refused_by_policy() {
    const TEST: &str = "wrong_uid_is_refused_by_policy";
    if util::role().is_some() {
        return uid_child();
    }
    let _s = serial();
    let _w = util::watchdog(TEST, 60);

    // The policy function.
    let own = shmbus::sys::euid();
    let foreign = if own == FOREIGN_UID {
        FOREIGN_UID + 1
    } else {
        FOREIGN_UID
    };
    let cred = |uid| PeerCred {
        pid: 1,
        uid,
        gid: uid,
    };
    let default = AccessPolicy::own_uid();
    assert!(default.extra_uids.is_empty());
    assert!(default.allows(own, &cred(own)));
    assert!(!default.allows(own, &cred(foreign)));
    assert!(!default.allows(own, &cred(0)) || own == 0);
    let extra = AccessPolicy {
        extra_uids: vec![foreign],
    };
    assert!(extra.allows(own, &cred(own)));
    assert!(extra.allows(own, &cred(foreign)));
    assert!(!extra.allows(own, &cred(foreign + 1)));
    assert!(!extra.allows(own, &cred(u32::MAX)));

    // Real connections: (uid of the child, policy of the listener, expected outcome).
    let mut runs: Vec<(u32, Option<AccessPolicy>, &str)> =
        vec![(own, None, "ok"), (own, Some(extra.clone()), "ok")];
    if own == 0 {
        // As root the child can become a foreign uid before it connects.
        runs.push((foreign, None, "refused"));
        runs.push((
            foreign,
            Some(AccessPolicy {
                extra_uids: vec![foreign + 1],
            }),
            "refused",
        ));
        runs.push((foreign, Some(extra.clone()), "ok"));
    } else {
        eprintln!("{TEST}: not root, so no real connection from a foreign uid");
    }
    for (uid, policy, expect) in runs {
        let what = format!("uid {uid}, policy {policy:?}");
        let dir = util::TestDir::new("uid");
        let sock = dir.join("link.sock");
        let mut listener = LinkListener::bind(&sock, &LinkConfig::default()).unwrap();
        if let Some(p) = policy {
            listener = listener.policy(p);
        }
        if uid != own {
            // Let the foreign uid reach the socket (the test dir is private otherwise).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let mut kid = Kid::spawn(
            TEST,
            "connector",
            &[
                ("SOCK", sock.display().to_string()),
                ("PARENT", std::process::id().to_string()),
                ("UID", uid.to_string()),
                ("EXPECT", expect.into()),
            ],
        );
        if expect == "ok" {
            let link = accept_from(&listener, &mut kid, 20);
            let cred = link.peer_cred();
            assert_eq!(
                (cred.pid, cred.uid),
                (kid.pid(), uid),
                "{what}: SO_PEERCRED"
            );
            let (mut tx, mut rx) = link.into_channel::<u32, u32>();
            let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, uid);
            tx.send(got + 1).unwrap();
            kid.wait_success(20);
        } else {
            let r = std::thread::scope(|s| {
                let h = s.spawn(|| listener.accept());
                let st = kid.wait(20);
                if !h.is_finished() {
                    drop(UnixStream::connect(listener.path()));
                }
                (h.join().unwrap(), st)
            });
            match r {
                (Err(Error::Handshake(m)), st) => {
                    assert!(m.contains("not allowed"), "{what}: {m}");
                    assert!(st.success(), "{what}: child failed: {st}");
                }
                (Err(e), _) => panic!("{what}: accept failed with {e:?}, expected a refusal"),
                (Ok(_), _) => panic!("{what}: accept let uid {uid} in"),
            }
        }
        eprintln!("{TEST}: {what}: {expect}");
    }
}
