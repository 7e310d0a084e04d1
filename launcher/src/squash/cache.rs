//! Bounded caches: a sharded cache of decompressed blocks evicting the
//! oldest first, and a small map that forgets everything when full.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Condvar, Mutex};

/// Cache key of a block: its image-relative offset, or a fragment with the top bit set.
pub(crate) type BlockKey = u64;
/// Top bit of the key of a fragment block (its index in the low bits).
pub(crate) const FRAGMENT_KEY: u64 = 1 << 63;

/// Number of independently locked shards.
const SHARDS: usize = 16;

/// What a cached value costs, in bytes.
pub(crate) trait Weight {
    /// Bytes held.
    fn weight(&self) -> usize;
}

impl Weight for Vec<u8> {
    fn weight(&self) -> usize {
        self.capacity()
    }
}

/// Decompressed blocks, at most about `capacity` bytes of them (each shard
/// may exceed its share by the one block it just took).
pub(crate) struct BlockCache<V = Vec<u8>> {
    shards: Vec<(Mutex<Shard<V>>, Condvar)>,
    shard_capacity: usize,
}

struct Shard<V> {
    map: HashMap<BlockKey, Arc<V>>,
    order: VecDeque<BlockKey>,
    bytes: usize,
    /// Blocks a thread is decompressing now (see [`BlockCache::get_or_load`]).
    loading: HashSet<BlockKey>,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            loading: HashSet::new(),
        }
    }
}

/// Ends a load whatever happens to the loader: the key is no longer
/// loading and its waiters wake (to find the block, or to load it
/// themselves when this load failed).
struct Loading<'a, V> {
    shard: &'a (Mutex<Shard<V>>, Condvar),
    key: BlockKey,
}

impl<V> Drop for Loading<'_, V> {
    fn drop(&mut self) {
        let mut s = self
            .shard
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.loading.remove(&self.key);
        drop(s);
        self.shard.1.notify_all();
    }
}

impl<V: Weight> BlockCache<V> {
    pub(crate) fn new(capacity: usize) -> BlockCache<V> {
        BlockCache {
            shards: (0..SHARDS)
                .map(|_| (Mutex::new(Shard::default()), Condvar::new()))
                .collect(),
            shard_capacity: (capacity / SHARDS).max(1),
        }
    }

    fn shard_and_signal(&self, key: BlockKey) -> &(Mutex<Shard<V>>, Condvar) {
        // Blocks are at least a few bytes apart; mix the bits so neighbours spread.
        let h = (key ^ (key >> 17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 60) as usize % self.shards.len()]
    }

    fn shard(&self, key: BlockKey) -> &Mutex<Shard<V>> {
        &self.shard_and_signal(key).0
    }

    /// The block under `key`, from the cache or made by `load`, which runs
    /// at most once at a time per key: a thread that finds another
    /// decompressing the same block waits for it rather than doing the
    /// same work beside it (a step's first exec and the read-ahead of its
    /// program ask for the same blocks at once), and loads it itself only
    /// if that load failed. Whether this call loaded it comes back too.
    pub(crate) fn get_or_load(
        &self,
        key: BlockKey,
        load: impl FnOnce() -> io::Result<V>,
    ) -> io::Result<(Arc<V>, bool)> {
        let pair = self.shard_and_signal(key);
        let mut s = pair.0.lock().expect("cache lock");
        loop {
            if let Some(b) = s.map.get(&key) {
                return Ok((b.clone(), false));
            }
            if !s.loading.contains(&key) {
                break;
            }
            s = pair.1.wait(s).expect("cache lock");
        }
        s.loading.insert(key);
        drop(s);
        let _loading = Loading { shard: pair, key };
        let block = Arc::new(load()?);
        self.insert(key, block.clone());
        Ok((block, true))
    }

    pub(crate) fn get(&self, key: BlockKey) -> Option<Arc<V>> {
        self.shard(key)
            .lock()
            .expect("cache lock")
            .map
            .get(&key)
            .cloned()
    }

    pub(crate) fn insert(&self, key: BlockKey, block: Arc<V>) {
        // Evicted blocks are freed after the lock is released (freeing a
        // large block can be an munmap): no inserter holds up the FUSE
        // threads on this shard for longer than the map update.
        let mut evicted = Vec::new();
        let mut s = self.shard(key).lock().expect("cache lock");
        if s.map.contains_key(&key) {
            return;
        }
        s.bytes += block.weight();
        s.map.insert(key, block);
        s.order.push_back(key);
        while s.bytes > self.shard_capacity && s.order.len() > 1 {
            if let Some(old) = s.order.pop_front()
                && let Some(b) = s.map.remove(&old)
            {
                s.bytes -= b.weight();
                evicted.push(b);
            }
        }
        drop(s);
        drop(evicted);
    }
}

/// A map of at most `capacity` entries that starts over when full: for
/// hints (sequential-read detection, directory parents, listing cursors)
/// whose loss costs time, never correctness.
pub(crate) struct SmallMap<K, V> {
    map: Mutex<HashMap<K, V>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> SmallMap<K, V> {
    pub(crate) fn new(capacity: usize) -> SmallMap<K, V> {
        SmallMap {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.map.lock().expect("map lock").get(key).cloned()
    }

    /// Stores `value`, returning the value `key` had.
    pub(crate) fn insert(&self, key: K, value: V) -> Option<V> {
        let mut m = self.map.lock().expect("map lock");
        if m.len() >= self.capacity && !m.contains_key(&key) {
            m.clear();
        }
        m.insert(key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Threads asking for the same block at once decompress it once.
    #[test]
    fn a_block_asked_for_by_many_threads_at_once_is_loaded_once() {
        let cache: BlockCache = BlockCache::new(1 << 20);
        let loads = AtomicUsize::new(0);
        let start = Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    start.wait();
                    let (b, _) = cache
                        .get_or_load(42, || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok(vec![1, 2, 3])
                        })
                        .unwrap();
                    assert_eq!(*b, [1, 2, 3]);
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Now it comes from the cache.
        let (_, loaded) = cache.get_or_load(42, || unreachable!()).unwrap();
        assert!(!loaded);
    }

    /// A load that fails leaves nothing behind: a thread that waited for it
    /// loads the block itself, and a later call tries again.
    #[test]
    fn a_failed_load_is_retried_by_the_next_caller() {
        let cache: BlockCache = BlockCache::new(1 << 20);
        let started = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                let r = cache.get_or_load(7, || {
                    started.wait();
                    std::thread::sleep(Duration::from_millis(50));
                    Err(io::Error::other("bad block"))
                });
                assert!(r.is_err());
            });
            s.spawn(|| {
                started.wait();
                let (b, loaded) = cache.get_or_load(7, || Ok(vec![9])).unwrap();
                assert_eq!((b.as_slice(), loaded), (&[9u8][..], true));
            });
        });
        assert_eq!(*cache.get(7).unwrap(), [9]);
    }
}
