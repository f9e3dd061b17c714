//! Services and stages as processes of the test's own, so that a test can kill and
//! restart them: `sendmill` stages, redis-server, clickhouse-server, Kafka nodes.

#![allow(
    clippy::print_stdout,
    reason = "tests report the figures they measured"
)]

use crate::*;
use sendmill::SendmillConfig;
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// A `sendmill <stage>` process of the test's installation (same broker, topics, Redis
/// prefix, databases), for tests that kill a stage with SIGKILL or run several.
/// The config file of a stage process of `config`'s installation: its names, endpoints
/// and key file, then `sections` (TOML) for the stage. Kafka's brokers come from
/// `SENDMILL_KAFKA_BROKERS`.
pub fn stage_config(config: &SendmillConfig, sections: &str) -> String {
    format!(
        "[kafka]\ntopic_prefix = {prefix:?}\npartitions = {partitions}\nreplication_factor = {rf}\n\
         min_insync_replicas = {isr}\n[redis]\nurl = {redis_url:?}\nkey_prefix = {redis:?}\n\
         [postgres]\nurl = {pg:?}\n[secrets]\nkek_file = {kek:?}\n\
         [clickhouse]\nurl = {ch_url:?}\ndatabase = {ch:?}\n{sections}\n",
        prefix = config.kafka.topic_prefix,
        partitions = config.kafka.partitions,
        rf = config.kafka.replication_factor,
        isr = config.kafka.min_insync_replicas,
        redis_url = config.redis.url,
        redis = config.redis.key_prefix,
        pg = config.postgres.url,
        kek = config.secrets.kek_file,
        ch_url = config.clickhouse.url,
        ch = config.clickhouse.database,
    )
}

pub struct StageProcess {
    child: std::process::Child,
}

impl StageProcess {
    /// Starts `sendmill <subcommand>` with the installation's shared sections and
    /// `sections` (TOML) for the stage.
    pub fn start(
        p: &TestPipeline,
        config: &SendmillConfig,
        subcommand: &str,
        name: &str,
        sections: &str,
    ) -> Self {
        Self::spawn(p, config, subcommand, name, sections, None)
    }

    /// As [`StageProcess::start`], its stdout and stderr written to `log` and its
    /// tracing filter `filter` (e.g. `debug`), for tests that read what it logged.
    pub fn start_logged(
        p: &TestPipeline,
        config: &SendmillConfig,
        subcommand: &str,
        name: &str,
        sections: &str,
        log: &Path,
        filter: &str,
    ) -> Self {
        Self::spawn(p, config, subcommand, name, sections, Some((log, filter)))
    }

    fn spawn(
        p: &TestPipeline,
        config: &SendmillConfig,
        subcommand: &str,
        name: &str,
        sections: &str,
        logged: Option<(&Path, &str)>,
    ) -> Self {
        let binary = sendmill_binary();
        let path = std::env::temp_dir().join(format!("{}{name}.toml", p.config.kafka.topic_prefix));
        std::fs::write(&path, stage_config(config, sections)).unwrap();
        let mut command = std::process::Command::new(&binary);
        command
            .args(["--config", path.to_str().unwrap(), subcommand])
            .env("SENDMILL_KAFKA_BROKERS", &config.kafka.brokers)
            // Static group membership under the process's name: a process restarted
            // under the same name (the fault suite's) takes its partitions back at once.
            .env("SENDMILL_KAFKA_INSTANCE_ID", name);
        match logged {
            Some((log, filter)) => {
                let file = std::fs::File::create(log).expect("the log file can be created");
                command
                    .env("RUST_LOG", filter)
                    .stdout(file.try_clone().unwrap())
                    .stderr(file);
            }
            None => {
                command
                    // SENDMILL_TEST_CHILD_LOG: a tracing filter for these processes when
                    // debugging.
                    .env(
                        "RUST_LOG",
                        std::env::var("SENDMILL_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit());
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self { child }
    }

    /// Sends SIGTERM (the process begins its drain).
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM to {pid}");
    }

    /// Waits up to `limit` for the process to exit; its exit status. Panics when it is
    /// still running then (it is killed on drop).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return status;
            }
            assert!(started.elapsed() < limit, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`StageProcess::sigterm`], then [`StageProcess::wait_exit`].
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        self.sigterm();
        self.wait_exit(limit)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the first line of `log` that contains `marker` and then
/// `http://ADDR/` (the lines a stage process logs when it listens: "send API: POST
/// http://…", "ops endpoints: http://…"); waits up to 60 s for it to be written.
pub fn logged_address(log: &Path, marker: &str) -> std::net::SocketAddr {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter(|l| l.contains(marker))
            .find_map(|line| {
                let rest = &line[line.find(marker)?..];
                let url = &rest[rest.find("http://")? + "http://".len()..];
                url[..url.find('/')?].parse().ok()
            });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never logged {marker:?}: {text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A redis-server of the test's own on a free port, keeping nothing on disk, so a
/// test can kill it and start it again empty.
pub struct RedisProcess {
    child: std::process::Child,
    pub port: u16,
}

impl RedisProcess {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is required: run deploy/local/install-packages.sh");
        wait_for_port("127.0.0.1", port, "redis-server");
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a new, empty server on the same port.
    pub fn restart_empty(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        *self = Self::start_on(self.port);
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A clickhouse-server of the test's own (Debian's config with its own ports and
/// folder), so a test can stop it and start it again on the same data.
pub struct ClickHouseProcess {
    child: Option<std::process::Child>,
    dir: PathBuf,
    pub http_port: u16,
}

impl ClickHouseProcess {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("clickhouse"));
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let (http_port, tcp_port, interserver_port) = (free_port(), free_port(), free_port());
        let config = std::fs::read_to_string("/etc/clickhouse-server/config.xml")
            .expect("clickhouse-server is required: run deploy/local/install-packages.sh");
        let d = dir.display();
        let config = config
            .replace(
                "<http_port>8123</http_port>",
                &format!("<http_port>{http_port}</http_port>"),
            )
            .replace(
                "<tcp_port>9000</tcp_port>",
                &format!("<tcp_port>{tcp_port}</tcp_port>"),
            )
            .replace(
                "<interserver_http_port>9009</interserver_http_port>",
                &format!("<interserver_http_port>{interserver_port}</interserver_http_port>"),
            )
            .replace("/var/lib/clickhouse/tmp/", &format!("{d}/tmp/"))
            .replace(
                "/var/lib/clickhouse/user_files/",
                &format!("{d}/user_files/"),
            )
            .replace(
                "/var/lib/clickhouse/format_schemas/",
                &format!("{d}/format_schemas/"),
            )
            .replace("/var/lib/clickhouse/", &format!("{d}/data/"))
            .replace("/var/log/clickhouse-server/", &format!("{d}/log/"))
            .replace("<listen_host>::1</listen_host>", "");
        std::fs::write(dir.join("config.xml"), config).unwrap();
        std::fs::copy("/etc/clickhouse-server/users.xml", dir.join("users.xml")).unwrap();
        let mut server = Self {
            child: None,
            dir,
            http_port,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// SIGKILL: the server is gone until [`ClickHouseProcess::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the server on its data and waits for it to answer.
    pub fn resume(&mut self) {
        let child = std::process::Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("clickhouse-server is required: run deploy/local/install-packages.sh");
        self.child = Some(child);
        wait_for_port("127.0.0.1", self.http_port, "clickhouse-server");
    }
}

impl Drop for ClickHouseProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Apache Kafka nodes of the test's own (KRaft, each a combined broker and controller,
/// started by `deploy/local/kafka-node.sh` on the jars `install-packages.sh` fetched), so
/// a test can SIGKILL a broker and start it again on its data. One node, or a cluster of
/// several on their own loopback addresses.
pub struct KafkaCluster {
    dir: PathBuf,
    nodes: Vec<KafkaNode>,
}

struct KafkaNode {
    id: usize,
    host: String,
    port: u16,
    controller_port: u16,
    pid: Option<u32>,
}

impl KafkaCluster {
    /// One node per host in `hosts` (e.g. `["127.0.0.31", "127.0.0.32", "127.0.0.33"]`),
    /// every one a voter of the controller quorum; returns once all serve.
    pub fn start(hosts: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("kafka"));
        let nodes = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| KafkaNode {
                id: i + 1,
                host: host.to_string(),
                port: free_port(),
                controller_port: free_port(),
                pid: None,
            })
            .collect();
        let mut cluster = Self { dir, nodes };
        let cluster_id = uuid::Uuid::new_v4().simple().to_string()[..22].to_owned();
        // A quorum of several needs its voters up together: start them side by side.
        let ids: Vec<usize> = (0..cluster.nodes.len()).collect();
        let pids: Vec<u32> = std::thread::scope(|scope| {
            let handles: Vec<_> = ids
                .iter()
                .map(|&i| {
                    let command = cluster.command(i, &cluster_id);
                    scope.spawn(move || run_kafka_node(command))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (node, pid) in cluster.nodes.iter_mut().zip(pids) {
            node.pid = Some(pid);
        }
        cluster
    }

    /// Bootstrap servers of every node.
    pub fn brokers(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        list.join(",")
    }

    /// SIGKILL node `i` (0-based): no shutdown path runs, the page cache keeps what it
    /// wrote.
    pub fn kill(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid.take() {
            kill_pid(pid);
        }
    }

    /// Starts node `i` again on its data and waits for it to serve.
    pub fn restart(&mut self, i: usize) {
        let command = self.command(i, "unused: the node has its cluster id");
        self.nodes[i].pid = Some(run_kafka_node(command));
    }

    fn command(&self, i: usize, cluster_id: &str) -> std::process::Command {
        let voters: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}@{}:{}", n.id, n.host, n.controller_port))
            .collect();
        let n = &self.nodes[i];
        let mut command =
            std::process::Command::new(repo_root().join("deploy/local/kafka-node.sh"));
        command
            .arg(self.dir.join(format!("node{}", n.id)))
            .args([n.id.to_string(), n.host.clone(), n.port.to_string()])
            .args([n.controller_port.to_string(), voters.join(",")])
            .env("KAFKA_CLUSTER_ID", cluster_id)
            .env("KAFKA_HEAP", "-Xms128m -Xmx384m")
            .env("SENDMILL_LOCAL_DIR", local_dir());
        command
    }
}

fn run_kafka_node(mut command: std::process::Command) -> u32 {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash runs deploy/local/kafka-node.sh");
    assert!(
        output.status.success(),
        "a Kafka node did not start (is Kafka installed? run deploy/local/install-packages.sh): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("kafka-node.sh prints the pid")
}

fn kill_pid(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    // Gone once /proc no longer has it (it is not our child: nothing to reap).
    let started = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to 30 s for something to accept connections on `host`:`port`.
pub fn wait_for_port(host: &str, port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect((host, port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{what} did not listen on {host}:{port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The `sendmill` binary next to the running test binary.
pub fn sendmill_binary() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/sendmill
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("sendmill");
    assert!(
        path.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build --bin sendmill`)",
        path.display()
    );
    path
}

/// A loopback port nothing listens on right now (for a process that must be told its
/// port before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
