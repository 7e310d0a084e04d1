//! Bounded caches: a sharded cache of decompressed blocks evicting the
//! oldest first, and a small map that forgets everything when full.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

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
    shards: Vec<Mutex<Shard<V>>>,
    shard_capacity: usize,
}

struct Shard<V> {
    map: HashMap<BlockKey, Arc<V>>,
    order: VecDeque<BlockKey>,
    bytes: usize,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<V: Weight> BlockCache<V> {
    pub(crate) fn new(capacity: usize) -> BlockCache<V> {
        BlockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, key: BlockKey) -> &Mutex<Shard<V>> {
        // Blocks are at least a few bytes apart; mix the bits so neighbours spread.
        let h = (key ^ (key >> 17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 60) as usize % self.shards.len()]
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
        // large block can be an munmap): a low-priority inserter (the
        // read-ahead of the step's command) must not hold up the FUSE
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
