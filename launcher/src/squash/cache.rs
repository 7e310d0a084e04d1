//! A sharded cache of decompressed blocks, evicting the oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Cache key of a block: its image-relative offset, or a fragment with the top bit set.
pub(crate) type BlockKey = u64;
/// Top bit of the key of a fragment block (its index in the low bits).
pub(crate) const FRAGMENT_KEY: u64 = 1 << 63;

/// Number of independently locked shards.
const SHARDS: usize = 16;

/// Decompressed blocks, at most about `capacity` bytes of them.
pub(crate) struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<BlockKey, Arc<Vec<u8>>>,
    order: VecDeque<BlockKey>,
    bytes: usize,
}

impl BlockCache {
    pub(crate) fn new(capacity: usize) -> BlockCache {
        BlockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: (capacity / SHARDS).max(1),
        }
    }

    fn shard(&self, key: BlockKey) -> &Mutex<Shard> {
        // Blocks are at least 4 KiB apart; mix the bits so neighbours spread.
        let h = (key ^ (key >> 17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 60) as usize % self.shards.len()]
    }

    pub(crate) fn get(&self, key: BlockKey) -> Option<Arc<Vec<u8>>> {
        self.shard(key)
            .lock()
            .expect("cache lock")
            .map
            .get(&key)
            .cloned()
    }

    pub(crate) fn insert(&self, key: BlockKey, block: Arc<Vec<u8>>) {
        let mut s = self.shard(key).lock().expect("cache lock");
        if s.map.contains_key(&key) {
            return;
        }
        s.bytes += block.len();
        s.map.insert(key, block);
        s.order.push_back(key);
        while s.bytes > self.shard_capacity && s.order.len() > 1 {
            if let Some(old) = s.order.pop_front()
                && let Some(b) = s.map.remove(&old)
            {
                s.bytes -= b.len();
            }
        }
    }
}
