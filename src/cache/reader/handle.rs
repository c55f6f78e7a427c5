//! [`Cache`]: the cheap, clonable public handle to one connection's cache view.
//!
//! Invariants: no state of its own beyond the shared reader; a handle of a client without a
//! cache segment answers `CacheError::Disconnected`, never panics.

use std::sync::Arc;

use super::{CacheError, CacheReader, CacheRef, ReaderStats};

/// A cheap, clonable handle to one connection's cache view ([`Client::cache`]).
///
/// [`Client::cache`]: crate::client::Client::cache
#[derive(Clone, Default)]
pub struct Cache {
    pub(crate) reader: Option<Arc<CacheReader>>,
}

impl Cache {
    /// Wraps a reader.
    #[doc(hidden)]
    pub fn new(reader: CacheReader) -> Cache {
        Cache {
            reader: Some(Arc::new(reader)),
        }
    }

    fn reader(&self) -> Result<&CacheReader, CacheError> {
        self.reader.as_deref().ok_or(CacheError::Disconnected)
    }

    /// The value of (kind, key) from any owner, read in place; `None` on a miss, an expired
    /// value, or an error (counted in [`stats`](Self::stats); use [`try_get`](Self::try_get)
    /// to see it). No syscall, no copy, no round trip.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-get-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let v = cache.get("stats", None).expect("bot's value");
    /// assert_eq!(v.decode::<Vec<u32>>()?, [1, 2, 3]);
    /// assert!(cache.get("stats", Some("no such key")).is_none());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, kind: &str, key: Option<&str>) -> Option<CacheRef<'_>> {
        self.try_get(kind, key).ok().flatten()
    }

    /// Like [`get`](Self::get), with errors: a view with no segment, after a reconnect, or a
    /// hostile or torn segment.
    ///
    /// ```
    /// use shmbus::cache::{Cache, CacheError};
    ///
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-try-get-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// assert!(cache.try_get("stats", None)?.is_some());
    /// assert!(cache.try_get("nothing", None)?.is_none());
    /// // A view with no segment says why.
    /// assert!(matches!(Cache::default().try_get("stats", None), Err(CacheError::Disconnected)));
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get(
        &self,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.reader()?.try_get(kind, key)
    }

    /// The value of (kind, key) only if `owner` wrote it.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-get-from-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// assert!(cache.get_from("bot", "stats", None).is_some());
    /// assert!(cache.get_from("impostor", "stats", None).is_none());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_from(&self, owner: &str, kind: &str, key: Option<&str>) -> Option<CacheRef<'_>> {
        self.try_get_from(owner, kind, key).ok().flatten()
    }

    /// Like [`get_from`](Self::get_from), with errors.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-try-get-from-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let v = cache.try_get_from("bot", "stats", None)?.expect("bot wrote it");
    /// assert_eq!(v.decode::<Vec<u32>>()?, [1, 2, 3]);
    /// assert!(cache.try_get_from("impostor", "stats", None)?.is_none());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get_from(
        &self,
        owner: &str,
        kind: &str,
        key: Option<&str>,
    ) -> Result<Option<CacheRef<'_>>, CacheError> {
        self.reader()?.try_get_from(owner, kind, key)
    }

    /// Whether this view has a segment mapped (false when the hub offered none).
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-mapped-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// assert!(cache.is_mapped());
    /// assert!(!shmbus::cache::Cache::default().is_mapped());
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_mapped(&self) -> bool {
        self.reader.is_some()
    }

    /// Read counters and the hub's counts.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-stats-{}", std::process::id()));
    /// # let hub = shmbus::hub::Hub::bind(shmbus::hub::HubConfig { dir: dir.clone(), ..Default::default() })?;
    /// # let (stop, hub_thread) = (hub.handle(), std::thread::spawn(move || hub.run()));
    /// use shmbus::client::{Client, ClientOptions, Ttl};
    ///
    /// let bot = Client::connect(&dir, ClientOptions::new("bot"))?;
    /// bot.data("stats", None, &vec![1u32, 2, 3], Ttl::Secs(30))?;
    /// let web = Client::connect(&dir, ClientOptions::new("website"))?;
    /// let cache = web.cache();
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("stats", None).is_none() {
    /// #     assert!(t0.elapsed().as_secs() < 10, "the value never reached the cache");
    /// #     std::thread::sleep(std::time::Duration::from_millis(1));
    /// # }
    /// let before = cache.stats();
    /// let _ = cache.get("stats", None);
    /// let _ = cache.get("nothing", None);
    /// let after = cache.stats();
    /// assert_eq!(after.hits, before.hits + 1);
    /// assert_eq!(after.misses, before.misses + 1);
    /// assert!(after.entries >= 1);
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> ReaderStats {
        self.reader.as_ref().map(|r| r.stats()).unwrap_or_default()
    }
}
