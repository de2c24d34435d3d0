//! Test harness: a real mosquitto broker on loopback, TLS material made with openssl, and a
//! subscriber that records every message with its retained flag.
//!
//! Include it with `#[path = "common/broker.rs"] mod broker;`. It needs `/usr/sbin/mosquitto`
//! (or `mosquitto` on `PATH`), `mosquitto_passwd` and `openssl`; Debian's `mosquitto`,
//! `mosquitto-clients` and `openssl` packages provide them.
//!
//! ```ignore
//! let broker = Broker::start(BrokerKind::Plain);
//! let subscriber = Subscriber::connect(&broker, "watcher", "gradgate/#");
//! // ... publish through gradgate to broker.url() ...
//! let events = subscriber.wait_for("gradgate/cam/events", 3, Duration::from_secs(10));
//! ```
//!
//! Each [`Broker`] has its own port, folder, configuration and persistence file, so tests
//! may run in parallel. The broker keeps retained messages and persistent sessions across
//! [`Broker::stop`] and [`Broker::start_again`] (`persistence true`), as a broker
//! restarted by systemd would.
#![allow(dead_code)]

use rumqttc::v5::mqttbytes::v5::{Filter, Packet, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use std::fs;
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a broker may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a broker may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// User name the TLS brokers accept.
pub const USERNAME: &str = "gradgate";
/// Password of [`USERNAME`].
pub const PASSWORD: &str = "correct horse battery staple";

/// Which listener a [`Broker`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Plain TCP, anonymous clients allowed.
    Plain,
    /// TLS with the server certificate of [`TlsFiles::ca_cert`], user name and password
    /// required ([`USERNAME`], [`PASSWORD`]), no anonymous clients.
    Tls,
    /// As [`BrokerKind::Tls`], and clients must also present a certificate signed by
    /// [`TlsFiles::ca_cert`] (`require_certificate true`).
    TlsClientCert,
}

/// Certificates and keys made for one TLS broker, all PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The test CA that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// A second CA that signed nothing here: trusting only it must fail the handshake.
    pub other_ca_cert: PathBuf,
    /// Server certificate for IP 127.0.0.1 and DNS `localhost`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate (extended key usage clientAuth) signed by the test CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A mosquitto child process on `127.0.0.1`; killed (SIGKILL) on drop.
pub struct Broker {
    kind: BrokerKind,
    dir: TempDir,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    tls: Option<TlsFiles>,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    ///
    /// # Panics
    /// When mosquitto or openssl is missing or the broker does not come up within 10 s;
    /// the message contains the broker's log.
    pub fn start(kind: BrokerKind) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("gradgate-broker-")
            .tempdir()
            .expect("cannot create the broker's temporary folder");
        let tls = match kind {
            BrokerKind::Plain => None,
            BrokerKind::Tls | BrokerKind::TlsClientCert => Some(make_tls_files(dir.path())),
        };
        if tls.is_some() {
            run_tool(
                Command::new("mosquitto_passwd")
                    .arg("-c")
                    .arg("-b")
                    .arg(dir.path().join("passwd"))
                    .arg(USERNAME)
                    .arg(PASSWORD),
            );
        }

        let mut broker = Broker {
            kind,
            config_path: dir.path().join("mosquitto.conf"),
            log_path: dir.path().join("mosquitto.log"),
            dir,
            port: 0,
            tls,
            child: None,
        };
        // Another process may take the port between probing and binding; try a few.
        for attempt in 1..=5 {
            broker.port = free_port();
            broker.write_config();
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(log) if attempt < 5 && log.contains("Address already in use") => continue,
                Err(log) => panic!(
                    "mosquitto did not start on port {}; its log:\n{log}",
                    broker.port
                ),
            }
        }
        unreachable!("the loop returns or panics on its last attempt")
    }

    /// TCP port of the listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL for gradgate: `mqtt://127.0.0.1:PORT`, or `mqtts://127.0.0.1:PORT` for TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// TLS files of a TLS broker; `None` for [`BrokerKind::Plain`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Folder holding the configuration, log, persistence file and TLS files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the running broker.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the broker with SIGTERM, as systemd does, and waits for it to exit; mosquitto
    /// saves retained messages and sessions on the way out. No-op when stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child
                .try_wait()
                .expect("cannot wait for mosquitto")
                .is_some()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "mosquitto did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
            self.log()
        );
    }

    /// Kills the broker with SIGKILL: no goodbye, nothing saved since the last autosave.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again with the same port, configuration and persistence file.
    ///
    /// # Panics
    /// When it is running, or does not come up within 10 s.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running broker");
        if let Err(log) = self.spawn_and_wait() {
            panic!(
                "mosquitto did not start again on port {}; its log:\n{log}",
                self.port
            );
        }
    }

    /// Reads the broker's log so far (its stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let mut config = String::new();
        // mosquitto started as root drops to user `mosquitto`, which cannot write into a
        // root-owned temporary folder; keep the current user instead.
        if running_as_root() {
            config.push_str("user root\n");
        }
        config.push_str(&format!("listener {} 127.0.0.1\n", self.port));
        match &self.tls {
            None => config.push_str("allow_anonymous true\n"),
            Some(tls) => {
                config.push_str(&format!("cafile {}\n", tls.ca_cert.display()));
                config.push_str(&format!("certfile {}\n", tls.server_cert.display()));
                config.push_str(&format!("keyfile {}\n", tls.server_key.display()));
                let require = self.kind == BrokerKind::TlsClientCert;
                config.push_str(&format!("require_certificate {require}\n"));
                config.push_str(&format!("password_file {}\n", dir.join("passwd").display()));
                config.push_str("allow_anonymous false\n");
            }
        }
        config.push_str("persistence true\n");
        config.push_str(&format!("persistence_location {}/\n", dir.display()));
        config.push_str("log_dest stderr\n");
        config.push_str("log_type all\n");
        config.push_str("connection_messages true\n");
        fs::write(&self.config_path, config).expect("cannot write mosquitto.conf");
    }

    /// Spawns mosquitto and polls its port; on failure returns the log.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("cannot open mosquitto.log");
        let mut child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {}: {error}; install Debian's mosquitto package",
                    mosquitto_path().display()
                )
            });

        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("cannot wait for mosquitto") {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "(no listener after {START_TIMEOUT:?})\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Sends a signal by name (`TERM`, `KILL`, `INT`, ...) to a process with `/bin/kill`.
///
/// # Panics
/// When `kill` cannot be run or fails (no such process).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

fn mosquitto_path() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Returns a port that was free a moment ago: binds port 0, reads it, releases it.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("cannot bind a loopback port")
        .port()
}

/// Runs a command and panics with its output when it fails.
fn run_tool(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes a test CA, a second unrelated CA, a server certificate for 127.0.0.1 and
/// localhost and a client certificate, all P-256 ECDSA, valid for two days.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let ca_config = |name: &str| {
        format!(
            "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
             [dn]\nCN = {name}\n\
             [ext]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
        )
    };
    let make_ca = |stem: &str, name: &str| -> (PathBuf, PathBuf) {
        let config = dir.join(format!("{stem}.cnf"));
        fs::write(&config, ca_config(name)).expect("cannot write the CA's openssl config");
        let (cert, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        run_tool(
            Command::new("openssl")
                .args(["req", "-x509", "-config"])
                .arg(&config)
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-nodes", "-days", "2", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        (cert, key)
    };
    let make_leaf = |stem: &str, name: &str, extensions: &str, ca: &(PathBuf, PathBuf)| {
        let config = dir.join(format!("{stem}.cnf"));
        fs::write(
            &config,
            format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {name}\n"),
        )
        .expect("cannot write the leaf's openssl config");
        let extension_file = dir.join(format!("{stem}.ext"));
        fs::write(&extension_file, extensions).expect("cannot write the extension file");
        let (cert, key, csr) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}.csr")),
        );
        run_tool(
            Command::new("openssl")
                .args(["req", "-new", "-config"])
                .arg(&config)
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-nodes", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        );
        run_tool(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca.0)
                .arg("-CAkey")
                .arg(&ca.1)
                .arg("-extfile")
                .arg(&extension_file)
                .arg("-out")
                .arg(&cert),
        );
        (cert, key)
    };

    let ca = make_ca("ca", "gradgate test CA");
    let other_ca = make_ca("other-ca", "unrelated test CA");
    let server = make_leaf(
        "server",
        "localhost",
        "subjectAltName = IP:127.0.0.1,DNS:localhost\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
        &ca,
    );
    let client = make_leaf(
        "client",
        "gradgate test client",
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
        &ca,
    );
    TlsFiles {
        ca_cert: ca.0,
        other_ca_cert: other_ca.0,
        server_cert: server.0,
        server_key: server.1,
        client_cert: client.0,
        client_key: client.1,
    }
}

/// rustls client configuration (ring provider) trusting `ca_cert`, with an optional client
/// certificate and key.
pub fn rustls_config(ca_cert: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let read_certs = |path: &Path| {
        let file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        rustls_pemfile::certs(&mut BufReader::new(file))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_cert) {
        roots
            .add(cert)
            .expect("the test CA is not a usable trust anchor");
    }
    // The same provider as gradgate itself; see src/signal/mqtt/tls.rs.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let file = fs::File::open(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
            let key = rustls_pemfile::private_key(&mut BufReader::new(file))
                .expect("cannot parse the client key")
                .expect("no private key in the client key file");
            builder
                .with_client_auth_cert(read_certs(cert), key)
                .expect("the client key does not fit its certificate")
        }
    };
    Arc::new(config)
}

/// One message as a subscriber received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The RETAIN flag as published (MQTT 5 retain-as-published), or set because the
    /// broker sent a stored retained message when the subscription was made.
    pub retained: bool,
    /// QoS of the delivery: the lower of the publish's and the subscription's (1).
    pub qos: u8,
    /// DUP flag: the broker resent this delivery to the subscriber.
    pub dup: bool,
}

impl Message {
    /// Decodes the payload as UTF-8, replacing invalid sequences.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

type Inbox = Arc<(Mutex<Vec<Message>>, Condvar)>;

/// An MQTT 5 subscriber (rumqttc) that records every message it receives.
///
/// The subscription is QoS 1 with retain-as-published, so each message keeps its RETAIN
/// flag. The session is persistent (clean start off, session expiry one hour), so the
/// subscription survives a broker restart and the broker keeps QoS 1 messages for it while
/// it reconnects. It retries a lost connection every 100 ms.
pub struct Subscriber {
    inbox: Inbox,
    client: Client,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to `broker` as `client_id`, subscribes to `filter` and waits for the
    /// SUBACK. On a TLS broker it logs in with [`USERNAME`] and [`PASSWORD`] and, on a
    /// [`BrokerKind::TlsClientCert`] broker, presents the client certificate.
    ///
    /// # Panics
    /// When the subscription is not acknowledged within 10 s.
    pub fn connect(broker: &Broker, client_id: &str, filter: &str) -> Subscriber {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port());
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(4 << 20));
        if let Some(tls) = broker.tls() {
            let client = (broker.kind() == BrokerKind::TlsClientCert)
                .then_some((tls.client_cert.as_path(), tls.client_key.as_path()));
            let config = rustls_config(&tls.ca_cert, client);
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
            options.set_credentials(USERNAME, PASSWORD);
        }

        let (client, mut connection) = Client::new(options, 64);
        let inbox: Inbox = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new((Mutex::new(false), Condvar::new()));

        let thread = {
            let (inbox, stop, subscribed) = (inbox.clone(), stop.clone(), subscribed.clone());
            let (client, filter) = (client.clone(), filter.to_string());
            std::thread::spawn(move || {
                for notification in connection.iter() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    match notification {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            // A broker that kept the session kept the subscription too.
                            if !ack.session_present {
                                let mut subscription =
                                    Filter::new(filter.clone(), QoS::AtLeastOnce);
                                subscription.preserve_retain = true;
                                subscription.retain_forward_rule =
                                    RetainForwardRule::OnEverySubscribe;
                                client
                                    .try_subscribe_many([subscription])
                                    .expect("the subscriber's request channel is full");
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            *subscribed.0.lock().unwrap() = true;
                            subscribed.1.notify_all();
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let message = Message {
                                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                                payload: publish.payload.to_vec(),
                                retained: publish.retain,
                                qos: publish.qos as u8,
                                dup: publish.dup,
                            };
                            inbox.0.lock().unwrap().push(message);
                            inbox.1.notify_all();
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
        };

        let (lock, condvar) = &*subscribed;
        let (done, _) = condvar
            .wait_timeout_while(lock.lock().unwrap(), START_TIMEOUT, |done| !*done)
            .unwrap();
        assert!(
            *done,
            "subscriber {client_id} got no SUBACK for {filter} within {START_TIMEOUT:?}; \
             broker log:\n{}",
            broker.log()
        );
        drop(done);

        Subscriber {
            inbox,
            client,
            stop,
            thread: Some(thread),
        }
    }

    /// Returns every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.inbox.0.lock().unwrap().clone()
    }

    /// Messages received on `topic`, in arrival order.
    pub fn on(&self, topic: &str) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|message| message.topic == topic)
            .collect()
    }

    /// Waits until at least `count` messages arrived on `topic` and returns all of them.
    ///
    /// # Panics
    /// At the deadline, listing every message received.
    pub fn wait_for(&self, topic: &str, count: usize, timeout: Duration) -> Vec<Message> {
        let description = format!("{count} message(s) on {topic}");
        self.wait_until(&description, timeout, |messages| {
            messages.iter().filter(|m| m.topic == topic).count() >= count
        });
        self.on(topic)
    }

    /// Waits until `done` holds for the messages received so far; returns them.
    ///
    /// # Panics
    /// At the deadline, naming `description` and listing every message received.
    pub fn wait_until(
        &self,
        description: &str,
        timeout: Duration,
        done: impl Fn(&[Message]) -> bool,
    ) -> Vec<Message> {
        let (lock, condvar) = &*self.inbox;
        let (messages, _) = condvar
            .wait_timeout_while(lock.lock().unwrap(), timeout, |messages| !done(messages))
            .unwrap();
        if !done(&messages) {
            let listing: Vec<String> = messages
                .iter()
                .map(|m| {
                    format!(
                        "  {} {:?} retained={} qos={} dup={}",
                        m.topic,
                        m.text(),
                        m.retained,
                        m.qos,
                        m.dup
                    )
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {description}; received {}:\n{}",
                messages.len(),
                listing.join("\n")
            );
        }
        messages.clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The DISCONNECT wakes the event loop; on a stopped broker the next failed attempt
        // does, within 100 ms.
        let _ = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
