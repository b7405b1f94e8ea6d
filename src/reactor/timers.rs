//! The timer heap: a binary min-heap ordered by deadline, ties broken by the order
//! of scheduling, so two timers due at the same instant fire in the order they were
//! made. Cancelled timers stay in the heap until they reach its head or until the
//! owner compacts it (asyncio's policy: more than 100 timers, over half cancelled).
//!
//! The heap is kept exactly as CPython's `heapq` keeps asyncio's timers: the same
//! sift-up, sift-down, pop and heapify, comparing with `<` alone (asyncio's
//! `TimerHandle.__lt__`, plus scheduling order between equal deadlines). Numeric
//! deadlines come out sorted whatever the heap's shape; a NaN deadline, which compares
//! false with everything, stays where the sifting leaves it, and comes out (disturbing
//! the order of the others) just where it does from asyncio's heap.

/// One timer: its deadline, its place in scheduling order, and what it carries.
struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    /// asyncio's `TimerHandle.__lt__` (deadline against deadline, false for a NaN),
    /// with scheduling order between equal deadlines.
    #[inline]
    fn lt(&self, other: &Self) -> bool {
        self.when < other.when || (self.when == other.when && self.seq < other.seq)
    }
}

/// Timers waiting for their deadline.
pub struct TimerHeap<T> {
    heap: Vec<Entry<T>>,
    /// Counts pushes; the tie-breaker between equal deadlines.
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap {
            heap: Vec::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    /// `heapq.heappush`.
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
        let last = self.heap.len() - 1;
        self.sift_down(0, last);
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The head: the earliest deadline and its item.
    pub fn peek(&self) -> Option<(f64, &T)> {
        self.heap.first().map(|e| (e.when, &e.item))
    }

    /// `heapq.heappop`: the head comes out, the last entry takes its place and sinks.
    pub fn pop(&mut self) -> Option<(f64, T)> {
        let last = self.heap.pop()?;
        let e = if self.heap.is_empty() {
            last
        } else {
            let head = std::mem::replace(&mut self.heap[0], last);
            self.sift_up(0);
            head
        };
        Some((e.when, e.item))
    }

    /// Pops the head unless its deadline is `end` or later, as asyncio's run step takes
    /// due timers (`if handle._when >= end_time: break`): a NaN deadline at the head is
    /// taken.
    pub fn pop_due(&mut self, end: f64) -> Option<T> {
        match self.heap.first() {
            Some(e) if e.when < end || e.when.is_nan() => self.pop().map(|(_, item)| item),
            _ => None,
        }
    }

    /// Keeps the items for which `keep` is true, moving the others into `removed`,
    /// and rebuilds the heap from the survivors in the order they were held, as asyncio
    /// compacts its heap (a list comprehension, then `heapq.heapify`).
    pub fn retain_into(&mut self, mut keep: impl FnMut(&T) -> bool, removed: &mut Vec<T>) {
        let old = std::mem::take(&mut self.heap);
        let mut kept = Vec::with_capacity(old.len());
        for e in old {
            if keep(&e.item) {
                kept.push(e);
            } else {
                removed.push(e.item);
            }
        }
        self.heap = kept;
        self.heapify();
    }

    /// Empties the heap, handing back every item.
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap).into_iter().map(|e| e.item).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }

    /// heapq's `_siftdown`: the entry at `pos` rises while it is less than its parent,
    /// no higher than `start`.
    fn sift_down(&mut self, start: usize, mut pos: usize) {
        let heap = &mut self.heap;
        while pos > start {
            let parent = (pos - 1) >> 1;
            if !heap[pos].lt(&heap[parent]) {
                break;
            }
            heap.swap(pos, parent);
            pos = parent;
        }
    }

    /// heapq's `_siftup`: the entry at `start` goes down to a leaf, each time swapping
    /// with the smaller child (the right one unless the left is less), then rises back
    /// (`sift_down`) no higher than `start`.
    fn sift_up(&mut self, start: usize) {
        let heap = &mut self.heap;
        let end = heap.len();
        let mut pos = start;
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            if right < end && !heap[child].lt(&heap[right]) {
                child = right;
            }
            heap.swap(pos, child);
            pos = child;
            child = 2 * pos + 1;
        }
        self.sift_down(start, pos);
    }

    /// `heapq.heapify`: `sift_up` from the last parent back to the root. (The C module
    /// goes in another order above 2,500 entries, to stay in cache, but sifts each node
    /// after its children and touches only its subtree, so the heap comes out the same
    /// even where a NaN breaks the order.)
    fn heapify(&mut self) {
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_up(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_deadline_then_scheduling_order() {
        let mut h = TimerHeap::default();
        h.push(3.0, "c");
        h.push(1.0, "a1");
        h.push(2.0, "b");
        h.push(1.0, "a2");
        h.push(1.0, "a3");
        let order: Vec<_> = std::iter::from_fn(|| h.pop().map(|(_, x)| x)).collect();
        assert_eq!(order, ["a1", "a2", "a3", "b", "c"]);
    }

    #[test]
    fn ties_keep_order_over_many_items() {
        let mut h = TimerHeap::default();
        for i in 0..1000 {
            h.push(5.0, i);
        }
        let order: Vec<_> = std::iter::from_fn(|| h.pop().map(|(_, x)| x)).collect();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn pop_due_respects_the_end() {
        let mut h = TimerHeap::default();
        h.push(1.0, 1);
        h.push(2.0, 2);
        assert_eq!(h.pop_due(1.0), None);
        assert_eq!(h.pop_due(1.5), Some(1));
        assert_eq!(h.pop_due(1.5), None);
        assert_eq!(h.peek().map(|(w, _)| w), Some(2.0));
    }

    fn pop_all<T>(h: &mut TimerHeap<T>) -> Vec<T> {
        std::iter::from_fn(|| h.pop().map(|(_, x)| x)).collect()
    }

    #[test]
    fn a_nan_deadline_comes_out_where_heapq_puts_it() {
        // Pop orders of Python's heapq for the same pushes (asyncio's, for timers all
        // due at once).
        let cases: [(&[f64], &[usize]); 5] = [
            (&[f64::NAN], &[0]),
            (&[-1.0, f64::NAN], &[0, 1]),
            (&[f64::NAN, f64::NEG_INFINITY], &[0, 1]),
            (&[-2.0, -1.0, f64::NAN, -3.0], &[3, 2, 0, 1]),
            (&[-1.0, f64::NAN, -2.0, -3.0, -4.0, -5.0], &[5, 2, 4, 3, 1, 0]),
        ];
        for (whens, order) in cases {
            let mut h = TimerHeap::default();
            for (i, &w) in whens.iter().enumerate() {
                h.push(w, i);
            }
            assert_eq!(pop_all(&mut h), order, "{whens:?}");
        }
    }

    #[test]
    fn a_nan_deadline_is_due_and_numbers_wait() {
        let mut h = TimerHeap::default();
        h.push(5.0, "later");
        h.push(f64::NAN, "nan");
        // The NaN is behind a deadline that is not due: it waits for it, as in asyncio.
        assert_eq!(h.pop_due(1.0), None);
        assert_eq!(h.pop_due(6.0), Some("later"));
        assert_eq!(h.pop_due(6.0), Some("nan"));
        h.push(f64::NAN, "nan");
        h.push(f64::INFINITY, "inf");
        assert_eq!(h.pop_due(f64::MAX), Some("nan"));
        assert_eq!(h.pop_due(f64::MAX), None);
    }

    /// A generator of deadlines that Python can repeat: one in seven is NaN.
    struct Lcg(u64);

    impl Lcg {
        fn next_when(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if self.0.is_multiple_of(7) {
                f64::NAN
            } else {
                (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 1000.0
            }
        }
    }

    #[test]
    fn pushes_pops_and_compaction_match_heapq_with_nans() {
        // Python's heapq, on objects whose `<` compares these deadlines, given the same
        // operations, pops the same 3704 ids in an order whose FNV-1a hash (of each id
        // as 8 little-endian bytes) is this:
        const HEAPQ_ORDER_HASH: u64 = 0x519937c0fe29ab55;
        let mut lcg = Lcg(1);
        let mut h = TimerHeap::default();
        let mut id = 0u64;
        let mut push = |h: &mut TimerHeap<u64>| {
            h.push(lcg.next_when(), id);
            id += 1;
        };
        for _ in 0..5000 {
            push(&mut h);
        }
        let mut out: Vec<u64> = (0..500).map(|_| h.pop().unwrap().1).collect();
        // A compaction as asyncio's: survivors in the order held, then heapify (of over
        // 2,500 entries, where the C module goes in its cache-friendly order).
        let mut removed = Vec::new();
        h.retain_into(|i| i % 3 != 0, &mut removed);
        assert_eq!(h.len(), 3004);
        for _ in 0..200 {
            push(&mut h);
        }
        out.extend(pop_all(&mut h));
        assert_eq!(out.len(), 3704);
        assert_eq!(
            &out[..12],
            [879, 734, 6, 14, 2119, 1155, 2925, 253, 53, 891, 2055, 4056]
        );
        let hash = out
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        assert_eq!(hash, HEAPQ_ORDER_HASH);
    }

    #[test]
    fn retain_into_keeps_order_of_survivors() {
        let mut h = TimerHeap::default();
        for i in 0..200 {
            h.push((i % 7) as f64, i);
        }
        let mut removed = Vec::new();
        h.retain_into(|x| x % 2 == 0, &mut removed);
        assert_eq!(removed.len(), 100);
        let mut prev = (f64::MIN, -1);
        while let Some((w, x)) = h.pop() {
            assert!(x % 2 == 0);
            assert!((w, x) > prev);
            prev = (w, x);
        }
    }
}
