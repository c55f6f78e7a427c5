//! Equality and UTF-8 checks for short byte strings (names, keys, method names: mostly under
//! 16 bytes) without a call into libc or core's general loops.
//!
//! Why: on the direct path every call compares its kind and key with the owner's memos and
//! checks them as UTF-8. Through `==` (a `bcmp` call) and `str::from_utf8` that cost ~25
//! and ~30 instructions per string under callgrind; two overlapping word loads do either
//! for strings of up to 16 bytes.
//!
//! Invariants: [`eq`] answers exactly what `a == b` answers, and [`str`] exactly what
//! `std::str::from_utf8` answers (the unit tests below compare them on every length up to
//! 40 and on every non-ASCII byte position); anything longer than 16 bytes, or not ASCII,
//! takes the standard function.

/// `a == b`.
#[inline]
pub(crate) fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match words(a) {
        Some((a0, a1)) => words(b).is_some_and(|(b0, b1)| a0 == b0 && a1 == b1),
        None => a == b,
    }
}

/// `std::str::from_utf8(b)`, with the error reduced to "not UTF-8".
#[inline]
pub(crate) fn str(b: &[u8]) -> Option<&str> {
    if let Some((w0, w1)) = words(b) {
        if (w0 | w1) & 0x8080_8080_8080_8080 == 0 {
            // SAFETY: `words` covers every byte of `b` (two overlapping reads of at most 8
            // bytes each for a string of at most 16), and none has its high bit set: `b` is
            // ASCII, which is valid UTF-8.
            return Some(unsafe { std::str::from_utf8_unchecked(b) });
        }
    }
    std::str::from_utf8(b).ok()
}

/// Two words that together hold every byte of `b` (overlapping, zero-padded below 8 bytes)
/// for `b` of at most 16 bytes; `None` above. Equal-length strings are equal exactly when
/// their words are.
#[inline(always)]
fn words(b: &[u8]) -> Option<(u64, u64)> {
    let n = b.len();
    if n > 16 {
        return None;
    }
    if n >= 8 {
        let lo = u64::from_le_bytes(b[..8].try_into().ok()?);
        let hi = u64::from_le_bytes(b[n - 8..].try_into().ok()?);
        return Some((lo, hi));
    }
    if n >= 4 {
        let lo = u32::from_le_bytes(b[..4].try_into().ok()?);
        let hi = u32::from_le_bytes(b[n - 4..].try_into().ok()?);
        return Some((u64::from(lo), u64::from(hi)));
    }
    let mut w = 0u64;
    for (i, &x) in b.iter().enumerate() {
        w |= u64::from(x) << (8 * i);
    }
    Some((w, 0))
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn eq_is_slice_equality() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert!(eq(&a, &a.clone()), "len {n}");
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!eq(&a, &b), "len {n}, byte {i} differs");
                b[i] ^= 0x81;
                assert!(!eq(&a, &b), "len {n}, byte {i} differs");
            }
            if n > 0 {
                assert!(!eq(&a, &a[..n - 1]), "len {n} against {}", n - 1);
            }
        }
    }

    #[test]
    fn str_is_from_utf8() {
        let samples: &[&[u8]] = &[
            b"",
            b"a",
            b"bench",
            b"0123456789abcdef",
            b"\xc3\xa9",
            b"\xff",
        ];
        for s in samples {
            assert_eq!(str(s), std::str::from_utf8(s).ok(), "{s:?}");
        }
        for n in 0..40usize {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert_eq!(str(&a), std::str::from_utf8(&a).ok());
            for i in 0..n {
                for bad in [0x80u8, 0xc3, 0xff] {
                    let mut b = a.clone();
                    b[i] = bad;
                    assert_eq!(
                        str(&b),
                        std::str::from_utf8(&b).ok(),
                        "len {n}, {bad:#x} at {i}"
                    );
                }
                // A valid two-byte character at every position.
                let mut c = a.clone();
                c[i] = 0xc3;
                c.insert(i + 1, 0xa9);
                assert_eq!(str(&c), std::str::from_utf8(&c).ok(), "len {n}, é at {i}");
            }
        }
    }
}
