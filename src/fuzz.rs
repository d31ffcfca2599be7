//! Test-only: a deterministic mutator for the small fuzz tests of the parsers (etcd answers,
//! JSON). Edits real samples so the parsers meet input that is almost right.

/// xorshift64 with byte-level edits.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `base` with up to four random edits: a byte replaced, removed, or inserted (JSON
    /// punctuation), or the rest cut off.
    pub fn mutate(&mut self, base: &[u8]) -> String {
        let mut bytes = base.to_vec();
        for _ in 0..(self.next() % 5) {
            if bytes.is_empty() {
                break;
            }
            let at = (self.next() as usize) % bytes.len();
            match self.next() % 4 {
                0 => bytes[at] = self.next() as u8,
                1 => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, b"{}[],:\"\\u0"[(self.next() % 10) as usize]),
                _ => bytes.truncate(at),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
