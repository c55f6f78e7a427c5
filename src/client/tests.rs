//! Unit tests of the client's logic that needs no hub: TTL conversions, the options, reply
//! and error mapping, reply slots, the handler registry and tickets of a gone client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Wake, Waker};
use std::time::Duration;

use super::call::{timeout_ms, Slot};
use super::deferred::GetTicket;
use super::handlers::Handlers;
use super::messages::reply_of;
use super::{CallError, ClientOptions, Ctx, Event, GetRequest, Reply, Request, Retry, Ttl};
use crate::proto::{Answer, Encoding, ErrorCode, Payload, PayloadBuf};
use crate::wait::WaitStrategy;
use crate::Error;

#[test]
fn ttl_to_wire_milliseconds() {
    assert_eq!(Ttl::NoCache.as_ms(), -1);
    assert_eq!(Ttl::Forever.as_ms(), 0);
    assert_eq!(Ttl::Secs(30).as_ms(), 30_000);
    assert_eq!(Ttl::Millis(1500).as_ms(), 1500);
    // Zero milliseconds must not turn into "forever".
    assert_eq!(Ttl::Millis(0).as_ms(), 1);
    assert_eq!(Ttl::Secs(0).as_ms(), 0);
    // Huge values saturate instead of wrapping negative ("do not cache").
    assert_eq!(Ttl::Secs(u64::MAX).as_ms(), i64::MAX);
    assert_eq!(Ttl::Millis(u64::MAX).as_ms(), i64::MAX);
}

#[test]
fn ttl_from_wire_milliseconds() {
    assert_eq!(Ttl::from_ms(-1), Ttl::NoCache);
    assert_eq!(Ttl::from_ms(i64::MIN), Ttl::NoCache);
    assert_eq!(Ttl::from_ms(0), Ttl::Forever);
    assert_eq!(Ttl::from_ms(1), Ttl::Millis(1));
    assert_eq!(Ttl::from_ms(i64::MAX), Ttl::Millis(i64::MAX as u64));
    for t in [
        Ttl::NoCache,
        Ttl::Forever,
        Ttl::Millis(1),
        Ttl::Millis(12_345),
    ] {
        assert_eq!(
            Ttl::from_ms(t.as_ms()),
            t,
            "{t:?} does not survive the wire"
        );
    }
    assert_eq!(Ttl::from_ms(Ttl::Secs(30).as_ms()), Ttl::Millis(30_000));
}

#[test]
fn client_options_defaults_and_builders() {
    let o = ClientOptions::new("bot");
    assert_eq!(o.name, "bot");
    assert!(o.dispatcher, "the dispatcher is on by default");
    assert_eq!(o.reconnect, None);
    assert_eq!(o.accept, Encoding::Bincode);
    assert_eq!(o.timeout, None);
    assert_eq!(o.wait, WaitStrategy::default());
    assert_eq!(o.ring_capacity, 0);
    let r = Retry {
        interval: Duration::from_millis(5),
        max_retries: Some(3),
    };
    let o = o
        .token("t")
        .intervals(["a", "b"])
        .wait(WaitStrategy::Park)
        .dispatcher(false)
        .reconnect(r)
        .accept(Encoding::Json)
        .timeout(Duration::from_secs(2))
        .version("1.2");
    assert_eq!(o.token.as_deref(), Some("t"));
    assert_eq!(o.intervals, ["a", "b"]);
    assert_eq!(o.wait, WaitStrategy::Park);
    assert!(!o.dispatcher);
    assert_eq!(o.reconnect, Some(r));
    assert_eq!(o.accept, Encoding::Json);
    assert_eq!(o.timeout, Some(Duration::from_secs(2)));
    assert_eq!(o.client_version.as_deref(), Some("1.2"));
    assert_eq!(Retry::default().interval, Duration::from_millis(500));
    assert_eq!(Retry::default().max_retries, None);
}

#[test]
fn call_timeouts_on_the_wire() {
    assert_eq!(timeout_ms(None), 0, "None is the hub's default");
    assert_eq!(
        timeout_ms(Some(Duration::ZERO)),
        1,
        "zero must not mean the default"
    );
    assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 1);
    assert_eq!(timeout_ms(Some(Duration::from_secs(3))), 3000);
    assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), u32::MAX);
}

#[test]
fn answers_become_replies_and_errors() {
    let r = reply_of(Answer::Ok {
        payload: Payload {
            enc: Encoding::Json,
            bytes: b"[1]",
        },
        ttl_ms: 2500,
    })
    .unwrap();
    assert_eq!(r.payload.enc, Encoding::Json);
    assert_eq!(r.payload.bytes, b"[1]");
    assert_eq!(r.ttl, Ttl::Millis(2500));
    match reply_of(Answer::err(ErrorCode::Failed, "nope")) {
        Err(CallError::Remote(m)) => assert_eq!(m, "nope"),
        other => panic!("{other:?}"),
    }
    // Every wire code comes back as its own variant, and goes out again as the same code.
    for code in [
        ErrorCode::Failed,
        ErrorCode::NotConnected,
        ErrorCode::NoHandler,
        ErrorCode::TimedOut,
        ErrorCode::OwnerLeft,
        ErrorCode::TooLarge,
        ErrorCode::Busy,
        ErrorCode::Unavailable,
    ] {
        let e = reply_of(Answer::err(code, "why")).unwrap_err();
        assert_eq!(e.code(), Some(code), "{e:?}");
        assert_eq!(e.to_string(), "why");
    }
    assert!(matches!(
        reply_of(Answer::err(ErrorCode::TimedOut, "timed out after 5 ms")),
        Err(CallError::Timeout(_))
    ));
}

#[test]
fn ttls_compare_by_value() {
    assert_eq!(Ttl::Secs(30), Ttl::Millis(30_000));
    assert_eq!(Ttl::Millis(0), Ttl::Millis(1));
    assert_eq!(Ttl::Secs(0), Ttl::Forever);
    assert_ne!(Ttl::Millis(0), Ttl::Forever);
    assert_ne!(Ttl::NoCache, Ttl::Forever);
    assert_ne!(Ttl::Secs(1), Ttl::Millis(999));
    let set: std::collections::HashSet<Ttl> = [Ttl::Secs(2), Ttl::Millis(2000)].into();
    assert_eq!(set.len(), 1);
}

#[test]
fn call_errors_convert_to_crate_errors() {
    assert!(matches!(
        Error::from(CallError::Link(Error::Disconnected)),
        Error::Disconnected
    ));
    // The kind survives: a remote error stays a remote error (it used to become `Decode`).
    match Error::from(CallError::Remote("boom".into())) {
        Error::Call(c) => assert!(matches!(*c, CallError::Remote(ref m) if m == "boom")),
        other => panic!("{other:?}"),
    }
    match Error::from(CallError::Timeout("timed out after 5 ms".into())) {
        Error::Call(c) => assert!(matches!(*c, CallError::Timeout(_))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Error::from(CallError::NoHandler("bot has no handler".into())).to_string(),
        "bot has no handler"
    );
    assert!(matches!(
        CallError::from(Error::Corrupt("x".into())),
        CallError::Link(Error::Corrupt(_))
    ));
    assert!(matches!(
        CallError::from(Error::TooLarge { size: 9, max: 8 }),
        CallError::TooLarge(_)
    ));
    assert_eq!(CallError::Remote("m".into()).to_string(), "m");
}

struct CountWake(AtomicUsize);

impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn reply(b: &[u8]) -> Result<Reply, CallError> {
    Ok(Reply {
        payload: PayloadBuf {
            enc: Encoding::Bincode,
            bytes: b.to_vec(),
        },
        ttl: Ttl::Forever,
    })
}

#[test]
fn a_slot_is_filled_once_and_taken_once() {
    let slot = Slot::new();
    assert!(slot.take().is_none());
    slot.fill(reply(b"v"));
    assert_eq!(slot.take().unwrap().unwrap().payload.bytes, b"v");
    assert!(slot.take().is_none(), "a reply is taken only once");
}

#[test]
fn filling_a_slot_wakes_its_async_caller_once() {
    let slot = Slot::new();
    let count = Arc::new(CountWake(AtomicUsize::new(0)));
    *slot.waker.lock().unwrap() = Some(Waker::from(count.clone()));
    slot.fill(reply(b"v"));
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    // The waker is consumed: a second fill (never done, but harmless) wakes nobody.
    slot.fill(reply(b"w"));
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    assert_eq!(slot.take().unwrap().unwrap().payload.bytes, b"w");
}

#[test]
fn a_slot_wakes_a_blocked_caller() {
    let slot = Slot::new();
    let saw_sleeper = std::thread::scope(|s| {
        let filler = s.spawn(|| {
            // Fill once the caller is asleep on the condvar (or give up after 10 s).
            let end = std::time::Instant::now() + Duration::from_secs(10);
            let mut saw = false;
            while !saw && std::time::Instant::now() < end {
                saw = slot.state.lock().unwrap().sleeping;
                std::thread::yield_now();
            }
            slot.fill(reply(b"late"));
            saw
        });
        // A spurious wake-up may end a wait early: wait until the reply is there.
        let got = loop {
            slot.wait_for(Duration::from_secs(10));
            if let Some(v) = slot.take() {
                break v;
            }
        };
        assert_eq!(got.unwrap().payload.bytes, b"late");
        filler.join().unwrap()
    });
    assert!(saw_sleeper, "the caller never announced that it sleeps");
    assert!(!slot.state.lock().unwrap().sleeping);
}

#[test]
fn the_registry_removes_every_kind_of_handler_once() {
    let mut h = Handlers::default();
    let ids: Vec<_> = (0..7).map(|_| h.id()).collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 7, "handler ids must be unique");
    h.events.push((
        ids[0],
        Some("e".into()),
        Arc::new(|_: &Ctx<'_>, _: &Event| {}),
    ));
    h.gets.insert(
        "k".into(),
        (
            ids[1],
            Arc::new(|_: &Ctx<'_>, _: &GetRequest, _: &mut PayloadBuf| {
                Err::<i64, _>("x".to_string())
            }),
        ),
    );
    h.requests.insert(
        "m".into(),
        (
            ids[2],
            Arc::new(|_: &Ctx<'_>, _: &Request, _: &mut PayloadBuf| Err::<(), _>("x".to_string())),
        ),
    );
    h.data.push((ids[3], None, Arc::new(|_, _| {})));
    h.lifecycle.push((ids[4], Arc::new(|_| {})));
    h.disconnect.push((ids[5], Arc::new(|_| {})));
    h.deferred_get = Some((ids[6], Arc::new(|_, _| {})));
    for &id in &ids {
        assert!(h.remove(id), "{id:?} not removed");
        assert!(!h.remove(id), "{id:?} removed twice");
    }
    assert!(h.events.is_empty() && h.gets.is_empty() && h.requests.is_empty());
    assert!(h.data.is_empty() && h.lifecycle.is_empty() && h.disconnect.is_empty());
    assert!(h.deferred_get.is_none());
}

#[test]
fn a_ticket_of_a_gone_client_fails_instead_of_keeping_it_alive() {
    let t = GetTicket::new(Weak::new(), 42, Encoding::Json);
    assert_eq!(t.hub_request(), 42);
    assert_eq!(t.accept(), Encoding::Json);
    let p = PayloadBuf::json(&1).unwrap();
    assert!(matches!(
        t.answer(&p, Ttl::Forever),
        Err(Error::Disconnected)
    ));
    // Dropping an unanswered ticket of a gone client is quiet too.
    drop(GetTicket::new(Weak::new(), 43, Encoding::Bincode));
}
