//! Client policies, decided in [`LayerFactory::admit`] before anything is
//! opened for a client, so a refused client costs nothing and is told why
//! (NBD `ERR_POLICY` with the reason):
//!
//! - `ip:allow=10.0.0.0/8,::1,deny=all` — like nbdkit's ip filter: the
//!   allow rules are tried first, in order, then the deny rules; the first
//!   that matches decides, and a client no rule matches is allowed. Rules:
//!   an address or CIDR (IPv4 or IPv6; a client on an IPv4-mapped IPv6
//!   address `::ffff:a.b.c.d` is the IPv4 client it is), `anyipv4`,
//!   `anyipv6`, `all`, and for Unix-socket clients `uid:N`, `gid:N` (the
//!   kernel's `SO_PEERCRED`). So a Unix client is allowed unless a uid/gid
//!   rule or `all` denies it. Lists may be written nbdkit's way
//!   (`allow=a,b`), with repeated keys (`allow=a,allow=b`) or with `|`.
//! - `limit:clients=N` — at most N clients at once: a client holds a seat
//!   from admission until its device is dropped.
//!
//! Neither puts a layer over the device: they cost requests nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use synth::{Admission, BlockDev, Client, LayerFactory, Peer, Result};

use crate::{Below, Entry, FilterArgs, FilterError};

pub(crate) const IP_ENTRY: Entry = Entry {
    name: "ip",
    usage: "ip:allow=RULE,…,deny=RULE,…",
    about: "admit or refuse clients; RULE: ADDR[/BITS] (IPv4, IPv6), anyipv4, anyipv6, all, uid:N, gid:N",
    build: build_ip,
};

pub(crate) const LIMIT_ENTRY: Entry = Entry {
    name: "limit",
    usage: "limit:clients=N",
    about: "admit at most N clients at once",
    build: build_limit,
};

/// One rule's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    All,
    AnyV4,
    AnyV6,
    V4 { net: u32, bits: u32 },
    V6 { net: u128, bits: u32 },
    Uid(u32),
    Gid(u32),
}

/// `bits` leading ones of a `W`-bit word (0 bits: no ones).
fn mask4(bits: u32) -> u32 {
    u32::MAX.checked_shl(32 - bits).unwrap_or(0)
}

fn mask6(bits: u32) -> u128 {
    u128::MAX.checked_shl(128 - bits).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Pattern {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let t = text.trim();
        let id = |s: &str, what: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("{text:?}: {what} is not a number"))
        };
        match t {
            "all" | "any" => return Ok(Pattern::All),
            "anyipv4" | "allipv4" => return Ok(Pattern::AnyV4),
            "anyipv6" | "allipv6" => return Ok(Pattern::AnyV6),
            _ => {}
        }
        if let Some(u) = t.strip_prefix("uid:") {
            return Ok(Pattern::Uid(id(u, "the uid")?));
        }
        if let Some(g) = t.strip_prefix("gid:") {
            return Ok(Pattern::Gid(id(g, "the gid")?));
        }
        let (addr, bits) = match t.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let bad = || {
            format!("{text:?} is not an address, ADDR/BITS, anyipv4, anyipv6, all, uid:N or gid:N")
        };
        let ip: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u32>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(match ip {
            IpAddr::V4(v4) => Pattern::V4 {
                net: u32::from(v4) & mask4(bits),
                bits,
            },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // A mapped network (::ffff:10.0.0.0/104) is the IPv4 network
                // (10.0.0.0/8): clients are compared unmapped.
                Some(v4) if bits >= 96 => Pattern::V4 {
                    net: u32::from(v4) & mask4(bits - 96),
                    bits: bits - 96,
                },
                _ => Pattern::V6 {
                    net: u128::from(v6) & mask6(bits),
                    bits,
                },
            },
        })
    }

    fn matches(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (Pattern::All, _) => true,
            (p, Peer::Tcp(sa)) => match (p, unmap(sa.ip())) {
                (Pattern::AnyV4, IpAddr::V4(_)) | (Pattern::AnyV6, IpAddr::V6(_)) => true,
                (Pattern::V4 { net, bits }, IpAddr::V4(a)) => u32::from(a) & mask4(*bits) == *net,
                (Pattern::V6 { net, bits }, IpAddr::V6(a)) => u128::from(a) & mask6(*bits) == *net,
                _ => false,
            },
            (Pattern::Uid(u), Peer::Unix { uid, .. }) => *uid == Some(*u),
            (Pattern::Gid(g), Peer::Unix { gid, .. }) => *gid == Some(*g),
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => f.write_str("all"),
            Pattern::AnyV4 => f.write_str("anyipv4"),
            Pattern::AnyV6 => f.write_str("anyipv6"),
            Pattern::V4 { net, bits } => write!(f, "{}/{bits}", Ipv4Addr::from(*net)),
            Pattern::V6 { net, bits } => write!(f, "{}/{bits}", Ipv6Addr::from(*net)),
            Pattern::Uid(u) => write!(f, "uid:{u}"),
            Pattern::Gid(g) => write!(f, "gid:{g}"),
        }
    }
}

/// The `ip` factory: allow rules, then deny rules.
#[derive(Debug)]
pub struct IpFactory {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl IpFactory {
    /// The rules of the filter's arguments.
    pub fn from_args(args: &FilterArgs) -> std::result::Result<Self, FilterError> {
        let mut f = IpFactory {
            allow: Vec::new(),
            deny: Vec::new(),
        };
        let mut list: Option<&str> = None;
        for (key, value) in args.items() {
            let key = match key {
                Some(k @ ("allow" | "deny")) => {
                    list = Some(k);
                    k
                }
                Some(other) => {
                    return Err(
                        args.invalid(format!("has no argument {other:?} (it takes allow, deny)"))
                    )
                }
                None => list.ok_or_else(|| {
                    args.invalid(format!("{value:?}: give allow=… or deny=… first"))
                })?,
            };
            for item in value.split('|') {
                let p = Pattern::parse(item).map_err(|e| args.invalid(format!("{key}: {e}")))?;
                if key == "allow" {
                    f.allow.push(p);
                } else {
                    f.deny.push(p);
                }
            }
        }
        if f.allow.is_empty() && f.deny.is_empty() {
            return Err(args.invalid("no rule given (e.g. ip:allow=127.0.0.1,::1,deny=all)"));
        }
        Ok(f)
    }

    /// `Ok` or why `peer` is refused.
    pub fn decide(&self, peer: &Peer) -> std::result::Result<(), String> {
        if self.allow.iter().any(|p| p.matches(peer)) {
            return Ok(());
        }
        match self.deny.iter().find(|p| p.matches(peer)) {
            None => Ok(()),
            Some(rule) => {
                let who = match peer {
                    Peer::Tcp(sa) => format!("address {}", unmap(sa.ip())),
                    Peer::Unix { .. } => format!("Unix-socket client {peer}"),
                    Peer::Other => "the client".to_string(),
                };
                Err(format!("{who} is denied by --filter ip (deny={rule})"))
            }
        }
    }
}

impl LayerFactory for IpFactory {
    fn name(&self) -> &str {
        "ip"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        Ok(next)
    }
    fn admit(&self, client: &Client) -> std::result::Result<Admission, String> {
        self.decide(&client.peer)?;
        Ok(Admission::default())
    }
}

fn build_ip(
    args: &FilterArgs,
    _below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    Ok(Arc::new(IpFactory::from_args(args)?))
}

/// A place in a client limit, given back when dropped.
#[derive(Debug)]
struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `limit` factory: `max` seats.
#[derive(Debug)]
pub struct LimitFactory {
    max: usize,
    taken: Arc<AtomicUsize>,
}

impl LimitFactory {
    /// The limit of the filter's arguments (`clients=N` or bare `N`).
    pub fn from_args(args: &FilterArgs) -> std::result::Result<Self, FilterError> {
        args.allow(&["clients"], 1)?;
        let text = args
            .get("clients")
            .or(args.positional(0))
            .ok_or_else(|| args.invalid("give the number of clients: limit:clients=N"))?;
        let max = text
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| args.invalid(format!("clients: {text:?} is not a number above 0")))?;
        Ok(LimitFactory {
            max,
            taken: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Clients holding a seat now.
    pub fn connected(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }
}

impl LayerFactory for LimitFactory {
    fn name(&self) -> &str {
        "limit"
    }
    fn layer(&self, next: Arc<dyn BlockDev>, _client: &Client) -> Result<Arc<dyn BlockDev>> {
        Ok(next)
    }
    fn admit(&self, _client: &Client) -> std::result::Result<Admission, String> {
        // Take a seat only if one is free: a refused client must not hold
        // one even for a moment (two racing clients would refuse each
        // other).
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|n| {
                format!(
                    "{n} client(s) connected, the most --filter limit allows ({}): try later",
                    self.max
                )
            })?;
        Ok(Admission::holding(Seat(self.taken.clone())))
    }
}

fn build_limit(
    args: &FilterArgs,
    _below: &Below,
) -> std::result::Result<Arc<dyn LayerFactory>, FilterError> {
    Ok(Arc::new(LimitFactory::from_args(args)?))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use synth::{Export, FilteredExport, SharedExport};

    use super::*;
    use crate::service::testutil;

    fn ip(text: &str) -> IpFactory {
        IpFactory::from_args(&FilterArgs::parse(text).unwrap()).unwrap()
    }

    fn tcp(addr: &str) -> Peer {
        Peer::Tcp(SocketAddr::new(addr.parse().unwrap(), 4711))
    }

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::Unix {
            uid: Some(uid),
            gid: Some(gid),
        }
    }

    #[test]
    fn allow_rules_come_first_then_deny_then_allow() {
        let f = ip("ip:allow=127.0.0.1,::1,deny=all");
        assert!(f.decide(&tcp("127.0.0.1")).is_ok());
        assert!(f.decide(&tcp("::1")).is_ok());
        let e = f.decide(&tcp("127.0.0.2")).unwrap_err();
        assert_eq!(e, "address 127.0.0.2 is denied by --filter ip (deny=all)");
        // Order of keys does not matter: allow wins, as in nbdkit.
        let f = ip("ip:deny=10.0.0.0/8,allow=10.1.0.0/16");
        assert!(f.decide(&tcp("10.1.2.3")).is_ok());
        let e = f.decide(&tcp("10.2.0.1")).unwrap_err();
        assert!(
            e.contains("10.2.0.1") && e.contains("deny=10.0.0.0/8"),
            "{e}"
        );
        // No rule matches: allowed.
        assert!(f.decide(&tcp("192.168.0.1")).is_ok());
    }

    #[test]
    fn ipv6_networks_and_v4_mapped_clients() {
        let f = ip("ip:deny=2001:db8::/32|10.0.0.0/8");
        assert!(f.decide(&tcp("2001:db8:1::5")).is_err());
        assert!(f.decide(&tcp("2001:db9::5")).is_ok());
        // A v4-mapped client is its IPv4 address; a mapped rule an IPv4 one.
        let e = f.decide(&tcp("::ffff:10.9.8.7")).unwrap_err();
        assert!(e.starts_with("address 10.9.8.7 "), "{e}");
        let f = ip("ip:deny=::ffff:192.168.0.0/112");
        assert!(f.decide(&tcp("192.168.4.4")).is_err());
        assert!(f.decide(&tcp("192.169.0.1")).is_ok());
        let f = ip("ip:allow=anyipv6,deny=all");
        assert!(f.decide(&tcp("fe80::1")).is_ok());
        assert!(f.decide(&tcp("::ffff:1.2.3.4")).is_err());
        let f = ip("ip:allow=anyipv4,deny=all");
        assert!(f.decide(&tcp("::ffff:1.2.3.4")).is_ok());
        // Host bits in a rule are ignored; /0 is everything of a family.
        let f = ip("ip:deny=10.1.2.3/8,deny=::/0");
        assert!(f.decide(&tcp("10.200.0.1")).is_err());
        assert!(f.decide(&tcp("1::1")).is_err());
        assert!(f.decide(&tcp("11.0.0.1")).is_ok());
    }

    #[test]
    fn unix_clients_by_uid_and_gid() {
        let f = ip("ip:allow=uid:1000,gid:100,deny=all");
        assert!(f.decide(&unix(1000, 5)).is_ok());
        assert!(f.decide(&unix(7, 100)).is_ok());
        let e = f.decide(&unix(7, 7)).unwrap_err();
        assert!(e.contains("uid=7,gid=7") && e.contains("deny=all"), "{e}");
        // A Unix client no rule names is allowed unless `all` denies it;
        // address rules do not touch it.
        let f = ip("ip:deny=0.0.0.0/0,deny=::/0,deny=uid:0");
        assert!(f.decide(&unix(1000, 1000)).is_ok());
        assert!(f.decide(&unix(0, 0)).is_err());
        assert!(f
            .decide(&Peer::Unix {
                uid: None,
                gid: None
            })
            .is_ok());
        assert!(f.decide(&tcp("127.0.0.1")).is_err());
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "ip",
            "ip:10.0.0.1",
            "ip:allow=10.0.0.256",
            "ip:allow=10.0.0.0/33",
            "ip:allow=::/129",
            "ip:allow=uid:me",
            "ip:allow=localhost",
            "ip:permit=all",
        ] {
            let args = FilterArgs::parse(bad).unwrap();
            assert!(IpFactory::from_args(&args).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_export_refuses_with_the_reason_and_opens_nothing() {
        let (dev, expected) = testutil::base();
        let inner: Arc<dyn Export> = Arc::new(SharedExport::new(dev, "t"));
        let ex = FilteredExport::new(inner, vec![Arc::new(ip("ip:deny=10.0.0.0/8"))]).unwrap();
        let client = |addr| Client {
            id: 1,
            peer: tcp(addr),
            export: String::new(),
        };
        let e = ex.open_client(&client("10.1.2.3"), &|| false).unwrap_err();
        assert_eq!(e.kind(), synth::ErrorKind::Refused);
        assert!(e.to_string().contains("address 10.1.2.3 is denied"), "{e}");
        let dev = ex.open_client(&client("127.0.0.1"), &|| false).unwrap();
        synth::testing::check_dev(&*dev, &expected, &[5_000]);
    }

    #[test]
    fn limit_seats_are_released_on_drop() {
        let f = Arc::new(
            LimitFactory::from_args(&FilterArgs::parse("limit:clients=2").unwrap()).unwrap(),
        );
        let (dev, _) = testutil::base();
        let inner: Arc<dyn Export> = Arc::new(SharedExport::new(dev, "t"));
        let ex = FilteredExport::new(inner, vec![f.clone()]).unwrap();
        let c = Client::local();
        let a = ex.open_client(&c, &|| false).unwrap();
        let b = ex.open_client(&c, &|| false).unwrap();
        assert_eq!(f.connected(), 2);
        let e = ex.open_client(&c, &|| false).unwrap_err();
        assert_eq!(e.kind(), synth::ErrorKind::Refused);
        assert!(e.to_string().contains("2 client(s) connected"), "{e}");
        assert_eq!(f.connected(), 2);
        drop(a);
        assert_eq!(f.connected(), 1);
        let c2 = ex.open_client(&c, &|| false).unwrap();
        drop((b, c2));
        assert_eq!(f.connected(), 0);
        for bad in [
            "limit",
            "limit:clients=0",
            "limit:clients=-1",
            "limit:max=3",
        ] {
            let args = FilterArgs::parse(bad).unwrap();
            assert!(LimitFactory::from_args(&args).is_err(), "{bad}");
        }
        assert_eq!(
            LimitFactory::from_args(&FilterArgs::parse("limit:3").unwrap())
                .unwrap()
                .max,
            3
        );
    }

    #[test]
    fn racing_clients_never_exceed_the_limit() {
        let f = LimitFactory::from_args(&FilterArgs::parse("limit:clients=3").unwrap()).unwrap();
        let admitted = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    if let Ok(a) = f.admit(&Client::local()) {
                        admitted.lock().unwrap().push(a);
                    }
                });
            }
        });
        assert_eq!(admitted.lock().unwrap().len(), 3);
        assert_eq!(f.connected(), 3);
        admitted.lock().unwrap().clear();
        assert_eq!(f.connected(), 0);
    }
}
