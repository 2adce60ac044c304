//! SIGTERM / SIGINT: stop accepting, finish in-flight requests, exit 0.

use std::time::Duration;

use disksynth_tests::Signal;
use disksynth_tests::{python_script, require_tool, tempdir, Server};

#[test]
fn sigterm_while_a_client_is_reading_exits_zero() {
    require_tool!("python3-nbd");
    let dir = tempdir();
    let mut server = Server::disksynth_unix(dir.path(), &["pattern", "64M"]);
    let mut cmd = python_script("busy_client.py");
    cmd.arg(server.uri());
    let mut client = Server::spawn(cmd); // its line 1 is "started" once reads succeed
    assert_eq!(client.uri(), "started");

    let status = server.stop_with(Signal::TERM);

    assert!(
        status.success(),
        "disksynth exited with {status} on SIGTERM\n{}",
        server.stderr_text()
    );
    let client_status = client.wait_exit(Duration::from_secs(10));
    assert!(
        client_status.is_some(),
        "client still connected after the server exited"
    );
    let end = client.wait_stdout_lines(1, Duration::from_secs(2));
    assert!(
        end.first().is_some_and(|l| l.starts_with("reads=")),
        "client said {end:?}"
    );
}

#[test]
fn sigint_exits_zero() {
    let dir = tempdir();
    let mut server = Server::disksynth_unix(dir.path(), &["memory", "64M"]);
    let status = server.stop_with(Signal::INT);
    assert!(
        status.success(),
        "disksynth exited with {status} on SIGINT\n{}",
        server.stderr_text()
    );
}

#[test]
fn sigterm_on_tcp_server_exits_zero() {
    let mut server = Server::disksynth_tcp(&["zero", "1G"]);
    let status = server.stop_with(Signal::TERM);
    assert!(
        status.success(),
        "disksynth exited with {status} on SIGTERM\n{}",
        server.stderr_text()
    );
}
