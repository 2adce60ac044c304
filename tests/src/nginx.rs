//! A real nginx on 127.0.0.1 serving a directory, for the HTTP and xz-over-HTTP tests: one
//! process (`master_process off`), its own config, logs and pid file in a temp directory, stopped
//! by its pid when dropped.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long nginx may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What an origin sent for one file: requests and body bytes, from nginx's access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests logged (HEAD and GET).
    pub requests: u64,
    /// Body bytes sent (`$body_bytes_sent`).
    pub bytes: u64,
}

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    port: u16,
    work: PathBuf,
}

impl Nginx {
    /// Serves `root` on a free loopback port. `extra` is added to the `server` block (e.g.
    /// `"limit_rate 10m;"`).
    pub fn serve(root: &Path, work: &Path, extra: &str) -> Nginx {
        Self::start(root, work, extra, None)
    }

    /// Serves `root` over HTTPS (HTTP/2 offered by ALPN) with this certificate chain and key.
    pub fn serve_tls(root: &Path, work: &Path, cert: &Path, key: &Path) -> Nginx {
        Self::start(root, work, "", Some((cert, key, true)))
    }

    /// Serves `root` over HTTPS with HTTP/1.1 only: qemu 10's curl block driver stalls after a
    /// few dozen requests over HTTP/2 (seen booting through it with libcurl 7.88).
    pub fn serve_tls_http1(root: &Path, work: &Path, cert: &Path, key: &Path) -> Nginx {
        Self::start(root, work, "", Some((cert, key, false)))
    }

    fn start(root: &Path, work: &Path, extra: &str, tls: Option<(&Path, &Path, bool)>) -> Nginx {
        let bin = crate::find_in_path("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()))
            .expect("nginx is not installed");
        fs::create_dir_all(work.join("tmp")).unwrap();
        // A free port: bind, read it, release (nginx binds it a moment later).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let w = work.display();
        let (listen, tls_conf) = match tls {
            Some((cert, key, h2)) => (
                if h2 { " ssl http2" } else { " ssl" },
                format!(
                    "ssl_certificate {};\n    ssl_certificate_key {};\n",
                    cert.display(),
                    key.display()
                ),
            ),
            None => ("", String::new()),
        };
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {w}/nginx.pid;\n\
             error_log {w}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log {w}/access.log;\n  client_body_temp_path {w}/tmp;\n\
               proxy_temp_path {w}/tmp;\n  fastcgi_temp_path {w}/tmp;\n  uwsgi_temp_path {w}/tmp;\n\
               scgi_temp_path {w}/tmp;\n  sendfile on;\n  keepalive_requests 100000;\n\
               default_type application/octet-stream;\n\
               server {{\n    listen 127.0.0.1:{port}{listen};\n    {tls_conf}    root {};\n    {extra}\n  }}\n}}\n",
            root.display()
        );
        let conf_path = work.join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let mut nginx = Nginx {
            child,
            port,
            work: work.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}",
                    fs::read_to_string(work.join("error.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// `http://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, name)
    }

    /// `https://127.0.0.1:PORT/NAME`.
    pub fn https_url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{}", self.port, name)
    }

    /// Requests for `/name` and their body bytes in access-log `lines` (as from
    /// [`Nginx::access_log`], e.g. those logged since an earlier call).
    pub fn traffic(lines: &[String], name: &str) -> Traffic {
        let wanted = format!(" /{name} ");
        let mut t = Traffic::default();
        for line in lines {
            // The default `combined` format: ... "GET /name HTTP/2.0" STATUS BYTES "ref" "agent"
            let mut quoted = line.split('"');
            let (Some(_), Some(request), Some(after)) =
                (quoted.next(), quoted.next(), quoted.next())
            else {
                continue;
            };
            if !request.contains(&wanted) {
                continue;
            }
            let bytes = after
                .split_whitespace()
                .nth(1)
                .and_then(|b| b.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no body size in access-log line {line:?}"));
            t.requests += 1;
            t.bytes += bytes;
        }
        t
    }

    /// The requests nginx logged so far (one access-log line each).
    pub fn access_log(&self) -> Vec<String> {
        fs::read_to_string(self.work.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; SIGKILL if it lingers.
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A certificate authority and a server certificate for 127.0.0.1 signed by it (rustls, like
/// browsers, refuses a CA certificate used as the server's own), in `dir`: returns the CA's PEM
/// (for `--cacert`), the server's certificate and its key.
pub fn make_ca_and_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca, key, csr, cert, ext) = (
        dir.join("ca.key"),
        dir.join("ca.pem"),
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.pem"),
        dir.join("server.ext"),
    );
    let p = |x: &Path| x.to_str().unwrap().to_string();
    crate::run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=disksynth test CA",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]));
    crate::run_ok(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]));
    fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    crate::run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]));
    (ca, cert, key)
}
