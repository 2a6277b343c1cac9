//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4), weighted. Pure std: no aya, no I/O.
//!
//! Each real gets a permutation of the M slots from two hashes of its identity (offset, skip);
//! reals then take turns claiming their next free slot until the table is full. Weights change
//! how often a real gets a turn. The table depends only on the set of (identity, id, weight), not
//! on the order reals are listed in, so every balancer of a site builds the same table.

/// A real as Maglev sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevReal {
    /// Stable identity the permutation derives from (the real's 16-byte address).
    pub identity: [u8; 16],
    /// What the table stores for this real (its id in `REALS`; never 0).
    pub id: u32,
    /// Relative share; 0 takes no slots (draining).
    pub weight: u32,
}

/// Table slot value meaning "no real" (an empty set of reals).
pub const EMPTY: u32 = 0;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A seeded 64-bit hash of 16 bytes; seeds give the two independent hashes Maglev needs.
fn hash_identity(identity: &[u8; 16], seed: u64) -> u64 {
    let lo = u64::from_le_bytes(identity[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(identity[8..].try_into().expect("8 bytes"));
    splitmix64(splitmix64(seed ^ lo) ^ hi)
}

const OFFSET_SEED: u64 = 0x6f66_6673_6574; // "offset"
const SKIP_SEED: u64 = 0x0000_736b_6970; // "skip"

/// Whether `n` is prime (Maglev's table size must be, so every skip walks all slots).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// Builds the lookup table of `size` slots (a prime). Reals with weight 0 get no slots; with no
/// weighted reals every slot is `EMPTY`.
pub fn build_table(reals: &[MaglevReal], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} must be prime");
    let m = size as u64;
    let mut table = vec![EMPTY; size as usize];

    let mut live: Vec<&MaglevReal> = reals.iter().filter(|r| r.weight > 0).collect();
    if live.is_empty() {
        return table;
    }
    live.sort_by_key(|r| (r.identity, r.id));
    let max_weight = live.iter().map(|r| r.weight as u64).max().unwrap_or(1);

    struct Turn {
        id: u32,
        weight: u64,
        offset: u64,
        skip: u64,
        next: u64,
        credit: u64,
    }
    let mut turns: Vec<Turn> = live
        .iter()
        .map(|r| Turn {
            id: r.id,
            weight: r.weight as u64,
            offset: hash_identity(&r.identity, OFFSET_SEED) % m,
            skip: hash_identity(&r.identity, SKIP_SEED) % (m - 1) + 1,
            next: 0,
            credit: 0,
        })
        .collect();

    let mut filled = 0u64;
    loop {
        for t in &mut turns {
            // Weighted round robin: a real claims a slot each time its credit reaches the
            // heaviest weight, so per round it claims weight / max_weight slots on average.
            t.credit += t.weight;
            if t.credit < max_weight {
                continue;
            }
            t.credit -= max_weight;
            loop {
                let slot = ((t.offset + t.next * t.skip) % m) as usize;
                t.next += 1;
                if table[slot] == EMPTY {
                    table[slot] = t.id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                return table;
            }
        }
    }
}

/// The slots whose real differs between two tables of the same size: `(slot, new real id)`.
pub fn diff(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    assert_eq!(old.len(), new.len(), "tables of different sizes");
    old.iter().zip(new).enumerate().filter(|(_, (a, b))| a != b).map(|(slot, (_, &b))| (slot as u32, b)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const M: u32 = 65_537;

    fn real(i: u32, weight: u32) -> MaglevReal {
        let mut identity = [0u8; 16];
        identity[10] = 0xff;
        identity[11] = 0xff;
        identity[12..].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
        MaglevReal { identity, id: i + 1, weight }
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for &id in table {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_share_within_one_percent() {
        let reals: Vec<_> = (0..100).map(|i| real(i, 1)).collect();
        let counts = shares(&build_table(&reals, M));
        let ideal = M as f64 / 100.0;
        let worst = counts.values().map(|&c| (c as f64 - ideal).abs() / ideal).fold(0.0, f64::max);
        println!("100 equal reals, M={M}: worst deviation from M/N = {:.3}%", worst * 100.0);
        assert_eq!(counts.len(), 100);
        assert!(!counts.contains_key(&EMPTY), "no holes");
        assert!(worst <= 0.01, "worst deviation {worst}");
    }

    #[test]
    fn unequal_weights_follow_weights_within_one_percent() {
        let weights = [1, 2, 3, 5, 10, 7, 1, 4];
        let reals: Vec<_> = weights.iter().enumerate().map(|(i, &w)| real(i as u32, w)).collect();
        let counts = shares(&build_table(&reals, M));
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let share = counts[&(i as u32 + 1)] as f64 / M as f64;
            let want = w as f64 / total as f64;
            println!("weight {w:>2}: share {:.4} want {want:.4}", share);
            assert!((share - want).abs() <= 0.01 * want, "weight {w}: {share} vs {want}");
        }
    }

    #[test]
    fn removing_one_real_moves_close_to_its_own_slots() {
        for n in [10u32, 100] {
            let reals: Vec<_> = (0..n).map(|i| real(i, 1)).collect();
            let before = build_table(&reals, M);
            let removed = reals[(n / 2) as usize].id;
            let after = build_table(&reals.iter().filter(|r| r.id != removed).cloned().collect::<Vec<_>>(), M);
            let changed = diff(&before, &after).len() as f64 / M as f64;
            let collateral = before.iter().zip(&after).filter(|(a, b)| a != b && **a != removed).count();
            let minimal = 1.0 / n as f64;
            println!(
                "N={n}: {:.3}% of slots moved (minimal {:.3}%), {collateral} slots of other reals moved",
                changed * 100.0,
                minimal * 100.0
            );
            assert!(changed >= minimal * 0.99, "at least the removed real's slots move");
            assert!(changed <= minimal * 1.6, "moved {changed}, minimal {minimal}");
        }
    }

    #[test]
    fn table_is_deterministic_and_order_independent() {
        let reals: Vec<_> = (0..20).map(|i| real(i, 1 + i % 3)).collect();
        let mut reversed = reals.clone();
        reversed.reverse();
        assert_eq!(build_table(&reals, M), build_table(&reals, M));
        assert_eq!(build_table(&reals, M), build_table(&reversed, M));
    }

    #[test]
    fn one_real_fills_the_table_and_none_leaves_it_empty() {
        assert!(build_table(&[real(0, 1)], 13).iter().all(|&id| id == 1));
        assert!(build_table(&[], 13).iter().all(|&id| id == EMPTY));
        assert!(build_table(&[real(0, 0)], 13).iter().all(|&id| id == EMPTY), "weight 0 drains");
    }

    #[test]
    fn heavier_real_gets_more_slots() {
        let counts = shares(&build_table(&[real(0, 1), real(1, 2)], 251));
        assert!(counts[&2] > counts[&1]);
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(13) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0) && !is_prime(91));
    }
}
