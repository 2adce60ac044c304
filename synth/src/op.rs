//! The kinds of request a device serves, named once for everyone who
//! counts, logs or selects them (service filters, the web view).

/// A kind of request a [`crate::BlockDev`] serves, as people name it: the
/// filters' `ops=read|write`, the `op` field of a log line, a row of the
/// stats table and of the web view's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `read_at` or `read_chunks`.
    Read,
    /// `write_at`.
    Write,
    /// `write_zeroes`.
    Zero,
    /// `trim`.
    Trim,
    /// `flush`.
    Flush,
    /// `cache`.
    Cache,
    /// `extents` (NBD block status).
    Extents,
}

impl Op {
    /// Every op, in table order.
    pub const ALL: [Op; 7] = [
        Op::Read,
        Op::Write,
        Op::Zero,
        Op::Trim,
        Op::Flush,
        Op::Cache,
        Op::Extents,
    ];

    /// Its name on the command line and in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Zero => "zero",
            Op::Trim => "trim",
            Op::Flush => "flush",
            Op::Cache => "cache",
            Op::Extents => "extents",
        }
    }

    /// The op named `name` (also the NBD command names people type).
    pub fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "read" | "pread" => Op::Read,
            "write" | "pwrite" => Op::Write,
            "zero" | "zeroes" | "write-zeroes" => Op::Zero,
            "trim" => Op::Trim,
            "flush" => Op::Flush,
            "cache" => Op::Cache,
            "extents" | "block-status" => Op::Extents,
            _ => return None,
        })
    }

    /// Its index in [`Op::ALL`] (a table row).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the op moves data bytes over the wire (what a bandwidth
    /// limit counts).
    pub fn moves_data(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
