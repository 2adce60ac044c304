//! `NbdClient` against this crate's own `Server`, over TCP and Unix sockets.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::thread;

use nbd_export::{ClientError, ClientOptions, NbdClient, Server, ServerOptions, Stream};
use sources::PatternDev;
use synth::{BlockDev, SharedExport};

/// 40 MiB and 3 bytes: more than one 32 MiB request, and an odd tail.
const SIZE: u64 = (40 << 20) + 3;
const NAME: &str = "my disk/ü";

fn server() -> Arc<Server> {
    let dev = Arc::new(PatternDev::new(SIZE));
    let opts = ServerOptions {
        export_name: NAME.into(),
        ..ServerOptions::default()
    };
    Server::new(Arc::new(SharedExport::new(dev, "pattern")), opts).unwrap()
}

fn check_reads(c: &NbdClient) {
    assert_eq!(c.size(), SIZE);
    for (off, len) in [
        (0u64, 512usize),
        (1, 1),
        (4093, 10_000),
        (SIZE - 3, 3),
        (1 << 20, (33 << 20) + 5),
    ] {
        let mut got = vec![0u8; len];
        c.read_at(&mut got, off).unwrap();
        let mut want = vec![0u8; len];
        PatternDev::fill(&mut want, off);
        assert!(got == want, "{len} bytes at {off}");
    }
    assert!(c.read_at(&mut [0u8; 4], SIZE - 3).is_err());
}

#[test]
fn reads_over_tcp_with_a_percent_encoded_export_name() {
    let server = server();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = thread::spawn(move || {
        for _ in 0..2 {
            let (s, _) = listener.accept().unwrap();
            server.serve_connection(Stream::Tcp(s));
        }
    });
    let opts = ClientOptions::default();
    let c =
        NbdClient::connect(&format!("nbd://127.0.0.1:{port}/my%20disk%2F%C3%BC"), &opts).unwrap();
    assert_eq!(c.export_name(), NAME);
    check_reads(&c);
    drop(c);
    let e = NbdClient::connect(&format!("nbd://127.0.0.1:{port}/nope"), &opts).unwrap_err();
    assert!(
        matches!(&e, ClientError::NoSuchExport { export, message, .. }
            if export == "nope" && message.contains("no export named \"nope\"")),
        "{e}"
    );
    // Both connections ended (DISC, ABORT): the server threads return.
    accept.join().unwrap();
}

#[test]
fn reads_over_a_unix_socket_with_the_default_export() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let accept = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        server.serve_connection(Stream::Unix(s));
    });
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let c = NbdClient::connect(&uri, &ClientOptions::default()).unwrap();
    assert_eq!(c.export_name(), "");
    // The server advertises its (default) constraints; we honour them.
    assert_eq!(c.server_block_size().map(|b| b.minimum), Some(1));
    check_reads(&c);
    drop(c);
    accept.join().unwrap();
}
