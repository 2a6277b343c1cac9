//! QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21) as a server writes them and the
//! draft reads them, octet by octet with the `aes` crate: what a QUIC server behind the balancer
//! runs to issue routable IDs (docs/quic-lb.md), and the reference the data plane's block form
//! (`lb_common::quic_lb::QuicLbParams::server_id`, its own AES) is tested against.

use aes::{
    cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit},
    Aes128,
};

/// One VIP's QUIC-LB parameters, as the config gives them (lengths validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicLbConfig {
    pub config_id: u8,
    pub server_id_len: u8,
    pub nonce_len: u8,
    /// The connection ID's whole length (the first octet included).
    pub cid_len: u8,
    pub key: Option<[u8; 16]>,
}

impl QuicLbConfig {
    /// The data plane's `QUIC_LB` entry.
    pub fn params(&self) -> lb_common::quic_lb::QuicLbParams {
        lb_common::quic_lb::QuicLbParams::new(self.config_id, self.server_id_len, self.nonce_len, self.cid_len, self.key)
    }

    fn plaintext_len(&self) -> usize {
        (self.server_id_len + self.nonce_len) as usize
    }

    /// A connection ID for `server_id` with `nonce`: the first octet's low five bits are
    /// `first_low_bits` (random, or the length when self-described), and octets past server ID
    /// and nonce up to `cid_len` are `extra`'s (the server's own).
    pub fn encode(&self, server_id: &[u8], nonce: &[u8], first_low_bits: u8, extra: &[u8]) -> Vec<u8> {
        assert_eq!(server_id.len(), self.server_id_len as usize, "server ID length");
        assert_eq!(nonce.len(), self.nonce_len as usize, "nonce length");
        let mut plain = [server_id, nonce].concat();
        match self.key {
            None => {}
            Some(key) if plain.len() == 16 => {
                let mut block = GenericArray::clone_from_slice(&plain);
                Aes128::new(&key.into()).encrypt_block(&mut block);
                plain.copy_from_slice(&block);
            }
            Some(key) => plain = Feistel::new(key, plain.len()).encrypt(&plain),
        }
        let mut cid = vec![self.config_id << 5 | first_low_bits & 0x1f];
        cid.extend_from_slice(&plain);
        let pad = (self.cid_len as usize).saturating_sub(cid.len());
        cid.extend(extra.iter().copied().chain(std::iter::repeat(0)).take(pad));
        cid
    }

    /// The server ID in `cid`; None when its config rotation bits are another config's (or
    /// 0b111) or it is too short.
    pub fn decode(&self, cid: &[u8]) -> Option<Vec<u8>> {
        let n = self.plaintext_len();
        if cid.len() < 1 + n || cid[0] >> 5 != self.config_id {
            return None;
        }
        let mut plain = cid[1..1 + n].to_vec();
        match self.key {
            None => {}
            Some(key) if n == 16 => {
                let mut block = GenericArray::clone_from_slice(&plain);
                Aes128::new(&key.into()).decrypt_block(&mut block);
                plain.copy_from_slice(&block);
            }
            Some(key) => plain = Feistel::new(key, n).decrypt(&plain),
        }
        plain.truncate(self.server_id_len as usize);
        Some(plain)
    }
}

/// The draft's four-pass Feistel network over `len` octets (not 16), halves of `half` octets
/// (an odd length shares the middle octet: its high four bits are the left's, its low four the
/// right's).
struct Feistel {
    cipher: Aes128,
    len: usize,
    half: usize,
}

impl Feistel {
    fn new(key: [u8; 16], len: usize) -> Self {
        Self { cipher: Aes128::new(&key.into()), len, half: len.div_ceil(2) }
    }

    fn odd(&self) -> bool {
        self.len % 2 == 1
    }

    fn split(&self, octets: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut left = octets[..self.half].to_vec();
        let mut right = octets[self.len - self.half..].to_vec();
        if self.odd() {
            self.clear_left(&mut left);
            right[0] &= 0x0f;
        }
        (left, right)
    }

    fn clear_left(&self, left: &mut [u8]) {
        if self.odd() {
            left[self.half - 1] &= 0xf0;
        }
    }

    fn clear_right(&self, right: &mut [u8]) {
        if self.odd() {
            right[0] &= 0x0f;
        }
    }

    fn join(&self, left: &[u8], right: &[u8]) -> Vec<u8> {
        let mut out = left.to_vec();
        if self.odd() {
            out[self.half - 1] |= right[0];
            out.extend_from_slice(&right[1..]);
        } else {
            out.extend_from_slice(right);
        }
        out
    }

    /// `target XOR truncate(AES(expand(len, pass, input)), half)`.
    fn mix(&self, target: &[u8], input: &[u8], pass: u8) -> Vec<u8> {
        let mut block = [0u8; 16];
        block[..self.half].copy_from_slice(input);
        block[14] = self.len as u8;
        block[15] = pass;
        let mut block = GenericArray::from(block);
        self.cipher.encrypt_block(&mut block);
        target.iter().zip(block.iter()).map(|(t, r)| t ^ r).collect()
    }

    fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let (left_0, right_0) = self.split(plain);
        let mut right_1 = self.mix(&right_0, &left_0, 1);
        self.clear_right(&mut right_1);
        let mut left_1 = self.mix(&left_0, &right_1, 2);
        self.clear_left(&mut left_1);
        let mut right_2 = self.mix(&right_1, &left_1, 3);
        self.clear_right(&mut right_2);
        let mut left_2 = self.mix(&left_1, &right_2, 4);
        self.clear_left(&mut left_2);
        self.join(&left_2, &right_2)
    }

    fn decrypt(&self, cipher: &[u8]) -> Vec<u8> {
        let (left_2, right_2) = self.split(cipher);
        let mut left_1 = self.mix(&left_2, &right_2, 4);
        self.clear_left(&mut left_1);
        let mut right_1 = self.mix(&right_2, &left_1, 3);
        self.clear_right(&mut right_1);
        let mut left_0 = self.mix(&left_1, &right_1, 2);
        self.clear_left(&mut left_0);
        let mut right_0 = self.mix(&right_1, &left_0, 1);
        self.clear_right(&mut right_0);
        self.join(&left_0, &right_0)
    }
}

/// Octets as lower-case hex.
pub fn hex(octets: &[u8]) -> String {
    octets.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex (an even number of digits, `0x` allowed in front) as octets.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.trim().trim_start_matches("0x");
    if !digits.len().is_multiple_of(2) || digits.is_empty() {
        return None;
    }
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests;
