//! `testapp`: the one program inside every test image (see [`config`] for the personalities).
//!
//! Everything it does that a test may want to know is one `event=… key=value` line on stdout,
//! which is the container's log (`kubectl logs`): `start`, `ready`, `sigterm`, `hook`
//! (exec hooks, written into the log of the container's PID 1; httpGet hooks on `/hook/…`),
//! `drain`, `crash`, `istio-init`. Built static (`testenv::images` builds it with
//! `-C target-feature=+crt-static`), so the images need nothing else.

mod config;
mod http;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use config::{AppProbe, Common, Mode, Personality};
use http::{Request, Response};

fn main() {
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_else(|| "testapp".into());
    let args: Vec<String> = argv.collect();
    let personality = match config::parse(&program, &args, &|k| std::env::var(k).ok()) {
        Ok(p) => p,
        Err(e) => {
            log(&format!("event=error message={e:?}"));
            std::process::exit(2);
        }
    };
    // Before any thread exists, so every thread inherits the mask and only sigwait sees them.
    let signals = block_signals();
    let code = match personality {
        Personality::Pause => pause(&signals),
        Personality::Hook { argv } => {
            hook(&argv);
            0
        }
        Personality::IstioInit => {
            log(&format!("event=istio-init args={}", quote(&args)));
            0
        }
        Personality::App(app) => {
            let state = State::new(app.common.clone());
            log(&format!(
                "event=start personality=app {} listen={}{}",
                app.common.describe(),
                join(&app.listen),
                app.outbound
                    .as_ref()
                    .map(|o| format!(" outbound={} every_ms={}", o.to, o.every.as_millis()))
                    .unwrap_or_default()
            ));
            if let Some(outbound) = app.outbound {
                std::thread::spawn(move || call_out(&outbound));
            }
            run_server(&state, &app.listen, app_handler(state.clone()), &signals)
        }
        Personality::IstioProxy(proxy) => {
            let state = State::new(proxy.common.clone());
            log(&format!(
                "event=start personality=istio-proxy {}",
                proxy.common.describe()
            ));
            let addrs: Vec<SocketAddr> = config::PROXY_PORTS
                .iter()
                .map(|p| SocketAddr::from((Ipv4Addr::UNSPECIFIED, *p)))
                .collect();
            let probers = Arc::new(proxy.app_probers);
            run_server(
                &state,
                &addrs,
                proxy_handler(state.clone(), probers),
                &signals,
            )
        }
        Personality::Forward(forward) => {
            let state = State::new(forward.common.clone());
            let routes: Vec<String> = forward
                .routes
                .iter()
                .map(|(l, t)| format!("{l}->{t}"))
                .collect();
            log(&format!(
                "event=start personality=forward {} routes={}",
                forward.common.describe(),
                routes.join(",")
            ));
            if state.common.mode == Mode::Crash {
                crash(&state.common)
            } else {
                for (addr, to) in &forward.routes {
                    if let Err(e) = forward_port(*addr, *to) {
                        log(&format!("event=error message=\"listen {addr}: {e}\""));
                        std::process::exit(2);
                    }
                }
                wait_for_sigterm(&state, &signals)
            }
        }
        Personality::AgentRequest {
            argv,
            port,
            method,
            path,
        } => {
            hook(&argv);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            match http::request(addr, &method, &path, Duration::from_secs(5)) {
                Ok((status, body)) => {
                    print!("{body}");
                    if status < 400 { 0 } else { 1 }
                }
                Err(e) => {
                    eprintln!("{method} {addr}{path}: {e}");
                    1
                }
            }
        }
        Personality::AgentWait { timeout } => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 15021));
            let deadline = Instant::now() + timeout;
            loop {
                if matches!(
                    http::request(addr, "GET", "/healthz/ready", Duration::from_secs(1)),
                    Ok((200, _))
                ) {
                    break 0;
                }
                if Instant::now() >= deadline {
                    eprintln!("the proxy was not ready within {timeout:?}");
                    break 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    std::process::exit(code);
}

impl Common {
    fn describe(&self) -> String {
        format!(
            "version={} mode={} ready_delay_ms={} term_exit={} term_delay_ms={} pid={}",
            self.version,
            self.mode.name(),
            self.ready_delay.as_millis(),
            self.term_exit,
            self.term_delay.as_millis(),
            std::process::id()
        )
    }
}

/// What the handlers read: readiness by mode and time, and whether a drain was asked.
struct State {
    common: Common,
    started: Instant,
    draining: AtomicBool,
    logged_ready: AtomicBool,
}

impl State {
    fn new(common: Common) -> Arc<Self> {
        Arc::new(Self {
            common,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            logged_ready: AtomicBool::new(false),
        })
    }

    fn ready(&self) -> bool {
        let since = self.started.elapsed();
        let by_mode = match self.common.mode {
            Mode::Normal => since >= self.common.ready_delay,
            Mode::NeverReady | Mode::Crash => false,
            Mode::Flapping => {
                since >= self.common.ready_delay && {
                    let n = (since - self.common.ready_delay).as_millis()
                        / self.common.flap.as_millis().max(1);
                    n.is_multiple_of(2)
                }
            }
        };
        let ready = by_mode && !self.draining.load(Ordering::Relaxed);
        if ready && !self.logged_ready.swap(true, Ordering::Relaxed) {
            log(&format!(
                "event=ready after_ms={}",
                self.started.elapsed().as_millis()
            ));
        }
        ready
    }

    fn readiness(&self) -> Response {
        if self.ready() {
            Response::new(200, "ready\n")
        } else {
            Response::new(503, "not ready\n")
        }
    }

    fn version(&self) -> Response {
        Response::new(
            200,
            format!("version={} hostname={}\n", self.common.version, hostname()),
        )
    }

    fn drain(&self, via: &str) -> Response {
        self.draining.store(true, Ordering::Relaxed);
        log(&format!("event=drain via={via}"));
        Response::new(200, "draining\n")
    }
}

fn app_handler(state: Arc<State>) -> http::Handler {
    Arc::new(move |r: &Request| match r.path.as_str() {
        "/" | "/version" => state.version(),
        "/ready" | "/readyz" | "/healthz/ready" => state.readiness(),
        "/healthz" | "/livez" => Response::new(200, "ok\n"),
        p if p.starts_with("/hook/") => {
            log(&format!(
                "event=hook kind=http method={} path={p}",
                r.method
            ));
            Response::new(200, "ok\n")
        }
        _ => Response::new(404, "not found\n"),
    })
}

fn proxy_handler(state: Arc<State>, probers: Arc<Vec<config::AppProber>>) -> http::Handler {
    Arc::new(
        move |r: &Request| match (r.method.as_str(), r.path.as_str()) {
            (_, "/" | "/server_info") => state.version(),
            (_, "/healthz/ready" | "/ready") => state.readiness(),
            (_, "/stats/prometheus") => Response::new(
                200,
                format!(
                    "# TYPE istio_build gauge\nistio_build{{component=\"proxy\",tag=\"{}\"}} 1\n",
                    state.common.version
                ),
            ),
            ("POST", "/drain" | "/drain_listeners") => state.drain(&r.path),
            ("POST", "/quitquitquit") => {
                log("event=quitquitquit");
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(50));
                    std::process::exit(0);
                });
                Response::new(200, "ok\n")
            }
            (_, path) if path.starts_with("/app-health/") => {
                match probers.iter().find(|p| p.path == path) {
                    Some(p) => app_probe(&p.probe),
                    None => Response::new(404, "no such app prober\n"),
                }
            }
            _ => Response::new(404, "not found\n"),
        },
    )
}

/// Istio's agent answers a rewritten app probe by probing the app on this host.
fn app_probe(probe: &AppProbe) -> Response {
    let timeout = Duration::from_secs(1);
    let ok = match probe {
        AppProbe::Http { port, path } => matches!(
            http::request(
                SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
                "GET",
                path,
                timeout
            ),
            Ok((200..=399, _))
        ),
        AppProbe::Tcp { port } => {
            TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, *port)), timeout)
                .is_ok()
        }
    };
    if ok {
        Response::new(200, "ok\n")
    } else {
        Response::new(503, "app not ready\n")
    }
}

fn run_server(
    state: &Arc<State>,
    addrs: &[SocketAddr],
    handler: http::Handler,
    signals: &libc::sigset_t,
) -> i32 {
    if state.common.mode == Mode::Crash {
        return crash(&state.common);
    }
    for addr in addrs {
        if let Err(e) = http::serve(*addr, handler.clone()) {
            log(&format!("event=error message=\"listen {addr}: {e}\""));
            return 2;
        }
    }
    wait_for_sigterm(state, signals)
}

fn crash(common: &Common) -> i32 {
    log(&format!("event=crash exit={}", common.crash_exit));
    common.crash_exit
}

/// Blocks until SIGTERM or SIGINT, logs it, waits the drain delay, returns the exit code.
fn wait_for_sigterm(state: &State, signals: &libc::sigset_t) -> i32 {
    loop {
        let signal = wait_signal(signals);
        if signal == libc::SIGTERM || signal == libc::SIGINT {
            let name = if signal == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            log(&format!(
                "event=sigterm signal={name} exit={} delay_ms={}",
                state.common.term_exit,
                state.common.term_delay.as_millis()
            ));
            state.draining.store(true, Ordering::Relaxed);
            std::thread::sleep(state.common.term_delay);
            return state.common.term_exit;
        }
    }
}

/// The sandbox: sleeps, reaps orphans (it is PID 1 of a shared PID namespace), exits 0 on
/// SIGTERM or SIGINT.
fn pause(signals: &libc::sigset_t) -> i32 {
    loop {
        match wait_signal(signals) {
            libc::SIGCHLD => {
                // SAFETY: waitpid with WNOHANG on any child; no memory is touched.
                while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
            }
            _ => return 0,
        }
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut signal: libc::c_int = 0;
    // SAFETY: sigwait reads the initialised set and writes one int.
    while unsafe { libc::sigwait(set, &mut signal) } != 0 {}
    signal
}

/// An exec hook's line goes into the log of the container's main process (PID 1 of the
/// container's PID namespace, whose stdout kubelet collects), so a test can read from
/// `kubectl logs` which hooks kubelet ran; a hook's own output is only shown by kubelet when it
/// fails.
fn hook(argv: &[String]) {
    let line = format!("event=hook kind=exec argv={}\n", quote(argv));
    let logged = std::process::id() != 1
        && std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/1/fd/1")
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .is_ok();
    if !logged {
        print!("{line}");
    }
}

fn log(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn quote(args: &[String]) -> String {
    format!("{:?}", args.join(" "))
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The app's outbound calls: `GET /` on `to` every `every` (1 s timeout), for the life of the
/// process. Logs a line when calls start failing (`outbound-down`, with the send time of the
/// first failed call) and when they succeed again (`outbound-up`, with the send time of the
/// first successful one, the window between the two and the calls that failed), so the window
/// is read from the log at the resolution of `every`. Times are Unix milliseconds.
fn call_out(outbound: &config::Outbound) {
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    };
    // (first failure's send time, failed calls since)
    let mut down: Option<(u128, u64)> = None;
    let mut ok_once = false;
    loop {
        let sent = Instant::now();
        let at = unix_ms();
        match http::request(outbound.to, "GET", "/", Duration::from_secs(1)) {
            Ok((status, _)) if status < 500 => {
                if let Some((since, failed)) = down.take() {
                    log(&format!(
                        "event=outbound-up at_ms={at} window_ms={} failed={failed}",
                        at - since
                    ));
                } else if !ok_once {
                    log(&format!("event=outbound-up at_ms={at} first=true"));
                }
                ok_once = true;
            }
            result => {
                let (since, failed) = down.get_or_insert((at, 0));
                *failed += 1;
                if *failed == 1 {
                    let error = match result {
                        Ok((status, _)) => format!("status {status}"),
                        Err(e) => e.kind().to_string(),
                    };
                    log(&format!(
                        "event=outbound-down at_ms={since} to={} error={error:?}",
                        outbound.to
                    ));
                }
            }
        }
        if let Some(rest) = outbound.every.checked_sub(sent.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Forwards every connection on `listen` to `to` (a sidecar in front of the app).
fn forward_port(listen: SocketAddr, to: SocketAddr) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(upstream) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                    log(&format!("event=forward-error to={to}"));
                    return;
                };
                let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
                    return;
                };
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let (mut c, mut u) = (client, upstream);
                let _ = std::io::copy(&mut u, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    Ok(())
}
