//! AES-128 on one block, for QUIC-LB's encrypted connection IDs in the data plane, where no
//! crypto library exists: the round-table form (one 1 KiB table each way, rotated for the other
//! three columns), with the key schedules made by the control plane (`expand_key`). A block is
//! four big-endian words. Checked against the `aes` crate in lb-userspace's tests.
//!
//! Table lookups depend on the data, so timing depends on the data too; the key and the
//! plaintext here protect only the linkability of connection IDs (the draft's threat model),
//! and the balancer's per-packet time is not observable apart from the network's.

/// The S-box and its inverse, made at compile time.
pub const SBOX: [u8; 256] = sbox();
pub const INV_SBOX: [u8; 256] = invert(&SBOX);
/// `TE[r][x]`: the S-box then MixColumns' column for a byte of row `r` ((2s, s, s, 3s) rotated
/// right by `r` bytes): four 1 KiB tables, so a round rotates nothing (three instructions saved
/// per lookup, 108 a block, in the data plane).
pub static TE: [[u32; 256]; 4] = rotated(&column_table(&SBOX, [2, 1, 1, 3]));
/// `TD[r][x]`: the inverse S-box then InvMixColumns' column (14s, 9s, 13s, 11s), likewise.
pub static TD: [[u32; 256]; 4] = rotated(&column_table(&INV_SBOX, [14, 9, 13, 11]));
/// The S-boxes as words, for the last round (no MixColumns).
pub static SBOX_WORD: [u32; 256] = column_table(&SBOX, [1, 0, 0, 0]);
pub static INV_SBOX_WORD: [u32; 256] = column_table(&INV_SBOX, [1, 0, 0, 0]);

/// Words of an AES-128 key schedule: 11 round keys of four.
pub const SCHEDULE_WORDS: usize = 44;

const fn xtime(x: u8) -> u8 {
    (x << 1) ^ if x & 0x80 != 0 { 0x1b } else { 0 }
}

/// Multiplication in GF(2^8) with the AES polynomial.
const fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        a = xtime(a);
        b >>= 1;
    }
    product
}

/// The S-box: each byte's multiplicative inverse, then the affine map. `p` walks the field by
/// powers of 3 while `q` walks it by powers of 3's inverse, so `q` is always `p`'s inverse.
const fn sbox() -> [u8; 256] {
    let mut s = [0u8; 256];
    let (mut p, mut q) = (1u8, 1u8);
    loop {
        p ^= xtime(p);
        q ^= q << 1;
        q ^= q << 2;
        q ^= q << 4;
        if q & 0x80 != 0 {
            q ^= 0x09;
        }
        s[p as usize] = q ^ q.rotate_left(1) ^ q.rotate_left(2) ^ q.rotate_left(3) ^ q.rotate_left(4) ^ 0x63;
        if p == 1 {
            break;
        }
    }
    s[0] = 0x63;
    s
}

const fn rotated(t: &[u32; 256]) -> [[u32; 256]; 4] {
    let mut out = [[0u32; 256]; 4];
    let mut r = 0;
    while r < 4 {
        let mut i = 0;
        while i < 256 {
            out[r][i] = t[i].rotate_right(8 * r as u32);
            i += 1;
        }
        r += 1;
    }
    out
}

const fn invert(s: &[u8; 256]) -> [u8; 256] {
    let mut inv = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        inv[s[i] as usize] = i as u8;
        i += 1;
    }
    inv
}

const fn column_table(s: &[u8; 256], column: [u8; 4]) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let x = s[i];
        t[i] = u32::from_be_bytes([gmul(x, column[0]), gmul(x, column[1]), gmul(x, column[2]), gmul(x, column[3])]);
        i += 1;
    }
    t
}

/// InvMixColumns of one column: the decryption schedule's middle round keys need it.
const fn inv_mix_column(w: u32) -> u32 {
    let [a, b, c, d] = w.to_be_bytes();
    u32::from_be_bytes([
        gmul(a, 14) ^ gmul(b, 11) ^ gmul(c, 13) ^ gmul(d, 9),
        gmul(a, 9) ^ gmul(b, 14) ^ gmul(c, 11) ^ gmul(d, 13),
        gmul(a, 13) ^ gmul(b, 9) ^ gmul(c, 14) ^ gmul(d, 11),
        gmul(a, 11) ^ gmul(b, 13) ^ gmul(c, 9) ^ gmul(d, 14),
    ])
}

const fn sub_word(w: u32) -> u32 {
    let [a, b, c, d] = w.to_be_bytes();
    u32::from_be_bytes([SBOX[a as usize], SBOX[b as usize], SBOX[c as usize], SBOX[d as usize]])
}

/// The encryption schedule of `key`, and the decryption schedule of the equivalent inverse
/// cipher (round keys in reverse order, the middle ones through InvMixColumns).
pub const fn expand_key(key: [u8; 16]) -> ([u32; SCHEDULE_WORDS], [u32; SCHEDULE_WORDS]) {
    let mut w = [0u32; SCHEDULE_WORDS];
    let mut i = 0;
    while i < 4 {
        w[i] = u32::from_be_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
        i += 1;
    }
    let mut rcon: u8 = 1;
    while i < SCHEDULE_WORDS {
        let mut t = w[i - 1];
        if i % 4 == 0 {
            t = sub_word(t.rotate_left(8)) ^ (rcon as u32) << 24;
            rcon = xtime(rcon);
        }
        w[i] = w[i - 4] ^ t;
        i += 1;
    }
    let mut d = [0u32; SCHEDULE_WORDS];
    let mut round = 0;
    while round <= 10 {
        let mut j = 0;
        while j < 4 {
            let k = w[4 * (10 - round) + j];
            d[4 * round + j] = if round == 0 || round == 10 { k } else { inv_mix_column(k) };
            j += 1;
        }
        round += 1;
    }
    (w, d)
}

/// A block as four big-endian words.
pub const fn block_words(bytes: [u8; 16]) -> [u32; 4] {
    [
        u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    ]
}

#[inline(always)]
fn byte(w: u32, n: u32) -> usize {
    ((w >> (24 - 8 * n)) & 0xff) as usize
}

/// One column of a middle round: the row-0 byte of column `c0`, rows 1 to 3 from columns `c1`
/// to `c3` (ShiftRows), each through its row's table.
#[inline(always)]
fn column(t: &[[u32; 256]; 4], c0: u32, c1: u32, c2: u32, c3: u32, key: u32) -> u32 {
    t[0][byte(c0, 0)] ^ t[1][byte(c1, 1)] ^ t[2][byte(c2, 2)] ^ t[3][byte(c3, 3)] ^ key
}

/// One column of the last round: S-box bytes only.
#[inline(always)]
fn last_column(sbox: &[u32; 256], c0: u32, c1: u32, c2: u32, c3: u32, key: u32) -> u32 {
    (sbox[byte(c0, 0)] | sbox[byte(c1, 1)] >> 8 | sbox[byte(c2, 2)] >> 16 | sbox[byte(c3, 3)] >> 24) ^ key
}

// The columns are written out, not looped over: with constant indexes the state stays in
// registers (a variable index puts it on the stack, and the data plane's stack is small).

/// Encrypts one block with the schedule `rk` (`expand_key`'s first).
#[inline(always)]
pub fn encrypt(block: [u32; 4], rk: &[u32; SCHEDULE_WORDS]) -> [u32; 4] {
    let mut b = block;
    encrypt_in_place(&mut b, rk);
    b
}

/// Decrypts one block with the schedule `dk` (`expand_key`'s second).
#[inline(always)]
pub fn decrypt(block: [u32; 4], dk: &[u32; SCHEDULE_WORDS]) -> [u32; 4] {
    let mut b = block;
    decrypt_in_place(&mut b, dk);
    b
}

// Not inlined: in the data plane each is a subprogram with its own stack frame for the register
// spills of ten rounds (the balancer's frames share 512 bytes). The return value is only there
// because a BPF subprogram returns one in r0.
#[inline(never)]
pub fn encrypt_in_place(block: &mut [u32; 4], rk: &[u32; SCHEDULE_WORDS]) -> u32 {
    *block = encrypt_rounds(*block, rk);
    0
}

#[inline(never)]
pub fn decrypt_in_place(block: &mut [u32; 4], dk: &[u32; SCHEDULE_WORDS]) -> u32 {
    *block = decrypt_rounds(*block, dk);
    0
}

#[inline(always)]
fn encrypt_rounds(block: [u32; 4], rk: &[u32; SCHEDULE_WORDS]) -> [u32; 4] {
    rounds::<false>(block, rk, &TE, &SBOX_WORD)
}

#[inline(always)]
fn decrypt_rounds(block: [u32; 4], dk: &[u32; SCHEDULE_WORDS]) -> [u32; 4] {
    rounds::<true>(block, dk, &TD, &INV_SBOX_WORD)
}

/// The ten rounds with `keys`: `t` the middle rounds' tables, `last` the final round's S-box.
/// ShiftRows takes row r of column c from column c + r; InvShiftRows from column c - r, which
/// is the same four columns with those of rows 1 and 3 swapped.
#[inline(always)]
fn rounds<const INVERSE: bool>(block: [u32; 4], keys: &[u32; SCHEDULE_WORDS], t: &[[u32; 256]; 4], last: &[u32; 256]) -> [u32; 4] {
    let rows = |a: u32, b: u32, c: u32, d: u32| if INVERSE { (a, d, c, b) } else { (a, b, c, d) };
    let (mut s0, mut s1, mut s2, mut s3) = (block[0] ^ keys[0], block[1] ^ keys[1], block[2] ^ keys[2], block[3] ^ keys[3]);
    let mut k = 4;
    while k < 40 {
        let (a, b, c, d) = rows(s0, s1, s2, s3);
        let t0 = column(t, a, b, c, d, keys[k]);
        let (a, b, c, d) = rows(s1, s2, s3, s0);
        let t1 = column(t, a, b, c, d, keys[k + 1]);
        let (a, b, c, d) = rows(s2, s3, s0, s1);
        let t2 = column(t, a, b, c, d, keys[k + 2]);
        let (a, b, c, d) = rows(s3, s0, s1, s2);
        let t3 = column(t, a, b, c, d, keys[k + 3]);
        (s0, s1, s2, s3) = (t0, t1, t2, t3);
        k += 4;
    }
    let (a, b, c, d) = rows(s0, s1, s2, s3);
    let o0 = last_column(last, a, b, c, d, keys[40]);
    let (a, b, c, d) = rows(s1, s2, s3, s0);
    let o1 = last_column(last, a, b, c, d, keys[41]);
    let (a, b, c, d) = rows(s2, s3, s0, s1);
    let o2 = last_column(last, a, b, c, d, keys[42]);
    let (a, b, c, d) = rows(s3, s0, s1, s2);
    [o0, o1, o2, last_column(last, a, b, c, d, keys[43])]
}
