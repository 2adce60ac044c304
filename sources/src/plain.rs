//! `zero SIZE`, `pattern SIZE` and `memory SIZE`.

use synth::{
    check_range, BlockDev, Caps, CowOverlay, ExtentKind, ExtentList, OverlayOptions, ReadChunk,
    Result,
};

/// `zero SIZE`: reads zeros everywhere; read-only; all one hole.
#[derive(Debug, Clone)]
pub struct ZeroDev {
    size: u64,
}

impl ZeroDev {
    /// A device of `size` zero bytes.
    pub fn new(size: u64) -> Self {
        ZeroDev { size }
    }
}

impl BlockDev for ZeroDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        buf.fill(0);
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64, out: &mut ExtentList) -> Result<()> {
        check_range(offset, len, self.size)?;
        out.push(len, ExtentKind::Hole);
        Ok(())
    }
    fn read_chunks(&self, offset: u64, len: u64, out: &mut Vec<ReadChunk>) -> Result<bool> {
        check_range(offset, len, self.size)?;
        out.push(ReadChunk::Zero(len));
        Ok(true)
    }
    fn caps(&self) -> Caps {
        Caps::EXTENTS
    }
}

/// `pattern SIZE`: every 8-byte big-endian word holds its own byte offset
/// (the word at offset 8 reads `00 00 00 00 00 00 00 08`), so any client
/// can verify what it reads without a reference copy. Read-only.
#[derive(Debug, Clone)]
pub struct PatternDev {
    size: u64,
}

impl PatternDev {
    /// A pattern device of `size` bytes.
    pub fn new(size: u64) -> Self {
        PatternDev { size }
    }

    /// Fill `buf` with the pattern as seen from `offset` (any alignment).
    pub fn fill(buf: &mut [u8], offset: u64) {
        let mut pos = 0usize;
        // Leading partial word.
        let lead = ((8 - offset % 8) % 8) as usize;
        if lead > 0 {
            let word = (offset - offset % 8).to_be_bytes();
            let n = lead.min(buf.len());
            let skip = (offset % 8) as usize;
            buf[..n].copy_from_slice(&word[skip..skip + n]);
            pos = n;
        }
        let mut w = offset + pos as u64;
        let mut words = buf[pos..].chunks_exact_mut(8);
        for c in &mut words {
            c.copy_from_slice(&w.to_be_bytes());
            w += 8;
        }
        let tail = words.into_remainder();
        let n = tail.len();
        tail.copy_from_slice(&w.to_be_bytes()[..n]);
    }
}

impl BlockDev for PatternDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        Self::fill(buf, offset);
        Ok(())
    }
    fn caps(&self) -> Caps {
        Caps::empty()
    }
}

/// `memory SIZE`: a writable, sparse RAM disk (pages are allocated on
/// first write; trimmed or zeroed pages are freed).
pub fn memory(size: u64) -> Result<CowOverlay> {
    CowOverlay::blank(size, OverlayOptions::default())
}

#[cfg(test)]
mod tests {
    use synth::testing::check_dev;

    use super::*;

    fn pattern_bytes(size: usize) -> Vec<u8> {
        (0..size)
            .map(|i| ((i as u64 - i as u64 % 8).to_be_bytes())[i % 8])
            .collect()
    }

    #[test]
    fn pattern_words_hold_their_offsets() {
        let dev = PatternDev::new(64);
        let mut buf = [0u8; 8];
        dev.read_at(&mut buf, 40).unwrap();
        assert_eq!(u64::from_be_bytes(buf), 40);
        let mut odd = [0u8; 3];
        dev.read_at(&mut odd, 13).unwrap();
        assert_eq!(odd, [0, 0, 8]);
        dev.read_at(&mut odd, 15).unwrap();
        assert_eq!(odd, [8, 0, 0]);
    }

    #[test]
    fn pattern_passes_conformance() {
        let dev = PatternDev::new(100_003);
        check_dev(&dev, &pattern_bytes(100_003), &[7, 8, 9, 4096]);
    }

    #[test]
    fn zero_passes_conformance() {
        check_dev(&ZeroDev::new(77_777), &vec![0u8; 77_777], &[]);
    }

    #[test]
    fn memory_passes_conformance_after_writes() {
        let dev = memory(1 << 20).unwrap();
        let mut expected = vec![0u8; 1 << 20];
        dev.write_at(&[3u8; 100_000], 12_345).unwrap();
        expected[12_345..112_345].fill(3);
        check_dev(&dev, &expected, &[12_345, 112_345, 32_768, 65_536]);
    }
}
