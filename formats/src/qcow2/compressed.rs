//! Compressed clusters (qcow2.txt "Compressed Clusters Descriptor",
//! Header byte 104 `compression_type`): one cluster of output from the
//! start of the compressed bytes; what follows the compressed stream in
//! its last sector (another cluster's data, padding) is not looked at.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress};
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use super::header::Compression;

thread_local! {
    /// Decoder states reused per thread: a fresh inflate or zstd context
    /// costs allocations comparable to decoding a small cluster.
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    static ZSTD: RefCell<Option<ZstdDecoder<'static>>> = const { RefCell::new(None) };
}

/// One cluster of `cluster` bytes from the compressed bytes `input`.
/// Anything else — a stream that ends early, fails to decode, or needs
/// more input than the descriptor gives — is an error. The decoders write
/// into the vector's spare capacity: no zeroing of bytes about to be
/// overwritten (3 % of a sequential read's CPU).
pub fn decompress(kind: Compression, input: &[u8], cluster: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(cluster);
    match kind {
        Compression::Deflate => inflate(input, &mut out)?,
        Compression::Zstd => unzstd(input, &mut out)?,
    };
    if out.len() != cluster {
        return Err(format!(
            "the {kind} data ({} bytes) decompresses to {} bytes, not a {cluster}-byte cluster",
            input.len(),
            out.len()
        ));
    }
    Ok(out)
}

/// Raw deflate (QEMU writes it with a 4 KiB window and no zlib header),
/// up to `out`'s capacity.
fn inflate(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        // Every input byte and the whole output are there: one call does
        // all it can; loop only while it still makes progress.
        loop {
            let (i, o) = (d.total_in() as usize, out.len());
            if o >= out.capacity() || i >= input.len() {
                return Ok(());
            }
            let status = d
                .decompress_vec(&input[i..], out, FlushDecompress::Finish)
                .map_err(|e| format!("deflate: {e}"))?;
            let progressed = d.total_in() as usize != i || out.len() != o;
            if status == flate2::Status::StreamEnd || !progressed {
                return Ok(());
            }
        }
    })
}

/// zstd: frames until the cluster (`out`'s capacity) is full (the bytes
/// after it are the sector's tail, not another frame).
fn unzstd(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => {
                d.reinit().map_err(|e| format!("zstd: {e}"))?;
                d
            }
            None => slot.insert(ZstdDecoder::new().map_err(|e| format!("zstd: {e}"))?),
        };
        let mut src = InBuffer::around(input);
        let mut dst = OutBuffer::around(out);
        while dst.pos() < dst.capacity() {
            let (i, o) = (src.pos(), dst.pos());
            d.run(&mut src, &mut dst)
                .map_err(|e| format!("zstd: {e}"))?;
            if src.pos() == i && dst.pos() == o {
                break;
            }
        }
        Ok(())
    })
}
