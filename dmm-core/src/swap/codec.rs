// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Page compression of the swap store: LZ4 block format (`lz4_flex`, safe
//! Rust). A page is kept compressed only when that saves at least a quarter
//! of it ([`MAX_COMPRESSED_GRANULES`]); otherwise it is stored raw.

use super::layout::{Class, GRANULES};

/// Largest compressed slot class used, in granules: 6/8 of a page.
/// Larger classes would save less than a 16 KiB extent loses to padding.
pub const MAX_COMPRESSED_GRANULES: u64 = GRANULES * 3 / 4;

/// Why a compressed slot did not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The LZ4 stream is malformed.
    #[error("lz4: {0}")]
    Lz4(#[from] lz4_flex::block::DecompressError),
    /// The stream decoded to fewer bytes than a page.
    #[error("decoded {got} bytes, want {want}")]
    Short {
        /// Bytes decoded.
        got: usize,
        /// Page size.
        want: usize,
    },
}

/// Compresses `page`; returns the slot class and the bytes to store when
/// the page compresses into at most [`MAX_COMPRESSED_GRANULES`], else `None`.
pub fn compress(page: &[u8]) -> Option<(Class, Vec<u8>)> {
    let ps = page.len() as u64;
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(page.len())];
    let n = lz4_flex::block::compress_into(page, &mut out).ok()?;
    let class = Class::fitting(n as u64, ps)?;
    if class.granules() > MAX_COMPRESSED_GRANULES {
        return None;
    }
    out.truncate(n);
    Some((class, out))
}

/// Decompresses `stored` into `page`, which it must fill exactly.
pub fn decompress(stored: &[u8], page: &mut [u8]) -> Result<(), CodecError> {
    let got = lz4_flex::block::decompress_into(stored, page)?;
    if got != page.len() {
        return Err(CodecError::Short {
            got,
            want: page.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_compresses_random_does_not() {
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog, "
            .iter()
            .copied()
            .cycle()
            .take(4096)
            .collect();
        let (class, bytes) = compress(&text).unwrap();
        assert_eq!(class.granules(), 1, "{} bytes", bytes.len());
        let mut back = vec![0u8; 4096];
        decompress(&bytes, &mut back).unwrap();
        assert_eq!(back, text);
        let mut x = 0x1234_5678u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&random).is_none());
    }

    #[test]
    fn short_and_garbage_streams_are_errors() {
        let (_, bytes) = compress(&[7u8; 4096]).unwrap();
        let mut out = vec![0u8; 8192];
        assert!(matches!(
            decompress(&bytes, &mut out),
            Err(CodecError::Short { got: 4096, .. })
        ));
        let mut out = vec![0u8; 4096];
        assert!(decompress(&[0xff; 64], &mut out).is_err());
        assert!(decompress(&bytes[..bytes.len() / 2], &mut out).is_err());
    }
}
