//! The options of one benchmark run ([`Opts`]), and how they travel to the peer process
//! (`to_env` / `from_env`, one `key=value;…` environment variable).
//!
//! Invariant: every field a peer needs is in `to_env`, and `from_env` reads back exactly what
//! `to_env` wrote (a bad or unknown key is an error, never a silent default).

use std::path::PathBuf;

use super::Transport;
use crate::wait::WaitStrategy;

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Transport.
    pub transport: Transport,
    /// Payload bytes per message.
    pub size: usize,
    /// Measured round trips (or messages, with `throughput`).
    pub iters: u64,
    /// How the ring waits (ring only).
    pub wait: WaitStrategy,
    /// Pin the two sides to different CPUs (0 and 1).
    pub pin: bool,
    /// One-way streaming instead of ping-pong.
    pub throughput: bool,
    /// Ring capacity (ring only); `None` = big enough that a message is one frame.
    pub ring_capacity: Option<u64>,
    /// hub-get: answered from the hub's cache instead of by the owner.
    pub cached: bool,
    /// hub-get: the requester runs the client's dispatcher thread (the default client
    /// options); without it the requester receives only inside its calls.
    pub dispatcher: bool,
    /// hub-get: fresh gets on a direct link to the owner (`GetBuilder::direct`), after the
    /// first one (which goes through the hub and asks for the introduction).
    pub direct: bool,
    /// hub-get: requests (`Client::request`, or `request_direct` with `direct`) of a
    /// `size`-byte value instead of fresh gets.
    pub request: bool,
    /// hub-emit: how many clients emit (each to the next).
    pub clients: usize,
    /// hub-get / hub-emit: how the hub waits (`None` = like the clients, `wait`).
    pub hub_wait: Option<WaitStrategy>,
    /// cache: reader processes (with `throughput` or `updates`).
    pub readers: usize,
    /// cache: measure the hub's update rate while `readers` read.
    pub updates: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            transport: Transport::Ring,
            size: 64,
            iters: 100_000,
            wait: WaitStrategy::Spin,
            pin: false,
            throughput: false,
            ring_capacity: None,
            cached: false,
            dispatcher: false,
            direct: false,
            request: false,
            clients: 1,
            hub_wait: None,
            readers: 0,
            updates: false,
        }
    }
}

impl Opts {
    /// The ring capacity used: the configured one, or the smallest power of two ≥ 1 MiB that
    /// holds four messages, so that a message is one frame, read in place.
    pub fn ring_capacity(&self) -> u64 {
        self.ring_capacity.unwrap_or_else(|| {
            ((self.size as u64 + 64) * 4)
                .next_power_of_two()
                .max(1 << 20)
        })
    }

    /// Name of the wait mode for reports.
    pub fn wait_name(&self) -> &'static str {
        match self.transport {
            Transport::Ring | Transport::RingBytes | Transport::HubGet | Transport::HubEmit => {
                self.wait.name()
            }
            Transport::Uds | Transport::Tcp => "block",
            Transport::Atomic => "spin",
            Transport::Eventfd => "park",
            Transport::Cache => "none",
        }
    }

    pub(crate) fn to_env(&self, socket: &std::path::Path, role: &str) -> String {
        format!(
            "role={role};iters={};cached={};direct={};updates={};readers={};clients={};hubwait={};transport={};size={};wait={};pin={};ring={};socket={}",
            self.iters,
            self.cached as u8,
            self.direct as u8,
            self.updates as u8,
            self.readers,
            self.clients,
            wait_spec(self.hub_wait.unwrap_or(self.wait)),
            self.transport.name(),
            self.size,
            wait_spec(self.wait),
            self.pin as u8,
            self.ring_capacity(),
            socket.display()
        )
    }

    pub(super) fn from_env(s: &str) -> Result<(Opts, PathBuf, String), String> {
        let mut o = Opts::default();
        let mut socket = None;
        let mut role = String::new();
        for kv in s.split(';') {
            let (k, v) = kv.split_once('=').ok_or("bad peer spec")?;
            match k {
                "role" => role = v.to_string(),
                "cached" => o.cached = v == "1",
                "direct" => o.direct = v == "1",
                "updates" => o.updates = v == "1",
                "iters" => o.iters = v.parse().map_err(|e| format!("{e}"))?,
                "readers" => o.readers = v.parse().map_err(|e| format!("{e}"))?,
                "clients" => o.clients = v.parse().map_err(|e| format!("{e}"))?,
                "hubwait" => o.hub_wait = Some(v.parse()?),
                "transport" => o.transport = v.parse()?,
                "size" => o.size = v.parse().map_err(|e| format!("{e}"))?,
                "wait" => o.wait = v.parse()?,
                "pin" => o.pin = v == "1",
                "ring" => o.ring_capacity = Some(v.parse().map_err(|e| format!("{e}"))?),
                "socket" => socket = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown peer option {k}")),
            }
        }
        Ok((o, socket.ok_or("peer spec without socket")?, role))
    }
}

fn wait_spec(w: WaitStrategy) -> String {
    match w {
        WaitStrategy::Spin => "spin".to_string(),
        WaitStrategy::SpinYield => "spin-yield".to_string(),
        WaitStrategy::Park => "park".to_string(),
        WaitStrategy::SpinThenPark { spin } => format!("spin-then-park:{}", spin.as_micros()),
    }
}
