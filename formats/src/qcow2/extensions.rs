//! Header extensions (qcow2.txt "Header extensions", "String header
//! extensions", "Feature name table").

use super::error::QcowError;
use super::header::{be32, Header};

/// Header extension types (Header extensions, bytes 0-3).
const END: u32 = 0x0000_0000;
const BACKING_FORMAT: u32 = 0xe279_2aca;
const FEATURE_NAMES: u32 = 0x6803_f857;
const ENCRYPTION_HEADER: u32 = 0x0537_be77;
const EXTERNAL_DATA_FILE: u32 = 0x4441_5441;

/// Feature name table entries are 48 bytes: type, bit, 46 bytes of name.
const FEATURE_NAME_ENTRY: usize = 48;

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number within that bitmap.
    pub bit: u8,
    /// The name (zero padding removed).
    pub name: String,
}

/// What the header extensions say that matters to a reader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The backing file format name string (e.g. "qcow2", "raw").
    pub backing_format: Option<String>,
    /// The feature name table, for naming unknown features in errors.
    pub feature_names: Vec<FeatureName>,
    /// The external data file name string.
    pub external_data_file: Option<String>,
    /// A full disk encryption header pointer is present.
    pub encryption_header: bool,
}

fn string(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Parse the header extensions in `first` (the first cluster, or the whole
/// file when it is smaller). They start right after the header and end
/// with an END extension, at the backing file name, or at the end of the
/// first cluster, whichever comes first.
pub fn parse(h: &Header, first: &[u8]) -> Result<Extensions, QcowError> {
    let mut ext = Extensions::default();
    let cluster = usize::try_from(h.cluster_size()).unwrap_or(usize::MAX);
    let mut end = first.len().min(cluster);
    // "the backing file name should be stored in the remaining space between
    // the end of the header extension area and the end of the first cluster"
    if h.backing_file_offset != 0 {
        end = end.min(usize::try_from(h.backing_file_offset).unwrap_or(usize::MAX));
    }
    let mut at = h.header_length as usize;
    while at + 8 <= end {
        let kind = be32(first, at);
        let len = be32(first, at + 4) as usize;
        if kind == END {
            break;
        }
        let data_start = at + 8;
        let Some(data_end) = data_start.checked_add(len).filter(|&e| e <= end) else {
            return Err(QcowError::corrupt(
                at as u64,
                format!(
                    "header extension {kind:#010x} of {len} bytes reaches past the header \
                     extension area (which ends at {end})"
                ),
            ));
        };
        let data = &first[data_start..data_end];
        match kind {
            BACKING_FORMAT => ext.backing_format = Some(string(data)),
            EXTERNAL_DATA_FILE => ext.external_data_file = Some(string(data)),
            ENCRYPTION_HEADER => ext.encryption_header = true,
            FEATURE_NAMES => {
                ext.feature_names = data
                    .chunks_exact(FEATURE_NAME_ENTRY)
                    .map(|e| {
                        let name = &e[2..];
                        let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                        FeatureName {
                            kind: e[0],
                            bit: e[1],
                            name: string(&name[..n]),
                        }
                    })
                    .collect();
            }
            // Bitmaps (0x23852875) and unknown extensions: "can be safely
            // ignored" by a reader of the active layer.
            _ => {}
        }
        // Data padded "to the next multiple of 8".
        at = data_start + len.div_ceil(8) * 8;
    }
    Ok(ext)
}

/// The backing file name (Header bytes 8-19), or `None`. It must lie in
/// the first cluster (see [`parse`]) and be at most 1023 bytes.
pub fn backing_file(h: &Header, first: &[u8]) -> Result<Option<String>, QcowError> {
    if h.backing_file_offset == 0 {
        return Ok(None);
    }
    let len = h.backing_file_size as u64;
    if len == 0 || len > 1023 {
        return Err(QcowError::corrupt(
            16,
            format!("backing_file_size {len} (must be 1 to 1023 bytes)"),
        ));
    }
    let start = h.backing_file_offset;
    let end = start.saturating_add(len);
    if end > first.len() as u64 || end > h.cluster_size() {
        return Err(QcowError::corrupt(
            8,
            format!(
                "the backing file name at {start}..{end} is not within the first cluster \
                 ({} bytes read)",
                first.len()
            ),
        ));
    }
    Ok(Some(string(&first[start as usize..end as usize])))
}
