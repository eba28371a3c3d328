//! A small deterministic mutator for the bounded run: the same seed corpus and seed give the
//! same inputs on every machine, so a failure found in CI reproduces anywhere. (The long
//! coverage-guided runs use libFuzzer's own mutator.)

/// xorshift64*: enough randomness for mutations, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Bytes that change the structure of JSON and of numbers when they land somewhere.
const INTERESTING: &[u8] = b"{}[]\":,\\-+.0123456789eEnul \n\t\xff\x00";
/// Values that stress parsers: huge, negative, empty, non-ASCII, deep.
const TOKENS: &[&str] = &[
    "18446744073709551615",
    "-1",
    "1e400",
    "\"\"",
    "null",
    "[]",
    "{}",
    "\"\\ud800\"",
    "\"é/?#% .\"",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "\"IPv6\"",
    "\"Succeeded\"",
    "\"LoadBalancer\"",
    "\"MODIFIED\"",
    "\"DELETED\"",
];

/// One to four mutations of `input`, sometimes spliced with `other`, capped at `max_len` bytes.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                out.drain(start..end);
            }
            4 if len > 0 => {
                // Duplicate a range: repeated keys, entries and whole objects.
                let start = rng.below(len);
                let end = (start + 1 + rng.below(256)).min(len);
                let copy = out[start..end].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => out.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(i..i, bytes);
            }
        }
    }
    out.truncate(max_len);
    out
}
