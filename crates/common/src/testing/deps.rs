//! Dependencies of one test's own, which it may stop and restart: a Kafka-protocol broker
//! (`tansu`) and a Redis server, with the free ports they listen on.

use uuid::Uuid;

/// A free TCP port on the loopback interface, for a process a test starts. The port is
/// free only until someone binds it, so it is taken from below the kernel's ephemeral
/// range (which `bind(0)` and outgoing connections draw from, so no in-process server of
/// another test can be handed it meanwhile), and claimed (a file under the temporary
/// directory) so that no other test process of the same run is handed it either; claims
/// older than an hour are an earlier run's.
pub fn free_port() -> u16 {
    let claims = std::env::temp_dir().join("shop-test-ports");
    let _ = std::fs::create_dir_all(&claims);
    let (low, high) = unassigned_ports();
    loop {
        let candidate = low + (Uuid::new_v4().as_u128() % u128::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_err() {
            continue;
        }
        let claim = claims.join(candidate.to_string());
        let stale = std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(3600)));
        if stale {
            let _ = std::fs::remove_file(&claim);
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&claim) {
            Ok(_) => return candidate,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // No claims possible (a read-only temporary directory): the port as it is.
            Err(_) => return candidate,
        }
    }
}

/// Ports the kernel never hands out by itself: from 10000 up to its ephemeral range
/// (`ip_local_port_range`, 32768 by default).
fn unassigned_ports() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10000, ephemeral_low.max(11000))
}

/// Whether process `pid` holds the socket listening on TCP `port` (Linux's `/proc`): a
/// readiness probe may otherwise be answered by another process on a port that this one
/// failed to bind.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A: listening), inode
            if let [_, local, _, "0A", _, _, _, _, _, inode, ..] = fields[..]
                && local.ends_with(&suffix)
            {
                sockets.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

/// A server process of one test's own on a port of its own, killed when dropped.
#[derive(Debug)]
struct Daemon {
    port: u16,
    child: Option<std::process::Child>,
}

impl Daemon {
    fn reserve() -> Self {
        Self { port: free_port(), child: None }
    }

    /// Runs `command` (again), its output dropped, and waits until it listens.
    async fn resume(&mut self, what: &str, mut command: std::process::Command) {
        assert!(self.child.is_none(), "{what} is already running");
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command.stdout(std::process::Stdio::null()).spawn();
        self.child = Some(child.unwrap_or_else(|e| panic!("cannot start {program} (./scripts/test installs it): {e}")));
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("{what} did not start listening on {}", self.port);
    }

    /// Kills the process at once, as a crash would.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Kafka-protocol broker of one test's own (`tansu`, in memory), so a test can stop and
/// restart it without disturbing the others. The binary is `$TANSU` or `tansu` on `PATH`.
#[derive(Debug)]
pub struct TestBroker(Daemon);

impl TestBroker {
    /// A running broker.
    pub async fn start() -> Self {
        let mut broker = Self::reserve();
        broker.resume().await;
        broker
    }

    /// An address for a broker that is not running yet.
    pub fn reserve() -> Self {
        Self(Daemon::reserve())
    }

    /// `bootstrap.servers` for this broker.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.0.port)
    }

    /// Starts the broker (again, empty: it keeps nothing across a restart).
    pub async fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.0.port);
        let mut command = std::process::Command::new(std::env::var("TANSU").unwrap_or_else(|_| "tansu".to_owned()));
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url]);
        command.args(["--storage-engine", "memory://tansu/"]).stderr(std::process::Stdio::null());
        self.0.resume("the test broker", command).await;
    }

    /// Freezes (`true`) or thaws the broker: while frozen it holds every connection open
    /// and answers nothing, as a broker that hangs or is cut off by the network does, and
    /// it keeps everything it has.
    pub fn freeze(&self, frozen: bool) {
        let child = self.0.child.as_ref().expect("a running broker");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let sent = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} the broker");
    }

    /// Kills the broker at once, as a crash would.
    pub fn stop(&mut self) {
        self.0.stop();
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub headers: std::collections::HashMap<String, String>,
    pub value: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("a JSON record")
    }
}

/// Reads `topic` from the beginning with a fresh consumer group until `expected` records
/// have arrived (or `wait` has passed), then for a short while longer to catch extras.
pub async fn read_topic(brokers: &str, topic: &str, expected: usize, wait: std::time::Duration) -> Vec<Record> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("a test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let until = if records.len() >= expected {
            tokio::time::Instant::now() + std::time::Duration::from_millis(500)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(message)) => records.push(Record {
                key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                headers: message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                value: message.payload().unwrap_or_default().to_vec(),
                partition: message.partition(),
                offset: message.offset(),
            }),
            Ok(Err(_)) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(_) => return records,
        }
    }
}

/// A Redis server of one test's own, so the test can take it away (and bring it back,
/// empty, on the same port).
#[derive(Debug)]
pub struct TestRedis(Daemon);

impl TestRedis {
    pub async fn start() -> Self {
        let mut redis = Self(Daemon::reserve());
        redis.resume().await;
        redis
    }

    /// Starts the server (again): it keeps nothing across a restart.
    pub async fn resume(&mut self) {
        let mut command = std::process::Command::new("redis-server");
        command.args(["--port", &self.0.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        self.0.resume("the test Redis", command).await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }

    /// Kills the server, as an outage would.
    pub fn stop(&mut self) {
        self.0.stop();
    }
}
