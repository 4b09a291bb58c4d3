//! Byte comparison for guests, eight bytes at a time.
//!
//! Every `==`, `cmp` and map lookup on strings or byte slices ends in
//! `memcmp` (or `bcmp`). In a `wasm32-wasip2` guest that is wasi-libc's,
//! which compares one byte per loop turn, and the host adds an epoch check
//! to every turn of every guest loop. In `perf`, it was 16 % of leak
//! detection's time in WASM against 6 % for glibc's vectorised one natively.
//! Defining the symbols here keeps wasi-libc's out of the link (the linker
//! takes an archive's member only for a symbol still undefined).

/// Compares `n` bytes; negative, zero or positive as `memcmp(3)`.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes (the C contract).
#[cfg_attr(target_family = "wasm", no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, and both ranges are readable for n bytes.
        let (x, y) = unsafe { (a.add(i).cast::<u64>().read_unaligned(), b.add(i).cast::<u64>().read_unaligned()) };
        if x != y {
            // SAFETY: the words were read at i.
            return unsafe { first_difference(a, b, i, x ^ y) };
        }
        i += 8;
    }
    if i + 4 <= n {
        // SAFETY: i + 4 <= n.
        let (x, y) = unsafe { (a.add(i).cast::<u32>().read_unaligned(), b.add(i).cast::<u32>().read_unaligned()) };
        if x != y {
            // SAFETY: the words were read at i.
            return unsafe { first_difference(a, b, i, u64::from(x ^ y)) };
        }
        i += 4;
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

/// The difference of the first differing bytes of two little-endian words
/// read at `i`, given their (non-zero) XOR: its lowest set bit is in that byte.
///
/// # Safety
/// The words were read from `a` and `b` at `i`, so the byte is readable.
#[inline(always)]
unsafe fn first_difference(a: *const u8, b: *const u8, i: usize, xor: u64) -> i32 {
    let at = i + (xor.trailing_zeros() / 8) as usize;
    // SAFETY: `at` is inside the words the caller read (the caller's contract).
    unsafe { i32::from(*a.add(at)) - i32::from(*b.add(at)) }
}

/// Equality only: zero when the `n` bytes are equal (what LLVM calls for `==`).
///
/// # Safety
/// As [`memcmp`].
#[cfg_attr(target_family = "wasm", no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract is memcmp's.
    unsafe { memcmp(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::{bcmp, memcmp};

    fn sign(x: i32) -> i32 {
        x.signum()
    }

    /// Every pair of slices up to 19 bytes over a 3-letter alphabet that
    /// differ in one byte, at every offset, against `[u8]::cmp`.
    #[test]
    fn agrees_with_slice_ordering() {
        for n in 0..20usize {
            for at in 0..n.max(1) {
                for (p, q) in [(b'a', b'b'), (b'b', b'a'), (b'a', b'a'), (0u8, 0xff), (0xff, 0u8)] {
                    let a: Vec<u8> = (0..n).map(|i| if i == at { p } else { b'c' + (i % 3) as u8 }).collect();
                    let b: Vec<u8> = (0..n).map(|i| if i == at { q } else { b'c' + (i % 3) as u8 }).collect();
                    let want = a.cmp(&b) as i32;
                    // SAFETY: both are n bytes long.
                    let (got, eq) = unsafe { (memcmp(a.as_ptr(), b.as_ptr(), n), bcmp(a.as_ptr(), b.as_ptr(), n)) };
                    assert_eq!(sign(got), want, "memcmp {a:?} {b:?}");
                    assert_eq!(eq == 0, a == b, "bcmp {a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn the_first_difference_decides_not_a_later_one() {
        let (a, b) = (b"abcdefgh-a-zzzzz", b"abcdefgh-b-aaaaa");
        // SAFETY: both are 16 bytes.
        assert!(unsafe { memcmp(a.as_ptr(), b.as_ptr(), 16) } < 0);
        // Unaligned starts.
        // SAFETY: 15 bytes from offset 1 of 16.
        assert!(unsafe { memcmp(a.as_ptr().add(1), b.as_ptr().add(1), 15) } < 0);
    }
}
