//! Internet checksum (RFC 1071) arithmetic on fixed-size headers, and sums over packet bytes.

use aya_ebpf::{helpers::generated::bpf_csum_diff, programs::XdpContext};

use crate::pkt;

/// Folds a 32-bit one's-complement sum to 16 bits. Two folds suffice for any sum of at most
/// 65536 16-bit words.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of a 20-byte IPv4 header given as its ten 16-bit words, the checksum word 0.
#[inline(always)]
pub fn ipv4_header(words: &[u16; 10]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < words.len() {
        sum += words[i] as u32;
        i += 1;
    }
    !fold(sum)
}

/// Updates a checksum (host order) when one 16-bit word changes from `old` to `new` (RFC 1624,
/// equation 3).
///
/// Equation 3 gives 0x0000 where the data now sums to zero, and then only 0xffff is right (RFC
/// 1624 section 3: an all-zero ICMP echo reply is such data). 0xffff is right whenever
/// equation 3 gives 0x0000: a receiver adds the checksum to the data's sum and wants 0xffff,
/// and the data sums to either 0x0000 or 0xffff then; 0xffff + 0xffff folds to 0xffff too. So
/// 0x0000 is never written.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    match !fold((!check) as u32 + (!old) as u32 + new as u32) {
        0 => 0xffff,
        updated => updated,
    }
}

/// Adds the `N` packet bytes at `off` to the 32-bit partial sum `seed` (the kernel's
/// `csum_partial`, by the `bpf_csum_diff` helper). `N` is a multiple of 4, at most 512. The sum
/// is of 16-bit words as the CPU loads them: fold it, invert it and store it in native byte order.
#[inline(always)]
pub fn add_packet<const N: usize>(ctx: &XdpContext, off: usize, seed: u32) -> Option<u32> {
    const { assert!(N.is_multiple_of(4) && N <= 512, "bpf_csum_diff takes multiples of 4, up to 512") };
    let p = pkt::ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: `ptr_at` checked the N bytes lie in the frame; the helper only reads them.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, seed) };
    u32::try_from(sum).ok()
}

/// `add_packet` for `N` bytes on the stack.
#[inline(always)]
pub fn add_bytes<const N: usize>(bytes: &[u8; N], seed: u32) -> Option<u32> {
    const { assert!(N.is_multiple_of(4) && N <= 512, "bpf_csum_diff takes multiples of 4, up to 512") };
    // SAFETY: the helper only reads the N bytes.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, bytes.as_ptr() as *mut u32, N as u32, seed) };
    u32::try_from(sum).ok()
}
