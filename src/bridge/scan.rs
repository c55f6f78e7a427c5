//! A hand-written JSON scanner for the bridge's hot path (issue 17.3): checking a payload is
//! one JSON value, and reading the node-ipc frames that carry the traffic, without serde's
//! per-token machinery (serde_json was ~40 % of the bridge's instructions per legacy get).
//!
//! Invariant: the scanner only ever *accepts less* than serde_json. Every input it accepts is
//! one serde_json accepts, with the same result (the same value text, the same strings); on
//! anything it does not handle (escaped keys or names, nesting deeper than [`MAX_DEPTH`], a
//! malformed value) it gives up (`None`), and the caller asks serde_json, which then decides
//! and words the error. So it changes how fast the common inputs go, never what is accepted.
//! The grammar below follows serde_json 1.0's `ignore_value` (the code that reads a
//! `RawValue` and an `IgnoredAny`): no depth limit there, `\u` escapes checked for four hex
//! digits only, raw control characters refused inside strings, no leading zeros.
//! The input is `&str` (UTF-8 checked once, by the caller), as serde_json's `from_str` needs.

/// Deeper nesting than this is left to serde_json.
pub(crate) const MAX_DEPTH: u32 = 64;

/// The first byte at or after `j` that ends a plain run inside a string (`"`, `\\` or a
/// control character below 0x20), eight bytes at a time; `None` at the end of the text.
#[inline]
fn find_special(b: &[u8], mut j: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(j..j + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let q = w ^ (ONES * u64::from(b'"'));
        let bs = w ^ (ONES * u64::from(b'\\'));
        // Per byte, the high bit of `(x - 1) & !x` is set when x == 0, and of
        // `(w - 0x20) & !w` when w < 0x20; a borrow can only set bits above a byte that
        // matched, so the lowest set bit names the first match exactly (little-endian).
        let m = ((q.wrapping_sub(ONES) & !q)
            | (bs.wrapping_sub(ONES) & !bs)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if m != 0 {
            return Some(j + (m.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    while let Some(&c) = b.get(j) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some(j);
        }
        j += 1;
    }
    None
}

/// A position in a JSON text.
pub(crate) struct Scan<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    pub(crate) fn new(s: &'a str) -> Scan<'a> {
        Scan { s, i: 0 }
    }

    fn b(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    /// Skips JSON whitespace (what serde_json skips: space, `\n`, `\t`, `\r`).
    pub(crate) fn ws(&mut self) {
        let b = self.b();
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b().get(self.i).copied()
    }

    /// Consumes `c` after whitespace.
    pub(crate) fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.s.len()
    }

    /// A string with no escape in it, after whitespace: its contents (borrowed, exactly what
    /// serde_json's borrowed `&str` would be). An escape gives up.
    pub(crate) fn plain_str(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let b = self.b();
        let start = self.i + 1;
        let j = find_special(b, start)?;
        if b[j] != b'"' {
            return None;
        }
        self.i = j + 1;
        // `start` and `j` sit next to ASCII quotes: both are char boundaries.
        Some(&self.s[start..j])
    }

    /// Skips a string (at its opening quote), escapes included.
    fn skip_str(&mut self) -> Option<()> {
        let b = self.b();
        let mut j = self.i + 1;
        loop {
            j = find_special(b, j)?;
            let c = b[j];
            j += 1;
            match c {
                b'"' => {
                    self.i = j;
                    return Some(());
                }
                b'\\' => match *b.get(j)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 1,
                    b'u' => {
                        let h = b.get(j + 1..j + 5)?;
                        if !h.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        j += 5;
                    }
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// Skips a number (at its first byte): `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn skip_num(&mut self) -> Option<()> {
        let b = self.b();
        let mut j = self.i;
        let digits = |j: &mut usize| {
            let d = *j;
            while let Some(b'0'..=b'9') = b.get(*j) {
                *j += 1;
            }
            *j > d
        };
        if b.get(j) == Some(&b'-') {
            j += 1;
        }
        match *b.get(j)? {
            b'0' => {
                j += 1;
                if let Some(b'0'..=b'9') = b.get(j) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                digits(&mut j);
            }
            _ => return None,
        }
        if b.get(j) == Some(&b'.') {
            j += 1;
            if !digits(&mut j) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(j) {
            j += 1;
            if let Some(b'+' | b'-') = b.get(j) {
                j += 1;
            }
            if !digits(&mut j) {
                return None;
            }
        }
        self.i = j;
        Some(())
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        if self.b().get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// An object key and its colon (escapes allowed: the key is only skipped).
    fn key(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.skip_str()?;
        self.eat(b':')
    }

    /// Skips one value after whitespace.
    pub(crate) fn skip_value(&mut self) -> Option<()> {
        // One bit per open container, innermost lowest: 1 an object, 0 an array.
        let mut stack: u64 = 0;
        let mut depth = 0u32;
        loop {
            match self.peek()? {
                b'"' => self.skip_str()?,
                b'-' | b'0'..=b'9' => self.skip_num()?,
                b'n' => self.lit(b"null")?,
                b't' => self.lit(b"true")?,
                b'f' => self.lit(b"false")?,
                c @ (b'[' | b'{') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    let obj = c == b'{';
                    let close = if obj { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.i += 1; // empty: a whole value, handled below
                    } else {
                        stack = (stack << 1) | u64::from(obj);
                        depth += 1;
                        if obj {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => return None,
            }
            // After a value: a comma (then the next element) or closing brackets.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let obj = stack & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if obj {
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if obj => {}
                    b']' if !obj => {}
                    _ => return None,
                }
                self.i += 1;
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// One value after whitespace: its text (what serde_json's `&RawValue` holds).
    pub(crate) fn raw(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.i;
        self.skip_value()?;
        Some(&self.s[start..self.i])
    }
}

/// `Some(true)` when `s` is one JSON value (whitespace around it allowed), as serde_json's
/// `from_str::<IgnoredAny>` would say; `None` when the scanner gives up (ask serde_json).
pub(crate) fn is_one_value(s: &str) -> Option<bool> {
    let mut sc = Scan::new(s);
    sc.skip_value()?;
    sc.at_end().then_some(true)
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;

    fn serde_ok(s: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
    }

    /// Deterministic pseudo-random inputs: mutations of JSON-ish texts.
    fn corpus() -> Vec<String> {
        let seeds = [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e\"f\\g\u00e9\/"}}"#,
            r#"[-0, 0.5, 1e10, -1.25E-3, 12, "x\ny", {}, [], [[]], {"":{}}]"#,
            r#" {"type":"get","data":{"from":"bot","type":"stats","request":7,"fresh":true}} "#,
            r#""plain""#,
            "\"\u{e9}\u{1F600}\"",
            r#"{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ];
        let alphabet: &[&str] = &[
            "", " ", "\t", "\n", "\r", "\u{b}", "\u{c}", "{", "}", "[", "]", ",", ":", "\"", "\\",
            "\\u", "\\u12", "\\uZZZZ", "\\x", "0", "01", "-", "-0", ".", ".5", "e", "E+", "1e",
            "nul", "null", "tru", "true", "false", "\u{1}", "\u{1f}", "\u{7f}", "é", "a", "1",
        ];
        let mut out = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in seeds {
            out.push(seed.to_string());
            let chars: Vec<char> = seed.chars().collect();
            for _ in 0..3000 {
                let mut c = chars.clone();
                for _ in 0..(1 + next() % 3) {
                    let at = (next() as usize) % (c.len() + 1);
                    let ins = alphabet[(next() as usize) % alphabet.len()];
                    match next() % 3 {
                        0 if at < c.len() => {
                            c.remove(at);
                        }
                        1 if at < c.len() => {
                            c.splice(at..=at, ins.chars());
                        }
                        _ => {
                            c.splice(at..at, ins.chars());
                        }
                    }
                }
                out.push(c.into_iter().collect());
            }
        }
        out
    }

    #[test]
    fn accepts_only_what_serde_json_accepts() {
        let mut accepted = 0;
        for s in corpus() {
            match is_one_value(&s) {
                Some(true) => {
                    assert!(
                        serde_ok(&s),
                        "scanner accepted what serde_json refuses: {s:?}"
                    );
                    accepted += 1;
                }
                Some(false) => unreachable!(),
                None => {}
            }
            // Raw value text: the same slice serde_json's RawValue holds.
            let mut sc = Scan::new(&s);
            if let Some(raw) = sc.raw() {
                let mut de = serde_json::Deserializer::from_str(&s);
                let rv = <&serde_json::value::RawValue as serde::Deserialize>::deserialize(&mut de)
                    .unwrap_or_else(|e| {
                        panic!("scanner read a value serde_json refuses: {s:?}: {e}")
                    });
                assert_eq!(rv.get(), raw, "{s:?}");
            }
        }
        // The mutations keep a good share valid: the comparison means something.
        assert!(accepted > 1000, "only {accepted} valid inputs");
    }

    #[test]
    fn gives_up_on_deep_nesting() {
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert_eq!(is_one_value(&deep), None);
        assert!(serde_ok(&deep));
        let ok = "[".repeat(64) + &"]".repeat(64);
        assert_eq!(is_one_value(&ok), Some(true));
    }

    #[test]
    fn finds_the_first_special_byte() {
        let text: Vec<u8> = (0u8..=255).collect();
        for start in 0..text.len() {
            for len in 0..40.min(text.len() - start) {
                let b = &text[start..start + len];
                let want = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                assert_eq!(find_special(b, 0), want, "{b:?}");
            }
        }
        for n in 0..20 {
            let mut v = vec![b'x'; n];
            v.push(b'"');
            v.extend_from_slice(b"\\\x01");
            assert_eq!(find_special(&v, 0), Some(n));
            assert_eq!(find_special(&v[..n], 0), None);
        }
    }

    #[test]
    fn plain_strings() {
        let mut sc = Scan::new(r#"  "bot" "a\"b" "#);
        assert_eq!(sc.plain_str(), Some("bot"));
        assert_eq!(sc.plain_str(), None);
    }
}
