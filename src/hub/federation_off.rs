//! The federation hooks of the hub when the crate is built without the `federation`
//! feature: every hook is a no-op, and a config that asks for federation is refused at bind
//! with the command that builds it in.
//!
//! Invariant: same signatures as `federation.rs`, so the hub core has no `cfg` of its own.

use std::sync::Arc;
use std::time::Instant;

use super::requests::{Waiter, Who};
use super::Hub;
use crate::federation::wire::Claim;
use crate::federation::{FederationConfig, FederationStat};
use crate::proto::{Answer, Encoding, Payload, Target};

/// The slot of "the federation" (never used without the feature).
pub(super) const FED_SLOT: usize = usize::MAX;

/// Uninhabited: a hub without the feature never has federation state.
pub(super) enum Fed {}

/// Nothing crosses nodes.
pub(super) struct Plan;

impl Plan {
    pub(super) fn is_remote_client(&self) -> bool {
        false
    }
}

/// Nothing to send.
pub(super) struct DataOut;

impl Fed {
    pub(super) fn start(
        _cfg: FederationConfig,
        _: &crate::sys::Poller,
    ) -> Result<Fed, crate::Error> {
        Err(crate::Error::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this shmbus was built without federation: rebuild with `--features federation` \
             (e.g. `cargo run --release --features federation -- up --nats …`)",
        )))
    }
}

#[allow(clippy::too_many_arguments, clippy::unused_self)]
impl Hub {
    pub(super) fn fed_has_room(&self) -> bool {
        true
    }
    pub(super) fn fed_admit_check(&self, _: &str) -> Result<Option<(Claim, Arc<str>)>, String> {
        Ok(None)
    }
    pub(super) fn fed_joined(&mut self, _: usize, _: Option<(Claim, Arc<str>)>) {}
    pub(super) fn fed_state(&mut self, _: usize) {}
    pub(super) fn fed_topics(&mut self, _: usize) {}
    pub(super) fn fed_left(&mut self, _: &str, _: Who) {}
    pub(super) fn fed_plan(&self, _: Target<'_>, _: &str) -> Plan {
        Plan
    }
    pub(super) fn fed_forward(
        &mut self,
        _: usize,
        _: &Plan,
        _: Target<'_>,
        _: &str,
        _: Payload<'_>,
    ) -> bool {
        true
    }
    pub(super) fn fed_data_prepare(
        &mut self,
        _: usize,
        _: &str,
        _: Option<&str>,
        _: Payload<'_>,
        _: i64,
    ) -> Result<Option<DataOut>, ()> {
        Ok(None)
    }
    pub(super) fn fed_data_send(&mut self, _: Option<DataOut>) {}
    pub(super) fn fed_get(
        &mut self,
        _: usize,
        _: u64,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: bool,
        _: u32,
        _: Encoding,
    ) -> Option<bool> {
        None
    }
    pub(super) fn fed_request(
        &mut self,
        _: usize,
        _: u64,
        _: &str,
        _: &str,
        _: Payload<'_>,
        _: u32,
        _: Encoding,
    ) -> Option<bool> {
        None
    }
    pub(super) fn fed_reply(&mut self, _: &Waiter, _: Answer<'_>) {}
    pub(super) fn fed_next_timer(&self, _: &mut Instant) {}
    pub(super) fn fed_timers(&mut self, _: Instant) {}
    /// The hub's park: a plain epoll wait.
    pub(super) fn park(
        &mut self,
        events: &mut Vec<crate::sys::PollEvent>,
        timeout: Option<std::time::Duration>,
    ) -> std::io::Result<()> {
        self.poller.wait(events, timeout)
    }
    pub(super) fn fed_shutdown(&mut self) {}
    pub(super) fn fed_stat(&self) -> Option<Box<FederationStat>> {
        None
    }
    pub(super) fn fed_pump(&mut self) -> bool {
        false
    }
    pub(super) fn fed_touched(&mut self) -> bool {
        false
    }
    pub(super) fn fed_spin_budget(&self, budget: std::time::Duration) -> std::time::Duration {
        budget
    }
}
