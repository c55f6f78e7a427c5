//! Constant-time comparison of secrets (the hub's token, the bridge's listener tokens).
//!
//! Invariant: [`ct_eq`]'s running time depends only on the expected secret's length, never on
//! the presented bytes or on where the two first differ, so timing tells a peer nothing about
//! how much of a guess was right.

/// Compares a presented token with the expected one in time that depends only on the
/// expected token's length, not on where the two first differ.
pub fn ct_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = (presented.len() != expected.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(0);
        diff |= p ^ e;
    }
    std::hint::black_box(diff) == 0
}
