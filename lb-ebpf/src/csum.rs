//! Internet checksum (RFC 1071) arithmetic on fixed-size headers.

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

/// Updates a checksum (host order) when one 16-bit word changes from `old` to `new` (RFC 1624).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}
