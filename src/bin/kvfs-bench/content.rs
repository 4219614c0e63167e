//! Deterministic secret values and sizes, and the file operations every row times.
//!
//! Values look like real secrets (base64 text) and are reproducible from a seed, so kvfs and
//! tmpfs get the same bytes without keeping a second copy around.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::harness::{Context, Error, Result};

/// Key Vault's value limit (25 KB).
pub const MAX_VALUE: usize = 25 * 1024;
/// Smallest value in the spread of sizes.
pub const MIN_VALUE: usize = 100;
/// Read buffer: larger than any value, so a whole secret comes in one read(2) plus EOF.
pub const READ_BUF: usize = 32 * 1024;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `len` bytes of base64 text, the same for the same seed.
pub fn value(seed: u64, len: usize) -> String {
    // splitmix64: a different stream per seed, no dependency.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut word = next();
        for _ in 0..10 {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[(word & 63) as usize]));
            word >>= 6;
        }
    }
    out
}

/// Size of item `i` of `n`: log-spaced from 100 B to 25 KB, so small secrets (passwords,
/// tokens) are as common as large ones (certificates).
pub fn spread_size(i: usize, n: usize) -> usize {
    if n < 2 {
        return MIN_VALUE;
    }
    let f = i as f64 / (n - 1) as f64;
    let ratio = MAX_VALUE as f64 / MIN_VALUE as f64;
    ((MIN_VALUE as f64) * ratio.powf(f))
        .round()
        .clamp(MIN_VALUE as f64, MAX_VALUE as f64) as usize
}

/// open + read to EOF + close, as `cat` or a config loader does; returns the bytes read.
pub fn read_all(path: &Path, buf: &mut [u8]) -> Result<usize> {
    let mut file = File::open(path).context(format!("open {}", path.display()))?;
    let mut total = 0;
    loop {
        let n = file.read(buf).context(format!("read {}", path.display()))?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// `read_all`, and an error unless exactly `want` bytes came back.
pub fn read_expect(path: &Path, buf: &mut [u8], want: usize) -> Result<()> {
    let got = read_all(path, buf)?;
    if got != want {
        return Err(Error(format!(
            "{}: read {got} bytes, expected {want}",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reproducible_base64_of_the_right_length() {
        let a = value(7, 1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(a, value(7, 1000));
        assert_ne!(a, value(8, 1000));
        assert!(a.bytes().all(|b| ALPHABET.contains(&b)));
        assert_eq!(value(1, 0), "");
    }

    #[test]
    fn sizes_span_100_bytes_to_25_kb() {
        assert_eq!(spread_size(0, 1000), MIN_VALUE);
        assert_eq!(spread_size(999, 1000), MAX_VALUE);
        let mid = spread_size(500, 1000);
        assert!((1500..1700).contains(&mid), "{mid}");
    }
}
