//! The federation test harness: a real `nats-server`, hubs as separate `shmbus hub --nats`
//! processes each in its own directory and (as root) its own network namespace, joined to
//! the server's namespace by a veth pair, so only NATS crosses between "hosts".
//!
//! * `nats-server` missing: the test fails with the install command (never skips).
//! * Not root, or `ip netns` unusable (or `SHMBUS_FED_LOOPBACK=1`): everything runs on
//!   loopback, and the harness says so on stderr.
//! * Every child process and namespace is registered: dropping the [`Cluster`] removes them,
//!   and [`watchdog`] removes them too before it aborts a test that overran, so nothing
//!   outlives a failed test.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::client::{Client, ClientOptions};

static CLEANUP: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());
static SEQ: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, PartialEq)]
enum Cleanup {
    Pid(u32),
    Netns(String),
}

fn register(c: Cleanup) {
    CLEANUP.lock().unwrap().push(c);
}

fn unregister(c: &Cleanup) {
    CLEANUP.lock().unwrap().retain(|x| x != c);
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills every registered process and deletes every registered namespace.
pub fn cleanup_all() {
    let items: Vec<Cleanup> = std::mem::take(&mut *CLEANUP.lock().unwrap());
    for c in &items {
        if let Cleanup::Pid(p) = c {
            kill9(*p);
        }
    }
    for c in &items {
        if let Cleanup::Netns(n) = c {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Aborts the test (after cleaning up) if the guard lives longer than `secs`.
pub struct Watchdog(Arc<AtomicBool>);

pub fn watchdog(name: &str, secs: u64) -> Watchdog {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let name = name.to_string();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if d.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("WATCHDOG: {name} did not finish within {secs} s; cleaning up and aborting");
        cleanup_all();
        std::process::abort();
    });
    Watchdog(done)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub fn eventually(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

fn nats_server_path() -> PathBuf {
    for p in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
    {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() {
            return PathBuf::from(s);
        }
    }
    panic!(
        "nats-server is not installed: the federation tests need a real NATS server. \
         Install it with `apt-get install -y nats-server` (Debian/Ubuntu; .ci/run does this)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(st.success(), "ip {args:?} failed");
}

fn netns_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        // `SHMBUS_FED_LOOPBACK=1` runs the non-root path as root too (to test it).
        if std::env::var_os("SHMBUS_FED_LOOPBACK").is_some_and(|v| v == "1")
            || nix::unistd::geteuid().as_raw() != 0
        {
            return false;
        }
        let probe = format!("sbfp{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        }
        ok
    })
}

/// The network the hubs and the server sit on.
pub enum Net {
    /// `ip netns`: the server in `server_ns`, host `i` in `hosts[i]`, reaching the server at
    /// `10.99.<i+1>.1` over the veth `v<i+1>` (server side).
    Netns {
        server_ns: String,
        hosts: Vec<String>,
    },
    /// Everything on 127.0.0.1.
    Loopback,
}

/// A nats-server child (restartable on the same address).
pub struct Nats {
    child: Option<Child>,
    port: u16,
    netns: Option<String>,
    log: PathBuf,
    /// A configuration file (`-c`), for limits the command line cannot set.
    conf: Option<PathBuf>,
}

impl Nats {
    fn start(netns: Option<String>, port: u16, log: PathBuf, conf: Option<PathBuf>) -> Nats {
        let mut n = Nats {
            child: None,
            port,
            netns,
            log,
            conf,
        };
        n.restart();
        n
    }

    /// Starts the server again (after [`stop`](Nats::stop)) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let bin = nats_server_path();
        let host = if self.netns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        if let Some(c) = &self.conf {
            cmd.arg("-c").arg(c);
        }
        cmd.args(["-a", host, "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start nats-server");
        register(Cleanup::Pid(child.id()));
        self.child = Some(child);
        // Ready when it accepts on its port (probed from its namespace when it has one).
        let port = self.port;
        let ns = self.netns.clone();
        assert!(
            eventually(10.0, || match &ns {
                None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                Some(ns) => Command::new("ip")
                    .args(["netns", "exec", ns, "bash", "-c"])
                    .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
            }),
            "nats-server did not come up (log: {})",
            self.log.display()
        );
    }

    /// Stops the server (SIGKILL: clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            unregister(&Cleanup::Pid(c.id()));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One hub process ("host").
pub struct Hub {
    pub node: String,
    pub dir: PathBuf,
    child: Option<Child>,
    netns: Option<String>,
    url: String,
    extra: Vec<String>,
}

impl Hub {
    /// Its directory (clients connect here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client of this hub.
    pub fn client(&self, name: &str) -> Client {
        Client::connect(&self.dir, ClientOptions::new(name))
            .unwrap_or_else(|e| panic!("client {name} on node {} did not connect: {e}", self.node))
    }

    /// A client with options.
    pub fn client_with(&self, opts: ClientOptions) -> Result<Client, shmbus::Error> {
        Client::connect(&self.dir, opts)
    }

    /// Its `stat` report.
    pub fn stat(&self) -> shmbus::hub::StatReport {
        shmbus::hub::stat(&self.dir).expect("stat")
    }

    /// Names of the remote clients it currently knows.
    pub fn remote_clients(&self) -> Vec<String> {
        match shmbus::hub::stat(&self.dir) {
            Ok(r) => {
                let mut v: Vec<String> = r
                    .federation
                    .map(|f| {
                        f.nodes
                            .into_iter()
                            .flat_map(|n| n.clients.into_iter().map(|(c, _)| c))
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        }
    }

    /// Whether it knows the remote client `name`.
    pub fn sees(&self, name: &str) -> bool {
        self.remote_clients().iter().any(|c| c == name)
    }

    /// The pid of the hub process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERMs the hub (a clean shutdown) and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
            unregister(&Cleanup::Pid(c.id()));
        }
    }

    /// Sends `sig` to the hub (SIGSTOP / SIGCONT stall and resume it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal the hub");
    }

    /// SIGKILLs the hub.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            unregister(&Cleanup::Pid(c.id()));
        }
    }

    fn spawn(&mut self) {
        // `SHMBUS_FED_BIN` runs another build's hub (to compare a fix against the code before
        // it with the same test).
        let exe_os = std::env::var("SHMBUS_FED_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_shmbus").to_string());
        let exe = exe_os.as_str();
        let log = std::fs::File::create(self.dir.join("hub.log")).unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, exe]);
                c
            }
            None => Command::new(exe),
        };
        cmd.arg("hub")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--nats", &self.url, "--node", &self.node, "--log", "info"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start shmbus hub");
        register(Cleanup::Pid(child.id()));
        self.child = Some(child);
        let sock = self.dir.join("hub.sock");
        if !eventually(20.0, || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }) {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "hub {} did not come up in 20 s (exit status: {status:?}; log {}):\n{}",
                self.node,
                self.dir.join("hub.log").display(),
                self.log_tail()
            );
        }
    }

    /// The end of its log (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A nats-server and `n` hubs, each its own "host".
pub struct Cluster {
    pub hubs: Vec<Hub>,
    pub nats: Nats,
    pub net: Net,
    root: PathBuf,
    /// The cluster name all hubs use (unique per test).
    pub cluster: String,
}

impl Cluster {
    /// Starts a server and hubs named `nodes`, each with the extra hub flags `extra`, and waits
    /// until every hub is connected and sees every other node.
    pub fn start(test: &str, nodes: &[&str], extra: &[&str]) -> Cluster {
        Cluster::start_some(test, nodes, nodes.len(), extra)
    }

    /// [`start`](Cluster::start) with only the first `running` hubs started: the hosts of the
    /// others exist, and [`add_hub`](Cluster::add_hub) starts them later (in order).
    pub fn start_some(test: &str, nodes: &[&str], running: usize, extra: &[&str]) -> Cluster {
        Cluster::start_full(test, nodes, running, extra, None)
    }

    /// [`start`](Cluster::start) with a nats-server configuration (the text of its `-c`
    /// file, e.g. `max_pending: 1GB`).
    pub fn start_with_server_conf(
        test: &str,
        nodes: &[&str],
        extra: &[&str],
        conf: &str,
    ) -> Cluster {
        Cluster::start_full(test, nodes, nodes.len(), extra, Some(conf))
    }

    fn start_full(
        test: &str,
        nodes: &[&str],
        running: usize,
        extra: &[&str],
        conf: Option<&str>,
    ) -> Cluster {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let root = std::env::temp_dir().join(format!("shmbus-fed-{test}-{pid}-{seq}"));
        let _ = std::fs::remove_dir_all(&root);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&root)
                .unwrap();
        }
        let net = if netns_usable() {
            let server_ns = format!("sbf{pid}x{seq}s");
            ip(&["netns", "add", &server_ns]);
            register(Cleanup::Netns(server_ns.clone()));
            ip(&["-n", &server_ns, "link", "set", "lo", "up"]);
            let mut hosts = Vec::new();
            for i in 1..=nodes.len() {
                let h = format!("sbf{pid}x{seq}h{i}");
                ip(&["netns", "add", &h]);
                register(Cleanup::Netns(h.clone()));
                ip(&["-n", &h, "link", "set", "lo", "up"]);
                let v = format!("v{i}");
                ip(&[
                    "-n", &server_ns, "link", "add", &v, "type", "veth", "peer", "name", "eth0",
                    "netns", &h,
                ]);
                ip(&[
                    "-n",
                    &server_ns,
                    "addr",
                    "add",
                    &format!("10.99.{i}.1/24"),
                    "dev",
                    &v,
                ]);
                ip(&["-n", &server_ns, "link", "set", &v, "up"]);
                ip(&[
                    "-n",
                    &h,
                    "addr",
                    "add",
                    &format!("10.99.{i}.2/24"),
                    "dev",
                    "eth0",
                ]);
                ip(&["-n", &h, "link", "set", "eth0", "up"]);
                hosts.push(h);
            }
            eprintln!(
                "federation harness: network namespaces: nats-server in {server_ns}, hosts {hosts:?} (veth pairs)"
            );
            Net::Netns { server_ns, hosts }
        } else {
            eprintln!(
                "federation harness: not root (or `ip netns` unusable, or SHMBUS_FED_LOOPBACK=1): hubs and nats-server \
                 share loopback, no network namespaces"
            );
            Net::Loopback
        };
        let (port, nats_ns) = match &net {
            Net::Netns { server_ns, .. } => (4222, Some(server_ns.clone())),
            Net::Loopback => (free_port(), None),
        };
        let conf = conf.map(|c| {
            let p = root.join("nats.conf");
            std::fs::write(&p, c).unwrap();
            p
        });
        let nats = Nats::start(nats_ns, port, root.join("nats.log"), conf);
        let cluster = format!("t{pid}x{seq}");
        let mut c = Cluster {
            hubs: Vec::new(),
            nats,
            net,
            root,
            cluster,
        };
        for n in &nodes[..running] {
            c.add_hub(n, extra);
        }
        c.wait_mesh();
        c
    }

    /// The URL host `i` (0-based) reaches the server at.
    pub fn url(&self, i: usize) -> String {
        match &self.net {
            Net::Netns { .. } => format!("nats://10.99.{}.1:{}", i + 1, self.nats.port),
            Net::Loopback => format!("nats://127.0.0.1:{}", self.nats.port),
        }
    }

    /// Starts one more hub (its host namespace must exist: one per node given to `start`).
    pub fn add_hub(&mut self, node: &str, extra: &[&str]) {
        let i = self.hubs.len();
        let dir = self.root.join(node);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        }
        let netns = match &self.net {
            Net::Netns { hosts, .. } => Some(hosts[i].clone()),
            Net::Loopback => None,
        };
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--cluster".to_string(), self.cluster.clone()]);
        let mut h = Hub {
            node: node.to_string(),
            dir,
            child: None,
            netns,
            url: self.url(i),
            extra,
        };
        h.spawn();
        self.hubs.push(h);
    }

    /// Restarts hub `i` after a kill (same dir, node name and flags).
    pub fn restart_hub(&mut self, i: usize) {
        let _ = std::fs::remove_file(self.hubs[i].dir.join("hub.sock"));
        self.hubs[i].spawn();
    }

    /// Waits until every live hub is connected to NATS and knows every other live node.
    pub fn wait_mesh(&self) {
        let live: Vec<&Hub> = self.hubs.iter().filter(|h| h.child.is_some()).collect();
        let want = live.len() - 1;
        let ok = eventually(20.0, || {
            live.iter().all(|h| match shmbus::hub::stat(&h.dir) {
                Ok(r) => r
                    .federation
                    .as_ref()
                    .is_some_and(|f| f.nats == "connected" && f.nodes.len() == want),
                Err(_) => false,
            })
        });
        if !ok {
            for h in &live {
                eprintln!("--- hub {} log ---\n{}", h.node, h.log_tail());
            }
            panic!("the hubs did not form a mesh of {} nodes", live.len());
        }
    }

    /// Cuts host `i` off from the server (veth down; needs namespaces).
    pub fn partition(&self, i: usize, cut: bool) {
        match &self.net {
            Net::Netns { server_ns, .. } => ip(&[
                "-n",
                server_ns,
                "link",
                "set",
                &format!("v{}", i + 1),
                if cut { "down" } else { "up" },
            ]),
            Net::Loopback => panic!(
                "a partition by veth needs root and network namespaces (`ip netns`); \
                 run this test as root"
            ),
        }
    }

    /// Runs `f` on a thread inside host `i`'s network namespace (or here, on loopback), so
    /// the test can talk to the nats-server as that host does.
    pub fn in_host<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let ns = match &self.net {
            Net::Netns { hosts, .. } => Some(hosts[i].clone()),
            Net::Loopback => None,
        };
        std::thread::spawn(move || {
            if let Some(ns) = ns {
                let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            f()
        })
        .join()
        .expect("host thread")
    }

    /// Whether the hosts are in namespaces.
    pub fn namespaced(&self) -> bool {
        matches!(self.net, Net::Netns { .. })
    }

    /// The directory that holds every hub's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hubs {
            h.kill9();
        }
        self.nats.stop();
        if let Net::Netns { server_ns, hosts } = &self.net {
            for n in hosts.iter().chain(std::iter::once(server_ns)) {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
                unregister(&Cleanup::Netns(n.clone()));
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("federation harness: logs kept in {}", self.root.display());
        }
    }
}
