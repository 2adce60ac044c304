//! Decoding one Block (§3): Block Header (§3.1), Compressed Data (§3.2),
//! Block Padding (§3.3) and Check (§3.4), with liblzma's block decoder.
//!
//! This is the spec'd way to decode a Block on its own: the Index gives
//! its Unpadded and Uncompressed Sizes, `lzma_block_header_decode` reads
//! the filter chain, `lzma_block_compressed_size` checks the sizes against
//! the header's, and the block decoder decodes, checks that the Block
//! Padding is zero, verifies the Check and that exactly Uncompressed Size
//! bytes came out. The safe `liblzma` API only decodes whole Streams,
//! hence the raw calls below, kept to this file.
//!
//! The sizes come from the Index, which a hostile file chooses: the
//! [`Header`] is parsed and checked against them first (every size the
//! header declares, the filter chain's memory) and only then does the
//! caller allocate for the Block. A Block beyond the caller's trusted
//! limits is decoded by [`Header::decode_streaming`], whose memory grows
//! with the bytes that really come out, not with the size claimed.

use liblzma_sys as sys;

use super::index::XzBlock;

/// Most memory a Block's filter chain may make liblzma allocate. `xz -9`
/// needs 65 MiB and LZMA2 dictionaries larger than 1.5 GiB are not made by
/// any xz preset; a header asking for more is corrupt or hostile.
const MAX_DECODER_MEMORY: u64 = 1600 << 20;

/// Largest Block Header (§3.1.1: (255 + 1) * 4 bytes).
pub(super) const MAX_HEADER_SIZE: usize = sys::LZMA_BLOCK_HEADER_SIZE_MAX as usize;

/// Compressed bytes read per step by [`Header::decode_streaming`].
const STREAM_CHUNK: u64 = 1 << 20;

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

/// A Block Header (§3.1) decoded by liblzma and checked against the
/// Block's Index Record, ready to decode the Block.
pub(super) struct Header {
    /// Declared before `filters`, whose array it points into: a field of
    /// plain data, nothing to drop.
    block: sys::lzma_block,
    filters: Filters,
    info: XzBlock,
}

impl Header {
    /// Parse the Block Header at the start of `raw` (the Block's first
    /// bytes: at least its Block Header, at most the whole Block) and check
    /// it against `info`, the Block's Index Record: §3.1.1 size, §3.1.2
    /// flags, §3.1.3/§3.1.4 sizes (they must agree with the Index), §3.1.5
    /// filter flags, §3.1.7 CRC32, and the memory the filter chain needs.
    /// Total: any bytes and any `info` give a header or an error.
    #[allow(unsafe_code)]
    pub fn parse(raw: &[u8], info: &XzBlock) -> Result<Header, String> {
        let Some(&size_byte) = raw.first() else {
            return Err("no Block Header bytes".into());
        };
        // §3.1.1: the real Block Header Size is (byte + 1) * 4; 0x00 is the
        // Index Indicator, never a Block.
        let header_size = (u32::from(size_byte) + 1) * 4;
        if size_byte == 0
            || u64::from(header_size).saturating_add(info.check.size()) >= info.unpadded_size
        {
            return Err(format!(
                "Block Header Size byte {size_byte:#04x} does not fit the Unpadded Size {} from the Index",
                info.unpadded_size
            ));
        }
        if raw.len() < header_size as usize {
            return Err(format!(
                "got {} bytes of a {header_size}-byte Block Header",
                raw.len()
            ));
        }

        let mut header = Header {
            // SAFETY: lzma_block is a repr(C) struct of integers, raw
            // pointers and byte arrays, for which all-zero bits are valid
            // values; liblzma wants the reserved members zero.
            block: unsafe { std::mem::zeroed() },
            filters: Filters::new(),
            info: *info,
        };
        let block = &mut header.block;
        // Version 1 has `ignore_check`, which stays false: the Check is
        // verified.
        block.version = 1;
        block.header_size = header_size;
        block.check = sys::lzma_check::from(info.check.id());
        block.filters = header.filters.0.as_mut_ptr();

        // SAFETY: `block` is initialized as block.h asks (version,
        // header_size, check, filters pointing to LZMA_FILTERS_MAX + 1
        // entries in a Box that lives as long as `header`). `raw` holds at
        // least header_size bytes (checked above), all the function reads.
        // A NULL allocator means malloc/free.
        let ret = unsafe { sys::lzma_block_header_decode(block, std::ptr::null(), raw.as_ptr()) };
        if ret != sys::LZMA_OK {
            return Err(format!("bad Block Header (§3.1): {}", ret_name(ret)));
        }
        // SAFETY: `block` was filled by lzma_block_header_decode; the call
        // only reads and writes its scalar members.
        let ret = unsafe { sys::lzma_block_compressed_size(block, info.unpadded_size) };
        if ret != sys::LZMA_OK {
            return Err(format!(
                "the Block Header's sizes contradict the Index's Unpadded Size {}",
                info.unpadded_size
            ));
        }
        // §3.1.4: the header may store the Uncompressed Size; it must agree
        // with the Index. Setting it makes the decoder check the output
        // size.
        if block.uncompressed_size != sys::LZMA_VLI_UNKNOWN
            && block.uncompressed_size != info.uncompressed_size
        {
            return Err(format!(
                "the Block Header says {} uncompressed bytes, the Index {}",
                block.uncompressed_size, info.uncompressed_size
            ));
        }
        block.uncompressed_size = info.uncompressed_size;

        // SAFETY: `block.filters` points to the terminated array decoded
        // above, alive in `header.filters`; the function only reads it.
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
        Ok(header)
    }

    /// Size of the Block Header in bytes.
    pub fn size(&self) -> usize {
        self.block.header_size as usize
    }

    /// Decode the whole Block `raw` (its Total Size bytes, from the Block
    /// Header to the end of its Check) into `out`, exactly its Uncompressed
    /// Size. The error says what is wrong; the caller says which Block.
    #[allow(unsafe_code)]
    pub fn decode_buffer(mut self, raw: &[u8], out: &mut [u8]) -> Result<(), String> {
        if raw.len() as u64 != self.info.total_size() {
            return Err(format!(
                "got {} compressed bytes, the Index says {}",
                raw.len(),
                self.info.total_size()
            ));
        }
        if out.len() as u64 != self.info.uncompressed_size {
            return Err(format!(
                "an output buffer of {} bytes for {} uncompressed bytes",
                out.len(),
                self.info.uncompressed_size
            ));
        }
        // header_size < unpadded_size <= total_size == raw.len() (parse).
        let mut in_pos = self.size();
        let mut out_pos = 0usize;
        // SAFETY: `self.block` is ready for decoding (header decoded, sizes
        // set, filters alive in `self.filters`). `raw` is valid for reads
        // of raw.len() bytes and in_pos <= raw.len(); `out` is valid for
        // writes of out.len() bytes and out_pos == 0. liblzma reads and
        // writes only within those bounds and through the in/out position
        // pointers, which are distinct locals.
        let ret = unsafe {
            sys::lzma_block_buffer_decode(
                &mut self.block,
                std::ptr::null(),
                raw.as_ptr(),
                &mut in_pos,
                raw.len(),
                out.as_mut_ptr(),
                &mut out_pos,
                out.len(),
            )
        };
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

    /// Decode the Block reading its compressed bytes a MiB at a time with
    /// `read(buf, offset in the Block)`, into a buffer that grows with the
    /// output (doubling, up to the Uncompressed Size): a Block whose Index
    /// Record claims gigabytes but whose data decodes to little or fails
    /// early costs only what it really decodes to.
    #[allow(unsafe_code)]
    pub fn decode_streaming(
        mut self,
        mut read: impl FnMut(&mut [u8], u64) -> Result<(), String>,
    ) -> Result<Vec<u8>, String> {
        let total = self.info.total_size();
        let out_len = usize::try_from(self.info.uncompressed_size)
            .map_err(|_| "too big for this machine's memory".to_string())?;
        let mut stream = Stream::new();
        // SAFETY: `stream.0` is an LZMA_STREAM_INIT (all zero) lzma_stream;
        // `self.block` was prepared by `parse`. The decoder keeps a pointer
        // to it (it writes the Check it read into `raw_check`): `self` is
        // a local that does not move until this function returns, after
        // `stream` (declared later) has been ended. The filter options are
        // copied during this call.
        let ret = unsafe { sys::lzma_block_decoder(&mut stream.0, &mut self.block) };
        if ret != sys::LZMA_OK {
            return Err(format!("starting the decoder: {}", ret_name(ret)));
        }
        let mut inbuf = vec![0u8; STREAM_CHUNK.min(total) as usize];
        let mut in_at = self.size() as u64;
        let mut out: Vec<u8> = Vec::new();
        loop {
            if stream.0.avail_in == 0 && in_at < total {
                let n = STREAM_CHUNK.min(total - in_at) as usize;
                read(&mut inbuf[..n], in_at)?;
                in_at += n as u64;
                stream.0.next_in = inbuf.as_ptr();
                stream.0.avail_in = n;
            }
            if out.len() == out.capacity() && out.len() < out_len {
                let grow = out
                    .len()
                    .max(STREAM_CHUNK as usize)
                    .min(out_len - out.len());
                out.try_reserve_exact(grow).map_err(|_| {
                    format!(
                        "cannot allocate {} bytes for the decoded Block",
                        out.len() + grow
                    )
                })?;
            }
            let room = out_len - out.len();
            let spare = out.spare_capacity_mut();
            let avail = spare.len().min(room);
            stream.0.next_out = spare.as_mut_ptr().cast::<u8>();
            stream.0.avail_out = avail;
            let action = if in_at == total {
                sys::LZMA_FINISH
            } else {
                sys::LZMA_RUN
            };
            // SAFETY: next_in/avail_in describe initialized bytes of
            // `inbuf`, which is neither moved nor resized while the stream
            // lives; next_out/avail_out describe `avail` bytes of `out`'s
            // spare capacity, set again before every call since `out` may
            // have moved.
            let ret = unsafe { sys::lzma_code(&mut stream.0, action) };
            let written = avail - stream.0.avail_out;
            // SAFETY: liblzma initialized the `written` bytes after the
            // vector's length, within its capacity.
            unsafe { out.set_len(out.len() + written) };
            match ret {
                sys::LZMA_OK => {}
                sys::LZMA_STREAM_END => break,
                // No progress is possible (liblzma says so after two calls
                // without any): the input ended before the Block did.
                e => return Err(format!("decoding failed: {}", ret_name(e))),
            }
        }
        if stream.0.avail_in != 0 || in_at != total || out.len() != out_len {
            return Err(format!(
                "the Block decoded {} bytes from {} where the Index says {out_len} from {total}",
                out.len(),
                in_at - stream.0.avail_in as u64
            ));
        }
        Ok(out)
    }
}

/// An `lzma_stream` that is ended (its decoder freed) when dropped.
struct Stream(sys::lzma_stream);

impl Stream {
    #[allow(unsafe_code)]
    fn new() -> Self {
        // SAFETY: LZMA_STREAM_INIT is all zeros (base.h), valid for this
        // repr(C) struct of pointers and integers.
        Stream(unsafe { std::mem::zeroed() })
    }
}

impl Drop for Stream {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the stream is LZMA_STREAM_INIT or was initialized by
        // lzma_block_decoder; lzma_end accepts both and frees what the
        // decoder allocated.
        unsafe { sys::lzma_end(&mut self.0) };
    }
}
