//! Where each Maglev ring lives in `MAGLEV`'s slot pool: first-fit allocation of slot ranges,
//! merged back when freed. The pool is sized at load from the config (two rings per VIP), so
//! kernel memory follows what is configured rather than the largest possible ring of every VIP.

use std::collections::BTreeMap;

/// A range of pool slots holding one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub base: u32,
    pub len: u32,
}

#[derive(Debug, Clone)]
pub struct RingPool {
    size: u32,
    /// Free ranges: start -> length, never adjacent (merged on free).
    free: BTreeMap<u32, u32>,
}

impl RingPool {
    pub fn new(size: u32) -> Self {
        let free = if size > 0 { BTreeMap::from([(0, size)]) } else { BTreeMap::new() };
        Self { size, free }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn free_slots(&self) -> u32 {
        self.free.values().sum()
    }

    /// The first free range of `len` slots, taken.
    pub fn alloc(&mut self, len: u32) -> Option<Region> {
        let (&start, &free_len) = self.free.iter().find(|&(_, &l)| l >= len)?;
        self.free.remove(&start);
        if free_len > len {
            self.free.insert(start + len, free_len - len);
        }
        Some(Region { base: start, len })
    }

    /// Takes `region` out of the free ranges (a ring found in the maps after a restart); false if
    /// any of it is not free (outside the pool or taken already).
    pub fn reserve(&mut self, region: Region) -> bool {
        let end = region.base as u64 + region.len as u64;
        let Some((&start, &len)) = self.free.range(..=region.base).next_back() else { return false };
        if end > start as u64 + len as u64 {
            return false;
        }
        self.free.remove(&start);
        if region.base > start {
            self.free.insert(start, region.base - start);
        }
        let after = (start as u64 + len as u64 - end) as u32;
        if after > 0 {
            self.free.insert(end as u32, after);
        }
        true
    }

    /// Gives `region` back, merging it with free neighbours.
    pub fn free(&mut self, region: Region) {
        let (mut start, mut len) = (region.base, region.len);
        if let Some((&before, &before_len)) = self.free.range(..start).next_back() {
            if before + before_len == start {
                self.free.remove(&before);
                start = before;
                len += before_len;
            }
        }
        if let Some(&after_len) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += after_len;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_taken_first_fit_and_merged_back_when_freed() {
        let mut pool = RingPool::new(100);
        let a = pool.alloc(30).unwrap();
        let b = pool.alloc(30).unwrap();
        let c = pool.alloc(30).unwrap();
        assert_eq!((a.base, b.base, c.base), (0, 30, 60));
        assert_eq!(pool.alloc(11), None, "10 left");
        pool.free(b);
        assert_eq!(pool.alloc(31), None, "a hole of 30 and a tail of 10 are not 31");
        pool.free(a);
        assert_eq!(pool.alloc(60), Some(Region { base: 0, len: 60 }), "a and b merged");
        pool.free(Region { base: 0, len: 60 });
        pool.free(c);
        assert_eq!(pool.free_slots(), 100);
        assert_eq!(pool.alloc(100), Some(Region { base: 0, len: 100 }), "all one range again");
    }

    #[test]
    fn reserving_takes_exactly_a_free_region() {
        let mut pool = RingPool::new(100);
        assert!(pool.reserve(Region { base: 40, len: 20 }));
        assert!(!pool.reserve(Region { base: 50, len: 5 }), "taken already");
        assert!(!pool.reserve(Region { base: 90, len: 20 }), "beyond the pool");
        assert_eq!(pool.alloc(41), None);
        assert_eq!(pool.alloc(40), Some(Region { base: 0, len: 40 }));
        assert_eq!(pool.alloc(40), Some(Region { base: 60, len: 40 }));
    }
}
