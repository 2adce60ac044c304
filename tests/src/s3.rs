//! A real S3-compatible server on 127.0.0.1 for the `s3://` tests: moto's server mode (moto
//! from PyPI), one process per test with its own port and log, stopped by its pid when dropped.
//!
//! moto lives in a virtualenv outside the checkout that `scripts/test.sh` makes (Debian's
//! `/usr/bin/python3 -m venv`, `pip install 'moto[server]'`) and exports as
//! `DISKSYNTH_MOTO_VENV`; without that variable the default place is
//! `${DISKSYNTH_TEST_CACHE:-/var/cache/disksynth-tests}/venv-moto`. [`require_moto!`] skips a
//! test when it is missing (a failure under `CI=true`).
//!
//! With `enforce_auth`, moto checks every request after the three that create an
//! administrator (`INITIAL_NO_AUTH_ACTION_COUNT=3`): the access key must exist, the SigV4
//! signature is recomputed (with botocore) and must match, and IAM policies apply. moto does
//! not support query-string (presigned) authentication in that mode (it fails such requests
//! with a 500), so presigned URLs are tested against a server with `enforce_auth` off.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long moto may take to accept connections (Python start-up and imports).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable naming the virtualenv that has moto and boto3.
pub const VENV_VAR: &str = "DISKSYNTH_MOTO_VENV";

/// The moto virtualenv: `$DISKSYNTH_MOTO_VENV`, else
/// `${DISKSYNTH_TEST_CACHE:-/var/cache/disksynth-tests}/venv-moto`.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os(VENV_VAR).filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    let cache = std::env::var_os("DISKSYNTH_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/disksynth-tests"));
    cache.join("venv-moto")
}

/// The virtualenv's interpreter.
pub fn python() -> PathBuf {
    venv().join("bin").join("python")
}

/// Whether the virtualenv imports moto's server and boto3 (checked once per process).
pub fn moto_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        python().exists()
            && crate::run(
                Command::new(python()).args(["-c", "import moto.server, boto3"]),
                Duration::from_secs(60),
            )
            .status
            .success()
    })
}

/// Skips the calling test (returns early) when moto is not installed; under `CI=true` it
/// panics.
#[macro_export]
macro_rules! require_moto {
    () => {
        if !$crate::s3::moto_available() {
            if $crate::in_ci() {
                panic!(
                    "moto is missing from {} (CI=true makes this a failure; scripts/test.sh \
                     installs it)",
                    $crate::s3::venv().display()
                );
            }
            eprintln!(
                "SKIPPED: moto is not installed in {} (scripts/test.sh installs it)",
                $crate::s3::venv().display()
            );
            return;
        }
    };
}

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    work: PathBuf,
}

/// What [`Moto::fill`] made: keys of an administrator and of a user with no permissions,
/// temporary credentials of a reading role, and presigned GET URLs.
#[derive(Debug, Clone)]
pub struct Filled {
    /// The administrator's access key id (may do anything).
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// A user without any policy: authenticates, may read nothing.
    pub nobody_access_key_id: String,
    /// Its secret.
    pub nobody_secret_access_key: String,
    /// Temporary credentials of a role that may read objects: key id…
    pub session_access_key_id: String,
    /// …secret…
    pub session_secret_access_key: String,
    /// …and session token (sent as `x-amz-security-token`).
    pub session_token: String,
    /// Presigned GET URLs (an hour) by key.
    pub presigned: Vec<(String, String)>,
}

impl Moto {
    /// Starts moto on a free loopback port, its log in `work/moto.log`.
    pub fn start(work: &Path, enforce_auth: bool) -> Moto {
        fs::create_dir_all(work).unwrap();
        // A free port: bind, read it, release (moto binds it a moment later).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(work.join("moto.log")).unwrap();
        let mut cmd = Command::new(python());
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        if enforce_auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        } else {
            cmd.env_remove("INITIAL_NO_AUTH_ACTION_COUNT");
        }
        let child = cmd.spawn().expect("starting moto");
        let mut moto = Moto {
            child,
            port,
            work: work.to_path_buf(),
        };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited ({status}) before listening:\n{}", moto.log());
            }
            if t0.elapsed() > START_TIMEOUT {
                panic!(
                    "moto did not listen on port {port} within {START_TIMEOUT:?}:\n{}",
                    moto.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `path_and_query` as werkzeug writes it in the log (`uri_to_iri`: UTF-8 and reserved
    /// characters decoded), to find requests there.
    pub fn as_logged(&self, path_and_query: &str) -> String {
        let out = crate::run_ok(Command::new(python()).args([
            "-c",
            "import sys; from werkzeug.urls import uri_to_iri; print(uri_to_iri(sys.argv[1]))",
            path_and_query,
        ]));
        out.stdout_str().trim_end_matches('\n').to_owned()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (werkzeug's request lines and any traceback), without the
    /// colour escapes werkzeug puts around request lines.
    pub fn log(&self) -> String {
        let raw = fs::read_to_string(self.work.join("moto.log")).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(i) = rest.find("\u{1b}[") {
            out.push_str(&rest[..i]);
            rest = &rest[i + 2..];
            let end = rest.find('m').map_or(rest.len(), |e| e + 1);
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    /// Make the administrator (the three unauthenticated actions when auth is enforced), a
    /// user without permissions, a private `bucket` with `objects` (key, local file), and
    /// presigned GET URLs for the keys in `presign` (tests/scripts/s3_setup.py, with boto3).
    pub fn fill(&self, bucket: &str, objects: &[(&str, &Path)], presign: &[&str]) -> Filled {
        let objects: serde_json::Map<String, serde_json::Value> = objects
            .iter()
            .map(|(k, p)| (k.to_string(), p.display().to_string().into()))
            .collect();
        let spec = serde_json::json!({ "objects": objects, "presign": presign });
        let spec_path = self.work.join("spec.json");
        fs::write(&spec_path, spec.to_string()).unwrap();
        let out = crate::run_ok(
            Command::new(python())
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .arg(crate::script("s3_setup.py"))
                .arg(self.endpoint())
                .arg(bucket)
                .arg(&spec_path),
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout_str())
            .unwrap_or_else(|e| panic!("s3_setup.py printed no JSON ({e}):\n{}", out.describe()));
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k}")).to_owned();
        let presigned = v["presigned"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, u)| (k.clone(), u.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Filled {
            access_key_id: s("access_key_id"),
            secret_access_key: s("secret_access_key"),
            nobody_access_key_id: s("nobody_access_key_id"),
            nobody_secret_access_key: s("nobody_secret_access_key"),
            session_access_key_id: s("session_access_key_id"),
            session_secret_access_key: s("session_secret_access_key"),
            session_token: s("session_token"),
            presigned,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
