//! QUIC-LB (draft-ietf-quic-load-balancers-21): routing a QUIC short-header packet by the server
//! ID its backend wrote into the destination connection ID, so a connection keeps its real when
//! the client's address or port changes.
//!
//! A connection ID is: the first octet (its three high bits the config rotation, `config_id`),
//! then `server_id_len + nonce_len` octets holding the server ID and a nonce (in plaintext, or
//! encrypted with AES-128-ECB: one pass when they are 16 octets together, else a four-pass
//! Feistel network), then anything up to `cid_len` the server adds.

use crate::aes;

/// The config rotation codepoint that always means "unroutable" (draft section 2.2).
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;
/// Longest connection ID QUIC version 1 allows.
pub const MAX_CID_LEN: u8 = 20;
/// Server ID and nonce together, at most (the first octet takes the 20th).
pub const MAX_PLAINTEXT_LEN: u8 = 19;
pub const MIN_NONCE_LEN: u8 = 4;
/// Longest server ID: the rest of 19 octets after the shortest nonce.
pub const MAX_SERVER_ID_LEN: u8 = MAX_PLAINTEXT_LEN - MIN_NONCE_LEN;
/// Octets of a QUIC short header the data plane reads at once: the first byte and a whole
/// 20-octet connection ID. Every QUIC packet is longer (RFC 9000 section 5.4.2: header
/// protection samples 16 octets starting 4 after the packet number).
pub const SHORT_HEADER_READ: usize = 1 + MAX_CID_LEN as usize;

/// `QuicLbParams::mode`: QUIC-LB off for the VIP (the entry is all zeroes) ...
pub const MODE_OFF: u8 = 0;
/// ... the server ID in plaintext ...
pub const MODE_PLAINTEXT: u8 = 1;
/// ... server ID and nonce, 16 octets together, one AES-128-ECB block ...
pub const MODE_SINGLE_PASS: u8 = 2;
/// ... or any other length, a four-pass Feistel network with AES-128-ECB as its round function.
pub const MODE_FOUR_PASS: u8 = 3;

/// Value of the `QUIC_LB` array (by VIP index): how the VIP's connection IDs are read, with
/// everything that depends on the lengths worked out by the control plane (`new`), so the data
/// plane works on whole 16-octet blocks with masks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuicLbParams {
    /// `MODE_*`.
    pub mode: u8,
    /// Config rotation bits (0 ..= 6) a routable connection ID carries.
    pub config_id: u8,
    /// Length of the destination connection ID in short headers (the first octet, server ID,
    /// nonce, and whatever the servers add).
    pub cid_len: u8,
    pub server_id_len: u8,
    pub nonce_len: u8,
    /// Four passes: where the right half starts in server ID and nonce (`plaintext_len -
    /// half_len`), and whether the server ID reaches into it (a fourth pass).
    pub right_offset: u8,
    pub fourth_pass: u8,
    pub _pad: u8,
    /// The server ID's octets in a block (the rest of the block is cleared).
    pub server_id_mask: [u32; 4],
    /// Four passes: the left and right halves in a block (an odd length splits its middle
    /// octet: the left keeps its high four bits, the right its low four).
    pub left_mask: [u32; 4],
    pub right_mask: [u32; 4],
    /// The key's encryption schedule (the four passes' round function) and decryption schedule
    /// (the single pass).
    pub encrypt_keys: [u32; aes::SCHEDULE_WORDS],
    pub decrypt_keys: [u32; aes::SCHEDULE_WORDS],
}
const _: () = assert!(core::mem::size_of::<QuicLbParams>() == 8 + 3 * 16 + 2 * 4 * aes::SCHEDULE_WORDS);

impl Default for QuicLbParams {
    fn default() -> Self {
        Self::OFF
    }
}

/// A block whose first `n` octets are all ones.
const fn leading_octets(n: u8) -> [u32; 4] {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < n as usize && i < 16 {
        bytes[i] = 0xff;
        i += 1;
    }
    aes::block_words(bytes)
}

impl QuicLbParams {
    pub const OFF: Self = Self {
        mode: MODE_OFF,
        config_id: 0,
        cid_len: 0,
        server_id_len: 0,
        nonce_len: 0,
        right_offset: 0,
        fourth_pass: 0,
        _pad: 0,
        server_id_mask: [0; 4],
        left_mask: [0; 4],
        right_mask: [0; 4],
        encrypt_keys: [0; aes::SCHEDULE_WORDS],
        decrypt_keys: [0; aes::SCHEDULE_WORDS],
    };

    /// The entry for lengths the caller validated (`server_id_len` 1 ..= 15, `nonce_len` >= 4,
    /// both at most 19, `cid_len` from their sum + 1 to 20), in plaintext without `key`.
    pub const fn new(config_id: u8, server_id_len: u8, nonce_len: u8, cid_len: u8, key: Option<[u8; 16]>) -> Self {
        let plaintext_len = server_id_len + nonce_len;
        let half_len = plaintext_len.div_ceil(2);
        let odd = plaintext_len % 2 == 1;
        let mut left_mask = leading_octets(half_len);
        let mut right_mask = leading_octets(half_len);
        if odd {
            // The middle octet is the last of the left half and the first of the right.
            let shift = 8 * (3 - (half_len as u32 - 1) % 4);
            left_mask[(half_len as usize - 1) / 4] &= !(0x0f << shift);
            right_mask[0] &= 0x0fff_ffff;
        }
        let (mode, encrypt_keys, decrypt_keys) = match key {
            None => (MODE_PLAINTEXT, [0; aes::SCHEDULE_WORDS], [0; aes::SCHEDULE_WORDS]),
            Some(key) => {
                let (e, d) = aes::expand_key(key);
                (if plaintext_len == 16 { MODE_SINGLE_PASS } else { MODE_FOUR_PASS }, e, d)
            }
        };
        Self {
            mode,
            config_id,
            cid_len,
            server_id_len,
            nonce_len,
            right_offset: plaintext_len - half_len,
            // Three passes give the left half: enough when the server ID lies inside its whole
            // octets (the nonce is at least as long).
            fourth_pass: (2 * server_id_len > plaintext_len) as u8,
            _pad: 0,
            server_id_mask: leading_octets(server_id_len),
            left_mask,
            right_mask,
            encrypt_keys,
            decrypt_keys,
        }
    }

    /// The server ID, masked in a block, of a connection ID whose octets after the first are
    /// `body` (16 octets, whatever lies past the ID); `right` is the 16 octets from
    /// `right_offset` within `body` (read only by the four passes). The blocks being worked on
    /// live in `work` (the data plane gives it map memory: its stack is small).
    #[inline(always)]
    pub fn server_id(&self, body: [u32; 4], right: [u32; 4], work: &mut Work) -> [u32; 4] {
        let plain = match self.mode {
            MODE_SINGLE_PASS => {
                work.block = body;
                aes::decrypt_in_place(&mut work.block, &self.decrypt_keys);
                work.block
            }
            MODE_FOUR_PASS => {
                work.left = and(body, self.left_mask);
                work.right = and(right, self.right_mask);
                self.four_passes(work)
            }
            _ => body,
        };
        and(plain, self.server_id_mask)
    }

    /// Undoes the Feistel network from its last pass: three passes give the left half, a
    /// fourth the right.
    #[inline(always)]
    fn four_passes(&self, w: &mut Work) -> [u32; 4] {
        // left_1, right_1, left_0 from left_2 and right_2.
        self.pass(w, Half::Right, 4);
        self.pass(w, Half::Left, 3);
        self.pass(w, Half::Right, 2);
        if self.fourth_pass == 0 {
            return w.left;
        }
        // right_0.
        self.pass(w, Half::Left, 1);
        or(w.left, shift_right_octets(w.right, self.right_offset as u32))
    }

    /// One pass: the other half XOR AES of the draft's `expand(plaintext_len, pass, from)` (the
    /// half, zeroes, the length and the pass number in the last two octets), then masked.
    #[inline(always)]
    fn pass(&self, w: &mut Work, from: Half, pass: u32) {
        w.block = if from == Half::Left { w.left } else { w.right };
        w.block[3] |= ((self.server_id_len + self.nonce_len) as u32) << 8 | pass;
        aes::encrypt_in_place(&mut w.block, &self.encrypt_keys);
        if from == Half::Left {
            w.right = and(xor(w.right, w.block), self.right_mask);
        } else {
            w.left = and(xor(w.left, w.block), self.left_mask);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    Left,
    Right,
}

/// Blocks `QuicLbParams::server_id` works on.
#[derive(Clone, Copy, Default)]
pub struct Work {
    pub left: [u32; 4],
    pub right: [u32; 4],
    pub block: [u32; 4],
}

#[inline(always)]
fn and(a: [u32; 4], b: [u32; 4]) -> [u32; 4] {
    [a[0] & b[0], a[1] & b[1], a[2] & b[2], a[3] & b[3]]
}

#[inline(always)]
fn xor(a: [u32; 4], b: [u32; 4]) -> [u32; 4] {
    [a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]]
}

#[inline(always)]
fn or(a: [u32; 4], b: [u32; 4]) -> [u32; 4] {
    [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]
}

/// `block` moved `n` (1 ..= 9) octets towards its end, octets pushed past it dropped.
#[inline(always)]
fn shift_right_octets(block: [u32; 4], n: u32) -> [u32; 4] {
    let hi = (block[0] as u64) << 32 | block[1] as u64;
    let lo = (block[2] as u64) << 32 | block[3] as u64;
    let bits = 8 * n;
    let (hi, lo) = if bits < 64 { (hi >> bits, lo >> bits | hi << (64 - bits)) } else { (0, hi >> (bits - 64)) };
    [(hi >> 32) as u32, hi as u32, (lo >> 32) as u32, lo as u32]
}

/// Key of the `QUIC_SERVERS` map: a server ID of a VIP (zero-padded). The value is the real id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerIdKey {
    pub vip_index: u32,
    pub server_id: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ServerIdKey>() == 20);

impl ServerIdKey {
    /// The key of `server_id` (at most `MAX_SERVER_ID_LEN` octets) in VIP `vip_index`.
    pub fn new(vip_index: u32, server_id: &[u8]) -> Self {
        let mut key = Self { vip_index, server_id: [0; 16] };
        let n = server_id.len().min(MAX_SERVER_ID_LEN as usize);
        key.server_id[..n].copy_from_slice(&server_id[..n]);
        key
    }
}
