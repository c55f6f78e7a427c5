//! Direct links and federation (issue 17 item 2): an owner on another node cannot get a
//! direct link (its hub is not the requester's), so the requester's hub refuses the
//! introduction; the direct call still works, through the hubs, and the requester does not
//! ask again for a while. Real nats-server, hubs as `shmbus hub --nats` processes (see
//! `fed_util`).
#![cfg(not(shmbus_loom))]

mod fed_util;

use std::time::Duration;

use fed_util::{eventually, watchdog, Cluster};
use shmbus::client::{ClientOptions, Ttl};

fn msgs_in(h: &fed_util::Hub, name: &str) -> u64 {
    let s = h.stat();
    s.clients.iter().find(|c| c.name == name).unwrap().msgs_in
}

#[test]
fn a_remote_owner_is_refused_a_direct_link_and_calls_go_through_the_hubs() {
    let _w = watchdog("federation_direct", 120);
    let cl = Cluster::start("fed-direct", &["alpha", "beta"], &[]);
    let (a, b) = (&cl.hubs[0], &cl.hubs[1]);
    let bot = b.client("bot");
    bot.on_request("echo", |r| {
        r.payload.decode::<String>().map_err(|e| e.to_string())
    });
    bot.on_get("val", |g| {
        Ok((format!("val for {}", g.requester), Ttl::NoCache))
    });
    let web = a
        .client_with(
            ClientOptions::new("web")
                .direct(true)
                .timeout(Duration::from_secs(10)),
        )
        .expect("web connects");
    assert!(eventually(10.0, || a.sees("bot")), "alpha never saw bot");

    // The first call asks for an introduction (refused: bot is not alpha's client) and
    // goes through the hubs itself.
    let r = web.request_direct("bot", "echo", &"one".to_string(), None);
    assert_eq!(
        r.expect("a request to a remote owner")
            .decode::<String>()
            .unwrap(),
        "one"
    );
    let g = web.get("bot", "val").fresh(true).direct().send();
    assert_eq!(
        g.expect("a fresh get").decode::<String>().unwrap(),
        "val for web"
    );

    // The refusal comes back on the hub ring; give it a moment to be filed, then each call
    // is exactly one hub frame (no second introduction) and still answered.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let before = msgs_in(a, "web");
        let v = format!("again {i}");
        let r = web
            .request_direct("bot", "echo", &v, None)
            .expect("through the hubs");
        assert_eq!(r.decode::<String>().unwrap(), v);
        assert_eq!(
            msgs_in(a, "web"),
            before + 1,
            "one hub frame per call, no new introduction"
        );
    }
    assert!(
        web.direct_peers().is_empty(),
        "a direct link to a remote owner"
    );
    assert!(bot.direct_peers().is_empty(), "bot has a direct link");
    assert!(a.stat().direct.is_empty(), "alpha lists a direct link");
    assert!(b.stat().direct.is_empty(), "beta lists a direct link");
    assert!(web.is_connected() && bot.is_connected());
}
