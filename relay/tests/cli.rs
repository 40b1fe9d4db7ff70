//! The binary refuses bad input at start with one line naming the problem and a non-zero exit;
//! settings come from flags, environment variables and a TOML file, in that order of
//! precedence; the admin token never shows in its output.

mod common;
use common::{GREETING, packet, unhex};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cret-token-that-must-never-be-shown";

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clone-relay"));
    command
        .args(args)
        .env_remove("CLONE_RELAY_LISTEN")
        .env_remove("CLONE_RELAY_UPSTREAM")
        .env_remove("CLONE_RELAY_ADMIN")
        .env_remove("CLONE_RELAY_ADMIN_TOKEN")
        .env_remove("RUST_LOG");
    command
}

fn relay(args: &[&str]) -> Output {
    command(args).output().expect("run clone-relay")
}

/// The single line the binary printed to stderr.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got {stderr:?}");
    lines[0].to_string()
}

fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A settings file with `text`, in this test binary's scratch folder.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "clone-relay-cli-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unreachable_upstream_is_named() {
    let upstream = closed_port();
    let out = relay(&["--listen", "127.0.0.1:0", "--upstream", &upstream]);
    let line = one_line_error(&out);
    assert!(
        line.contains(&upstream) && line.contains("unreachable"),
        "{line}"
    );
}

#[test]
fn port_in_use_is_named() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = relay(&["--listen", &addr, "--upstream", "127.0.0.1:3306"]);
    let line = one_line_error(&out);
    assert!(line.contains(&addr) && line.contains("in use"), "{line}");
}

#[test]
fn malformed_flags_are_named() {
    let line = one_line_error(&relay(&["--listen", "nowhere", "--upstream", "db:3306"]));
    assert!(line.contains("--listen"), "{line}");
    assert_eq!(relay(&["--listen", "nowhere"]).status.code(), Some(2));

    let line = one_line_error(&relay(&["--listen", "127.0.0.1:0", "--upstream", "db"]));
    assert!(line.contains("upstream"), "{line}");

    let out = relay(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "db:3306",
        "--copy-buffer",
        "12",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let line = one_line_error(&out);
    assert!(line.contains("invalid copy_buffer"), "{line}");

    let line = one_line_error(&relay(&["--upstream", "db:3306"]));
    assert!(line.contains("--listen"), "{line}");

    let line = one_line_error(&relay(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "db:3306",
        "--state-dir",
        "/nonexistent/clone-relay-state",
    ]));
    assert!(line.contains("invalid state_dir"), "{line}");
}

#[test]
fn a_pair_side_with_missing_or_conflicting_settings_is_named() {
    let line = one_line_error(&relay(&[
        "--listen",
        "127.0.0.1:0",
        "--peer",
        "zone-b:4000",
    ]));
    assert!(line.contains("invalid tunnel.cert"), "{line}");
    assert!(line.contains("--tunnel-plain"), "{line}");

    let line = one_line_error(&relay(&[
        "--listen",
        "127.0.0.1:0",
        "--peer",
        "zone-b:4000",
        "--upstream",
        "db:3306",
        "--tunnel-plain",
    ]));
    assert!(line.contains("invalid peer"), "{line}");

    let line = one_line_error(&relay(&[
        "--peer-listen",
        "127.0.0.1:0",
        "--upstream",
        "db:3306",
        "--tunnel-plain",
        "--tunnel-timeout",
        "1m",
    ]));
    assert!(line.contains("invalid tunnel.timeout"), "{line}");

    let file = config_file(
        "pair.toml",
        "peer_listen = \"127.0.0.1:0\"\nupstream = \"db:3306\"\n[tunnel]\nplain = true\nmemory = \"lots\"\n",
    );
    let out = relay(&["--config", file.to_str().unwrap()]);
    let line = one_line_error(&out);
    assert!(line.contains("memory"), "{line}");

    // A plain tunnel with certificates: which one was meant is not guessed.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let cert = dir.join("any-cert.pem");
    let line = one_line_error(&relay(&[
        "--listen",
        "127.0.0.1:0",
        "--peer",
        "zone-b:4000",
        "--tunnel-plain",
        "--tunnel-cert",
        cert.to_str().unwrap(),
        "--tunnel-key",
        cert.to_str().unwrap(),
        "--tunnel-ca",
        cert.to_str().unwrap(),
    ]));
    assert!(line.contains("invalid tunnel.plain"), "{line}");
}

#[test]
fn tls_settings_that_could_be_skipped_or_leak_are_refused_at_start() {
    // Verification of a donor leg that never has TLS.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let ca = dir.join("some-ca.pem");
    let line = one_line_error(&relay(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "db:3306",
        "--server-tls-mode",
        "disabled",
        "--server-tls-verify",
        "ca",
        "--server-tls-ca",
        ca.to_str().unwrap(),
    ]));
    assert!(line.contains("invalid server_tls_verify"), "{line}");

    // The admin token from the settings file: it belongs in the environment.
    let file = config_file(
        "token-in-file",
        &format!("listen = \"127.0.0.1:0\"\nupstream = \"db:3306\"\nadmin_token = \"{SECRET}\"\n"),
    );
    let line = one_line_error(&relay(&["--config", file.to_str().unwrap()]));
    assert!(
        line.contains("admin_token") && line.contains("CLONE_RELAY_ADMIN_TOKEN"),
        "{line}"
    );
    assert!(!line.contains(SECRET), "{line}");

    // A pinned donor key that is not a key.
    let not_a_key = config_file("not-a-key", "hello");
    let line = one_line_error(&relay(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "db:3306",
        "--no-upstream-probe",
        "--server-public-key",
        not_a_key.to_str().unwrap(),
    ]));
    assert!(line.contains("server_public_key"), "{line}");
}

#[test]
fn durations_and_sizes_need_their_units() {
    let base = ["--listen", "127.0.0.1:0", "--upstream", "db:3306"];
    let line = one_line_error(&relay(&[&base[..], &["--stall-min", "8"]].concat()));
    assert!(
        line.contains("--stall-min") && line.contains("unit is needed"),
        "{line}"
    );
    let line = one_line_error(&relay(&[&base[..], &["--copy-buffer", "64MB"]].concat()));
    assert!(
        line.contains("--copy-buffer") && line.contains("MiB"),
        "{line}"
    );
    // The old unit-suffixed names are gone.
    let line = one_line_error(&relay(
        &[&base[..], &["--connect-timeout-ms", "5000"]].concat(),
    ));
    assert!(line.contains("--connect-timeout-ms"), "{line}");
}

#[test]
fn a_bad_config_file_is_named_with_its_key() {
    let unknown = config_file(
        "unknown",
        "upstream = \"db:3306\"\nconect_timeout = \"5s\"\n",
    );
    let line = one_line_error(&relay(&["--config", unknown.to_str().unwrap()]));
    assert!(
        line.contains(unknown.to_str().unwrap()) && line.contains("conect_timeout"),
        "{line}"
    );

    let bad = config_file("bad", "upstream = \"db:3306\"\n[stall]\nmin = \"8\"\n");
    let line = one_line_error(&relay(&["--config", bad.to_str().unwrap()]));
    assert!(
        line.contains("invalid stall.min") && line.contains("unit is needed"),
        "{line}"
    );

    let out = relay(&["--config", "/nonexistent/clone-relay.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("/nonexistent/clone-relay.toml"));
}

#[test]
fn flags_and_environment_override_the_file() {
    let file = config_file(
        "precedence",
        "listen = \"127.0.0.1:3307\"\nupstream = \"file:3306\"\nconnect_timeout = \"2s\"\n\
         copy_buffer = \"64KiB\"\n",
    );
    let out = command(&[
        "--config",
        file.to_str().unwrap(),
        "--connect-timeout",
        "7s",
        "--check-config",
    ])
    .env("CLONE_RELAY_UPSTREAM", "env-a:3306,env-b:3306")
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let effective = String::from_utf8(out.stdout).unwrap();
    assert!(
        effective.contains("listen = \"127.0.0.1:3307\""),
        "{effective}"
    );
    assert!(
        effective.contains("upstream = [\"env-a:3306\", \"env-b:3306\"]"),
        "{effective}"
    );
    assert!(
        effective.contains("connect_timeout = \"7s\""),
        "{effective}"
    );
    assert!(effective.contains("copy_buffer = \"64KiB\""), "{effective}");
}

#[test]
fn the_admin_token_is_never_printed() {
    // Refused (too short): the error names the setting, not the value.
    let out = command(&["--listen", "127.0.0.1:0", "--upstream", "db:3306"])
        .env("CLONE_RELAY_ADMIN_TOKEN", "tiny-secret")
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(
        line.contains("admin_token") && !line.contains("tiny-secret"),
        "{line}"
    );

    // Of the wrong type in the file.
    let file = config_file(
        "token",
        "listen = \"127.0.0.1:0\"\nupstream = \"db:3306\"\nadmin_token = 987654321987654321\n",
    );
    let line = one_line_error(&relay(&["--config", file.to_str().unwrap()]));
    assert!(
        line.contains("admin_token") && !line.contains("987654321987654321"),
        "{line}"
    );

    // --check-config says it is set, never what it is.
    let out = command(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "db:3306",
        "--check-config",
    ])
    .env("CLONE_RELAY_ADMIN_TOKEN", SECRET)
    .output()
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("admin_token is set"));
    assert!(!printed.contains(SECRET));

    // A start that fails, logging everything.
    let out = command(&["--listen", "127.0.0.1:0", "--upstream", &closed_port()])
        .env("CLONE_RELAY_ADMIN_TOKEN", SECRET)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(SECRET));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));

    // A relay that runs, logging everything, while the admin API is asked with a wrong token
    // and with the right one.
    let donor = fake_donor();
    let admin = closed_port();
    let mut child = command(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &donor,
        "--admin",
        &admin,
    ])
    .env("CLONE_RELAY_ADMIN_TOKEN", SECRET)
    .env("RUST_LOG", "trace")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.contains("relay listening") {
        assert!(Instant::now() < deadline, "no start: {log}");
        if stderr.read_line(&mut log).unwrap() == 0 {
            panic!("relay exited: {log}");
        }
    }
    let wrong = admin_post(&admin, "/sessions/1/reset", "wrong-token-wrong-token-wrong");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let right = admin_post(&admin, "/sessions/1/reset", SECRET);
    assert!(right.starts_with("HTTP/1.1 404"), "{right}");
    assert!(!wrong.contains(SECRET) && !right.contains(SECRET));
    stop(&mut child);
    stderr.read_to_string(&mut log).unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(log.contains("admin listening"), "{log}");
    assert!(!log.contains(SECRET), "the token is in the log: {log}");
    assert!(!stdout.contains(SECRET), "the token is on stdout: {stdout}");
}

/// Kills the child and waits for it.
fn stop(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A POST with a bearer token to the admin listener: the whole raw response.
fn admin_post(admin: &str, path: &str, token: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

/// A fake donor that greets each connection like MySQL 9.7.
fn fake_donor() -> String {
    let greeting = packet(0, &unhex(GREETING));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.write_all(&greeting);
        }
    });
    addr
}

#[test]
fn an_upstream_that_is_not_mysql_is_named() {
    // A server that answers with something other than a MySQL greeting.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = fake.accept().unwrap();
        s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
    });
    let line = one_line_error(&relay(&["--listen", "127.0.0.1:0", "--upstream", &addr]));
    assert!(line.contains("not a MySQL server"), "{line}");
    server.join().unwrap();
}

/// A relay process that is killed when the test ends, however it ends (a failed assertion
/// included), so no relay outlives its test.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's log lines, read on a thread of their own so a wait for a line has a deadline.
fn log_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Appends the child's log lines to `log` until one contains `marker`; fails after 30 s.
fn read_log_until(lines: &std::sync::mpsc::Receiver<String>, log: &mut String, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.contains(marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => panic!("no {marker:?} within 30 s in: {log}"),
        }
    }
}

fn hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sighup_reloads_tls_and_a_failed_reload_keeps_the_relay_running() {
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("clone-relay-cli-sighup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let donor = fake_donor();
    let mut child = command(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &donor,
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .stderr(Stdio::piped())
    .spawn()
    .map(Running)
    .unwrap();
    let stderr = log_lines(&mut child.0);
    let mut log = String::new();
    read_log_until(&stderr, &mut log, "relay listening");

    hangup(&child.0);
    read_log_until(&stderr, &mut log, "TLS reloaded");

    // The relay's own certificate, broken in its state directory: the reload fails, says why,
    // and the relay runs on.
    std::fs::write(state.join("tls").join("cert.pem"), "broken").unwrap();
    hangup(&child.0);
    read_log_until(&stderr, &mut log, "TLS reload failed");
    assert!(log.contains("client_tls_cert"), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the relay stopped: {log}"
    );
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn sighup_rereads_the_bandwidth_caps_and_flags_keep_theirs() {
    let donor = fake_donor();
    let file = config_file(
        "sighup-limits",
        &format!("upstream = \"{donor}\"\n[limits]\nsession = \"10MiB/s\"\n"),
    );
    let mut child = command(&[
        "--listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().unwrap(),
        "--rate-to-donor",
        "5MiB/s",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .map(Running)
    .unwrap();
    let stderr = log_lines(&mut child.0);
    let mut log = String::new();
    read_log_until(&stderr, &mut log, "relay listening");

    std::fs::write(
        &file,
        format!("upstream = \"{donor}\"\n[limits]\nsession = \"30MiB/s\"\nrelay = \"1Gbit/s\"\nrelay_to_donor = \"1MiB/s\"\n"),
    )
    .unwrap();
    hangup(&child.0);
    read_log_until(&stderr, &mut log, "bandwidth caps changed");
    let line = log.lines().last().unwrap().to_string();
    assert!(
        line.contains("relay=125000000B/s session=30MiB/s relay_to_donor=5MiB/s"),
        "the file's new caps, the flag's kept: {line}"
    );

    // A bad cap in the file: nothing changes, and the log names the key.
    std::fs::write(&file, "[limits]\nsession = \"30MiB\"\n").unwrap();
    hangup(&child.0);
    read_log_until(&stderr, &mut log, "bandwidth caps not reloaded");
    let line = log.lines().last().unwrap().to_string();
    assert!(line.contains("session") && line.contains("/s"), "{line}");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the relay stopped: {log}"
    );
}
