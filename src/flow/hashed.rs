//! A fixed-capacity flow table indexed by a hash the caller already has.
//!
//! Built for the compare shard's per-packet lookup: the redirector computed
//! [`FlowKey::hash64`] to pick the shard, so the table takes that hash instead of hashing the
//! key again. Open addressing (linear probing, backward-shift deletion, load ≤ 1/2) over
//! `(tag, slot)` pairs; the key is compared only when the 32-bit tag matches. Entries live in a
//! slab reserved at construction: inserts, lookups, eviction and removal never allocate.
//!
//! Ageing is a per-entry last-use stamp (one store per lookup, no list to maintain). When the
//! table is full, the least recently used of the next [`EVICT_SAMPLE`] slab entries at a
//! rotating clock hand is evicted and handed back to the caller (exact LRU for tables of at
//! most that many entries, approximate above). A wrong hash for a key (a caller bug) only
//! makes lookups miss; nothing panics.
//!
//! Periodic scans use [`HashedTable::sweep_mut`]: a second hand (apart from the eviction
//! hand, so evictions never make a sweep skip entries) visits at most a given number of slab
//! slots per call, so one call is bounded whatever the table's size, and a full pass takes
//! `ceil(slots / max)` calls.

use super::key::FlowKey;

const NIL: u32 = u32::MAX;

/// Entries examined to pick an eviction victim when the table is full.
pub const EVICT_SAMPLE: usize = 16;

#[derive(Clone, Copy)]
struct Bucket {
    /// Low 32 bits of the flow hash; the home bucket is `tag & mask`.
    tag: u32,
    /// Slab index, or `NIL` for an empty bucket.
    id: u32,
}

const EMPTY: Bucket = Bucket { tag: 0, id: NIL };

/// Key, tag and stamp first (`repr(C)`): a lookup reads one cache line before the value.
#[repr(C)]
struct Slot<V> {
    key: FlowKey,
    tag: u32,
    live: bool,
    last_used: u64,
    value: V,
}

/// An entry created by [`HashedTable::insert`].
pub struct Inserted<V> {
    /// Handle of the new entry.
    pub id: u32,
    /// The entry evicted to make room (full table), if any.
    pub evicted: Option<(FlowKey, V)>,
}

/// A fixed-capacity flow table mapping [`FlowKey`] (with its precomputed hash) to `V`.
pub struct HashedTable<V> {
    index: Vec<Bucket>,
    mask: usize,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
    len: usize,
    capacity: usize,
    hand: usize,
    sweep: usize,
}

impl<V> HashedTable<V> {
    /// A table that holds at most `capacity` (≥ 1) entries.
    pub fn with_capacity(capacity: usize) -> Self {
        let (capacity, buckets) = Self::dimensions(capacity);
        HashedTable {
            index: vec![EMPTY; buckets],
            mask: buckets - 1,
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            len: 0,
            capacity,
            hand: 0,
            sweep: 0,
        }
    }

    /// (entries, index buckets) of a table asked to hold `capacity`.
    fn dimensions(capacity: usize) -> (usize, usize) {
        let capacity = capacity.clamp(1, (NIL / 4) as usize);
        (capacity, (capacity * 2).next_power_of_two())
    }

    /// Bytes [`with_capacity`](Self::with_capacity)`(capacity)` allocates: index, slots and
    /// free list, all reserved up front (nothing grows later).
    pub fn bytes_for(capacity: usize) -> usize {
        let (capacity, buckets) = Self::dimensions(capacity);
        buckets * std::mem::size_of::<Bucket>()
            + capacity * (std::mem::size_of::<Slot<V>>() + std::mem::size_of::<u32>())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The handle of `key`, whose [`FlowKey::hash64`] is `hash`.
    #[inline]
    pub fn find(&self, hash: u64, key: &FlowKey) -> Option<u32> {
        let tag = hash as u32;
        let mut i = self.home(tag);
        loop {
            let b = self.index[i];
            if b.id == NIL {
                return None;
            }
            if b.tag == tag {
                if let Some(s) = self.slots.get(b.id as usize) {
                    if s.key == *key {
                        return Some(b.id);
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The live entry `id` with its last-use stamp set to `now`.
    #[inline]
    pub fn touch(&mut self, id: u32, now: u64) -> Option<&mut V> {
        let s = self.slots.get_mut(id as usize)?;
        s.last_used = now;
        s.live.then_some(&mut s.value)
    }

    /// The home bucket of a tag (where its probe starts).
    #[inline]
    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    /// Start loading the home bucket of `hash`: the first half of a burst's lookups
    /// ([`Self::prefetch_entry`] is the second), so the misses of a burst overlap.
    #[inline]
    pub fn prefetch_bucket(&self, hash: u64) {
        if let Some(b) = self.index.get(self.home(hash as u32)) {
            crate::hint::prefetch(b);
        }
    }

    /// Start loading the entry (key and the start of its value) that `hash`'s home bucket
    /// points at, if any; reads the bucket, so call it after [`Self::prefetch_bucket`] had time.
    #[inline]
    pub fn prefetch_entry(&self, hash: u64) {
        let Some(b) = self.index.get(self.home(hash as u32)) else {
            return;
        };
        if let Some(s) = self.slots.get(b.id as usize) {
            crate::hint::prefetch(s);
        }
    }

    /// The live entry `id`.
    #[inline]
    pub fn get_mut(&mut self, id: u32) -> Option<&mut V> {
        let s = self.slots.get_mut(id as usize)?;
        s.live.then_some(&mut s.value)
    }

    /// The value stored for `key` (hash `hash`), without touching its stamp.
    pub fn get(&self, hash: u64, key: &FlowKey) -> Option<&V> {
        let id = self.find(hash, key)?;
        Some(&self.slots[id as usize].value)
    }

    /// Insert `key` (not present; hash `hash`) with value `make()`, last used at `now`. When
    /// the table is full, an entry is evicted first (see the module docs) and returned.
    pub fn insert(
        &mut self,
        hash: u64,
        key: FlowKey,
        now: u64,
        make: impl FnOnce() -> V,
    ) -> Inserted<V> {
        let tag = hash as u32;
        if self.len >= self.capacity {
            // Full: every slab entry is live. Reuse the victim's slot in place.
            let victim = self.pick_victim();
            self.unindex(victim);
            let s = &mut self.slots[victim];
            let old_key = std::mem::replace(&mut s.key, key);
            let old = std::mem::replace(&mut s.value, make());
            s.tag = tag;
            s.last_used = now;
            self.index_insert(tag, victim as u32);
            return Inserted {
                id: victim as u32,
                evicted: Some((old_key, old)),
            };
        }
        let id = match self.free.pop() {
            Some(id) => {
                let s = &mut self.slots[id as usize];
                s.key = key;
                s.tag = tag;
                s.live = true;
                s.last_used = now;
                s.value = make();
                id
            }
            None => {
                self.slots.push(Slot {
                    key,
                    tag,
                    live: true,
                    last_used: now,
                    value: make(),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        self.index_insert(tag, id);
        Inserted { id, evicted: None }
    }

    /// The least recently used of the next [`EVICT_SAMPLE`] slab entries from the clock hand.
    fn pick_victim(&mut self) -> usize {
        let n = self.slots.len();
        let mut best = self.hand % n;
        for k in 0..EVICT_SAMPLE.min(n) {
            let i = (self.hand + k) % n;
            if self.slots[i].last_used < self.slots[best].last_used {
                best = i;
            }
        }
        self.hand = (self.hand + EVICT_SAMPLE.min(n)) % n;
        best
    }

    fn index_insert(&mut self, tag: u32, id: u32) {
        let mut i = self.home(tag);
        while self.index[i].id != NIL {
            i = (i + 1) & self.mask;
        }
        self.index[i] = Bucket { tag, id };
    }

    /// Take slot `id` out of the index (backward-shift deletion: no tombstones, so probe
    /// lengths never degrade under churn).
    fn unindex(&mut self, id: usize) {
        let tag = self.slots[id].tag;
        let mut i = self.home(tag);
        let mut probes = 0;
        while self.index[i].id != id as u32 {
            if self.index[i].id == NIL || probes > self.mask {
                return; // not indexed (cannot happen); nothing to undo
            }
            i = (i + 1) & self.mask;
            probes += 1;
        }
        loop {
            self.index[i] = EMPTY;
            let mut j = i;
            loop {
                j = (j + 1) & self.mask;
                let b = self.index[j];
                if b.id == NIL {
                    return;
                }
                let home = self.home(b.tag);
                // `b` may move back to `i` unless its home lies cyclically in (i, j].
                let dist_home = j.wrapping_sub(home) & self.mask;
                let dist_i = j.wrapping_sub(i) & self.mask;
                if dist_home >= dist_i {
                    self.index[i] = b;
                    i = j;
                    break;
                }
            }
        }
    }

    fn remove_id(&mut self, id: usize) {
        self.unindex(id);
        self.slots[id].live = false;
        self.free.push(id as u32);
        self.len -= 1;
    }

    /// Visit every entry with its last-use stamp; remove those for which `f` returns true
    /// (`f` has then taken what it needs out of the value). Returns how many were removed.
    pub fn retain_mut(&mut self, mut f: impl FnMut(&FlowKey, &mut V, u64) -> bool) -> usize {
        let mut n = 0;
        for id in 0..self.slots.len() {
            let s = &mut self.slots[id];
            if s.live && f(&s.key, &mut s.value, s.last_used) {
                self.remove_id(id);
                n += 1;
            }
        }
        n
    }

    /// One bounded step of a sweep: visit the live entries among the next `max` (at least 1)
    /// slab slots from the sweep hand, removing those for which `f` returns true (as in
    /// [`Self::retain_mut`]), and advance the hand. Returns `(removed, pass_done)`:
    /// `pass_done` is true when this step reached the end of the slab (the hand restarts at
    /// slot 0), so every entry that was in the table for the whole pass was visited once.
    pub fn sweep_mut(
        &mut self,
        max: usize,
        mut f: impl FnMut(&FlowKey, &mut V, u64) -> bool,
    ) -> (usize, bool) {
        let n = self.slots.len();
        let start = self.sweep.min(n);
        let end = start.saturating_add(max.max(1)).min(n);
        let mut removed = 0;
        for id in start..end {
            let s = &mut self.slots[id];
            if s.live && f(&s.key, &mut s.value, s.last_used) {
                self.remove_id(id);
                removed += 1;
            }
        }
        let done = end >= n;
        self.sweep = if done { 0 } else { end };
        (removed, done)
    }

    /// Visit every entry with its last-use stamp (slab order).
    pub fn for_each(&self, mut f: impl FnMut(&FlowKey, &V, u64)) {
        for s in self.slots.iter().filter(|s| s.live) {
            f(&s.key, &s.value, s.last_used);
        }
    }

    /// Visit every entry mutably (slab order).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&FlowKey, &mut V)) {
        for s in self.slots.iter_mut().filter(|s| s.live) {
            f(&s.key, &mut s.value);
        }
    }

    /// Remove every entry, handing each to `f` first.
    pub fn drain(&mut self, mut f: impl FnMut(&FlowKey, &mut V)) {
        self.retain_mut(|k, v, _| {
            f(k, v);
            true
        });
        self.hand = 0;
        self.sweep = 0;
    }

    /// Remove the live entry `id` (a handle from [`Self::find`]); false when it is not live.
    /// The value stays in its slab slot, dropped when the slot is reused or the table dropped.
    pub fn remove(&mut self, id: u32) -> bool {
        match self.slots.get(id as usize) {
            Some(s) if s.live => {
                self.remove_id(id as usize);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::Family;

    fn k(i: u16) -> FlowKey {
        FlowKey {
            family: Family::V4,
            proto_or_ethertype: 6,
            addr_lo: [0; 16],
            addr_hi: [1; 16],
            port_lo: i,
            port_hi: 80,
        }
    }

    fn ins(t: &mut HashedTable<u16>, i: u16, now: u64) -> Option<(FlowKey, u16)> {
        let key = k(i);
        assert!(t.find(key.hash64(), &key).is_none());
        t.insert(key.hash64(), key, now, || i).evicted
    }

    fn has(t: &HashedTable<u16>, i: u16) -> bool {
        let key = k(i);
        t.get(key.hash64(), &key) == Some(&i)
    }

    #[test]
    fn prefetch_is_a_hint_for_any_hash() {
        let mut t = HashedTable::with_capacity(8);
        // Empty buckets, any hash (the mask keeps it in range), then a full table.
        for h in [0, 1, u64::MAX, u32::MAX as u64, 1 << 40] {
            t.prefetch_bucket(h);
            t.prefetch_entry(h);
        }
        for i in 0..12 {
            ins(&mut t, i, u64::from(i));
        }
        for i in 0..12 {
            let h = k(i).hash64();
            t.prefetch_bucket(h);
            t.prefetch_entry(h);
        }
        let kept: Vec<u16> = (0..12).filter(|&i| has(&t, i)).collect();
        assert_eq!(
            kept.len(),
            8,
            "a prefetch changed nothing: the table still holds 8"
        );
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn bytes_for_is_what_with_capacity_reserves() {
        for cap in [1usize, 1000, 65536, 1 << 20] {
            let t: HashedTable<[u64; 5]> = HashedTable::with_capacity(cap);
            let reserved = t.index.capacity() * std::mem::size_of::<Bucket>()
                + t.slots.capacity() * std::mem::size_of::<Slot<[u64; 5]>>()
                + t.free.capacity() * std::mem::size_of::<u32>();
            assert_eq!(
                HashedTable::<[u64; 5]>::bytes_for(cap),
                reserved,
                "capacity {cap}"
            );
        }
    }

    #[test]
    fn full_small_table_evicts_least_recently_used() {
        let mut t = HashedTable::with_capacity(3);
        for i in 0..3 {
            assert!(ins(&mut t, i, u64::from(i)).is_none());
        }
        let id = t.find(k(0).hash64(), &k(0)).unwrap();
        t.touch(id, 10); // 1 is now the oldest
        assert_eq!(ins(&mut t, 9, 11), Some((k(1), 1)));
        assert_eq!(t.len(), 3);
        assert!(!has(&t, 1));
        assert!(has(&t, 0) && has(&t, 2) && has(&t, 9));
    }

    #[test]
    fn retain_removes_and_keeps_the_rest_findable() {
        let mut t = HashedTable::with_capacity(10);
        for i in 0..5u16 {
            ins(&mut t, i, u64::from(i) * 100);
        }
        let mut gone = Vec::new();
        let n = t.retain_mut(|key, v, last| {
            let old = 450u64.saturating_sub(last) >= 200;
            if old {
                gone.push((key.port_lo, *v));
            }
            old
        });
        assert_eq!(n, 3);
        gone.sort();
        assert_eq!(gone, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(t.len(), 2);
        assert!(has(&t, 3) && has(&t, 4) && !has(&t, 0));
    }

    /// Colliding tags and home buckets: deletion must keep every other entry reachable.
    #[test]
    fn churn_with_colliding_hashes_matches_a_model() {
        let mut t: HashedTable<u16> = HashedTable::with_capacity(40);
        let mut model = std::collections::BTreeMap::new();
        let hash = |i: u16| u64::from(i % 7) * 0x10 + u64::from(i % 3); // many collisions
        let mut x = 12345u32;
        for step in 0..20_000u64 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = ((x >> 16) % 97) as u16;
            let key = k(i);
            match t.find(hash(i), &key) {
                Some(id) => {
                    assert_eq!(t.get_mut(id).copied(), Some(i));
                    if x & 1 == 0 {
                        t.retain_mut(|kk, _, _| kk.port_lo == i);
                        model.remove(&i);
                    } else {
                        t.touch(id, step);
                    }
                }
                None => {
                    assert!(!model.contains_key(&i), "lost {i}");
                    if let Some((ek, ev)) = t.insert(hash(i), key, step, || i).evicted {
                        assert_eq!(ek.port_lo, ev);
                        assert!(model.remove(&ev).is_some());
                    }
                    model.insert(i, ());
                }
            }
            assert_eq!(t.len(), model.len());
        }
        for &i in model.keys() {
            assert!(t.find(hash(i), &k(i)).is_some(), "{i} unreachable");
        }
        assert_eq!(t.slots.capacity(), 40, "no growth");
    }

    #[test]
    fn remove_by_handle_keeps_the_rest_findable() {
        let mut t: HashedTable<u16> = HashedTable::with_capacity(4);
        let hash = |_: u16| 5u64; // one home bucket: removal must shift the probe chain back
        for i in 0..4 {
            t.insert(hash(i), k(i), 0, || i);
        }
        let id = t.find(hash(1), &k(1)).unwrap();
        assert!(t.remove(id));
        assert!(!t.remove(id), "already removed");
        assert!(!t.remove(99), "never allocated");
        assert_eq!(t.len(), 3);
        assert!(t.find(hash(1), &k(1)).is_none());
        for i in [0, 2, 3] {
            let id = t.find(hash(i), &k(i)).unwrap();
            assert_eq!(t.get_mut(id).copied(), Some(i));
        }
        // The freed slot is reused without eviction.
        assert!(t.insert(hash(7), k(7), 1, || 7).evicted.is_none());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_sweep_step_is_bounded_and_a_pass_covers_every_entry() {
        let mut t: HashedTable<u16> = HashedTable::with_capacity(1000);
        for i in 0..1000 {
            ins(&mut t, i, 0);
        }
        // Free a few slots mid-table and refill them: the slab stays 1000 slots long.
        for i in [3u16, 500, 999] {
            let id = t.find(k(i).hash64(), &k(i)).unwrap();
            t.remove(id);
            ins(&mut t, i + 1000, 0);
        }
        let mut seen = std::collections::BTreeMap::new();
        let mut calls = 0;
        loop {
            let mut visited = 0;
            let (removed, done) = t.sweep_mut(64, |key, v, _| {
                visited += 1;
                *seen.entry(key.port_lo).or_insert(0) += 1;
                *v % 2 == 1 // expire the odd ones
            });
            calls += 1;
            assert!(visited <= 64, "one step visited {visited}");
            assert!(removed <= visited);
            if done {
                break;
            }
            assert!(calls < 100, "the pass never ended");
        }
        assert_eq!(calls, 1000usize.div_ceil(64));
        assert_eq!(seen.len(), 1000, "every entry visited");
        assert!(seen.values().all(|&n| n == 1), "each exactly once");
        assert_eq!(t.len(), 500);
        for (&i, _) in seen.iter() {
            assert_eq!(has(&t, i), i % 2 == 0, "{i}");
        }
        // The next pass starts over at slot 0 and sees only the survivors.
        let mut second = 0;
        while !t
            .sweep_mut(64, |_, _, _| {
                second += 1;
                false
            })
            .1
        {}
        assert_eq!(second, 500);
        // An empty table finishes a pass at once.
        let mut e: HashedTable<u16> = HashedTable::with_capacity(8);
        assert_eq!(e.sweep_mut(4, |_, _, _| true), (0, true));
    }

    #[test]
    fn a_wrong_hash_misses_but_never_panics() {
        let mut t = HashedTable::with_capacity(2);
        t.insert(1, k(1), 0, || 1u16);
        assert!(t.find(2, &k(1)).is_none());
        t.insert(2, k(1), 0, || 2u16); // a duplicate key under another hash
        t.insert(3, k(1), 0, || 3u16); // full: evicts
        assert_eq!(t.len(), 2);
        t.drain(|_, _| {});
        assert!(t.is_empty());
    }
}
