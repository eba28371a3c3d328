//! A `memcmp` that compares eight bytes at a time, linked into the wasm build in place of libc's.
//!
//! The engine's maps are keyed by names, UIDs and addresses, so comparing byte strings is among
//! its commonest operations: every ordered-map lookup and every `==` on a `String` ends in
//! `memcmp` (or `bcmp`, which wasi-libc implements with it). The toolchain's wasi-libc compares one
//! byte per loop turn, which was 18 % of a 10,000-Service wasm replay in `perf`
//! (`DIFFTRACKER_PERF_MAP=1`, BENCHMARKS.md "Scale"). A symbol the program defines itself wins
//! over the archive's, so defining `memcmp` here replaces it; native builds keep their libc's.

/// `memcmp`'s contract: the sign of the first differing byte (as unsigned) of `a` and `b`, or 0.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[inline]
pub unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, and the caller vouches for n bytes.
        let (x, y) = unsafe { ((a.add(i) as *const u64).read_unaligned(), (b.add(i) as *const u64).read_unaligned()) };
        if x != y {
            // In big-endian order the first byte is the most significant: the numbers compare as
            // the bytes do.
            return if u64::from_be_bytes(x.to_ne_bytes()) < u64::from_be_bytes(y.to_ne_bytes()) { -1 } else { 1 };
        }
        i += 8;
    }
    while i < n {
        // SAFETY: i < n.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract is memcmp's.
    unsafe { compare(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use proptest::prelude::*;

    fn sign(a: &[u8], b: &[u8]) -> i32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: both slices hold a.len() bytes.
        unsafe { compare(a.as_ptr(), b.as_ptr(), a.len()) }.signum()
    }

    #[test]
    fn the_first_differing_byte_decides_in_every_position_of_a_word_and_the_tail() {
        let base: Vec<u8> = (0..21u8).map(|i| b'a' + i).collect();
        for i in 0..base.len() {
            let mut up = base.clone();
            up[i] = 0xff;
            let mut down = base.clone();
            down[i] = 0x00;
            assert_eq!(sign(&base, &up), -1, "byte {i} raised");
            assert_eq!(sign(&base, &down), 1, "byte {i} lowered");
            // A later byte going the other way does not matter.
            if i + 1 < base.len() {
                up[i + 1] = 0x00;
                assert_eq!(sign(&base, &up), -1, "byte {i} raised, byte {} lowered", i + 1);
            }
        }
        assert_eq!(sign(&base, &base), 0);
        assert_eq!(sign(&[], &[]), 0);
    }

    proptest! {
        #[test]
        fn orders_as_byte_slices_do(a in proptest::collection::vec(any::<u8>(), 0..40), flips in proptest::collection::vec((0usize..40, any::<u8>()), 0..3)) {
            let mut b = a.clone();
            for (at, v) in flips {
                if let Some(x) = b.get_mut(at) {
                    *x = v;
                }
            }
            prop_assert_eq!(sign(&a, &b), a.cmp(&b) as i32);
        }
    }
}
