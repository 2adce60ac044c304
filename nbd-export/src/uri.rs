//! NBD URIs (the NBD URI specification, doc/uri.md of the NBD project):
//! `nbd://[host][:port][/export]` and `nbd+unix:///[export]?socket=PATH`.
//! `nbds://` and `nbds+unix://` (TLS) are recognised and refused: TLS is not
//! supported yet.
//!
//! A small RFC 3986 parser for exactly these forms: the export name is the
//! path without its leading `/`, percent-decoded ("NBD URI export name");
//! the port defaults to 10809 ("NBD URI authority"); `socket` is the one
//! query parameter we understand, the TLS ones are accepted and ignored on
//! the unencrypted schemes (they only matter once TLS is negotiated), and
//! any other is an error ("Other NBD URI query parameters": SHOULD be
//! diagnosed).

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::client::ClientError;

/// The IANA port of NBD (uri.md "NBD URI authority": the default port).
pub const DEFAULT_PORT: u16 = 10809;

/// Longest export name we send (proto.md "Conventions": strings are at most 4096 bytes).
const MAX_NAME: usize = 4096;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP: a host name or IP address (IPv6 without brackets) and a port.
    Tcp {
        /// Host name or address literal.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix domain socket. A path starting with NUL names a socket in the
    /// Linux abstract namespace (uri.md "NBD URI socket parameter").
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix(p) => {
                let bytes = p.as_os_str().as_encoded_bytes();
                match bytes.split_first() {
                    Some((0, rest)) => {
                        write!(f, "abstract Unix socket @{}", String::from_utf8_lossy(rest))
                    }
                    _ => write!(f, "Unix socket {}", p.display()),
                }
            }
        }
    }
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The export name (may be empty: the server's default export).
    pub export: String,
}

/// Whether `s` looks like an NBD URI (`nbd://`, `nbd+unix://`, `nbds://`,
/// `nbds+unix://`, or another `nbd+…`/`nbds+…` transport), as opposed to a
/// file name. Scheme names are case-insensitive (RFC 3986 section 3.1).
pub fn is_nbd_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    let base = scheme.split('+').next().unwrap_or("");
    (base == "nbd" || base == "nbds")
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
}

fn invalid(uri: &str, reason: impl Into<String>) -> ClientError {
    ClientError::InvalidUri {
        uri: uri.to_owned(),
        reason: reason.into(),
    }
}

/// Decode `%XX` escapes (RFC 3986 section 2.1) into bytes. Everything else
/// is taken as it is (`+` stays a plus: this is not form encoding).
fn percent_decode(uri: &str, s: &str, what: &str) -> Result<Vec<u8>, ClientError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else {
                return Err(invalid(
                    uri,
                    format!("bad percent-encoding in the {what} (`%` must be followed by two hex digits)"),
                ));
            };
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

impl NbdUri {
    /// Parse `uri`. `nbds://` and `nbds+unix://` give
    /// [`ClientError::TlsUnsupported`]; anything malformed
    /// [`ClientError::InvalidUri`] saying what is wrong.
    pub fn parse(uri: &str) -> Result<NbdUri, ClientError> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(invalid(
                uri,
                "expected nbd://HOST[:PORT][/EXPORT] or nbd+unix:///[EXPORT]?socket=PATH",
            ));
        };
        let unix = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+unix" => {
                return Err(ClientError::TlsUnsupported {
                    uri: uri.to_owned(),
                })
            }
            other => {
                return Err(invalid(
                    uri,
                    format!(
                        "unsupported scheme {other:?} (supported: nbd://HOST[:PORT][/EXPORT], \
                         nbd+unix:///[EXPORT]?socket=PATH)"
                    ),
                ))
            }
        };
        if rest.contains('#') {
            return Err(invalid(uri, "an NBD URI has no fragment (`#...`)"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        // RFC 3986 section 3.2: the authority runs to the first `/` (the path).
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // uri.md "NBD URI export name": the path without its leading `/`.
        let name = percent_decode(uri, path.strip_prefix('/').unwrap_or(path), "export name")?;
        let export = String::from_utf8(name)
            .map_err(|_| invalid(uri, "the export name is not UTF-8 once decoded"))?;
        if export.contains('\0') {
            return Err(invalid(uri, "the export name contains NUL"));
        }
        if export.len() > MAX_NAME {
            return Err(invalid(
                uri,
                format!("the export name is longer than {MAX_NAME} bytes"),
            ));
        }

        let mut socket: Option<Vec<u8>> = None;
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = String::from_utf8_lossy(&percent_decode(uri, key, "query")?).into_owned();
            match key.as_str() {
                "socket" if unix => {
                    if socket.is_some() {
                        return Err(invalid(uri, "socket= is given twice"));
                    }
                    socket = Some(percent_decode(uri, value, "socket path")?);
                }
                "socket" => {
                    return Err(invalid(
                        uri,
                        "socket= is for nbd+unix:// URIs; nbd:// connects over TCP",
                    ))
                }
                // Only meaningful once TLS is negotiated, which nbd:// and
                // nbd+unix:// do opportunistically; we never do.
                "tls-type" | "tls-hostname" | "tls-verify-peer" => {}
                other => {
                    return Err(invalid(
                        uri,
                        format!("unknown query parameter {other:?} (supported: socket)"),
                    ))
                }
            }
        }

        let endpoint = if unix {
            if !authority.is_empty() {
                return Err(invalid(
                    uri,
                    format!(
                        "an nbd+unix URI names no host (got {authority:?}); \
                         write nbd+unix:///EXPORT?socket=PATH"
                    ),
                ));
            }
            match socket {
                None => {
                    return Err(invalid(
                        uri,
                        "nbd+unix needs the socket path: nbd+unix:///EXPORT?socket=PATH",
                    ))
                }
                Some(s) if s.is_empty() => return Err(invalid(uri, "the socket path is empty")),
                Some(s) => Endpoint::Unix(PathBuf::from(OsString::from_vec(s))),
            }
        } else {
            parse_authority(uri, authority)?
        };
        Ok(NbdUri { endpoint, export })
    }
}

/// `[userinfo@]host[:port]` (RFC 3986 section 3.2). The userinfo only
/// matters for TLS and is ignored; an empty host is `localhost`.
fn parse_authority(uri: &str, authority: &str) -> Result<Endpoint, ClientError> {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        // RFC 2732 / RFC 3986 section 3.2.2: an IPv6 literal in brackets.
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(invalid(uri, "unterminated `[` in the host"));
        };
        let port =
            match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| {
                    invalid(uri, format!("unexpected {p:?} after the IPv6 address"))
                })?),
            };
        // A zone identifier is `%25` in a URI (RFC 6874).
        let addr = String::from_utf8(percent_decode(uri, addr, "host")?)
            .map_err(|_| invalid(uri, "the host is not UTF-8"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() && !addr.contains('%') {
            return Err(invalid(uri, format!("{addr:?} is not an IPv6 address")));
        }
        (addr, port)
    } else {
        let (h, p) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        let h = String::from_utf8(percent_decode(uri, h, "host")?)
            .map_err(|_| invalid(uri, "the host is not UTF-8"))?;
        if h.contains(|c: char| c.is_whitespace() || c == '\0' || c == '[' || c == ']') {
            return Err(invalid(uri, format!("bad host {h:?}")));
        }
        (h, p)
    };
    let port = match port {
        // RFC 3986 section 3.2.3: an empty port is the scheme's default.
        None | Some("") => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err(invalid(uri, "port 0 is not a port one can connect to")),
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(invalid(uri, format!("bad port {p:?} (expected 1-65535)"))),
        },
    };
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    Ok(Endpoint::Tcp { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUri {
        NbdUri {
            endpoint: Endpoint::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    fn unix(path: &str, export: &str) -> NbdUri {
        NbdUri {
            endpoint: Endpoint::Unix(path.into()),
            export: export.into(),
        }
    }

    fn reason(uri: &str) -> String {
        match NbdUri::parse(uri) {
            Err(ClientError::InvalidUri { reason, .. }) => reason,
            other => panic!("{uri}: expected InvalidUri, got {other:?}"),
        }
    }

    #[test]
    fn the_export_name_examples_of_uri_md() {
        for (uri, export) in [
            ("nbd://example.com/disk", "disk"),
            ("nbd://example.com/", ""),
            ("nbd://example.com", ""),
            ("nbd://example.com//disk", "/disk"),
            ("nbd://example.com/hello%20world", "hello world"),
        ] {
            assert_eq!(
                NbdUri::parse(uri).unwrap(),
                tcp("example.com", 10809, export),
                "{uri}"
            );
        }
        assert_eq!(
            NbdUri::parse("nbd+unix:///disk?socket=sock").unwrap(),
            unix("sock", "disk")
        );
    }

    #[test]
    fn percent_encoded_export_names_decode_to_utf8() {
        assert_eq!(
            NbdUri::parse("nbd://h/my%20disk%2F%C3%BC+x%3f").unwrap(),
            tcp("h", 10809, "my disk/ü+x?")
        );
        assert_eq!(
            NbdUri::parse("nbd+unix:///a%2Fb?socket=/tmp/s%20p").unwrap(),
            unix("/tmp/s p", "a/b")
        );
        assert!(reason("nbd://h/%zz").contains("percent-encoding"));
        assert!(reason("nbd://h/%4").contains("percent-encoding"));
        assert!(reason("nbd://h/%FF").contains("UTF-8"));
        assert!(reason("nbd://h/a%00b").contains("NUL"));
        let long = format!("nbd://h/{}", "x".repeat(4097));
        assert!(reason(&long).contains("4096"));
    }

    #[test]
    fn ports_hosts_and_ipv6() {
        assert_eq!(
            NbdUri::parse("nbd://127.0.0.1:4567/x").unwrap(),
            tcp("127.0.0.1", 4567, "x")
        );
        assert_eq!(
            NbdUri::parse("nbd://h:").unwrap(),
            tcp("h", DEFAULT_PORT, "")
        );
        assert_eq!(
            NbdUri::parse("nbd://[::1]:99/e").unwrap(),
            tcp("::1", 99, "e")
        );
        assert_eq!(NbdUri::parse("nbd://[::1]").unwrap(), tcp("::1", 10809, ""));
        assert_eq!(
            NbdUri::parse("nbd://user@host:1").unwrap(),
            tcp("host", 1, "")
        );
        assert_eq!(
            NbdUri::parse("NBD://localhost").unwrap(),
            tcp("localhost", 10809, "")
        );
        assert_eq!(
            NbdUri::parse("nbd:///x").unwrap(),
            tcp("localhost", 10809, "x")
        );
        assert!(reason("nbd://h:0").contains("port 0"));
        assert!(reason("nbd://h:65536").contains("bad port"));
        assert!(reason("nbd://h:+1").contains("bad port"));
        assert!(reason("nbd://h:x").contains("bad port"));
        assert!(reason("nbd://[::1").contains("unterminated"));
        assert!(reason("nbd://[::1]x").contains("after the IPv6"));
        assert!(reason("nbd://[nope]").contains("not an IPv6"));
        assert_eq!(
            tcp("::1", 5, "").endpoint.to_string(),
            "[::1]:5",
            "IPv6 is shown in brackets"
        );
    }

    #[test]
    fn unix_sockets_need_exactly_one_socket_parameter() {
        assert_eq!(
            NbdUri::parse("nbd+unix:///?socket=/run/nbd.sock").unwrap(),
            unix("/run/nbd.sock", "")
        );
        assert_eq!(
            NbdUri::parse("nbd+unix://?socket=s").unwrap(),
            unix("s", "")
        );
        assert!(reason("nbd+unix:///disk").contains("socket"));
        assert!(reason("nbd+unix:///disk?foo=1").contains("unknown query parameter"));
        assert!(reason("nbd+unix:///?socket=").contains("empty"));
        assert!(reason("nbd+unix:///?socket=a&socket=b").contains("twice"));
        assert!(reason("nbd+unix://host/?socket=a").contains("no host"));
        assert!(reason("nbd://h/?socket=a").contains("nbd+unix"));
        assert!(reason("nbd://h/x#frag").contains("fragment"));
        // Abstract namespace sockets start with NUL.
        let u = NbdUri::parse("nbd+unix:///?socket=%00/abstract").unwrap();
        assert_eq!(u.endpoint.to_string(), "abstract Unix socket @/abstract");
        // TLS parameters are accepted (and ignored) on the plain schemes.
        assert_eq!(
            NbdUri::parse("nbd+unix:///e?socket=s&tls-type=x509").unwrap(),
            unix("s", "e")
        );
    }

    #[test]
    fn tls_schemes_are_refused_and_other_schemes_are_diagnosed() {
        for uri in ["nbds://h/x", "nbds+unix:///?socket=s", "NBDS://h"] {
            assert!(
                matches!(NbdUri::parse(uri), Err(ClientError::TlsUnsupported { .. })),
                "{uri}"
            );
        }
        assert!(NbdUri::parse("nbds://h")
            .unwrap_err()
            .to_string()
            .contains("TLS is not supported"));
        assert!(reason("nbd+vsock://1").contains("unsupported scheme"));
        assert!(reason("nbd:x").contains("expected nbd://"));
    }

    #[test]
    fn nbd_uris_are_told_apart_from_file_names() {
        for s in [
            "nbd://h",
            "nbd+unix:///?socket=s",
            "nbds://h",
            "nbds+unix:///",
            "NBD://h",
            "nbd+vsock://1",
        ] {
            assert!(is_nbd_uri(s), "{s}");
        }
        for s in [
            "disk.img",
            "/dev/sda",
            "./nbd://x",
            "nbdx://h",
            "http://h/x",
            "nbd:/x",
        ] {
            assert!(!is_nbd_uri(s), "{s}");
        }
    }
}
