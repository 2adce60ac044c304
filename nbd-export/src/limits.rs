//! How many clients a server can hold: the descriptor limit, raised as far
//! as the system allows, and a default connection cap that stays inside it.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept aside for everything that is not a client socket:
/// standard streams, the listener, the wake socket and its signal-handler
/// copies, log files, origin connections (`http`, `xz`), host files.
const RESERVE_FIXED: u64 = 32;
/// Descriptors per client: its socket (one, shared by all its threads),
/// and one the export may open for it (a tmpdisk's disk file).
pub const FDS_PER_CONNECTION: u64 = 2;
/// Clients refused politely at once (each holds its socket for a moment:
/// greeting, an error for every option, close); more are closed at once.
pub const MAX_REFUSING: usize = 16;
/// The default cap never exceeds this: every client is a thread, and
/// threads count against the system's process limits too.
pub const MAX_DEFAULT_CONNECTIONS: usize = 10_000;

/// The descriptor limit after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit now in force (`None`: unlimited).
    pub soft: Option<u64>,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit: the soft limit is
/// often 1024 for compatibility with `select()`, which nothing here uses,
/// while a server with many idle clients needs a descriptor for each. The
/// caller should give child processes the old limit back (see
/// `FdLimit::raised_from`).
pub fn raise_fd_limit() -> FdLimit {
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return FdLimit {
            soft: lim.current,
            raised_from: None,
        };
    }
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => FdLimit {
            soft: lim.maximum,
            raised_from: lim.current,
        },
        Err(e) => {
            log::debug!("cannot raise the descriptor limit: {e}");
            FdLimit {
                soft: lim.current,
                raised_from: None,
            }
        }
    }
}

/// The current soft descriptor limit (`None`: unlimited).
pub fn fd_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Descriptors held back from clients under a soft limit of `soft`: the
/// fixed reserve, an eighth for the export's own use (host-file pools,
/// origin connections), and the refusals in progress.
fn reserve(soft: u64) -> u64 {
    RESERVE_FIXED + soft / 8 + MAX_REFUSING as u64
}

/// The default connection cap under the current descriptor limit: what is
/// left after the reserve, [`FDS_PER_CONNECTION`] each, at least 1 and at
/// most [`MAX_DEFAULT_CONNECTIONS`].
pub fn default_max_connections() -> usize {
    connections_for(fd_limit())
}

/// Clients `soft` descriptors hold (see [`default_max_connections`]).
pub fn connections_for(soft: Option<u64>) -> usize {
    let Some(soft) = soft else {
        return MAX_DEFAULT_CONNECTIONS;
    };
    let n = soft.saturating_sub(reserve(soft)) / FDS_PER_CONNECTION;
    (n.min(MAX_DEFAULT_CONNECTIONS as u64) as usize).max(1)
}

/// Descriptors `connections` clients need with the reserve: more than the
/// soft limit means the cap cannot be reached without running out.
pub fn descriptors_for(connections: usize, soft: u64) -> u64 {
    (connections as u64)
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(reserve(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_fits_the_descriptor_limit() {
        // 64 descriptors: 32 fixed + 8 + 16 refusing leaves 8, 4 clients.
        assert_eq!(connections_for(Some(64)), 4);
        assert!(descriptors_for(4, 64) <= 64);
        assert_eq!(connections_for(Some(10)), 1);
        assert_eq!(connections_for(Some(1024)), 424);
        assert!(descriptors_for(424, 1024) <= 1024);
        assert_eq!(connections_for(Some(1 << 20)), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(connections_for(None), MAX_DEFAULT_CONNECTIONS);
    }
}
