//! The shard's packet pool: a slab of queue nodes preallocated at start-up, threaded into
//! per-connection intrusive doubly linked lists. Enqueue and dequeue never allocate; a full pool
//! is reported to the caller, which applies the overflow rule.

use crate::buf::PacketBuf;

/// "No node".
pub(crate) const NIL: u32 = u32::MAX;

/// Node state bits.
pub(crate) const DATA_OK: u8 = 1;
/// TCP data already compared: released without the gate.
pub(crate) const RETRANS: u8 = 2;

/// What the engine remembers about a queued packet (so the frame is parsed once).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meta {
    /// `now` at arrival.
    pub arrival: u64,
    /// TCP: sequence number of the first payload byte (after a SYN).
    pub seq: u32,
    /// TCP: `seq` + payload length (the FIN's position).
    pub end: u32,
    /// TCP: ack number.
    pub ack: u32,
    /// Start of the compared bytes (TCP payload, L4 header, or L3 header).
    pub cmp_off: u32,
    /// End of the compared bytes (the IP packet's end, never Ethernet padding).
    pub cmp_end: u32,
    /// TCP flags.
    pub flags: u8,
    /// [`super::meta`]'s packet kind code (`K_TCP`, `K_DGRAM`, `K_L3`).
    pub kind: u8,
    /// For L3 compares: 4, 6, or 0 (which IP fields to ignore).
    pub ipver: u8,
    /// [`DATA_OK`] / [`RETRANS`].
    pub state: u8,
}

pub(crate) struct Node<B> {
    pub pkt: Option<B>,
    pub m: Meta,
    prev: u32,
    next: u32,
}

/// A FIFO or sorted list of nodes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct List {
    pub head: u32,
    pub tail: u32,
    pub len: u32,
}

impl List {
    pub const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

pub(crate) struct Pool<B> {
    nodes: Vec<Node<B>>,
    free: u32,
    free_n: usize,
}

impl<B: PacketBuf> Pool<B> {
    /// Bytes `with_capacity(n)` allocates.
    pub fn bytes_for(n: usize) -> usize {
        n.clamp(1, NIL as usize - 1) * std::mem::size_of::<Node<B>>()
    }

    pub fn with_capacity(n: usize) -> Self {
        let n = n.clamp(1, NIL as usize - 1);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(Node {
                pkt: None,
                m: Meta::default(),
                prev: NIL,
                next: if i + 1 < n { (i + 1) as u32 } else { NIL },
            });
        }
        Pool {
            nodes,
            free: 0,
            free_n: n,
        }
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.free_n == 0
    }

    #[inline]
    pub fn meta(&self, id: u32) -> &Meta {
        &self.nodes[id as usize].m
    }

    #[inline]
    pub fn meta_mut(&mut self, id: u32) -> &mut Meta {
        &mut self.nodes[id as usize].m
    }

    #[inline]
    pub fn pkt(&self, id: u32) -> Option<&B> {
        self.nodes[id as usize].pkt.as_ref()
    }

    #[inline]
    pub fn data(&self, id: u32) -> &[u8] {
        match &self.nodes[id as usize].pkt {
            Some(p) => p.data(),
            None => &[],
        }
    }

    #[inline]
    pub fn next(&self, id: u32) -> u32 {
        self.nodes[id as usize].next
    }

    #[inline]
    pub fn prev(&self, id: u32) -> u32 {
        self.nodes[id as usize].prev
    }

    /// Point the link after `prev` at `id`: `prev`'s next, or the list's head when `prev` is
    /// `NIL`.
    #[inline(always)]
    fn set_next(&mut self, list: &mut List, prev: u32, id: u32) {
        match self.nodes.get_mut(prev as usize) {
            Some(p) => p.next = id,
            None => list.head = id,
        }
    }

    /// Point the link before `next` at `id`: `next`'s prev, or the list's tail when `next` is
    /// `NIL`.
    #[inline(always)]
    fn set_prev(&mut self, list: &mut List, next: u32, id: u32) {
        match self.nodes.get_mut(next as usize) {
            Some(n) => n.prev = id,
            None => list.tail = id,
        }
    }

    /// Take a free node for `pkt`; gives the packet back when the pool is empty.
    #[inline]
    pub fn alloc(&mut self, pkt: B, m: Meta) -> Result<u32, B> {
        if self.free == NIL {
            return Err(pkt);
        }
        let id = self.free;
        let n = &mut self.nodes[id as usize];
        self.free = n.next;
        self.free_n -= 1;
        n.pkt = Some(pkt);
        n.m = m;
        n.prev = NIL;
        n.next = NIL;
        Ok(id)
    }

    /// [`Self::alloc`] + [`Self::push_back`] in one step (the queueing fast path): the new
    /// node is linked at the tail of `list`. Gives the packet back when the pool is empty.
    #[inline(always)]
    pub fn alloc_back(&mut self, list: &mut List, pkt: B, m: Meta) -> Result<u32, B> {
        let id = self.free;
        let Some(n) = self.nodes.get_mut(id as usize) else {
            return Err(pkt);
        };
        self.free = n.next;
        self.free_n -= 1;
        n.pkt = Some(pkt);
        n.m = m;
        n.prev = list.tail;
        n.next = NIL;
        self.set_next(list, list.tail, id);
        list.tail = id;
        list.len += 1;
        Ok(id)
    }

    /// Link `id` after `after` (`NIL` = at the front).
    #[inline]
    pub fn insert_after(&mut self, list: &mut List, after: u32, id: u32) {
        let next = if after == NIL {
            list.head
        } else {
            self.nodes[after as usize].next
        };
        {
            let n = &mut self.nodes[id as usize];
            n.prev = after;
            n.next = next;
        }
        self.set_next(list, after, id);
        self.set_prev(list, next, id);
        list.len += 1;
    }

    #[inline]
    pub fn push_back(&mut self, list: &mut List, id: u32) {
        let t = list.tail;
        self.insert_after(list, t, id);
    }

    /// Unlink the head of `list` and return its packet; the node goes back to the pool.
    #[inline(always)]
    pub fn pop_front(&mut self, list: &mut List) -> Option<B> {
        let id = list.head;
        let n = self.nodes.get_mut(id as usize)?;
        let next = n.next;
        n.prev = NIL;
        n.next = self.free;
        let pkt = n.pkt.take();
        self.free = id;
        self.free_n += 1;
        list.head = next;
        self.set_prev(list, next, NIL);
        list.len -= 1;
        pkt
    }

    /// Move every node of `src` to the tail of `dst`, keeping their order (O(1)).
    pub fn append(&mut self, dst: &mut List, src: &mut List) {
        if src.head == NIL {
            return;
        }
        self.set_next(dst, dst.tail, src.head);
        self.nodes[src.head as usize].prev = dst.tail;
        dst.tail = src.tail;
        dst.len += src.len;
        *src = List::EMPTY;
    }

    /// Unlink `id` from `list` and return its packet; the node goes back to the pool.
    #[inline]
    pub fn remove(&mut self, list: &mut List, id: u32) -> Option<B> {
        let (prev, next) = {
            let n = &self.nodes[id as usize];
            (n.prev, n.next)
        };
        self.set_next(list, prev, next);
        self.set_prev(list, next, prev);
        list.len -= 1;
        let n = &mut self.nodes[id as usize];
        n.prev = NIL;
        n.next = self.free;
        self.free = id;
        self.free_n += 1;
        n.pkt.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::VecBuf;

    fn ids(p: &Pool<VecBuf>, l: &List) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = l.head;
        while i != NIL {
            v.push(p.data(i)[0]);
            i = p.next(i);
        }
        v
    }

    #[test]
    fn pop_front_unlinks_the_head_and_recycles_it() {
        let mut p: Pool<VecBuf> = Pool::with_capacity(2);
        let mut a = List::EMPTY;
        assert!(p.pop_front(&mut a).is_none(), "empty list");
        for v in [1u8, 2] {
            let id = p.alloc(VecBuf::from_slice(&[v]), Meta::default()).unwrap();
            p.push_back(&mut a, id);
        }
        let second = p.next(a.head);
        assert_eq!(p.pop_front(&mut a).unwrap().data(), &[1]);
        assert_eq!(
            (a.head, a.tail, a.len, p.prev(second)),
            (second, second, 1, NIL)
        );
        let id = p.alloc(VecBuf::from_slice(&[3]), Meta::default()).unwrap();
        p.push_back(&mut a, id);
        assert_eq!(ids(&p, &a), vec![2, 3]);
        assert_eq!(p.pop_front(&mut a).unwrap().data(), &[2]);
        assert_eq!(p.pop_front(&mut a).unwrap().data(), &[3]);
        assert_eq!((a.head, a.tail, a.len), (NIL, NIL, 0));
        assert!(!p.is_full());
    }

    #[test]
    fn alloc_back_links_at_the_tail_and_gives_the_packet_back_when_full() {
        let mut p: Pool<VecBuf> = Pool::with_capacity(3);
        let (mut a, mut b) = (List::EMPTY, List::EMPTY);
        let n1 = p
            .alloc_back(&mut a, VecBuf::from_slice(&[1]), Meta::default())
            .unwrap();
        assert_eq!(
            (a.head, a.tail, a.len, p.prev(n1), p.next(n1)),
            (n1, n1, 1, NIL, NIL)
        );
        p.alloc_back(&mut b, VecBuf::from_slice(&[9]), Meta::default())
            .unwrap();
        let n2 = p
            .alloc_back(&mut a, VecBuf::from_slice(&[2]), Meta::default())
            .unwrap();
        assert_eq!(ids(&p, &a), vec![1, 2]);
        assert_eq!((a.tail, a.len, p.prev(n2), p.next(n1)), (n2, 2, n1, n2));
        assert!(p.is_full());
        let back = p.alloc_back(&mut a, VecBuf::from_slice(&[3]), Meta::default());
        assert_eq!(
            back.unwrap_err().data(),
            &[3],
            "full pool: the packet comes back"
        );
        assert_eq!((ids(&p, &a), a.len), (vec![1, 2], 2), "list unchanged");
        assert_eq!(p.pop_front(&mut a).unwrap().data(), &[1]);
        let n3 = p
            .alloc_back(&mut a, VecBuf::from_slice(&[3]), Meta::default())
            .unwrap();
        assert_eq!(n3, n1, "the freed node is reused");
        assert_eq!(ids(&p, &a), vec![2, 3]);
        assert_eq!(ids(&p, &b), vec![9]);
    }

    #[test]
    fn append_moves_a_list_to_the_tail_in_order() {
        let mut p: Pool<VecBuf> = Pool::with_capacity(4);
        let (mut a, mut b, mut e) = (List::EMPTY, List::EMPTY, List::EMPTY);
        for v in [1u8, 2] {
            p.alloc_back(&mut a, VecBuf::from_slice(&[v]), Meta::default())
                .unwrap();
        }
        for v in [3u8, 4] {
            p.alloc_back(&mut b, VecBuf::from_slice(&[v]), Meta::default())
                .unwrap();
        }
        p.append(&mut e, &mut a);
        assert_eq!((ids(&p, &e), e.len, a.len, a.head), (vec![1, 2], 2, 0, NIL));
        p.append(&mut e, &mut b);
        assert_eq!(
            (ids(&p, &e), e.len, b.head, b.tail),
            (vec![1, 2, 3, 4], 4, NIL, NIL)
        );
        p.append(&mut e, &mut b); // empty source: no change
        assert_eq!(e.len, 4);
        let tail = e.tail;
        assert_eq!(p.prev(p.next(e.head)), e.head);
        assert_eq!(p.remove(&mut e, tail).unwrap().data(), &[4]);
        assert_eq!(p.pop_front(&mut e).unwrap().data(), &[1]);
        assert_eq!(ids(&p, &e), vec![2, 3]);
        assert_eq!(p.prev(e.tail), e.head, "links across the seam");
    }

    #[test]
    fn lists_share_a_fixed_pool_and_recycle_nodes() {
        let mut p: Pool<VecBuf> = Pool::with_capacity(3);
        let (mut a, mut b) = (List::EMPTY, List::EMPTY);
        let n1 = p.alloc(VecBuf::from_slice(&[1]), Meta::default()).unwrap();
        let n2 = p.alloc(VecBuf::from_slice(&[2]), Meta::default()).unwrap();
        let n3 = p.alloc(VecBuf::from_slice(&[3]), Meta::default()).unwrap();
        assert!(p.is_full());
        assert!(p.alloc(VecBuf::from_slice(&[4]), Meta::default()).is_err());
        p.push_back(&mut a, n1);
        p.push_back(&mut a, n3);
        p.insert_after(&mut a, n1, n2);
        assert_eq!(ids(&p, &a), vec![1, 2, 3]);
        assert_eq!(p.remove(&mut a, n2).unwrap().data(), &[2]);
        assert_eq!(ids(&p, &a), vec![1, 3]);
        assert_eq!((a.len, p.prev(n3), p.next(n1)), (2, n1, n3));
        let n4 = p.alloc(VecBuf::from_slice(&[4]), Meta::default()).unwrap();
        assert_eq!(n4, n2, "the freed node is reused");
        p.insert_after(&mut b, NIL, n4);
        assert_eq!(ids(&p, &b), vec![4]);
        p.remove(&mut a, n1);
        p.remove(&mut a, n3);
        assert_eq!((a.head, a.tail, a.len), (NIL, NIL, 0));
    }
}
