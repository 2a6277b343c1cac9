//! Flow hashing, shared so that host tests can predict which Maglev slot a packet lands in, and so
//! that two balancers of a site pick the same real for the same flow.
//!
//! MurmurHash3 (x86, 32-bit) over whole 32-bit words: a fixed number of steps, no loops the
//! verifier has to bound, and good avalanche for the ring index and the outer-source entropy.

use crate::FlowKey;

/// Fixed seed: every balancer must hash a flow to the same slot.
const SEED: u32 = 0x5eed_1b00;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[inline(always)]
fn mix_addr(h: u32, a: &[u8; 16]) -> u32 {
    let h = mix(h, word(a, 0));
    let h = mix(h, word(a, 4));
    let h = mix(h, word(a, 8));
    mix(h, word(a, 12))
}

/// Hash of the 5-tuple: picks the ring slot of a new flow.
#[inline(always)]
pub fn flow_hash(f: &FlowKey) -> u32 {
    let h = mix_addr(SEED, &f.src);
    let h = mix_addr(h, &f.dst);
    let h = mix(h, (f.src_port_be as u32) << 16 | f.dst_port_be as u32);
    let h = mix(h, f.proto as u32);
    finish(h, 40)
}

/// Hash of the source address alone: the ring slot for source-affinity VIPs.
#[inline(always)]
pub fn source_hash(src: &[u8; 16]) -> u32 {
    finish(mix_addr(SEED, src), 16)
}

/// Bit of `addr` in the VIP-address pre-filter: cheap (no multiply chain), as it runs on every
/// IP packet.
#[inline(always)]
pub fn addr_filter_bit(addr: &[u8; 16]) -> u32 {
    let folded = word(addr, 0) ^ word(addr, 4) ^ word(addr, 8) ^ word(addr, 12);
    folded.wrapping_mul(0x9e37_79b1) >> (32 - crate::VIP_FILTER_BITS.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = FlowKey { src: [1; 16], dst: [2; 16], src_port_be: 3, dst_port_be: 4, proto: 6, _pad: [0; 3] };
        let h = flow_hash(&base);
        let variants = [
            FlowKey { src: [9; 16], ..base },
            FlowKey { dst: [9; 16], ..base },
            FlowKey { src_port_be: 9, ..base },
            FlowKey { dst_port_be: 9, ..base },
            FlowKey { proto: 17, ..base },
        ];
        for v in variants {
            assert_ne!(flow_hash(&v), h, "{v:?}");
        }
        assert_eq!(flow_hash(&base), h, "deterministic");
    }

    #[test]
    fn addr_filter_bit_is_in_range_and_spreads() {
        let mut seen = [false; crate::VIP_FILTER_BITS as usize];
        for i in 0..1000u32 {
            let addr = crate::ipv4_mapped((0x0a00_0000 + i).to_be_bytes());
            seen[addr_filter_bit(&addr) as usize] = true;
        }
        assert!(seen.iter().filter(|&&b| b).count() > 990, "1000 addresses spread over bits");
    }

    #[test]
    fn source_hash_ignores_nothing_but_ports() {
        assert_ne!(source_hash(&[1; 16]), source_hash(&[2; 16]));
    }
}
