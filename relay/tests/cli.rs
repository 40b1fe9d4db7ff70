//! The binary refuses bad input at start with one line naming the problem and a non-zero exit.

use std::net::TcpListener;
use std::process::{Command, Output};

fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clone-relay"))
        .args(args)
        .env_remove("CLONE_RELAY_LISTEN")
        .env_remove("CLONE_RELAY_UPSTREAM")
        .output()
        .expect("run clone-relay")
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

    let line = one_line_error(&relay(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "db:3306",
        "--copy-buffer-bytes",
        "12",
    ]));
    assert!(line.contains("copy_buffer_bytes"), "{line}");

    let line = one_line_error(&relay(&["--upstream", "db:3306"]));
    assert!(line.contains("--listen"), "{line}");
}

#[test]
fn an_upstream_that_is_not_mysql_is_named() {
    // A server that answers with something other than a MySQL greeting.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = fake.accept().unwrap();
        s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
    });
    let line = one_line_error(&relay(&["--listen", "127.0.0.1:0", "--upstream", &addr]));
    assert!(line.contains("not a MySQL server"), "{line}");
    server.join().unwrap();
}
