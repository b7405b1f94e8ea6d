//! The timer heap: a binary min-heap ordered by deadline, ties broken by the order
//! of scheduling, so two timers due at the same instant fire in the order they were
//! made. Cancelled timers stay in the heap until they reach its head or until the
//! owner compacts it (asyncio's policy: more than 100 timers, over half cancelled).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and the earliest deadline must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.when.total_cmp(&self.when).then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Timers waiting for their deadline.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    /// Counts pushes; the tie-breaker between equal deadlines.
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The head: the earliest deadline and its item.
    pub fn peek(&self) -> Option<(f64, &T)> {
        self.heap.peek().map(|e| (e.when, &e.item))
    }

    pub fn pop(&mut self) -> Option<(f64, T)> {
        self.heap.pop().map(|e| (e.when, e.item))
    }

    /// Pops the head if it is due strictly before `end`.
    pub fn pop_due(&mut self, end: f64) -> Option<T> {
        match self.heap.peek() {
            Some(e) if e.when < end => self.heap.pop().map(|e| e.item),
            _ => None,
        }
    }

    /// Keeps the items for which `keep` is true, moving the others into `removed`,
    /// and rebuilds the heap. Order among survivors is preserved.
    pub fn retain_into(&mut self, mut keep: impl FnMut(&T) -> bool, removed: &mut Vec<T>) {
        let old = std::mem::take(&mut self.heap).into_vec();
        let mut kept = Vec::with_capacity(old.len());
        for e in old {
            if keep(&e.item) {
                kept.push(e);
            } else {
                removed.push(e.item);
            }
        }
        self.heap = BinaryHeap::from(kept);
    }

    /// Empties the heap, handing back every item.
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
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
