//! A real image registry on loopback: Debian's `docker-registry` (distribution 2.8) serving
//! `127.0.0.1:<free port>` from a directory of ours, behind a TCP proxy whose rate can be
//! limited (slow pulls for pre-pull measurements). Images go in with `skopeo copy` from the
//! archives of [`crate::images`]; containerd pulls them through a `config_path` hosts
//! directory ([`Registry::write_hosts_dir`]) that sends every registry host — and, through
//! `_default`, every other — to this registry, so no pull ever leaves the machine. A tag that
//! was not pushed is a real 404: kubelet's `ErrImagePull`.
//!
//! Layout in the registry: `<host>/<path>:<tag>` (`127.0.0.1:P/registry.istio.io/testing/
//! proxyv2:1.25.0`), so equal paths of different hosts never collide; each host's
//! `hosts.toml` uses `override_path` with the prefix `/v2/<host>` (containerd 1.6 supports it
//! and `_default`).
//!
//! The registry process has `PR_SET_PDEATHSIG` and its own process group (see
//! [`crate::process`]): it dies with the harness. The proxy's threads stop when the
//! [`Registry`] is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::image::ImageRef;
use crate::images::ImageSet;
use crate::oci;
use crate::process::{Child, free_ports};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Files and sockets.
    #[error(transparent)]
    Io(#[from] crate::oci::Error),
    #[error("{0} is not installed (Debian: apt-get install docker-registry skopeo)")]
    Missing(&'static str),
    #[error("the registry did not start: {0}")]
    Start(String),
    #[error("skopeo copy {name}: {message}")]
    Push { name: String, message: String },
    #[error("invalid image name {0:?}")]
    Name(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let io = oci::io(what);
    move |source| Error::from(io(source))
}

/// A running registry and its rate-limiting proxy.
pub struct Registry {
    dir: PathBuf,
    registry: Child,
    registry_addr: SocketAddr,
    proxy: Throttle,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.dir)
            .field("registry_addr", &self.registry_addr)
            .field("addr", &self.proxy.addr)
            .finish()
    }
}

impl Registry {
    /// Starts the registry with its data, config and log under `dir`, and the proxy in front
    /// of it, limited to `rate` bytes per second toward the client (`None`: unlimited).
    pub fn start(dir: &Path, rate: Option<u64>) -> Result<Self, Error> {
        let program = which("docker-registry").ok_or(Error::Missing("docker-registry"))?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let port = free_ports(1).map_err(|e| Error::Start(e.to_string()))?[0];
        let registry_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join("registry.yml");
        // Our own config: the package's stock one has htpasswd auth and listens on every
        // address. Uploads need no shared secret with one instance; the access log is off
        // (every pull would log several lines).
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {registry_addr}\n  secret: inplace-upgrade-testenv\n",
                data = dir.join("registry-data").display(),
            ),
        )
        .map_err(io(format!("write {}", config.display())))?;
        let mut registry = Child::spawn(
            "docker-registry",
            &program,
            &["serve".into(), config.display().to_string()],
            dir.join("registry.log"),
        )
        .map_err(|e| Error::Start(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if get(registry_addr, "/v2/").is_ok_and(|status| status == 200) {
                break;
            }
            if let Err(e) = registry.check() {
                return Err(Error::Start(e.to_string()));
            }
            if Instant::now() > deadline {
                return Err(Error::Start(format!(
                    "no answer on {registry_addr}/v2/ within 30 s; log {}",
                    dir.join("registry.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let proxy = Throttle::start(registry_addr, rate)?;
        Ok(Self {
            dir: dir.to_owned(),
            registry,
            registry_addr,
            proxy,
        })
    }

    /// Where clients pull from: the rate-limited proxy.
    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    /// The registry itself (pushes go here, never throttled).
    pub fn registry_addr(&self) -> SocketAddr {
        self.registry_addr
    }

    pub fn pid(&self) -> u32 {
        self.registry.pid()
    }

    /// Changes the pull rate limit (bytes per second toward clients; `None`: unlimited). Takes
    /// effect for the next chunk of every open connection.
    pub fn set_rate_limit(&self, rate: Option<u64>) {
        self.proxy.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// Bytes the proxy has sent to clients (pulls served).
    pub fn bytes_served(&self) -> u64 {
        self.proxy.served.load(Ordering::Relaxed)
    }

    /// `name` as stored here: `127.0.0.1:P/<host>/<path>:<tag>` (for direct pulls or pushes).
    pub fn reference(&self, name: &str) -> Result<String, Error> {
        Ok(format!("{}/{}", self.registry_addr, stored_path(name)?))
    }

    /// Pushes `name` from `archive` (an OCI archive that holds it) with skopeo.
    pub fn push(&self, archive: &Path, name: &str) -> Result<(), Error> {
        let skopeo = which("skopeo").ok_or(Error::Missing("skopeo"))?;
        let tmp = self.dir.join("skopeo-tmp");
        std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        let out = Command::new(skopeo)
            // --preserve-digests: otherwise skopeo gzips our uncompressed layers on the way to a
            // registry, and the manifest digest there differs from the archive's.
            .args([
                "copy",
                "--quiet",
                "--insecure-policy",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci-archive:{}:{name}", archive.display()))
            .arg(format!("docker://{}", self.reference(name)?))
            // skopeo unpacks oci-archive: sources under TMPDIR (default /var/tmp).
            .env("TMPDIR", &tmp)
            .output()
            .map_err(io("run skopeo"))?;
        if !out.status.success() {
            return Err(Error::Push {
                name: name.to_owned(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Pushes every name of `set` that `include` accepts, two at a time.
    pub fn push_set(&self, set: &ImageSet, include: impl Fn(&str) -> bool) -> Result<(), Error> {
        let work: Vec<(String, PathBuf)> = set
            .names()
            .into_iter()
            .filter(|(n, _)| include(n))
            .map(|(n, a)| (n.to_owned(), a.to_owned()))
            .collect();
        let work = Mutex::new(work.into_iter());
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        loop {
                            let next = work.lock().map_or(None, |mut w| w.next());
                            let Some((name, archive)) = next else {
                                return Ok(());
                            };
                            // Two pushes into one repository can race on a layer they share:
                            // distribution 2.8's filesystem storage then answers the second one's
                            // HEAD with 500 "invalid checksum digest format" (seen here under
                            // load). Once the first has finished, the layer is complete.
                            self.push(&archive, &name)
                                .or_else(|first| self.push(&archive, &name).map_err(|_| first))?;
                        }
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::Start("a push thread panicked".into())))
            })
        })
    }

    /// Writes a containerd `config_path` directory (`[plugins."io.containerd.grpc.v1.cri".
    /// registry] config_path = DIR`) that sends `hosts` to this registry's proxy under their
    /// prefix, and every other host (`_default`) here too, where nothing is stored under an
    /// unprefixed path: unknown images fail with 404 instead of leaving the machine. containerd
    /// re-reads it on every pull, so the registry may start after containerd.
    pub fn write_hosts_dir(&self, dir: &Path, hosts: &[&str]) -> Result<(), Error> {
        let addr = self.addr();
        let mut entries: Vec<(String, String)> = hosts
            .iter()
            .map(|h| {
                let url = format!("http://{addr}/v2/{h}");
                (
                    h.replace(':', "_"),
                    format!(
                        "server = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
                    ),
                )
            })
            .collect();
        entries.push((
            "_default".into(),
            format!(
                "server = \"http://{addr}\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        ));
        for (host, text) in entries {
            let d = dir.join(host);
            std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
            std::fs::write(d.join("hosts.toml"), text)
                .map_err(io(format!("write {}/hosts.toml", d.display())))?;
        }
        Ok(())
    }
}

/// Every registry host the image set uses.
pub fn hosts(set: &ImageSet) -> Vec<String> {
    let mut hosts: Vec<String> = set
        .names()
        .keys()
        .filter_map(|n| ImageRef::parse(n).ok())
        .filter_map(|r| r.repository.split('/').next().map(str::to_owned))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// `registry.istio.io/testing/proxyv2:1.25.0` → `registry.istio.io/testing/proxyv2:1.25.0`
/// (normalised: `nginx` → `docker.io/library/nginx:latest`).
fn stored_path(name: &str) -> Result<String, Error> {
    let r = ImageRef::parse(name).map_err(|_| Error::Name(name.to_owned()))?;
    Ok(match (&r.tag, &r.digest) {
        (_, Some(d)) => format!("{}@{d}", r.repository),
        (t, None) => format!("{}:{}", r.repository, t.as_deref().unwrap_or("latest")),
    })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// `GET path` on `addr`, the status code.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    String::from_utf8_lossy(&head[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))
}

/// A TCP proxy whose server-to-client direction is paced to `rate` bytes per second, shared by
/// all connections (one link). Threads: one acceptor, two per connection.
struct Throttle {
    addr: SocketAddr,
    rate: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// Chunk size of the pacing: small enough that the rate is smooth, large enough to be cheap.
const CHUNK: usize = 16 * 1024;
/// How often blocked reads wake up to notice a stop.
const POLL: Duration = Duration::from_millis(200);

impl Throttle {
    fn start(upstream: SocketAddr, rate: Option<u64>) -> Result<Self, Error> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(io("bind the registry proxy on 127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(io("registry proxy address"))?;
        let t = Self {
            addr,
            rate: Arc::new(AtomicU64::new(rate.unwrap_or(0))),
            served: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (rate, served, stop) = (t.rate.clone(), t.served.clone(), t.stop.clone());
        // The next instant the link is free: a send of n bytes occupies n / rate seconds.
        let link = Arc::new(Mutex::new(Instant::now()));
        std::thread::Builder::new()
            .name("registry-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let (rate, served, stop, link) =
                        (rate.clone(), served.clone(), stop.clone(), link.clone());
                    std::thread::spawn(move || {
                        let _ = relay(client, server, &rate, &served, &stop, &link);
                    });
                }
            })
            .map_err(io("start the registry proxy thread"))?;
        Ok(t)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn relay(
    client: TcpStream,
    server: TcpStream,
    rate: &AtomicU64,
    served: &AtomicU64,
    stop: &AtomicBool,
    link: &Mutex<Instant>,
) -> std::io::Result<()> {
    for s in [&client, &server] {
        s.set_read_timeout(Some(POLL))?;
        s.set_nodelay(true)?;
    }
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    std::thread::scope(|scope| {
        // client → server: requests, unpaced.
        scope.spawn(|| pump(c2, s2, stop, |_| {}));
        // server → client: the pulled bytes, paced.
        pump(server, client, stop, |n| {
            served.fetch_add(n as u64, Ordering::Relaxed);
            let rate = rate.load(Ordering::Relaxed);
            if rate == 0 {
                return;
            }
            let occupy = Duration::from_secs_f64(n as f64 / rate as f64);
            let start = {
                let Ok(mut free) = link.lock() else { return };
                let now = Instant::now();
                let start = (*free).max(now);
                *free = start + occupy;
                start
            };
            let done = start + occupy;
            if let Some(wait) = done.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        });
    });
    Ok(())
}

/// Copies `from` → `to` in chunks, calling `pace(n)` before each write, until EOF, an error or
/// a stop; then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream, stop: &AtomicBool, pace: impl Fn(usize)) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pace(n);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_paths_keep_the_host() {
        assert_eq!(
            stored_path("registry.istio.io/testing/proxyv2:1.25.0").unwrap(),
            "registry.istio.io/testing/proxyv2:1.25.0"
        );
        assert_eq!(
            stored_path("nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert!(stored_path("Bad/Name").is_err());
    }

    #[test]
    fn the_proxy_relays_and_paces() {
        // An upstream that sends 256 KiB and closes.
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in upstream.incoming().take(2) {
                let mut s = s.unwrap();
                let mut req = [0u8; 16];
                let _ = s.read(&mut req);
                s.write_all(&vec![7u8; 256 * 1024]).unwrap();
            }
        });
        let fetch = |addr| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET").unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got.len()
        };
        let t = Throttle::start(up, None).unwrap();
        assert_eq!(fetch(t.addr), 256 * 1024);
        // 1 MiB/s: 256 KiB cannot arrive in less than 0.25 s (a lower bound; never flaky).
        t.rate.store(1 << 20, Ordering::Relaxed);
        let start = Instant::now();
        assert_eq!(fetch(t.addr), 256 * 1024);
        assert!(
            start.elapsed() >= Duration::from_millis(240),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(t.served.load(Ordering::Relaxed), 512 * 1024);
    }
}
