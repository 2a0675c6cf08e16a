//! A fixed-capacity connection table with idle ageing and least-recently-used eviction.
//!
//! Owned by one stage (one compare shard, or the rewriter): no locks. All memory is reserved at
//! construction; inserts, lookups, ageing and eviction never allocate. Entries live in a slab
//! threaded on a doubly linked list in last-use order, so the oldest entry is found in O(1) for
//! both ageing and eviction. Evicted and expired values are handed back to the caller, who
//! releases whatever they hold (QEMU instead wipes its whole table at 16384 and loses packets).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::key::{FlowHasher, FlowKey};

const NIL: u32 = u32::MAX;

struct Slot<V> {
    key: FlowKey,
    value: Option<V>,
    last_used: u64,
    prev: u32,
    next: u32,
}

/// Handle of an entry, valid until that entry is removed.
pub type EntryId = u32;

/// A fixed-capacity flow table mapping [`FlowKey`] to `V`.
pub struct FlowTable<V> {
    index: HashMap<FlowKey, EntryId, BuildHasherDefault<FlowHasher>>,
    slots: Vec<Slot<V>>,
    free: Vec<EntryId>,
    /// Least recently used.
    head: u32,
    /// Most recently used.
    tail: u32,
    capacity: usize,
}

impl<V> FlowTable<V> {
    /// A table that holds at most `capacity` (≥ 1) entries.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // Twice the room keeps hashbrown rehashing in place (never growing) under churn.
        let index = HashMap::with_capacity_and_hasher(capacity * 2, BuildHasherDefault::default());
        FlowTable {
            index,
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Look up an entry without touching its age.
    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        let id = *self.index.get(key)?;
        self.slots[id as usize].value.as_ref()
    }

    /// Look up an entry and mark it used at `now`.
    pub fn get_mut(&mut self, key: &FlowKey, now: u64) -> Option<(EntryId, &mut V)> {
        let id = *self.index.get(key)?;
        self.touch(id, now);
        self.slots[id as usize].value.as_mut().map(|v| (id, v))
    }

    /// The entry with handle `id`, if it is live.
    pub fn by_id_mut(&mut self, id: EntryId) -> Option<&mut V> {
        self.slots.get_mut(id as usize)?.value.as_mut()
    }

    /// The entry for `key`, created with `make` if absent. When the table is full, the least
    /// recently used entry is evicted first and returned as the second element.
    pub fn get_or_insert_with(
        &mut self,
        key: FlowKey,
        now: u64,
        make: impl FnOnce() -> V,
    ) -> (EntryId, &mut V, Option<(FlowKey, V)>) {
        if let Some(&id) = self.index.get(&key) {
            self.touch(id, now);
            let v = self.slots[id as usize].value.as_mut();
            // A live index entry always has a value.
            return (id, v.unwrap_or_else(|| unreachable!()), None);
        }
        let evicted = if self.index.len() >= self.capacity {
            self.pop_lru()
        } else {
            None
        };
        let id = match self.free.pop() {
            Some(id) => {
                let s = &mut self.slots[id as usize];
                s.key = key;
                s.value = Some(make());
                s.last_used = now;
                id
            }
            None => {
                self.slots.push(Slot {
                    key,
                    value: Some(make()),
                    last_used: now,
                    prev: NIL,
                    next: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.link_tail(id);
        self.index.insert(key, id);
        let v = self.slots[id as usize].value.as_mut();
        (id, v.unwrap_or_else(|| unreachable!()), evicted)
    }

    /// Remove the entry for `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<V> {
        let id = self.index.remove(key)?;
        self.unlink(id);
        self.free.push(id);
        self.slots[id as usize].value.take()
    }

    /// Remove and return the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(FlowKey, V)> {
        if self.head == NIL {
            return None;
        }
        let id = self.head;
        let key = self.slots[id as usize].key;
        self.remove(&key).map(|v| (key, v))
    }

    /// Remove every entry idle since before `now - idle`, oldest first, handing each to `f`.
    /// Returns how many were removed.
    pub fn expire(&mut self, now: u64, idle: u64, mut f: impl FnMut(FlowKey, V)) -> usize {
        let mut n = 0;
        while self.head != NIL {
            let s = &self.slots[self.head as usize];
            if now.saturating_sub(s.last_used) < idle {
                break;
            }
            if let Some((k, v)) = self.pop_lru() {
                f(k, v);
                n += 1;
            }
        }
        n
    }

    /// Visit every entry, least recently used first.
    pub fn for_each(&self, mut f: impl FnMut(&FlowKey, &V, u64)) {
        let mut id = self.head;
        while id != NIL {
            let s = &self.slots[id as usize];
            if let Some(v) = &s.value {
                f(&s.key, v, s.last_used);
            }
            id = s.next;
        }
    }

    /// Visit every entry mutably, least recently used first.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&FlowKey, &mut V)) {
        let mut id = self.head;
        while id != NIL {
            let s = &mut self.slots[id as usize];
            if let Some(v) = &mut s.value {
                f(&s.key, v);
            }
            id = s.next;
        }
    }

    /// Remove every entry, handing each to `f` (least recently used first).
    pub fn drain(&mut self, mut f: impl FnMut(FlowKey, V)) {
        while let Some((k, v)) = self.pop_lru() {
            f(k, v);
        }
    }

    fn touch(&mut self, id: EntryId, now: u64) {
        self.slots[id as usize].last_used = now;
        if self.tail != id {
            self.unlink(id);
            self.link_tail(id);
        }
    }

    fn link_tail(&mut self, id: EntryId) {
        let s = &mut self.slots[id as usize];
        s.prev = self.tail;
        s.next = NIL;
        if self.tail != NIL {
            self.slots[self.tail as usize].next = id;
        } else {
            self.head = id;
        }
        self.tail = id;
    }

    fn unlink(&mut self, id: EntryId) {
        let (prev, next) = {
            let s = &self.slots[id as usize];
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
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

    #[test]
    fn full_table_evicts_least_recently_used() {
        let mut t = FlowTable::with_capacity(3);
        for i in 0..3 {
            assert!(t.get_or_insert_with(k(i), u64::from(i), || i).2.is_none());
        }
        t.get_mut(&k(0), 10); // 1 is now the oldest
        let (_, v, ev) = t.get_or_insert_with(k(9), 11, || 9);
        assert_eq!(*v, 9);
        assert_eq!(ev, Some((k(1), 1)));
        assert_eq!(t.len(), 3);
        assert!(t.get(&k(1)).is_none());
    }

    #[test]
    fn expire_removes_only_idle_entries_oldest_first() {
        let mut t = FlowTable::with_capacity(10);
        for i in 0..5u16 {
            t.get_or_insert_with(k(i), u64::from(i) * 100, || i);
        }
        let mut gone = Vec::new();
        assert_eq!(t.expire(450, 200, |key, v| gone.push((key.port_lo, v))), 3);
        assert_eq!(gone, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn churn_reuses_slots_without_growth() {
        let mut t = FlowTable::with_capacity(64);
        let cap = t.slots.capacity();
        for i in 0..10_000u16 {
            t.get_or_insert_with(k(i), u64::from(i), || i);
            if i % 3 == 1 {
                t.remove(&k(i));
            }
        }
        assert_eq!(t.len(), 64);
        assert_eq!(t.slots.capacity(), cap);
        let mut seen = 0;
        t.for_each(|_, _, _| seen += 1);
        assert_eq!(seen, 64);
    }
}
