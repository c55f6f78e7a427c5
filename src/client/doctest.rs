//! Support for the client's doctests (hidden from the docs): a hub on a thread in a fresh
//! directory under the system's temp dir, shut down and removed on drop.
//!
//! Invariants: every `DocHub` has its own directory (pid, counter and clock in its name), so
//! doctests run in parallel; dropping it stops the hub thread before the directory goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::hub::{Hub, HubConfig, HubHandle};

/// A hub running on a thread of this process, for examples.
pub struct DocHub {
    dir: PathBuf,
    handle: HubHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DocHub {
    /// Starts a hub in a new temporary directory (short deadlines, so failures show fast).
    pub fn start() -> DocHub {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "shmbus-doc-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let cfg = HubConfig {
            dir: dir.clone(),
            get_timeout: Duration::from_secs(5),
            interval: Duration::from_millis(100),
            ..HubConfig::default()
        };
        let hub = Hub::bind(cfg).expect("doctest hub");
        let handle = hub.handle();
        let thread = std::thread::spawn(move || {
            let _ = hub.run();
        });
        DocHub {
            dir,
            handle,
            thread: Some(thread),
        }
    }

    /// The hub's directory (what `Client::connect` takes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DocHub {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
