//! The JSON-carrying calls of the client (`src/client/json_calls.rs`), the same on the sync
//! and the async client: `*_payload` sends, `request_json`, handlers answering with a payload,
//! deferred requests and their tickets, `set_version`.
#![cfg(all(feature = "tokio", not(shmbus_loom)))]

mod util;

use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use shmbus::client::tokio_client::AsyncClient;
use shmbus::client::{CallError, Client, ClientOptions, Ttl};
use shmbus::hub::HubConfig;
use shmbus::proto::{Encoding, PayloadBuf};

fn hub(name: &str) -> (util::TestDir, util::ThreadHub) {
    let dir = util::TestDir::new(name);
    let h = util::ThreadHub::start(HubConfig {
        dir: dir.path().to_path_buf(),
        ..HubConfig::default()
    });
    (dir, h)
}

#[test]
fn payload_sends_and_payload_answers() {
    let _w = util::watchdog("json calls", 60);
    let (dir, _h) = hub("json-calls");
    let owner = Client::connect(dir.path(), ClientOptions::new("owner")).unwrap();
    let json_client =
        Client::connect(dir.path(), ClientOptions::new("js").accept(Encoding::Json)).unwrap();
    owner.on_request_payload("raw", |r| {
        let v: Value = r.payload.decode().map_err(|e| e.to_string())?;
        PayloadBuf::json(&json!({"got": v, "accept": format!("{:?}", r.accept)}))
            .map_err(|e| e.to_string())
    });
    owner.on_get_payload("cfg", |_g| {
        Ok((PayloadBuf::raw_json(br#"{"x":1}"#.to_vec()), Ttl::Secs(5)))
    });
    // request_json: the responder sees a JSON payload and answers one.
    let r = json_client
        .request_json("owner", "raw", &json!([1, "a"]), None)
        .unwrap();
    assert_eq!(r.payload.enc, Encoding::Json);
    assert_eq!(
        r.decode::<Value>().unwrap(),
        json!({"got": [1, "a"], "accept": "Json"})
    );
    // request_payload sends the payload as tagged: a bincode u32 is no JSON value, so this
    // handler's decode into a JSON `Value` fails, and says so.
    let r = json_client
        .request_payload("owner", "raw", &PayloadBuf::bincode(&7u32).unwrap(), None)
        .unwrap_err();
    assert!(matches!(r, CallError::Remote(_)), "{r:?}");
    let g = json_client.get("owner", "cfg").fresh(true).send().unwrap();
    assert_eq!(g.decode::<Value>().unwrap(), json!({"x": 1}));

    // Broadcast / publish / routed emit with JSON payloads reach their receivers as JSON.
    let (tx, rx) = mpsc::channel();
    json_client.on_any(move |ev| {
        let _ = tx.send((
            ev.event.clone(),
            ev.payload.enc,
            ev.payload.decode::<Value>().unwrap(),
        ));
    });
    json_client.subscribe(["news"]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let p = PayloadBuf::json(&json!({"k": "v"})).unwrap();
    owner.broadcast_payload("b", &p).unwrap();
    owner.publish_payload("news", &p).unwrap();
    owner.emit_routed_payload("js:r", &p).unwrap();
    for want in ["b", "news", "js:r"] {
        let (e, enc, v) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (e.as_str(), enc, v),
            (want, Encoding::Json, json!({"k": "v"}))
        );
    }
}

#[test]
fn deferred_requests_and_versions() {
    let _w = util::watchdog("deferred requests", 60);
    let (dir, _h) = hub("json-deferred");
    let owner = Client::connect(dir.path(), ClientOptions::new("owner").version("0.1")).unwrap();
    let caller = Client::connect(dir.path(), ClientOptions::new("caller")).unwrap();
    let (tx, rx) = mpsc::channel();
    owner.on_request_deferred(move |r, t| {
        let _ = tx.send((r.method.clone(), t));
    });
    // An explicit on_request handler still wins for its method.
    owner.on_request("direct", |_r| Ok(5u32));
    assert_eq!(
        caller
            .request("owner", "direct", &(), None)
            .unwrap()
            .decode::<u32>()
            .unwrap(),
        5
    );
    let c = caller.clone();
    let answered = std::thread::spawn(move || c.request_json("owner", "later", &1, None));
    let (m, t) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(m, "later");
    t.answer(&PayloadBuf::json(&"done").unwrap()).unwrap();
    assert_eq!(
        answered
            .join()
            .unwrap()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "done"
    );
    // fail, and a ticket dropped unanswered: both are errors for the requester, at once.
    let c = caller.clone();
    let failed = std::thread::spawn(move || c.request_json("owner", "f", &1, None));
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap()
        .1
        .fail("nope")
        .unwrap();
    assert!(matches!(failed.join().unwrap(), Err(CallError::Remote(m)) if m == "nope"));
    let c = caller.clone();
    let dropped = std::thread::spawn(move || c.request_json("owner", "d", &1, None));
    drop(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    assert!(
        matches!(dropped.join().unwrap(), Err(CallError::Remote(m)) if m.contains("without answering"))
    );
    // set_version replaces the announced version in the hub's stat.
    let ver = || {
        shmbus::hub::stat(dir.path())
            .unwrap()
            .clients
            .into_iter()
            .find(|c| c.name == "owner")
            .and_then(|c| c.version)
    };
    assert_eq!(ver().as_deref(), Some("0.1"));
    owner.set_version("2.0").unwrap();
    assert!(util::eventually(5, || ver().as_deref() == Some("2.0")));
}

#[test]
fn async_request_json() {
    let _w = util::watchdog("async request_json", 60);
    let (dir, _h) = hub("json-async");
    let owner = Client::connect(dir.path(), ClientOptions::new("owner")).unwrap();
    owner.on_request("echo", |r| {
        r.payload.decode::<Value>().map_err(|e| e.to_string())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = AsyncClient::connect(
            dir.path(),
            ClientOptions::new("async").accept(Encoding::Json),
        )
        .await
        .unwrap();
        let r = a
            .request_json("owner", "echo", &json!({"z": [true]}), None)
            .await
            .unwrap();
        assert_eq!(r.decode::<Value>().unwrap(), json!({"z": [true]}));
        let p = PayloadBuf::json(&json!(3)).unwrap();
        let r = a.request_payload("owner", "echo", &p, None).await.unwrap();
        assert_eq!(r.decode::<Value>().unwrap(), json!(3));
        let e = a
            .request_json("nobody", "echo", &1, Some(Duration::from_millis(500)))
            .await;
        assert!(matches!(e, Err(CallError::NotConnected(_))), "{e:?}");
    });
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The async client's deferred requests (answer, fail, fail without waiting, drop), its
/// `set_version`, and its routed / broadcast / publish payload sends.
#[test]
fn async_deferred_requests_versions_and_payload_sends() {
    let _w = util::watchdog("async deferred requests", 60);
    let (dir, _h) = hub("json-async-deferred");
    let caller = Client::connect(dir.path(), ClientOptions::new("caller")).unwrap();
    let (etx, erx) = mpsc::channel();
    for ev in ["caller:x", "all", "news"] {
        let etx = etx.clone();
        caller.on(ev, move |e| {
            let v: Value = e.payload.decode().unwrap();
            let _ = etx.send((e.event.clone(), e.payload.enc, v));
        });
    }
    caller.subscribe(["news"]).unwrap();
    current_thread().block_on(async {
        let owner = AsyncClient::connect(dir.path(), ClientOptions::new("owner").version("0.1"))
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        owner.on_request_deferred(move |r, t| {
            let _ = tx.send((r.method.clone(), r.payload.decode::<Value>().unwrap(), t));
        });
        let call = |m: &'static str| {
            let c = caller.clone();
            std::thread::spawn(move || c.request_json("owner", m, &json!({"m": m}), None))
        };
        let answered = call("later");
        let (m, arg, t) = rx.recv().await.unwrap();
        assert_eq!((m.as_str(), arg), ("later", json!({"m": "later"})));
        assert_eq!(t.accept(), Encoding::Bincode);
        t.answer(&PayloadBuf::json(&"done").unwrap()).await.unwrap();
        let r = answered.join().unwrap().unwrap();
        assert_eq!(r.decode::<String>().unwrap(), "done");

        let failed = call("f");
        rx.recv().await.unwrap().2.fail("nope").await.unwrap();
        assert!(matches!(failed.join().unwrap(), Err(CallError::Remote(m)) if m == "nope"));
        let gone = call("g");
        rx.recv().await.unwrap().2.fail_without_waiting("gone");
        assert!(matches!(gone.join().unwrap(), Err(CallError::Remote(m)) if m == "gone"));
        let dropped = call("d");
        drop(rx.recv().await.unwrap());
        assert!(
            matches!(dropped.join().unwrap(), Err(CallError::Remote(m)) if m.contains("without answering"))
        );

        let ver = || {
            shmbus::hub::stat(dir.path())
                .unwrap()
                .clients
                .into_iter()
                .find(|c| c.name == "owner")
                .and_then(|c| c.version)
        };
        assert_eq!(ver().as_deref(), Some("0.1"));
        owner.set_version("2.0").await.unwrap();
        assert!(util::eventually(5, || ver().as_deref() == Some("2.0")));

        let p = PayloadBuf::json(&json!({"k": 1})).unwrap();
        owner.emit_routed_payload("caller:x", &p).await.unwrap();
        owner.broadcast_payload("all", &p).await.unwrap();
        owner.publish_payload("news", &p).await.unwrap();
    });
    let mut got: Vec<String> = (0..3)
        .map(|_| erx.recv_timeout(Duration::from_secs(5)).unwrap())
        .map(|(e, enc, v)| {
            assert_eq!((enc, v), (Encoding::Json, json!({"k": 1})));
            e
        })
        .collect();
    got.sort();
    assert_eq!(got, ["all", "caller:x", "news"]);
}

/// `AsyncClient::request_payload` into a full ring waits on the ring's doorbell: the runtime
/// keeps running other tasks while 300 JSON requests of 64 KiB wait for a client that does not
/// read, and every one is answered once it reads.
#[test]
fn async_request_payload_into_a_full_ring_does_not_block_the_runtime() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let _w = util::watchdog("async request_payload full ring", 180);
    let dir = util::TestDir::new("json-async-full");
    let _hub = util::ThreadHub::start(HubConfig {
        dir: dir.path().to_path_buf(),
        get_timeout: Duration::from_secs(60),
        ..HubConfig::default()
    });
    let stuck = Client::connect(
        dir.path(),
        ClientOptions::new("B")
            .accept(Encoding::Json)
            .dispatcher(false),
    )
    .unwrap();
    stuck.on_request_payload("m", |r| {
        PayloadBuf::json(&r.payload.bytes.len()).map_err(|e| e.to_string())
    });
    let ticks = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rt_thread = {
        let (ticks, answered, stop) = (ticks.clone(), answered.clone(), stop.clone());
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            current_thread().block_on(async move {
                let opts = ClientOptions::new("A").accept(Encoding::Json);
                let a = Arc::new(AsyncClient::connect(path, opts).await.unwrap());
                let s = stop.clone();
                let ticker = tokio::spawn(async move {
                    while !s.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let big = PayloadBuf::json(&"j".repeat(65536)).unwrap();
                let mut calls = Vec::new();
                for _ in 0..300 {
                    let (a, answered, big) = (a.clone(), answered.clone(), big.clone());
                    calls.push(tokio::spawn(async move {
                        let r = a
                            .request_payload("B", "m", &big, Some(Duration::from_secs(60)))
                            .await;
                        if r.is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                for h in calls {
                    let _ = h.await;
                }
                let _ = ticker.await;
            })
        })
    };
    let stat_of = |name: &str| {
        shmbus::hub::stat(dir.path())
            .ok()
            .and_then(|s| s.clients.into_iter().find(|c| c.name == name))
    };
    assert!(
        util::eventually(60, || {
            let (Some(sa), Some(sb)) = (stat_of("A"), stat_of("B")) else {
                return false;
            };
            sb.outbox_bytes > 4 << 20 && sa.ring_in_fill * 2 > sa.ring_in_capacity
        }),
        "the requests did not stall A"
    );
    let t0 = ticks.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    let t1 = ticks.load(Ordering::Relaxed);
    assert!(
        t1 >= t0 + 10,
        "the runtime stalled with A's ring full: {} ticks in 2 s",
        t1 - t0
    );
    let end = std::time::Instant::now() + Duration::from_secs(90);
    while answered.load(Ordering::Relaxed) < 300 && std::time::Instant::now() < end {
        stuck.poll(Duration::from_millis(50)).unwrap();
    }
    assert_eq!(answered.load(Ordering::Relaxed), 300);
    stop.store(true, Ordering::Relaxed);
    rt_thread.join().unwrap();
}

/// Kills (SIGKILL) and reaps a hub process on drop, so a failing test leaves none behind.
struct HubProc(std::process::Child);

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A version given to `set_version` outlives the link: after the hub is SIGKILLed and
/// restarted, the client (reconnecting by its retry policy) still shows it in `shmbus stat`.
/// Before the fix, the reconnect announced the connect-time version (here none).
#[test]
fn set_version_survives_a_hub_restart() {
    let _w = util::watchdog("set_version after a hub restart", 90);
    let dir = util::TestDir::new("json-version-restart");
    let mut hub = HubProc(util::hub_process(dir.path(), &[]));
    let retry = shmbus::client::Retry {
        interval: Duration::from_millis(50),
        max_retries: None,
    };
    let shard = Client::connect(dir.path(), ClientOptions::new("shard").reconnect(retry)).unwrap();
    shard.set_state("ready").unwrap();
    shard.set_version("3.1.4").unwrap();
    let stat = |name: &str| {
        shmbus::hub::stat(dir.path())
            .ok()?
            .clients
            .into_iter()
            .find(|c| c.name == name)
    };
    let ver = |name: &str| stat(name).and_then(|c| c.version);
    assert!(util::eventually(10, || ver("shard").as_deref() == Some("3.1.4")));
    hub.0.kill().unwrap();
    hub.0.wait().unwrap();
    hub = HubProc(util::hub_process(dir.path(), &[]));
    // Reconnected (its state is restored) and announcing its version again.
    assert!(
        util::eventually(20, || stat("shard").is_some_and(|c| c.state == "ready")),
        "the client did not come back: {:?}",
        stat("shard")
    );
    assert_eq!(ver("shard").as_deref(), Some("3.1.4"), "after the restart");
    drop(shard);
    drop(hub);
}
