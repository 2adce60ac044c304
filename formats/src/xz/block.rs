//! Decoding one Block (§3): Block Header (§3.1), Compressed Data (§3.2),
//! Block Padding (§3.3) and Check (§3.4), with liblzma's block decoder.
//!
//! This is the spec'd way to decode a Block on its own: the Index gives
//! its Unpadded and Uncompressed Sizes, `lzma_block_header_decode` reads
//! the filter chain, `lzma_block_compressed_size` checks the sizes against
//! the header's, and `lzma_block_buffer_decode` decodes, checks that the
//! Block Padding is zero, verifies the Check and that exactly
//! Uncompressed Size bytes came out. The safe `liblzma` API only decodes
//! whole Streams, hence the raw calls below, kept to this one function.

use liblzma_sys as sys;

use super::index::XzBlock;

/// Most memory a Block's filter chain may make liblzma allocate. `xz -9`
/// needs 65 MiB and LZMA2 dictionaries larger than 1.5 GiB are not made by
/// any xz preset; a header asking for more is corrupt or hostile.
const MAX_DECODER_MEMORY: u64 = 1600 << 20;

/// Owns the filter array a Block Header decodes into, and frees the filter
/// options liblzma allocated for it whatever happens.
struct Filters(Box<[sys::lzma_filter; sys::LZMA_FILTERS_MAX as usize + 1]>);

impl Filters {
    fn new() -> Self {
        let unused = sys::lzma_filter {
            id: sys::LZMA_VLI_UNKNOWN,
            options: std::ptr::null_mut(),
        };
        Filters(Box::new([unused; sys::LZMA_FILTERS_MAX as usize + 1]))
    }
}

impl Drop for Filters {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the array has LZMA_FILTERS_MAX + 1 entries and is
        // terminated by an LZMA_VLI_UNKNOWN id: it starts so, and
        // lzma_block_header_decode keeps it so on success and failure
        // (block.h: "All unused filters[] will have .id == LZMA_VLI_UNKNOWN
        // and .options == NULL"). Every non-null `options` was allocated by
        // liblzma with the default allocator (we passed NULL), which is
        // what lzma_filters_free frees with when given NULL. It resets the
        // entries, so no pointer is freed twice.
        unsafe { sys::lzma_filters_free(self.0.as_mut_ptr(), std::ptr::null()) };
    }
}

fn ret_name(ret: sys::lzma_ret) -> &'static str {
    match ret {
        sys::LZMA_DATA_ERROR => "corrupt data or failed integrity check (LZMA_DATA_ERROR)",
        sys::LZMA_OPTIONS_ERROR => "unsupported filter chain or options (LZMA_OPTIONS_ERROR)",
        sys::LZMA_MEM_ERROR => "out of memory (LZMA_MEM_ERROR)",
        sys::LZMA_BUF_ERROR => "the Block holds more than its Index Record says (LZMA_BUF_ERROR)",
        sys::LZMA_PROG_ERROR => "invalid arguments (LZMA_PROG_ERROR)",
        sys::LZMA_UNSUPPORTED_CHECK => "unsupported check type (LZMA_UNSUPPORTED_CHECK)",
        _ => "unexpected liblzma error",
    }
}

/// Decode the Block `raw` (all its Total Size bytes, from its Block Header
/// to the end of its Check) into `out`, which must be exactly its
/// Uncompressed Size. The error says what is wrong; the caller says which
/// Block.
#[allow(unsafe_code)]
pub(super) fn decode(raw: &[u8], info: &XzBlock, out: &mut [u8]) -> Result<(), String> {
    if raw.len() as u64 != info.total_size() {
        return Err(format!(
            "got {} compressed bytes, the Index says {}",
            raw.len(),
            info.total_size()
        ));
    }
    // §3.1.1: the real Block Header Size is (byte + 1) * 4; 0x00 is the
    // Index Indicator, never a Block.
    let header_size = (u32::from(raw[0]) + 1) * 4;
    if raw[0] == 0 || u64::from(header_size) + info.check.size() >= info.unpadded_size {
        return Err(format!(
            "Block Header Size byte {:#04x} does not fit the Unpadded Size {} from the Index",
            raw[0], info.unpadded_size
        ));
    }
    if out.len() as u64 != info.uncompressed_size {
        return Err(format!(
            "an output buffer of {} bytes for {} uncompressed bytes",
            out.len(),
            info.uncompressed_size
        ));
    }

    let mut filters = Filters::new();
    // SAFETY: lzma_block is a repr(C) struct of integers, raw pointers and
    // byte arrays, for which all-zero bits are valid values; liblzma wants
    // the reserved members zero.
    let mut block: sys::lzma_block = unsafe { std::mem::zeroed() };
    // Version 1 has `ignore_check`, which stays false: the Check is verified.
    block.version = 1;
    block.header_size = header_size;
    block.check = sys::lzma_check::from(info.check.id());
    block.filters = filters.0.as_mut_ptr();

    // SAFETY: `block` is initialized as block.h asks (version, header_size,
    // check, filters pointing to LZMA_FILTERS_MAX + 1 entries that outlive
    // the call). `raw` holds at least header_size bytes (checked above:
    // header_size < unpadded_size <= total_size == raw.len()), all the
    // function reads. A NULL allocator means malloc/free.
    let ret = unsafe { sys::lzma_block_header_decode(&mut block, std::ptr::null(), raw.as_ptr()) };
    if ret != sys::LZMA_OK {
        return Err(format!("bad Block Header (§3.1): {}", ret_name(ret)));
    }
    // SAFETY: `block` was filled by lzma_block_header_decode; the call only
    // reads and writes its scalar members.
    let ret = unsafe { sys::lzma_block_compressed_size(&mut block, info.unpadded_size) };
    if ret != sys::LZMA_OK {
        return Err(format!(
            "the Block Header's sizes contradict the Index's Unpadded Size {}",
            info.unpadded_size
        ));
    }
    // §3.1.4: the header may store the Uncompressed Size; it must agree
    // with the Index. Setting it makes the decoder check the output size.
    if block.uncompressed_size != sys::LZMA_VLI_UNKNOWN
        && block.uncompressed_size != info.uncompressed_size
    {
        return Err(format!(
            "the Block Header says {} uncompressed bytes, the Index {}",
            block.uncompressed_size, info.uncompressed_size
        ));
    }
    block.uncompressed_size = info.uncompressed_size;

    // SAFETY: `block.filters` points to the terminated array decoded above,
    // alive in `filters`; the function only reads it.
    let memory = unsafe { sys::lzma_raw_decoder_memusage(block.filters) };
    if memory > MAX_DECODER_MEMORY {
        return Err(if memory == u64::MAX {
            "the Block Header's filter chain is not supported".to_string()
        } else {
            format!(
                "decoding would need {} MiB of memory (more than {} MiB)",
                memory >> 20,
                MAX_DECODER_MEMORY >> 20
            )
        });
    }

    let mut in_pos = header_size as usize;
    let mut out_pos = 0usize;
    // SAFETY: `block` is ready for decoding (header decoded, sizes set,
    // filters alive). `raw` is valid for reads of raw.len() bytes and
    // in_pos <= raw.len(); `out` is valid for writes of out.len() bytes and
    // out_pos == 0. liblzma reads and writes only within those bounds and
    // through the in/out position pointers, which are distinct locals.
    let ret = unsafe {
        sys::lzma_block_buffer_decode(
            &mut block,
            std::ptr::null(),
            raw.as_ptr(),
            &mut in_pos,
            raw.len(),
            out.as_mut_ptr(),
            &mut out_pos,
            out.len(),
        )
    };
    drop(filters);
    if ret != sys::LZMA_OK {
        return Err(format!("decoding failed: {}", ret_name(ret)));
    }
    if in_pos != raw.len() || out_pos != out.len() {
        return Err(format!(
            "the Block decoded {out_pos} bytes from {in_pos} where the Index says {} from {}",
            out.len(),
            raw.len()
        ));
    }
    Ok(())
}
