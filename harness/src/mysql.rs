//! A MySQL server in a container, started with the harness's own command line (so any MySQL
//! 8.0.17+ image works, entrypoint or not) under a small supervisor that restarts mysqld when a
//! finished clone asks for it (exit status 16).
//!
//! By default the container shares the host's network namespace and listens on a loopback port of
//! its own. An *isolated* server has a network namespace of its own (NET_ADMIN granted, its port
//! published on loopback), so that real packet loss can be injected on its interface without
//! touching the host.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testcontainers::core::{ContainerPort, ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::time::Instant;

use crate::image::ImageRef;

/// The donor account the recipient's CLONE logs in as (BACKUP_ADMIN).
pub const DONOR_USER: &str = "donor_clone";
/// Its password: a fixed test secret, known to both sides of a harness clone.
pub const DONOR_PASSWORD: &str = "clone-relay-drill";
/// Label on every container the harness starts, so leftovers can be found and removed.
pub const CONTAINER_LABEL: &str = "org.clone-relay.harness";

const SOCKET: &str = "/var/run/mysqld/mysqld.sock";
/// The harness's folder inside a container; the data directory is `data` in it. Files written
/// next to the data directory survive a clone (which replaces only the data directory).
const STATE_DIR: &str = "/var/lib/clone-relay";
/// A data directory initialised when the image was built (`scripts/mysql-image.sh`); a server
/// copies it where the image has one, else initialises its own.
const TEMPLATE_DIR: &str = "/var/lib/clone-relay-template";
/// The keyring file of a server started with [`ServerOptions::keyring`], next to the data
/// directory.
pub const KEYRING_FILE: &str = "/var/lib/clone-relay/keyring/component_keyring_file";
/// Where mysqld looks for its global manifest (next to its binary) and for the keyring
/// component's configuration (the plugin directory) in the harness image.
const MANIFEST: &str = "/usr/sbin/mysqld.my";
const KEYRING_CONFIG: &str = "/usr/lib/mysql/plugin/component_keyring_file.cnf";
/// The port mysqld listens on inside an isolated server's own namespace.
const ISOLATED_PORT: u16 = 3306;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long an exec's exit code may lag behind the end of its output.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(5);
/// How often [`MysqlServer::wait_until_clone_free`] looks.
const CLONE_FREE_POLL: Duration = Duration::from_millis(500);

/// How to start one server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A short name for logs and the container label ("donor", "recipient").
    pub name: String,
    pub server_id: u32,
    /// `clone_valid_donor_list` entries (`host:port`), set at start-up since a clone replaces
    /// persisted settings.
    pub valid_donors: Vec<String>,
    /// Further mysqld options, e.g. `--clone-max-concurrency=4`.
    pub extra_args: Vec<String>,
    /// A network namespace of its own (for kernel-level faults), port published on loopback.
    pub isolated: bool,
    /// A user-defined Docker network to join (made when missing, removed with its last
    /// container); implies `isolated`. The container is named `name` there, so the network's
    /// other containers reach it by that name: `name` must be unique on the engine.
    pub network: Option<String>,
    /// Resolve clients' addresses to names (off by default: `--skip-name-resolve`). MySQL keeps
    /// its per-host error counts (`max_connect_errors`) only for resolved hosts.
    pub resolve_names: bool,
    /// The `component_keyring_file` keyring loaded from the first start (initialisation
    /// included), so that InnoDB can encrypt tablespaces (`ENCRYPTION='Y'`) and a recipient can
    /// receive encrypted ones: the global manifest `mysqld.my` next to mysqld names the component,
    /// its configuration `component_keyring_file.cnf` in the plugin directory names the keyring
    /// file, kept next to the data directory ([`KEYRING_FILE`]) so that a clone, which replaces
    /// the data directory, leaves it in place. A recipient needs one too: the donor sends each
    /// tablespace key decrypted (over TLS only) and the recipient encrypts it with its own master
    /// key.
    pub keyring: bool,
}

impl ServerOptions {
    pub fn donor() -> Self {
        ServerOptions {
            name: "donor".into(),
            server_id: 1,
            valid_donors: Vec::new(),
            extra_args: Vec::new(),
            isolated: false,
            network: None,
            resolve_names: false,
            keyring: false,
        }
    }

    pub fn recipient(server_id: u32, valid_donors: &[SocketAddr]) -> Self {
        ServerOptions {
            name: format!("recipient-{server_id}"),
            server_id,
            valid_donors: valid_donors.iter().map(ToString::to_string).collect(),
            extra_args: Vec::new(),
            isolated: false,
            network: None,
            resolve_names: false,
            keyring: false,
        }
    }
}

/// A running MySQL server; the container is removed when this is dropped.
#[derive(Debug)]
pub struct MysqlServer {
    container: ContainerAsync<GenericImage>,
    name: String,
    port: u16,
    isolated: bool,
}

impl MysqlServer {
    /// Starts a server from `image` and waits until it accepts connections.
    pub async fn start(image: &ImageRef, options: ServerOptions) -> Result<Self> {
        let port = crate::process::free_port()?;
        let request = GenericImage::new(image.name.as_str(), image.tag.as_str())
            .with_entrypoint("sh")
            .with_wait_for(WaitFor::message_on_stderr("ready for connections"));
        let isolated = options.isolated || options.network.is_some();
        let request = if let Some(network) = &options.network {
            let script = start_script(ISOLATED_PORT, "0.0.0.0", &options);
            request
                .with_cmd(["-c", script.as_str()])
                .with_cap_add("NET_ADMIN")
                .with_mapped_port(port, ContainerPort::Tcp(ISOLATED_PORT))
                .with_network(network.as_str())
                .with_container_name(options.name.as_str())
        } else if isolated {
            let script = start_script(ISOLATED_PORT, "0.0.0.0", &options);
            request
                .with_cmd(["-c", script.as_str()])
                .with_cap_add("NET_ADMIN")
                .with_mapped_port(port, ContainerPort::Tcp(ISOLATED_PORT))
        } else {
            let script = start_script(port, "127.0.0.1", &options);
            request
                .with_cmd(["-c", script.as_str()])
                .with_network("host")
        };
        let container = request
            .with_label(CONTAINER_LABEL, options.name.as_str())
            .with_startup_timeout(STARTUP_TIMEOUT)
            .start()
            .await
            .with_context(|| format!("starting MySQL container {} from {image}", options.name))?;
        Ok(MysqlServer {
            container,
            name: options.name,
            port,
            isolated,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's id, for `docker run --network container:<id>` (a sidecar in its
    /// network namespace, as in a pod).
    pub fn container_id(&self) -> &str {
        self.container.id()
    }

    /// The server's TCP address (host networking: loopback).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Runs SQL as root over the server's socket with the image's own client; returns the rows as
    /// tab-separated lines without column names.
    pub async fn sql(&self, sql: &str) -> Result<String> {
        self.exec(&[
            "mysql",
            "--no-defaults",
            "--user=root",
            "--socket",
            SOCKET,
            "--batch",
            "--skip-column-names",
            "--execute",
            sql,
        ])
        .await
    }

    /// An isolated server's own address on the Docker bridge, reached from the host without the
    /// port publisher in between: a connection there is the host's own TCP to mysqld, so
    /// packets dropped in the server's namespace are lost to the host's kernel as on a real link.
    pub async fn bridge_addr(&self) -> Result<SocketAddr> {
        if !self.isolated {
            bail!(
                "{}: only an isolated server has an address of its own",
                self.name
            );
        }
        let out = self.shell("ip -4 -o addr show dev eth0").await?;
        let ip = out
            .split_whitespace()
            .skip_while(|word| *word != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .with_context(|| format!("no IPv4 address in {:?} of {}", out.trim(), self.name))?;
        Ok(SocketAddr::from((ip, ISOLATED_PORT)))
    }

    /// The address this server reaches the host by: its default route's gateway (the Docker
    /// bridge's address on the host, for an isolated server). A relay listening there is
    /// reached from this server's own address.
    pub async fn host_gateway(&self) -> Result<std::net::IpAddr> {
        let route = self.shell("ip -4 route show default").await?;
        route
            .split_whitespace()
            .skip_while(|word| *word != "via")
            .nth(1)
            .and_then(|ip| ip.parse().ok())
            .with_context(|| format!("no default gateway in {:?} of {}", route.trim(), self.name))
    }

    /// Makes the server keep per-host connection errors for the host its clients come from
    /// (the Docker bridge's address on the host): MySQL keeps a host's counts in
    /// `performance_schema.host_cache` only once the address resolves, and no DNS answers
    /// inside the container, so the host is named in `/etc/hosts`. Needs a server started
    /// `isolated` with `resolve_names` (loopback clients have no host cache).
    pub async fn keep_client_host_errors(&self) -> Result<()> {
        if !self.isolated {
            bail!("{}: a loopback client has no host cache", self.name);
        }
        let host = self.host_gateway().await?;
        self.shell(&format!("echo '{host} relay-host' >> /etc/hosts"))
            .await?;
        Ok(())
    }

    /// The connection errors counted against client hosts (`max_connect_errors` blocks a host
    /// at its count), summed over the host cache.
    pub async fn connect_errors(&self) -> Result<u64> {
        let out = self
            .sql("SELECT IFNULL(SUM(SUM_CONNECT_ERRORS), 0) FROM performance_schema.host_cache")
            .await?;
        out.trim()
            .parse()
            .with_context(|| format!("{}: host cache count {out:?}", self.name))
    }

    /// Connections still in their handshake (not logged in), as the process list shows them.
    pub async fn handshakes_open(&self) -> Result<u64> {
        let out = self
            .sql(
                "SELECT COUNT(*) FROM performance_schema.processlist \
                 WHERE USER = 'unauthenticated user'",
            )
            .await?;
        out.trim()
            .parse()
            .with_context(|| format!("{}: process list count {out:?}", self.name))
    }

    /// Runs a shell command in the container; its standard output, or an error with its
    /// standard error.
    pub async fn shell(&self, command: &str) -> Result<String> {
        self.exec(&["sh", "-c", command]).await
    }

    /// A file of the server's data directory (for example `ca.pem`, the CA of the certificate
    /// mysqld made for itself at its first start).
    pub async fn read_data_file(&self, name: &str) -> Result<String> {
        self.exec(&["cat", &format!("{STATE_DIR}/data/{name}")])
            .await
    }

    /// Writes `contents` to a file called `name` next to the data directory (so it survives a
    /// clone); returns its path inside the container.
    pub async fn write_file(&self, name: &str, contents: &str) -> Result<String> {
        let path = format!("{STATE_DIR}/{name}");
        self.exec(&["sh", "-c", "printf '%s' \"$0\" > \"$1\"", contents, &path])
            .await?;
        Ok(path)
    }

    /// Drops packets entering and leaving an isolated server's interface at random with
    /// `probability` (netfilter's statistic match): real loss, real TCP retransmits. 0 clears.
    pub async fn set_packet_loss(&self, probability: f64) -> Result<()> {
        if !self.isolated {
            bail!("{}: packet loss needs an isolated server", self.name);
        }
        self.shell("iptables -F INPUT && iptables -F OUTPUT")
            .await?;
        if probability > 0.0 {
            for chain in ["INPUT", "OUTPUT"] {
                self.shell(&format!(
                    "iptables -A {chain} -p tcp -m statistic --mode random --probability {probability:.4} -j DROP"
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// Drops every packet entering and leaving an isolated server (a link that goes dark, new
    /// connections included), or lets them through again.
    pub async fn set_link_down(&self, down: bool) -> Result<()> {
        self.set_packet_loss(if down { 1.0 } else { 0.0 }).await
    }

    /// Silences for good, at the kernel level, the TCP connections an isolated server has open
    /// on its MySQL port now: netfilter in its namespace drops their packets both ways, while new
    /// connections work (a lost NAT or conntrack entry). Returns how many were silenced;
    /// [`MysqlServer::set_packet_loss`] with 0 lifts it.
    pub async fn silence_open_connections(&self) -> Result<usize> {
        if !self.isolated {
            bail!(
                "{}: silencing connections needs an isolated server",
                self.name
            );
        }
        // With a state filter, ss prints: Recv-Q Send-Q Local:Port Peer:Port.
        let listing = self
            .shell(&format!(
                "ss -Htn state established '( sport = :{ISOLATED_PORT} )'"
            ))
            .await?;
        let peers: Vec<(String, String)> = listing
            .lines()
            .filter_map(|line| line.split_whitespace().nth(3))
            .filter_map(|peer| peer.rsplit_once(':'))
            .map(|(ip, port)| (ip.to_string(), port.to_string()))
            .collect();
        if peers.is_empty() {
            bail!("{}: no open connection to silence", self.name);
        }
        let rules: Vec<String> = peers
            .iter()
            .map(|(ip, port)| {
                format!(
                    "iptables -I INPUT -p tcp -s {ip} --sport {port} --dport {ISOLATED_PORT} -j DROP && \
                     iptables -I OUTPUT -p tcp -d {ip} --dport {port} --sport {ISOLATED_PORT} -j DROP"
                )
            })
            .collect();
        self.shell(&rules.join(" && ")).await?;
        Ok(peers.len())
    }

    /// Holds the server's container to `cpus` CPUs (`docker update --cpus`): a server that is
    /// slow but alive.
    pub async fn set_cpu_limit(&self, cpus: f64) -> Result<()> {
        self.docker(&["update", "--cpus", &format!("{cpus:.2}")])
            .await
    }

    /// Freezes every process of the server for `pause` (`docker pause`), then thaws them: its
    /// kernel keeps the connections, mysqld takes nothing meanwhile.
    pub async fn freeze_for(&self, pause: Duration) -> Result<()> {
        self.docker(&["pause"]).await?;
        tokio::time::sleep(pause).await;
        self.docker(&["unpause"]).await
    }

    /// Runs `docker ARGS... CONTAINER`.
    async fn docker(&self, args: &[&str]) -> Result<()> {
        let out = tokio::process::Command::new("docker")
            .args(args)
            .arg(self.container.id())
            .output()
            .await
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "{}: docker {}: {}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Packets dropped by the loss rules so far.
    pub async fn dropped_packets(&self) -> Result<u64> {
        let out = self
            .shell("iptables -L -v -x -n | awk '$3 == \"DROP\" { n += $1 } END { print n + 0 }'")
            .await?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// Adds netem delay on an isolated server's interface, or says clearly that this kernel
    /// cannot (no netem qdisc).
    pub async fn set_delay(&self, delay_ms: u64) -> Result<()> {
        if !self.isolated {
            bail!("{}: delay needs an isolated server", self.name);
        }
        self.shell(&format!(
            "tc qdisc replace dev eth0 root netem delay {delay_ms}ms"
        ))
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!(chaos::netfilter::explain_tc_failure(&e.to_string())))
    }

    async fn exec(&self, argv: &[&str]) -> Result<String> {
        let mut exec = self
            .container
            .exec(ExecCommand::new(argv.iter().copied()))
            .await
            .with_context(|| format!("exec in {}", self.name))?;
        let stdout = exec.stdout_to_vec().await?;
        let stderr = exec.stderr_to_vec().await?;
        // The engine may report the exit code a little after the output streams end.
        let deadline = Instant::now() + EXIT_CODE_WAIT;
        let mut code = exec.exit_code().await?;
        while code.is_none() {
            if Instant::now() >= deadline {
                bail!(
                    "{}: `{}` closed its output but no exit code came within {EXIT_CODE_WAIT:?}",
                    self.name,
                    argv.first().copied().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            code = exec.exit_code().await?;
        }
        if code == Some(137) {
            // SIGKILL: the container stopped under the command (mysqld exited with a status
            // other than a clone's restart, which ends its supervisor). Its log says why.
            let log = self.log().await;
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "{}: `{}` was killed: the container stopped; its log ends with:\n{}",
                self.name,
                argv.first().copied().unwrap_or_default(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if code != Some(0) {
            bail!(
                "{}: {} (exit {code:?})",
                self.name,
                String::from_utf8_lossy(&stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// Connections of this server (as a donor) busy with a clone, as
    /// `(processlist id, state, seconds)`: every thread whose command is `clone`. A donor
    /// keeps such a thread for as long as a clone runs, and also while it holds a clone whose
    /// connection failed, waiting for the recipient to resume it (up to
    /// `clone_donor_timeout_after_network_failure`); its state then stays as it was (e.g.
    /// `clone (file copy)`) and its time keeps growing.
    pub async fn clone_threads(&self) -> Result<Vec<(String, String, String)>> {
        let rows = self
            .rows(
                "SELECT PROCESSLIST_ID, IFNULL(PROCESSLIST_STATE, ''), \
                 IFNULL(PROCESSLIST_TIME, 0) FROM performance_schema.threads \
                 WHERE LOWER(PROCESSLIST_COMMAND) = 'clone' ORDER BY PROCESSLIST_ID",
            )
            .await?;
        rows.into_iter()
            .map(|row| match <[String; 3]>::try_from(row) {
                Ok([id, state, time]) => Ok((id, state, time)),
                Err(row) => Err(anyhow::anyhow!("unexpected threads row {row:?}")),
            })
            .collect()
    }

    /// Waits until this server (as a donor) has no clone in progress and none held for a
    /// resume (see [`MysqlServer::clone_threads`]), so that a new clone is not refused with
    /// 3634 "Too many concurrent clone operations". Fails after `within`, naming the threads
    /// still busy.
    pub async fn wait_until_clone_free(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let busy = self.clone_threads().await?;
            if busy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let busy: Vec<String> = busy
                    .iter()
                    .map(|(id, state, time)| format!("{id} ({state}, {time} s)"))
                    .collect();
                bail!(
                    "{}: waited {within:?} for the donor to be free of clones, but connections \
                     {} are still busy with one (running, or held for a resume)",
                    self.name,
                    busy.join(", ")
                );
            }
            tokio::time::sleep(CLONE_FREE_POLL).await;
        }
    }

    /// Rows of a query, each split into its columns.
    pub async fn rows(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        Ok(self
            .sql(sql)
            .await?
            .lines()
            .map(|line| line.split('\t').map(str::to_string).collect())
            .collect())
    }

    /// The server's log so far (mysqld writes it to stderr), for reports of what went wrong.
    pub async fn log(&self) -> String {
        match self.container.stderr_to_vec().await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(log unavailable: {e})"),
        }
    }
}

/// The container's command: initialise the data directory, write the start-up SQL that creates
/// the donor account, and run mysqld under a loop that restarts it on exit status 16.
fn start_script(port: u16, bind: &str, options: &ServerOptions) -> String {
    let valid_donors = if options.valid_donors.is_empty() {
        String::new()
    } else {
        format!(
            "--clone-valid-donor-list={}",
            options.valid_donors.join(",")
        )
    };
    let extra = options.extra_args.join(" ");
    let name_resolution = match options.resolve_names {
        true => "",
        false => "--skip-name-resolve",
    };
    let server_id = options.server_id;
    // Written before the first mysqld (the initialisation) runs: the keyring is there from
    // the start.
    let keyring = if options.keyring {
        format!(
            r#"mkdir -p "$(dirname {KEYRING_FILE})"
printf '%s\n' '{{"components": "file://component_keyring_file"}}' > {MANIFEST}
printf '%s\n' '{{"path": "{KEYRING_FILE}", "read_only": false}}' > {KEYRING_CONFIG}
chmod 0444 {MANIFEST} {KEYRING_CONFIG}
"#
        )
    } else {
        String::new()
    };
    // A keyring must be there when the data directory is made: such a server initialises its own.
    let keyring_flag = if options.keyring { "keyring" } else { "" };
    format!(
        r#"set -eu
state={STATE_DIR}
mkdir -p /var/run/mysqld /var/lib/mysql-files "$state"
{keyring}cat > "$state/init.sql" <<'SQL'
CREATE USER IF NOT EXISTS '{DONOR_USER}'@'%' IDENTIFIED BY '{DONOR_PASSWORD}';
GRANT BACKUP_ADMIN ON *.* TO '{DONOR_USER}'@'%';
SQL
if [ ! -d "$state/data/mysql" ]; then
  if [ -z "{keyring_flag}" ] && [ -d {TEMPLATE_DIR}/mysql ]; then
    cp -a {TEMPLATE_DIR} "$state/data"
  else
    mysqld --no-defaults --initialize-insecure --user=root --datadir="$state/data" \
      > "$state/initialize.log" 2>&1 || {{ cat "$state/initialize.log" >&2; exit 1; }}
  fi
fi
export MYSQLD_PARENT_PID=$$
while :; do
  status=0
  mysqld --no-defaults --user=root --datadir="$state/data" \
    --port={port} --bind-address={bind} --socket={SOCKET} \
    --pid-file=/var/run/mysqld/mysqld.pid --mysqlx=OFF {name_resolution} \
    --secure-file-priv=/var/lib/mysql-files --server-id={server_id} --skip-log-bin \
    --plugin-load-add=mysql_clone.so --init-file="$state/init.sql" \
    --max-allowed-packet=64M --innodb-buffer-pool-size=256M \
    --innodb-doublewrite=OFF --innodb-flush-log-at-trx-commit=2 \
    {valid_donors} {extra} || status=$?
  [ "$status" -eq 16 ] || exit "$status"
  echo "supervisor: mysqld exited for a restart after a clone; starting it again" >&2
done
"#
    )
}
