//! [`CacheRef`]: a value read in place, holding this connection's pin while it lives.
//!
//! Invariants: the bytes it derefs to lie inside the reader's mapping and are never
//! rewritten while it is held (the hub retires, never reuses, space under a pin, and moves to
//! a new generation instead of waiting forever); dropping it releases its share of the pin.

use std::sync::atomic::Ordering;

use super::{CacheError, CacheReader};
use crate::cache::layout::CacheHeader;
use crate::proto::{Encoding, Payload, PayloadBuf};
use crate::sys;

/// A value read in place from the cache segment. Derefs to the value's bytes, which stay
/// exactly as they are for as long as this is held (within the hub's pin bound; see the
/// module docs). Holding it keeps this connection pinned, so drop it when done.
pub struct CacheRef<'a> {
    pub(super) reader: &'a CacheReader,
    pub(super) hdr: &'a CacheHeader,
    pub(super) bytes: &'a [u8],
    pub(super) enc: Encoding,
    pub(super) expires: u64,
    pub(super) epoch: u64,
}

impl<'a> CacheRef<'a> {
    /// The encoding the owner wrote.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-enc-{}", std::process::id()));
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
    /// let v = cache.get("stats", None).unwrap();
    /// assert_eq!(v.encoding(), shmbus::Encoding::Bincode); // `data` encodes with bincode
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encoding(&self) -> Encoding {
        self.enc
    }

    /// The value as a payload (bytes + encoding), borrowed.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-payload-{}", std::process::id()));
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
    /// let v = cache.get("stats", None).unwrap();
    /// let stats: Vec<u32> = v.payload().decode()?;
    /// assert_eq!(stats, [1, 2, 3]);
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn payload(&self) -> Payload<'_> {
        Payload {
            enc: self.enc,
            bytes: self.bytes,
        }
    }

    /// Copies the value out, to keep it past the pin bound or send it on.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-owned-{}", std::process::id()));
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
    /// let kept = cache.get("stats", None).unwrap().to_owned(); // the CacheRef is dropped here
    /// assert_eq!(kept.decode::<Vec<u32>>()?, [1, 2, 3]);
    /// web.emit_payload(shmbus::Target::Client("bot"), "stats-seen", &kept)?;
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_owned(&self) -> PayloadBuf {
        self.payload().to_owned()
    }

    /// TTL left in ms (0 = no expiry). The value outlives its owner's process until then.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-ttl-{}", std::process::id()));
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
    /// let left = cache.get("stats", None).unwrap().ttl_left_ms();
    /// assert!(left > 0 && left <= 30_000);
    /// bot.data("motd", None, "hello", Ttl::Forever)?;
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("motd", None).is_none() { assert!(t0.elapsed().as_secs() < 10); std::thread::sleep(std::time::Duration::from_millis(1)); }
    /// assert_eq!(cache.get("motd", None).unwrap().ttl_left_ms(), 0);
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ttl_left_ms(&self) -> i64 {
        if self.expires == 0 {
            0
        } else {
            (self.expires.saturating_sub(sys::monotonic_ns()) / 1_000_000).max(1) as i64
        }
    }

    /// False once the hub has moved to a newer segment generation (because some reader held
    /// a pin too long): the bytes held here stay exactly as they are, but the hub may hold a
    /// newer value by now.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-valid-{}", std::process::id()));
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
    /// let v = cache.get("stats", None).unwrap();
    /// assert!(v.is_valid()); // held briefly: nobody revokes it
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_valid(&self) -> bool {
        // Acquire: pairs with the hub's Release store of `superseded`.
        self.hdr.superseded.load(Ordering::Acquire) == 0
    }

    /// Decodes the value in place, whatever its encoding: `&str` and `&[u8]` fields borrow
    /// from the segment. Sound: no one writes these bytes while this is held — the hub does
    /// not free the block under our pin, and never writes a segment again once it has moved
    /// to a newer generation.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmbus-doc-decode-{}", std::process::id()));
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
    /// bot.data("greeting", None, "hello, world", Ttl::Secs(30))?;
    /// # let t0 = std::time::Instant::now();
    /// # while cache.get("greeting", None).is_none() { assert!(t0.elapsed().as_secs() < 10); std::thread::sleep(std::time::Duration::from_millis(1)); }
    /// let v = cache.get("greeting", None).unwrap();
    /// let text: &str = v.decode()?; // points into the shared segment, no copy
    /// assert_eq!(text, "hello, world");
    /// assert!(v.decode::<bool>().is_err()); // not what was written
    /// # drop((bot, web));
    /// # stop.shutdown();
    /// # hub_thread.join().unwrap()?;
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode<'r, T: serde::Deserialize<'r>>(&'r self) -> Result<T, CacheError> {
        self.payload()
            .decode_borrowed::<T>()
            .map_err(|e| CacheError::Decode(e.to_string()))
    }
}

impl std::ops::Deref for CacheRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl std::fmt::Debug for CacheRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRef")
            .field("len", &self.bytes.len())
            .field("enc", &self.enc)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Drop for CacheRef<'_> {
    fn drop(&mut self) {
        self.reader.release();
    }
}
