//! Direct links from the async client (feature `tokio`, issue 17 item 2): `.direct()` per
//! call and `ClientOptions::direct(true)`, against a hub in a thread and a synchronous owner.
//! The calls after the introduction do not reach the hub (its count of frames from the
//! requester stays put), and an async emit before a direct call is handled first (fence).
#![cfg(all(feature = "tokio", not(shmbus_loom)))]

mod util;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmbus::client::tokio_client::AsyncClient;
use shmbus::client::{Client, ClientOptions, Ttl};
use shmbus::hub::{Hub, HubConfig};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn msgs_in(dir: &std::path::Path, name: &str) -> u64 {
    let s = shmbus::hub::stat(dir).unwrap();
    s.clients.iter().find(|c| c.name == name).unwrap().msgs_in
}

#[test]
fn async_client_calls_on_direct_links() {
    let _w = util::watchdog("direct_async", 90);
    let dir = util::TestDir::new("direct-async");
    let hub = Hub::bind(HubConfig {
        dir: dir.path().to_path_buf(),
        ..HubConfig::default()
    })
    .unwrap();
    let handle = hub.handle();
    let hub_thread = std::thread::spawn(move || hub.run().unwrap());
    let bot = Client::connect(dir.path(), ClientOptions::new("bot")).unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    bot.on("tick", move |_| {
        std::thread::sleep(Duration::from_millis(2));
        t.fetch_add(1, Ordering::SeqCst);
    });
    let t = ticks.clone();
    bot.on_request("seen", move |_| Ok(t.load(Ordering::SeqCst)));
    bot.on_request("echo", |r| {
        r.payload.decode::<String>().map_err(|e| e.to_string())
    });
    let n = AtomicU64::new(0);
    bot.on_get("val", move |_| {
        Ok((
            format!("v{}", n.fetch_add(1, Ordering::SeqCst)),
            Ttl::Secs(60),
        ))
    });

    rt().block_on(async {
        // Per call: `.direct()` and `request_direct`, with the option off.
        let web = AsyncClient::connect(dir.path(), ClientOptions::new("web"))
            .await
            .unwrap();
        let _ = web.get("bot", "val").fresh(true).direct().await.unwrap();
        for _ in 0..200 {
            if web.client().direct_peers().iter().any(|p| p == "bot") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(web.client().direct_peers(), ["bot"], "no direct link");
        // The first direct call may send a fence (the hub-routed get went after the
        // introduction); after it nothing reaches the hub.
        let _ = web.get("bot", "val").fresh(true).direct().await.unwrap();
        let before = msgs_in(dir.path(), "web");
        for i in 0..50 {
            let v = format!("m{i}");
            let back: String = web
                .request_direct("bot", "echo", &v, None)
                .await
                .unwrap()
                .decode()
                .unwrap();
            assert_eq!(back, v);
            let g: String = web
                .get("bot", "val")
                .fresh(true)
                .direct()
                .await
                .unwrap()
                .decode()
                .unwrap();
            assert!(g.starts_with('v'));
        }
        assert_eq!(
            msgs_in(dir.path(), "web"),
            before,
            "direct calls went through the hub"
        );
        // Ordering: async emits through the hub, then a direct call: handled after them.
        for _ in 0..5 {
            web.emit("bot", "tick", &()).await.unwrap();
        }
        let seen: u64 = web
            .request_direct("bot", "seen", &(), None)
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(seen, 5, "the direct call overtook the async emits");

        // `ClientOptions::direct(true)`: plain `request` and fresh gets use the link.
        let app = AsyncClient::connect(dir.path(), ClientOptions::new("app").direct(true))
            .await
            .unwrap();
        let _ = app
            .request("bot", "echo", &"x".to_string(), None)
            .await
            .unwrap();
        for _ in 0..200 {
            if app.client().direct_peers().iter().any(|p| p == "bot") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = app
            .request("bot", "echo", &"y".to_string(), None)
            .await
            .unwrap();
        let before = msgs_in(dir.path(), "app");
        for i in 0..20 {
            let v = format!("a{i}");
            let back: String = app
                .request("bot", "echo", &v, None)
                .await
                .unwrap()
                .decode()
                .unwrap();
            assert_eq!(back, v);
            let _ = app.get("bot", "val").fresh(true).await.unwrap();
        }
        assert_eq!(msgs_in(dir.path(), "app"), before, "the option was ignored");
    });
    handle.shutdown();
    let _ = hub_thread.join();
}
