//! The `chaos` program refuses bad configuration at start, naming the field.

use std::process::Command;

fn chaos(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .output()
        .expect("run chaos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to a fresh config file in the temp directory.
fn config(text: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("chaos-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_bad_fault_parameter_is_named() {
    let path = config(
        "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n[[faults]]\nfault = { type = \"bandwidth\", rate = \"0B/s\" }\n",
    );
    let (ok, err) = chaos(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("faults[0].fault.rate"), "{err}");
}

#[test]
fn an_unknown_field_is_named() {
    let path = config("listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\nsede = 3\n");
    let (ok, err) = chaos(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("sede"), "{err}");
}

#[test]
fn a_missing_upstream_is_named() {
    let (ok, err) = chaos(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("upstream"), "{err}");
}
