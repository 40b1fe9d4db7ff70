//! Tests of the settings: defaults, precedence, the file's errors, validation.

use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::load::Merge;
use super::*;
use crate::error::RelayError;
use crate::limit::Caps;

fn field_of(config: &Config) -> &'static str {
    match config.validate() {
        Err(RelayError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn command() -> clap::Command {
    Config::augment_args(clap::Command::new("clone-relay"))
}

/// Settings from `args` (no environment) and a file's text.
fn merged(args: &[&str], file: Option<&str>) -> Result<Config, String> {
    let matches = command()
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(std::iter::once("clone-relay").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    Config::merge(&matches, file).map_err(|e| match e {
        Merge::File(reason) => reason,
        Merge::Invalid(e) => e.to_string(),
    })
}

#[test]
fn limits_come_from_flags_and_the_file_with_overrides_per_direction() {
    let c = merged(
        &["--upstream", "db:3306", "--session-rate", "20MiB/s"],
        None,
    )
    .unwrap();
    assert_eq!(c.limits.session, Some(20 << 20));
    assert_eq!(c.limits.targets().session, Caps::both(Some(20 << 20)));
    assert_eq!(c.limits.targets().relay, Caps::both(None));

    let file = "upstream = \"db:3306\"\n[limits]\nrelay = \"1Gbit/s\"\nsession_to_recipient = \"1.5MB/s\"\n";
    let c = merged(&["--rate-to-donor", "1MiB/s"], Some(file)).unwrap();
    let targets = c.limits.targets();
    assert_eq!(targets.relay.to_recipient, Some(125_000_000));
    assert_eq!(targets.relay.to_donor, Some(1 << 20));
    assert_eq!(targets.session.to_recipient, Some(1_500_000));
    assert_eq!(targets.session.to_donor, None);
    assert_eq!(
        LimitSettings::from_file(file).unwrap(),
        LimitSettings {
            relay_to_donor: None,
            ..c.limits
        }
    );

    let err = merged(&["--upstream", "db:3306", "--rate", "fast"], None).unwrap_err();
    assert!(err.contains("rate") && err.contains("fast"), "{err}");
    let err = merged(
        &[],
        Some("upstream = \"db:3306\"\n[limits]\nsession = \"10MiB\"\n"),
    )
    .unwrap_err();
    assert!(err.contains("session") && err.contains("/s"), "{err}");
    let err = LimitSettings::from_file("[limits]\nsesion = \"1MiB/s\"\n").unwrap_err();
    assert!(err.contains("sesion"), "{err}");
    // Written back as read.
    let round = toml::to_string(&c).unwrap();
    assert!(round.contains("relay = \"125000000B/s\""), "{round}");
}

#[test]
fn clap_accepts_the_command() {
    command().debug_assert();
}

#[test]
fn defaults_are_valid() {
    Config::new("db.example:3306").validate().unwrap();
    Config::new("[::1]:3306").validate().unwrap();
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::new("db:3306");
    assert_eq!(c.upstreams, ["db:3306"]);
    assert_eq!(c.max_connections, 1024);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.copy_buffer_bytes, 1 << 20);
    assert_eq!(c.socket_buffer_bytes, None);
    assert_eq!(c.keepalive_idle, Duration::from_secs(30));
    assert_eq!(c.keepalive_interval, Duration::from_secs(10));
    assert_eq!(c.keepalive_retries, 3);
    assert_eq!(c.user_timeout, Duration::from_secs(60));
    assert!(c.stall.enabled);
    assert_eq!(c.stall.min, Duration::from_secs(8));
    assert_eq!(c.stall.max, Duration::from_secs(60));
    assert_eq!(c.stall.factor, 4);
    assert_eq!(c.stall.min_streaming, Duration::from_secs(2));
    assert_eq!(c.reconnect_dial_timeout, Duration::from_secs(240));
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.max_login_packet_bytes, 64 * 1024);
    assert_eq!(c.max_packet_bytes, 64 * 1024 * 1024);
    assert_eq!(c.resume_timeout, Duration::from_secs(360));
    assert_eq!(c.listen, None);
    assert_eq!(c.admin, None);
    assert!(c.admin_token.is_none());
    assert_eq!(c.state_dir, None);
    assert!(c.upstream_probe);
    assert_eq!(c.log_format, LogFormat::Human);
    assert_eq!(StallSettings::default().min, Duration::from_secs(8));
}

#[test]
fn bad_upstream_is_named() {
    for bad in ["db", ":3306", "db:", "db:0", "db:70000", "db:x"] {
        assert_eq!(field_of(&Config::new(bad)), "upstream", "{bad}");
    }
}

#[test]
fn bad_numbers_are_named() {
    let mut c = Config::new("db:3306");
    c.max_connections = 0;
    assert_eq!(field_of(&c), "max_connections");

    let mut c = Config::new("db:3306");
    c.copy_buffer_bytes = 10;
    assert_eq!(field_of(&c), "copy_buffer");

    let mut c = Config::new("db:3306");
    c.socket_buffer_bytes = Some(1);
    assert_eq!(field_of(&c), "socket_buffer");

    let mut c = Config::new("db:3306");
    c.connect_timeout = Duration::ZERO;
    assert_eq!(field_of(&c), "connect_timeout");

    let mut c = Config::new("db:3306");
    c.stall.max = Duration::from_secs(1);
    assert_eq!(field_of(&c), "stall.min");

    let mut c = Config::new("db:3306");
    c.admin_token = Some(Secret::new("short"));
    assert_eq!(field_of(&c), "admin_token");
}

#[test]
fn flags_take_units() {
    let c = merged(
        &[
            "--upstream",
            "a:1,b:2",
            "--connect-timeout",
            "250ms",
            "--copy-buffer",
            "1MiB",
            "--socket-buffer",
            "65536",
            "--stall-min",
            "2s",
            "--stall-max",
            "1m",
            "--no-stall-detection",
            "--no-upstream-probe",
            "--log-format",
            "json",
        ],
        None,
    )
    .unwrap();
    assert_eq!(c.upstreams, ["a:1", "b:2"]);
    assert_eq!(c.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.copy_buffer_bytes, 1 << 20);
    assert_eq!(c.socket_buffer_bytes, Some(65536));
    assert_eq!(c.stall.min, Duration::from_secs(2));
    assert_eq!(c.stall.max, Duration::from_secs(60));
    assert!(!c.stall.enabled);
    assert!(!c.upstream_probe);
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn a_duration_without_unit_is_refused() {
    let e = merged(&["--upstream", "a:1", "--connect-timeout", "5"], None).unwrap_err();
    assert!(
        e.contains("--connect-timeout") && e.contains("unit is needed"),
        "{e}"
    );
    let e = merged(&["--upstream", "a:1"], Some("connect_timeout = 5")).unwrap_err();
    assert!(
        e.contains("connect_timeout") && e.contains("unit is needed"),
        "{e}"
    );
    let e = merged(&["--upstream", "a:1"], Some("[stall]\nmin = \"8\"")).unwrap_err();
    assert!(
        e.contains("stall.min") && e.contains("unit is needed"),
        "{e}"
    );
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn the_file_gives_settings_and_flags_override_it() {
    let file = r#"
        listen = "127.0.0.1:3307"
        upstream = ["file-a:3306", "file-b:3306"]
        connect_timeout = "2s"
        copy_buffer = "64KiB"
        max_packet = 33554432
        admin = "127.0.0.1:9104"
        upstream_probe = false
        [stall]
        min = "3s"
        factor = 2
    "#;
    let c = merged(&[], Some(file)).unwrap();
    assert_eq!(c.listen, Some("127.0.0.1:3307".parse().unwrap()));
    assert_eq!(c.upstreams, ["file-a:3306", "file-b:3306"]);
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.copy_buffer_bytes, 64 * 1024);
    assert_eq!(c.max_packet_bytes, 32 << 20);
    assert_eq!(c.admin, Some("127.0.0.1:9104".parse().unwrap()));
    assert!(!c.upstream_probe);
    assert_eq!(c.stall.min, Duration::from_secs(3));
    assert_eq!(c.stall.factor, 2);
    // Keys the file leaves out keep their defaults.
    assert_eq!(c.stall.max, Duration::from_secs(60));
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));

    let c = merged(
        &[
            "--upstream",
            "flag:3306",
            "--connect-timeout",
            "7s",
            "--stall-factor",
            "9",
        ],
        Some(file),
    )
    .unwrap();
    assert_eq!(c.upstreams, ["flag:3306"]);
    assert_eq!(c.connect_timeout, Duration::from_secs(7));
    assert_eq!(c.stall.factor, 9);
    // Untouched by flags: the file's values, not the defaults.
    assert_eq!(c.copy_buffer_bytes, 64 * 1024);
    assert_eq!(c.stall.min, Duration::from_secs(3));
    assert!(!c.upstream_probe);
}

#[test]
fn unknown_keys_are_refused_with_the_key_named() {
    let e = merged(&[], Some("upstream = \"a:1\"\nconect_timeout = \"5s\"")).unwrap_err();
    assert!(e.contains("conect_timeout") && e.contains("line 2"), "{e}");
    let e = merged(&[], Some("upstream = \"a:1\"\n[stall]\nminimum = \"5s\"")).unwrap_err();
    assert!(e.contains("minimum"), "{e}");
    // The old unit-suffixed names are gone.
    let e = merged(&[], Some("upstream = \"a:1\"\ncopy_buffer_bytes = 4096")).unwrap_err();
    assert!(e.contains("copy_buffer_bytes"), "{e}");
}

#[test]
fn bad_values_in_the_file_name_the_key() {
    let e = merged(&[], Some("upstream = \"a:1\"\ncopy_buffer = \"64MB\"")).unwrap_err();
    assert!(e.starts_with("invalid copy_buffer:"), "{e}");
    let e = merged(&[], Some("upstream = \"a:1\"\nmax_connections = \"many\"")).unwrap_err();
    assert!(e.starts_with("invalid max_connections:"), "{e}");
    let e = merged(&[], Some("upstream = \"a:1\"\nlog_format = \"xml\"")).unwrap_err();
    assert!(e.starts_with("invalid log_format:"), "{e}");
    let e = merged(&[], Some("upstream = \"a:1\"\ncopy_buffer = 10")).unwrap_err();
    assert!(e.starts_with("invalid copy_buffer:"), "{e}");
    let e = merged(&[], Some("upstream = [")).unwrap_err();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn the_token_is_never_shown() {
    let token = "correct-horse-battery-staple";
    let c = merged(
        &["--upstream", "a:1", "--admin-token", token],
        Some("upstream = \"b:1\""),
    )
    .unwrap();
    assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some(token));
    assert!(!format!("{c:?}").contains(token));
    assert!(!c.to_toml().unwrap().contains(token));
    let secret = c.admin_token.as_ref().unwrap();
    assert!(secret.matches(token));
    assert!(!secret.matches("correct-horse-battery-stapl"));
    assert!(!secret.matches(""));
    assert_eq!(format!("{secret} {secret:?}"), "*** ***");

    // Only from the environment (or the flag): a settings file holding it is refused.
    let e = merged(
        &[],
        Some(&format!("upstream = \"a:1\"\nadmin_token = \"{token}\"")),
    )
    .unwrap_err();
    assert!(
        e.contains("admin_token") && e.contains("CLONE_RELAY_ADMIN_TOKEN") && !e.contains(token),
        "{e}"
    );

    let e = merged(&[], Some("upstream = \"a:1\"\nadmin_token = 123456789")).unwrap_err();
    assert!(e.contains("admin_token") && !e.contains("123456789"), "{e}");
    let e = merged(&["--upstream", "a:1", "--admin-token", "hunter2"], None).unwrap_err();
    assert!(e.contains("admin_token") && !e.contains("hunter2"), "{e}");
}

#[test]
fn settings_round_trip_through_toml() {
    let mut c = Config::new("db:3306");
    c.socket_buffer_bytes = Some(1 << 20);
    c.stall.enabled = false;
    c.listen = Some("127.0.0.1:1".parse().unwrap());
    let text = c.to_toml().unwrap();
    let back = merged(&[], Some(&text)).unwrap();
    assert_eq!(back.to_toml().unwrap(), text);
    assert!(text.contains("copy_buffer = \"1MiB\""), "{text}");
    assert!(text.contains("connect_timeout = \"5s\""), "{text}");
}

#[test]
fn tls_modes_come_from_flags_and_the_file_and_must_fit_together() {
    let c = merged(&[], Some("upstream = \"a:1\"")).unwrap();
    assert_eq!(c.client_tls_mode, ClientTlsMode::Preferred);
    assert_eq!(c.server_tls_mode, ServerTlsMode::AsClient);
    assert_eq!(c.server_tls_verify, ServerTlsVerify::Disabled);
    let file = "upstream = \"a:1\"\nclient_tls_mode = \"required\"\nserver_tls_mode = \"required\"";
    let c = merged(&[], Some(file)).unwrap();
    assert_eq!(c.client_tls_mode, ClientTlsMode::Required);
    let c = merged(
        &[
            "--client-tls-mode",
            "disabled",
            "--server-tls-mode",
            "disabled",
        ],
        Some(file),
    )
    .unwrap();
    assert_eq!(c.client_tls_mode, ClientTlsMode::Disabled);

    merged(
        &["--upstream", "a:1", "--client-tls-mode", "passthrough"],
        None,
    )
    .unwrap();
    let e = merged(
        &[
            "--upstream",
            "a:1",
            "--client-tls-mode",
            "passthrough",
            "--server-tls-mode",
            "required",
        ],
        None,
    )
    .unwrap_err();
    assert!(e.contains("invalid client_tls_mode"), "{e}");
    // TLS on one leg only, either way.
    for (client, server) in [("disabled", "required"), ("required", "disabled")] {
        let c = merged(
            &[
                "--upstream",
                "a:1",
                "--client-tls-mode",
                client,
                "--server-tls-mode",
                server,
            ],
            None,
        )
        .unwrap();
        assert_ne!(
            c.client_tls_mode == ClientTlsMode::Disabled,
            c.server_tls_mode == ServerTlsMode::Disabled
        );
    }
    let e = merged(&["--upstream", "a:1", "--server-tls-verify", "ca"], None).unwrap_err();
    assert!(e.contains("invalid server_tls_ca"), "{e}");
    let e = merged(
        &[],
        Some("upstream = \"a:1\"\nclient_tls_mode = \"sometimes\""),
    )
    .unwrap_err();
    assert!(e.contains("client_tls_mode"), "{e}");
}

#[test]
fn mutual_tls_settings_come_from_flags_and_the_file_and_are_checked() {
    let c = merged(
        &[
            "--upstream",
            "a:1",
            "--client-tls-mode",
            "required",
            "--client-tls-ca",
            "/etc/relay/recipients-ca.pem",
            "--client-tls-allowed-subjects",
            "recipient-a,10.0.0.7",
            "--client-tls-allowed-subjects",
            "recipient-b.example",
            "--server-tls-cert",
            "/etc/relay/client.pem",
            "--server-tls-key",
            "/etc/relay/client-key.pem",
        ],
        None,
    )
    .unwrap();
    assert_eq!(
        c.client_tls_ca.as_deref(),
        Some(Path::new("/etc/relay/recipients-ca.pem"))
    );
    assert_eq!(
        c.client_tls_allowed_subjects,
        ["recipient-a", "10.0.0.7", "recipient-b.example"]
    );
    assert_eq!(
        c.server_tls_cert.as_deref(),
        Some(Path::new("/etc/relay/client.pem"))
    );
    let text = c.to_toml().unwrap();
    assert_eq!(merged(&[], Some(&text)).unwrap().to_toml().unwrap(), text);

    let file = "upstream = \"a:1\"\nclient_tls_mode = \"required\"\n\
                client_tls_ca = \"ca.pem\"\nclient_tls_allowed_subjects = \"x, y\"";
    let c = merged(&[], Some(file)).unwrap();
    assert_eq!(c.client_tls_allowed_subjects, ["x", "y"]);

    let field = |args: &[&str]| {
        let mut all = vec!["--upstream", "a:1"];
        all.extend_from_slice(args);
        merged(&all, None).unwrap_err()
    };
    // A plaintext recipient has no certificate to check.
    let e = field(&["--client-tls-ca", "ca.pem"]);
    assert!(e.contains("invalid client_tls_ca"), "{e}");
    let e = field(&[
        "--client-tls-mode",
        "required",
        "--client-tls-allowed-subjects",
        "x",
    ]);
    assert!(e.contains("invalid client_tls_allowed_subjects"), "{e}");
    let e = field(&[
        "--client-tls-mode",
        "required",
        "--client-tls-ca",
        "ca.pem",
        "--client-tls-allowed-subjects",
        "x,,y",
    ]);
    assert!(e.contains("invalid client_tls_allowed_subjects"), "{e}");
    let e = field(&["--server-tls-cert", "c.pem"]);
    assert!(e.contains("--server-tls-key"), "{e}");
    let mut c = Config::new("a:1");
    c.server_tls_cert = Some("c.pem".into());
    assert_eq!(field_of(&c), "server_tls_key");
    c.server_tls_key = Some("k.pem".into());
    c.validate().unwrap();
    c.client_tls_mode = ClientTlsMode::Disabled;
    c.server_tls_mode = ServerTlsMode::Disabled;
    assert_eq!(field_of(&c), "server_tls_cert");
}
