//! The draft's test vectors (draft-ietf-quic-load-balancers-21, appendix "Load Balancer Test
//! Vectors", and the four-pass encryption example) through the reference codec and through the
//! data plane's block form with its own AES; then both against each other on every length.

use aes::{
    cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit},
    Aes128,
};
use lb_common::{aes as block_aes, quic_lb::QuicLbParams};

use super::*;

fn h(text: &str) -> Vec<u8> {
    parse_hex(text).expect("hex")
}

fn key16(text: &str) -> [u8; 16] {
    h(text).try_into().expect("16 octets")
}

/// The server ID as the data plane finds it in `cid`: the 16 octets after the first (zeroes
/// past the ID's end, as a short packet's bytes would be anything) in block form.
fn data_plane_server_id(params: &QuicLbParams, cid: &[u8]) -> Vec<u8> {
    let mut body = [0u8; 40];
    body[..cid.len() - 1].copy_from_slice(&cid[1..]);
    let block = |from: usize| block_aes::block_words(body[from..from + 16].try_into().expect("16"));
    let sid = params.server_id(block(0), block(params.right_offset as usize), &mut Default::default());
    let octets: Vec<u8> = sid.iter().flat_map(|w| w.to_be_bytes()).collect();
    octets[..params.server_id_len as usize].to_vec()
}

/// A vector: (config rotation bits, server ID, nonce, connection ID), with the server encoding
/// the length in the first octet.
fn check_vector(key: Option<[u8; 16]>, config_id: u8, sid: &str, nonce: &str, cid: &str) {
    let (sid, nonce, cid) = (h(sid), h(nonce), h(cid));
    let config = QuicLbConfig { config_id, server_id_len: sid.len() as u8, nonce_len: nonce.len() as u8, cid_len: cid.len() as u8, key };
    let encoded = config.encode(&sid, &nonce, (cid.len() - 1) as u8, &[]);
    assert_eq!(hex(&encoded[1..]), hex(&cid[1..]), "encoded");
    assert_eq!(config.decode(&cid), Some(sid.clone()), "reference decode");
    assert_eq!(data_plane_server_id(&config.params(), &cid), sid, "data plane decode");
}

#[test]
fn unencrypted_vectors() {
    check_vector(None, 0, "c4605e", "4504cc4f", "07c4605e4504cc4f");
    // The draft's second row lists server ID 350d28b420 and nonce 3487d970b next to CID
    // 20a350d28b4203487d970b: the columns are off by a digit. The CID's own octets are used.
    check_vector(None, 1, "a350d28b42", "03487d970b", "20a350d28b4203487d970b");
}

#[test]
fn encrypted_vectors() {
    let key = Some(key16("8f95f09245765f80256934e50c66207f"));
    check_vector(key, 0, "ed793a", "ee080dbf", "0720b1d07b359d3c");
    check_vector(key, 1, "ed793a51d49b8f5fab65", "ee080dbf48", "2fcc381bc74cb4fbad2823a3d1f8fed2");
    check_vector(key, 2, "ed793a51d49b8f5f", "ee080dbf48c0d1e5", "504dd2d05a7b0de9b2b9907afb5ecf8cc3");
    // Listed with config rotation bits 3, while its first octet (0x12) says 0: the CID's.
    check_vector(key, 0, "ed793a51d49b8f5fab", "ee080dbf48c0d1e55d", "125779c9cc86beb3a3a4a3ca96fce4bfe0cdbc");
}

#[test]
fn four_pass_example() {
    let key = Some(key16("fdf726a9893ec05c0632d3956680baf0"));
    check_vector(key, 0, "31441a", "9c69c275", "0767947d29be054a");
}

#[test]
fn other_config_and_short_ids_are_not_decoded() {
    let config = QuicLbConfig { config_id: 2, server_id_len: 2, nonce_len: 4, cid_len: 8, key: None };
    let cid = config.encode(&[0xab, 0xcd], &[1, 2, 3, 4], 7, &[0xee]);
    assert_eq!(cid.len(), 8);
    assert_eq!(config.decode(&cid), Some(vec![0xab, 0xcd]));
    let mut other = cid.clone();
    other[0] = 0b111 << 5 | 7;
    assert_eq!(config.decode(&other), None);
    assert_eq!(config.decode(&cid[..6]), None);
}

/// A small deterministic generator: the same cases on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn octets(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn data_plane_aes_matches_the_aes_crate() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200 {
        let key: [u8; 16] = rng.octets(16).try_into().expect("16");
        let plain: [u8; 16] = rng.octets(16).try_into().expect("16");
        let (enc, dec) = block_aes::expand_key(key);
        let cipher = Aes128::new(&key.into());
        let mut block = GenericArray::from(plain);
        cipher.encrypt_block(&mut block);
        let ours = block_aes::encrypt(block_aes::block_words(plain), &enc);
        assert_eq!(ours, block_aes::block_words(block.into()), "encrypt with key {}", hex(&key));
        let back = block_aes::decrypt(ours, &dec);
        assert_eq!(back, block_aes::block_words(plain), "decrypt");
        let mut again = block;
        cipher.decrypt_block(&mut again);
        assert_eq!(again.as_slice(), plain);
    }
}

#[test]
fn data_plane_decodes_what_the_reference_encodes_at_every_length() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for sid_len in 1..=15u8 {
        for nonce_len in 4..=(19 - sid_len) {
            for encrypted in [false, true] {
                let key = encrypted.then(|| rng.octets(16).try_into().expect("16"));
                let cid_len = (1 + sid_len + nonce_len + (rng.next() % 2) as u8).min(20);
                let config = QuicLbConfig { config_id: (rng.next() % 7) as u8, server_id_len: sid_len, nonce_len, cid_len, key };
                for _ in 0..4 {
                    let sid = rng.octets(sid_len.into());
                    let nonce = rng.octets(nonce_len.into());
                    let cid = config.encode(&sid, &nonce, (rng.next() & 0x1f) as u8, &rng.octets(2));
                    assert_eq!(cid.len(), cid_len as usize);
                    let what = format!("sid {sid_len} nonce {nonce_len} key {encrypted}: {}", hex(&cid));
                    assert_eq!(config.decode(&cid).as_deref(), Some(&sid[..]), "reference, {what}");
                    assert_eq!(data_plane_server_id(&config.params(), &cid), sid, "data plane, {what}");
                }
            }
        }
    }
}
