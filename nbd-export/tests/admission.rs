//! The server tells an export who its client is (`Export::open_client`):
//! the connection's number, its address or Unix credentials, the export
//! name asked for; a refusal (`ErrorKind::Refused`) reaches a real client
//! (nbdinfo) as `NBD_REP_ERR_POLICY` with its reason.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use disksynth_tests::{command, require_tool, run, tempdir, CMD_TIMEOUT};
use nbd_export::{Listener, Server, ServerOptions, ShutdownHandle};
use sources::PatternDev;
use synth::{BlockDev, Caps, Client, Error, ErrorKind, Export, Peer, SharedExport};

const SIZE: u64 = 1 << 20;

/// Refuses every odd-numbered client and remembers every client it saw.
#[derive(Debug)]
struct OddRefused {
    inner: SharedExport,
    seen: Mutex<Vec<Client>>,
}

impl OddRefused {
    fn reason(client: &Client) -> String {
        format!("odd client {} is not welcome here", client.id)
    }
}

impl Export for OddRefused {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn caps(&self) -> Caps {
        self.inner.caps()
    }
    fn description(&self) -> String {
        self.inner.description()
    }
    fn open(&self) -> synth::Result<Arc<dyn BlockDev>> {
        panic!("the server must open through open_client")
    }
    fn open_client(
        &self,
        client: &Client,
        _gone: &dyn Fn() -> bool,
    ) -> synth::Result<Arc<dyn BlockDev>> {
        self.seen.lock().unwrap().push(client.clone());
        if client.id % 2 == 1 {
            return Err(Error::new(ErrorKind::Refused, Self::reason(client)));
        }
        self.inner.open()
    }
}

struct Running {
    export: Arc<OddRefused>,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(listener: Listener) -> Running {
    let export = Arc::new(OddRefused {
        inner: SharedExport::new(Arc::new(PatternDev::new(SIZE)), "pattern"),
        seen: Mutex::new(Vec::new()),
    });
    let opts = ServerOptions {
        export_name: "disk".into(),
        ..ServerOptions::default()
    };
    let server = Server::new(export.clone(), opts).unwrap();
    let stop = server.shutdown_handle();
    let thread = std::thread::spawn(move || server.run(listener).unwrap());
    Running {
        export,
        stop,
        thread: Some(thread),
    }
}

/// nbdinfo's `--size` of `uri`: Ok(size) or Err(stderr).
fn nbdinfo_size(uri: &str) -> Result<u64, String> {
    // libnbd puts the server's text only in its debug output (`LIBNBD_DEBUG=1`
    // on stderr); qemu shows it as "server reported: ...".
    let out = run(
        command("nbdinfo", ["--size", uri]).env("LIBNBD_DEBUG", "1"),
        CMD_TIMEOUT,
    );
    if out.status.success() {
        Ok(out.stdout_str().trim().parse().expect("a number"))
    } else {
        Err(out.stderr_str())
    }
}

#[test]
fn odd_unix_clients_are_refused_with_the_reason_and_even_ones_served() {
    require_tool!("nbdinfo");
    let dir = tempdir();
    let sock = dir.path().join("sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let srv = start(Listener::Unix(listener));
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());

    let err = nbdinfo_size(&uri).expect_err("client 1 is odd");
    assert!(
        err.contains("odd client 1 is not welcome here"),
        "the reason reaches the client: {err}"
    );
    assert!(
        err.contains("server policy prevents"),
        "as ERR_POLICY: {err}"
    );
    assert_eq!(nbdinfo_size(&uri), Ok(SIZE));
    let err = nbdinfo_size(&uri).expect_err("client 3 is odd");
    assert!(err.contains("odd client 3"), "{err}");

    let seen = srv.export.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 2, 3]);
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    for c in &seen {
        assert_eq!(c.export, "disk");
        // nbdinfo runs as this test's user: SO_PEERCRED says so.
        assert_eq!(
            c.peer,
            Peer::Unix {
                uid: Some(uid),
                gid: Some(gid)
            }
        );
    }
}

#[test]
fn tcp_clients_are_known_by_address_and_the_default_name_is_what_was_asked() {
    require_tool!("nbdinfo");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let srv = start(Listener::Tcp(listener));

    let err = nbdinfo_size(&format!("nbd://127.0.0.1:{port}/")).expect_err("odd");
    assert!(err.contains("odd client 1 is not welcome here"), "{err}");
    assert_eq!(
        nbdinfo_size(&format!("nbd://127.0.0.1:{port}/disk")),
        Ok(SIZE)
    );

    let seen = srv.export.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].export, "", "the empty (default) name, as asked");
    assert_eq!(seen[1].export, "disk");
    for c in &seen {
        match &c.peer {
            Peer::Tcp(a) => assert!(a.ip().is_loopback(), "{a}"),
            other => panic!("a TCP client seen as {other:?}"),
        }
    }
}
