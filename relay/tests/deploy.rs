//! The deployment files in `deploy/` fit this build of clone-relay: the systemd unit passes
//! `systemd-analyze verify` (pointed at the built binary), its example settings pass
//! `--check-config`, and the Kubernetes pod spec's sidecar arguments pass `--check-config`, with
//! its probes on the admin port and the recipient's `clone_valid_donor_list` naming the sidecar.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;

const RELAY: &str = env!("CARGO_BIN_EXE_clone-relay");
/// A token of the accepted form, standing in for the pod's Secret.
const TOKEN: &str = "deploy-test-token-0123456789";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An empty folder of this test's own under the target's scratch folder.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("clone-relay-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `clone-relay ARGS --check-config` with no settings from this test's environment except
/// `env`.
fn check_config(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(RELAY);
    command.args(args).arg("--check-config");
    for var in [
        "CLONE_RELAY_LISTEN",
        "CLONE_RELAY_UPSTREAM",
        "CLONE_RELAY_ADMIN",
        "CLONE_RELAY_ADMIN_TOKEN",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().expect("run clone-relay")
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of `key=` in a unit file's lines (the last one, as systemd reads a repeated key
/// that takes one value).
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn the_systemd_unit_runs_the_relay_unprivileged_and_hardened() {
    let unit = read(&deploy("systemd/clone-relay.service"));
    assert_eq!(
        unit_value(&unit, "ExecStart"),
        Some("/usr/local/bin/clone-relay --config /etc/clone-relay/clone-relay.toml")
    );
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "clone-relay"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("AmbientCapabilities", ""),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
    ] {
        assert_eq!(unit_value(&unit, key), Some(want), "{key}");
    }
    let nofile: u64 = unit_value(&unit, "LimitNOFILE")
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE");
    assert!(nofile >= 2 * 1024 + 256, "LimitNOFILE={nofile}");
}

#[test]
#[ignore = "needs systemd-analyze (Debian's systemd)"]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = read(&deploy("systemd/clone-relay.service"));
    let analyze = on_path("systemd-analyze")
        .expect("systemd-analyze is not installed (it comes with Debian's package systemd)");
    // The same unit, run from the binary this test was built with.
    let dir = scratch("unit");
    let path = dir.join("clone-relay.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/clone-relay", RELAY)).expect("write unit");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // systemd-analyze exits 0 on an unknown key or a value it cannot parse, but names the file
    // in its warning.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("clone-relay.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify: {about_unit:#?}"
    );
}

#[test]
fn the_example_settings_pass_check_config() {
    let unit = read(&deploy("systemd/clone-relay.service"));
    let example = deploy("systemd/clone-relay.toml");
    let settings: toml::Table = read(&example).parse().expect("the example is TOML");
    // The settings file is where the unit says, its state_dir the unit's StateDirectory.
    let config_dir = unit_value(&unit, "ConfigurationDirectory").expect("ConfigurationDirectory");
    assert!(
        unit_value(&unit, "ExecStart")
            .expect("ExecStart")
            .ends_with(&format!("--config /etc/{config_dir}/clone-relay.toml"))
    );
    let state_dir = unit_value(&unit, "StateDirectory").expect("StateDirectory");
    assert_eq!(
        settings["state_dir"].as_str(),
        Some(format!("/var/lib/{state_dir}").as_str())
    );

    // /var/lib/clone-relay is made by systemd: a folder of the test's own stands in for it.
    let state = scratch("example-state");
    let args = [
        "--config".to_string(),
        example.display().to_string(),
        "--state-dir".to_string(),
        state.display().to_string(),
    ];
    let printed = assert_ok(&check_config(&args, &[]), "the example settings");
    let printed: toml::Table = printed.parse().expect("--check-config prints TOML");
    // The settings the relay took are the file's (durations are printed normalized: 60s as
    // 1m, so the stall table is left out).
    for key in [
        "listen",
        "upstream",
        "admin",
        "log_format",
        "client_tls_mode",
        "limits",
    ] {
        assert_eq!(printed.get(key), settings.get(key), "{key}");
    }
}

/// The value of `--name` in `args` (`--name=value` or `--name value`).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(name)?.strip_prefix('=')
        }
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|a| a.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
        .and_then(|s| s.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no {name} in {list:?}"))
}

/// The port number a probe's `httpGet.port` names (a number or a named container port).
fn probe_port(container: &Value, probe: &str) -> (String, u16) {
    let get = &container[probe]["httpGet"];
    let path = get["path"].as_str().expect("httpGet.path").to_string();
    let port = match &get["port"] {
        Value::Number(n) => n.as_u64().expect("port") as u16,
        Value::String(name) => named(&container["ports"], name)["containerPort"]
            .as_u64()
            .expect("containerPort") as u16,
        other => panic!("{probe}.httpGet.port: {other:?}"),
    };
    (path, port)
}

#[test]
fn the_pod_spec_sidecar_passes_check_config_with_probes_on_the_admin_port() {
    let pod: Value = serde_yaml_ng::from_str(&read(&deploy("kubernetes/recipient-sidecar.yaml")))
        .expect("the pod spec is YAML");
    assert_eq!(pod["kind"].as_str(), Some("Pod"));
    let spec = &pod["spec"];
    let relay = named(&spec["containers"], "clone-relay");
    let mysql = named(&spec["containers"], "mysql");
    let args = strings(&relay["args"]);

    // The recipient clones from the sidecar, on the pod's loopback.
    let listen = flag(&args, "--listen").expect("--listen");
    assert!(
        listen
            .parse::<SocketAddr>()
            .expect("listen")
            .ip()
            .is_loopback(),
        "{listen}"
    );
    assert_eq!(
        flag(&strings(&mysql["args"]), "--clone-valid-donor-list"),
        Some(listen)
    );

    // Both probes on the admin listener, none on the relay port.
    let admin: SocketAddr = flag(&args, "--admin")
        .expect("--admin")
        .parse()
        .expect("admin");
    assert_eq!(
        probe_port(relay, "livenessProbe"),
        ("/healthz".into(), admin.port())
    );
    assert_eq!(
        probe_port(relay, "readinessProbe"),
        ("/readyz".into(), admin.port())
    );

    // The admin token from a Secret.
    let token = named(&relay["env"], "CLONE_RELAY_ADMIN_TOKEN");
    assert!(
        token["valueFrom"]["secretKeyRef"]["name"]
            .as_str()
            .is_some(),
        "{token:?}"
    );

    // The TLS files come from a Secret: the volume they are in is the Secret's, or one an init
    // container fills from a Secret volume.
    let cert = flag(&args, "--client-tls-cert").expect("--client-tls-cert");
    let key = flag(&args, "--client-tls-key").expect("--client-tls-key");
    let mounts = relay["volumeMounts"].as_sequence().expect("volumeMounts");
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| path.starts_with(m["mountPath"].as_str().expect("mountPath")))
            .unwrap_or_else(|| panic!("{path} is in no volume of the sidecar"))
    };
    let tls_volume = mount_of(cert)["name"].as_str().expect("volume name");
    assert_eq!(mount_of(key)["name"].as_str(), Some(tls_volume));
    let is_secret = |name: &str| !named(&spec["volumes"], name)["secret"].is_null();
    let filled_from_secret = spec["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|init| {
            let names: Vec<&str> = init["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|m| m["name"].as_str())
                .collect();
            names.contains(&tls_volume) && names.iter().any(|n| is_secret(n))
        });
    assert!(
        is_secret(tls_volume) || filled_from_secret,
        "{tls_volume} is no Secret volume and no init container fills it from one"
    );

    // The same arguments, each of the sidecar's volumes a folder of this test's: the TLS volume
    // holds a certificate and a key (mode 0600) at the names the arguments give.
    let root = scratch("pod");
    let mut mapped = args.clone();
    for (i, m) in mounts.iter().enumerate() {
        let mount_path = m["mountPath"].as_str().expect("mountPath");
        let local = root.join(i.to_string());
        std::fs::create_dir_all(&local).expect("volume folder");
        for arg in &mut mapped {
            if let Some(at) = arg.find(mount_path) {
                *arg = format!(
                    "{}{}{}",
                    &arg[..at],
                    local.display(),
                    &arg[at + mount_path.len()..]
                );
            }
        }
    }
    let made =
        rcgen::generate_simple_self_signed(vec!["clone-relay".to_string()]).expect("certificate");
    let local_cert = flag(&mapped, "--client-tls-cert").expect("cert");
    let local_key = flag(&mapped, "--client-tls-key").expect("key");
    std::fs::write(local_cert, made.cert.pem()).expect("write cert");
    std::fs::write(local_key, made.signing_key.serialize_pem()).expect("write key");
    std::fs::set_permissions(local_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let out = check_config(&mapped, &[("CLONE_RELAY_ADMIN_TOKEN", TOKEN)]);
    let printed = assert_ok(&out, "the sidecar's arguments");
    assert!(printed.contains("# admin_token is set"), "{printed}");
    let printed: toml::Table = printed.parse().expect("--check-config prints TOML");
    assert_eq!(printed["listen"].as_str(), Some(listen));
    assert_eq!(printed["admin"].as_str(), Some(admin.to_string().as_str()));
}
