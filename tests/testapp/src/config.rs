//! What this process is: chosen by the name it was started under (`argv[0]`), its arguments
//! and its environment. The images bake the environment into their config, so a pod spec that
//! names an image gets that image's behaviour without any change; a pod's own `env` overrides
//! it, as for any image.
//!
//! | started as | args | is |
//! |---|---|---|
//! | `testapp` | `[serve] [--NAME VALUE…]` | the app: HTTP server ([`App`]) |
//! | `testapp` | `forward [--NAME VALUE…]` | a forwarding sidecar ([`Forward`]): `--listen 15006,15001 --to 8080,10.96.0.9:80` pairs each listener with an upstream (one `--to` serves them all) |
//! | `testapp` / `pause` | `pause` / none | the sandbox: sleeps until SIGTERM |
//! | `testapp` | `hook ARGS…` | an exec hook: logs into the container's log |
//! | `pilot-agent` | `istio-iptables …` | Istio's init container: exits 0 at once |
//! | `pilot-agent` | `proxy sidecar …` | Istio's proxy: probes on 15021/15020, exit 0 on SIGTERM |
//! | `pilot-agent` | `request [--debug-port N] METHOD PATH` | Istio's preStop: logs, calls the proxy |
//! | `pilot-agent` | `wait [--timeoutSeconds N]` | waits until the proxy on 15021 is ready |
//! | anything else (`nginx`, …) | any | an exec hook: logs into the container's log |

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Settings read from `--name value` arguments, else from `TESTAPP_<NAME>` variables.
pub const SETTINGS: &[(&str, &str)] = &[
    ("version", "TESTAPP_VERSION"),
    ("mode", "TESTAPP_MODE"),
    ("listen", "TESTAPP_LISTEN"),
    ("ready-delay-ms", "TESTAPP_READY_DELAY_MS"),
    ("term-exit", "TESTAPP_TERM_EXIT"),
    ("term-delay-ms", "TESTAPP_TERM_DELAY_MS"),
    ("crash-exit", "TESTAPP_CRASH_EXIT"),
    ("flap-ms", "TESTAPP_FLAP_MS"),
    ("to", "TESTAPP_FORWARD_TO"),
    ("outbound", "TESTAPP_OUTBOUND"),
    ("outbound-every-ms", "TESTAPP_OUTBOUND_EVERY_MS"),
];

/// How the app behaves (`TESTAPP_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serves, ready after the ready delay.
    Normal,
    /// Exits with the crash exit code at once: kubelet's `CrashLoopBackOff`.
    Crash,
    /// Serves, never ready.
    NeverReady,
    /// Serves; ready and not ready in turn, each for the flap period.
    Flapping,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Crash => "crash",
            Mode::NeverReady => "never-ready",
            Mode::Flapping => "flapping",
        }
    }
}

/// Behaviour shared by every long-running personality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Common {
    /// What `GET /` answers and the start line logs.
    pub version: String,
    pub mode: Mode,
    /// Readiness answers 503 until this long after start.
    pub ready_delay: Duration,
    /// Exit code on SIGTERM (or SIGINT): 0 as Istio's agent after draining, 143 as a process
    /// that SIGTERM kills.
    pub term_exit: i32,
    /// Time from SIGTERM to exit (a drain).
    pub term_delay: Duration,
    pub crash_exit: i32,
    pub flap: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub common: Common,
    pub listen: Vec<SocketAddr>,
    /// The app's own outbound calls ([`Outbound`]), when asked for.
    pub outbound: Option<Outbound>,
}

/// The app calls `GET /` on `to` every `every`, as an app calls another service through its
/// sidecar (Istio redirects it to the proxy's 15001), and logs when the calls start failing
/// and when they succeed again: the sidecar-restart window as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub to: SocketAddr,
    pub every: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub common: Common,
    /// Each listener with the upstream it forwards to.
    pub routes: Vec<(SocketAddr, SocketAddr)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub common: Common,
    /// Istio's `ISTIO_KUBE_APP_PROBERS`: app probes rewritten by the injector to
    /// `/app-health/<container>/…` on 15020, which the agent answers by probing the app.
    pub app_probers: Vec<AppProber>,
}

/// One entry of `ISTIO_KUBE_APP_PROBERS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProber {
    /// The path the injector gave kubelet, e.g. `/app-health/hello/readyz`.
    pub path: String,
    pub probe: AppProbe,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppProbe {
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

/// Istio's agent ports: 15000 Envoy admin, 15020 agent (merged metrics, app probes, drain),
/// 15021 health, 15090 Envoy metrics.
pub const PROXY_PORTS: [u16; 4] = [15000, 15020, 15021, 15090];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Personality {
    App(App),
    Forward(Forward),
    Pause,
    /// An exec hook (preStop/postStart, or any other program name): `argv` as called.
    Hook {
        argv: Vec<String>,
    },
    IstioInit,
    IstioProxy(Proxy),
    /// `pilot-agent request METHOD PATH`: Istio's preStop drain.
    AgentRequest {
        argv: Vec<String>,
        port: u16,
        method: String,
        path: String,
    },
    /// `pilot-agent wait`: Istio's postStart when the app must wait for the proxy.
    AgentWait {
        timeout: Duration,
    },
}

/// Chooses the personality. `program` is `argv[0]`, `args` the rest, `env` the environment.
pub fn parse(
    program: &str,
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Personality, String> {
    let name = program.rsplit('/').next().unwrap_or(program);
    let argv = || {
        std::iter::once(program.to_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
    };
    match name {
        "testapp" => {}
        "pause" => return Ok(Personality::Pause),
        "pilot-agent" => return parse_agent(args, env, argv()),
        _ => return Ok(Personality::Hook { argv: argv() }),
    }
    let (command, rest) = match args.first().map(String::as_str) {
        Some(c @ ("serve" | "forward" | "pause" | "hook")) => (c, &args[1..]),
        _ => ("serve", args),
    };
    match command {
        "pause" => Ok(Personality::Pause),
        "hook" => Ok(Personality::Hook { argv: argv() }),
        "serve" => {
            let s = Settings::read(rest, env)?;
            let outbound = match s.get("outbound") {
                None => None,
                Some(to) => Some(Outbound {
                    to: upstream(address(&to)?),
                    every: match s.ms("outbound-every-ms")? {
                        d if d.is_zero() => Duration::from_millis(20),
                        d => d,
                    },
                }),
            };
            Ok(Personality::App(App {
                common: s.common(143)?,
                listen: s.listen("8080")?,
                outbound,
            }))
        }
        _ => {
            let s = Settings::read(rest, env)?;
            let to = s
                .get("to")
                .ok_or("forward needs --to PORT or HOST:PORT (TESTAPP_FORWARD_TO)")?;
            let listen = s.listen("15006")?;
            let to = addresses(&to)?;
            let routes = match to.as_slice() {
                [one] => listen.iter().map(|l| (*l, upstream(*one))).collect(),
                many if many.len() == listen.len() => listen
                    .iter()
                    .zip(many)
                    .map(|(l, t)| (*l, upstream(*t)))
                    .collect(),
                many => {
                    return Err(format!(
                        "forward: {} listeners and {} upstreams; give one --to, or one per --listen",
                        listen.len(),
                        many.len()
                    ));
                }
            };
            Ok(Personality::Forward(Forward {
                common: s.common(143)?,
                routes,
            }))
        }
    }
}

fn parse_agent(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    argv: Vec<String>,
) -> Result<Personality, String> {
    match args.first().map(String::as_str) {
        Some("istio-iptables") => Ok(Personality::IstioInit),
        Some("proxy") => {
            // The agent's own flags (`--domain`, `--proxyLogLevel`, …) are accepted and
            // ignored; only TESTAPP_* variables configure the stand-in.
            let s = Settings::read(&[], env)?;
            let probers = env("ISTIO_KUBE_APP_PROBERS").unwrap_or_default();
            Ok(Personality::IstioProxy(Proxy {
                common: s.common(0)?,
                app_probers: app_probers(&probers)?,
            }))
        }
        Some("request") => {
            let mut port = 15000;
            let mut positional = Vec::new();
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                if let Some(v) = a.strip_prefix("--debug-port=") {
                    port = number(v, "--debug-port")?;
                } else if a == "--debug-port" {
                    port = number(it.next().ok_or("--debug-port needs a value")?, a)?;
                } else if a.starts_with("--") {
                    // --log_output_level and friends
                } else {
                    positional.push(a.clone());
                }
            }
            let [method, path, ..] = positional.as_slice() else {
                return Err("pilot-agent request needs METHOD PATH".into());
            };
            Ok(Personality::AgentRequest {
                argv,
                port,
                method: method.to_ascii_uppercase(),
                path: if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                },
            })
        }
        Some("wait") => {
            let mut timeout = Duration::from_secs(60);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                let value = match a.split_once('=') {
                    Some(("--timeoutSeconds", v)) => Some(v.to_owned()),
                    _ if a == "--timeoutSeconds" => it.next().cloned(),
                    _ => None,
                };
                if let Some(v) = value {
                    timeout = Duration::from_secs(number(&v, "--timeoutSeconds")?);
                }
            }
            Ok(Personality::AgentWait { timeout })
        }
        other => Err(format!(
            "pilot-agent {}: this stand-in knows istio-iptables, proxy, request and wait",
            other.unwrap_or("(no command)")
        )),
    }
}

/// `--name value` / `--name=value` arguments over `TESTAPP_*` variables.
struct Settings {
    values: Vec<(&'static str, String)>,
}

impl Settings {
    fn read(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut values = Vec::new();
        for &(name, var) in SETTINGS {
            if let Some(v) = env(var) {
                values.push((name, v));
            }
        }
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (flag, None),
            };
            let &(name, _) = SETTINGS
                .iter()
                .find(|(n, _)| *n == flag)
                .ok_or_else(|| format!("unknown flag --{flag}"))?;
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("--{flag} needs a value"))?,
            };
            values.push((name, value));
        }
        Ok(Self { values })
    }

    /// The last value given (arguments come after the environment).
    fn get(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    fn ms(&self, name: &str) -> Result<Duration, String> {
        self.get(name).map_or(Ok(Duration::ZERO), |v| {
            Ok(Duration::from_millis(number(&v, name)?))
        })
    }

    fn common(&self, default_term_exit: i32) -> Result<Common, String> {
        let mode = match self.get("mode").as_deref() {
            None | Some("" | "normal") => Mode::Normal,
            Some("crash") => Mode::Crash,
            Some("never-ready") => Mode::NeverReady,
            Some("flapping") => Mode::Flapping,
            Some(other) => {
                return Err(format!(
                    "mode {other:?}: expected normal, crash, never-ready or flapping"
                ));
            }
        };
        let exit = |name, default| {
            self.get(name).map_or(Ok(default), |v| {
                let code: i32 = number(&v, name)?;
                if (0..=255).contains(&code) {
                    Ok(code)
                } else {
                    Err(format!("{name} {code}: an exit code is 0-255"))
                }
            })
        };
        let flap = self.ms("flap-ms")?;
        Ok(Common {
            version: self.get("version").unwrap_or_else(|| "unknown".into()),
            mode,
            ready_delay: self.ms("ready-delay-ms")?,
            term_exit: exit("term-exit", default_term_exit)?,
            term_delay: self.ms("term-delay-ms")?,
            crash_exit: exit("crash-exit", 1)?,
            flap: if flap.is_zero() {
                Duration::from_secs(3)
            } else {
                flap
            },
        })
    }

    fn listen(&self, default: &str) -> Result<Vec<SocketAddr>, String> {
        let addrs = addresses(&self.get("listen").unwrap_or_else(|| default.to_owned()))?;
        if addrs.is_empty() {
            return Err("listen: no address".into());
        }
        Ok(addrs)
    }
}

/// A comma-separated list of [`address`]es.
fn addresses(spec: &str) -> Result<Vec<SocketAddr>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(address)
        .collect()
}

/// `PORT` (all IPv4 addresses; for `to`, 127.0.0.1) or `IP:PORT`.
fn address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        )));
    }
    s.parse()
        .map_err(|_| format!("{s:?}: expected PORT or IP:PORT (no host names)"))
}

/// An address to dial: an unspecified address (a bare port) means this host.
fn upstream(mut to: SocketAddr) -> SocketAddr {
    if to.ip().is_unspecified() {
        to.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    to
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what}: {s:?} is not a number"))
}

/// Parses `ISTIO_KUBE_APP_PROBERS`:
/// `{"/app-health/hello/readyz":{"httpGet":{"path":"/ready","port":8080},"timeoutSeconds":1}}`.
pub fn app_probers(json: &str) -> Result<Vec<AppProber>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ISTIO_KUBE_APP_PROBERS: {e}"))?;
    let map = value
        .as_object()
        .ok_or("ISTIO_KUBE_APP_PROBERS: not a JSON object")?;
    let port = |v: &serde_json::Value, path: &str| {
        v.get("port")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("ISTIO_KUBE_APP_PROBERS {path}: no numeric port"))
    };
    let mut out = Vec::new();
    for (path, spec) in map {
        let probe = if let Some(http) = spec.get("httpGet") {
            AppProbe::Http {
                port: port(http, path)?,
                path: http
                    .get("path")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("/")
                    .to_owned(),
            }
        } else if let Some(tcp) = spec.get("tcpSocket") {
            AppProbe::Tcp {
                port: port(tcp, path)?,
            }
        } else {
            return Err(format!(
                "ISTIO_KUBE_APP_PROBERS {path}: only httpGet and tcpSocket are supported"
            ));
        };
        out.push(AppProber {
            path: path.clone(),
            probe,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Personality, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(program, &args, &move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    fn app(p: Personality) -> App {
        match p {
            Personality::App(a) => a,
            other => panic!("not the app: {other:?}"),
        }
    }

    #[test]
    fn the_app_reads_its_image_environment_and_arguments_win() {
        let a = app(run(
            "/usr/local/bin/testapp",
            &[],
            &[
                ("TESTAPP_VERSION", "1.0"),
                ("TESTAPP_LISTEN", "80, 127.0.0.1:81"),
                ("TESTAPP_READY_DELAY_MS", "1500"),
                ("TESTAPP_TERM_EXIT", "0"),
            ],
        )
        .unwrap());
        assert_eq!(a.common.version, "1.0");
        assert_eq!(a.common.mode, Mode::Normal);
        assert_eq!(
            a.listen,
            vec![
                "0.0.0.0:80".parse().unwrap(),
                "127.0.0.1:81".parse().unwrap()
            ]
        );
        assert_eq!(a.common.ready_delay, Duration::from_millis(1500));
        assert_eq!(a.common.term_exit, 0);

        let a = app(run(
            "testapp",
            &[
                "serve",
                "--version",
                "2.0",
                "--term-exit=143",
                "--mode",
                "never-ready",
            ],
            &[("TESTAPP_VERSION", "1.0"), ("TESTAPP_TERM_EXIT", "0")],
        )
        .unwrap());
        assert_eq!(a.common.version, "2.0");
        assert_eq!(a.common.term_exit, 143);
        assert_eq!(a.common.mode, Mode::NeverReady);
    }

    #[test]
    fn defaults_are_a_plain_app_killed_by_sigterm() {
        let a = app(run("testapp", &[], &[]).unwrap());
        assert_eq!(a.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(a.common.term_exit, 143);
        assert_eq!(a.common.crash_exit, 1);
        assert_eq!(a.common.ready_delay, Duration::ZERO);
        assert_eq!(a.common.term_delay, Duration::ZERO);
        assert_eq!(a.common.flap, Duration::from_secs(3));
    }

    #[test]
    fn modes() {
        for (m, want) in [
            ("crash", Mode::Crash),
            ("never-ready", Mode::NeverReady),
            ("flapping", Mode::Flapping),
            ("normal", Mode::Normal),
        ] {
            let a = app(run("testapp", &["--mode", m], &[]).unwrap());
            assert_eq!(a.common.mode, want);
        }
    }

    #[test]
    fn bad_settings_are_named() {
        for (args, env, needle) in [
            (vec!["--mode", "sleepy"], vec![], "mode \"sleepy\""),
            (vec!["--term-exit", "300"], vec![], "0-255"),
            (vec![], vec![("TESTAPP_TERM_EXIT", "x")], "term-exit"),
            (vec!["--listen", "localhost:80"], vec![], "no host names"),
            (vec!["--nope", "1"], vec![], "unknown flag --nope"),
            (vec!["--version"], vec![], "--version needs a value"),
            (vec!["stray"], vec![], "unexpected argument"),
            (vec!["forward"], vec![], "forward needs --to"),
        ] {
            let err = run("testapp", &args, &env).unwrap_err();
            assert!(err.contains(needle), "{args:?} {env:?}: {err}");
        }
    }

    #[test]
    fn forward_listens_on_one_port_and_dials_this_host() {
        let Personality::Forward(f) = run(
            "testapp",
            &["forward", "--listen", "9080", "--to", "8080"],
            &[],
        )
        .unwrap() else {
            panic!("not forward")
        };
        assert_eq!(
            f.routes,
            vec![(
                "0.0.0.0:9080".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            )]
        );
        assert_eq!(f.common.term_exit, 143);
    }

    #[test]
    fn forward_pairs_listeners_with_upstreams() {
        let Personality::Forward(f) = run(
            "testapp",
            &[
                "forward",
                "--listen",
                "15006,15001",
                "--to",
                "8080,10.96.0.9:80",
            ],
            &[],
        )
        .unwrap() else {
            panic!("not forward")
        };
        assert_eq!(
            f.routes,
            vec![
                (
                    "0.0.0.0:15006".parse().unwrap(),
                    "127.0.0.1:8080".parse().unwrap()
                ),
                (
                    "0.0.0.0:15001".parse().unwrap(),
                    "10.96.0.9:80".parse().unwrap()
                ),
            ]
        );
        let err = run(
            "testapp",
            &["forward", "--listen", "1,2,3", "--to", "4,5"],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("3 listeners and 2 upstreams"), "{err}");
    }

    #[test]
    fn the_app_calls_out_when_asked() {
        assert_eq!(app(run("testapp", &[], &[]).unwrap()).outbound, None);
        let a = app(run(
            "testapp",
            &["--outbound", "15001"],
            &[("TESTAPP_OUTBOUND_EVERY_MS", "50")],
        )
        .unwrap());
        assert_eq!(
            a.outbound,
            Some(Outbound {
                to: "127.0.0.1:15001".parse().unwrap(),
                every: Duration::from_millis(50),
            })
        );
        let a = app(run("testapp", &["--outbound", "10.96.0.9:80"], &[]).unwrap());
        assert_eq!(a.outbound.map(|o| o.every), Some(Duration::from_millis(20)));
    }

    #[test]
    fn pause_and_hooks() {
        assert_eq!(run("/pause", &[], &[]).unwrap(), Personality::Pause);
        assert_eq!(run("testapp", &["pause"], &[]).unwrap(), Personality::Pause);
        assert_eq!(
            run("/usr/sbin/nginx", &["-s", "quit"], &[]).unwrap(),
            Personality::Hook {
                argv: vec!["/usr/sbin/nginx".into(), "-s".into(), "quit".into()]
            }
        );
        assert!(matches!(
            run("testapp", &["hook", "preStop"], &[]).unwrap(),
            Personality::Hook { argv } if argv == ["testapp", "hook", "preStop"]
        ));
    }

    #[test]
    fn istio_init_exits_and_the_proxy_exits_zero_on_sigterm() {
        let init = [
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-x",
            "",
            "--log_output_level=default:info",
        ];
        assert_eq!(
            run("/usr/local/bin/pilot-agent", &init, &[]).unwrap(),
            Personality::IstioInit
        );
        let proxy = [
            "proxy",
            "sidecar",
            "--domain",
            "$(POD_NAMESPACE).svc.cluster.local",
            "--proxyLogLevel=warning",
        ];
        let Personality::IstioProxy(p) = run(
            "pilot-agent",
            &proxy,
            &[
                ("TESTAPP_VERSION", "1.25.0"),
                (
                    "ISTIO_KUBE_APP_PROBERS",
                    r#"{"/app-health/other-sidecar/readyz":{"httpGet":{"port":3333}}}"#,
                ),
            ],
        )
        .unwrap() else {
            panic!("not the proxy")
        };
        assert_eq!(p.common.term_exit, 0);
        assert_eq!(p.common.version, "1.25.0");
        assert_eq!(
            p.app_probers,
            vec![AppProber {
                path: "/app-health/other-sidecar/readyz".into(),
                probe: AppProbe::Http {
                    port: 3333,
                    path: "/".into()
                }
            }]
        );
        let Personality::IstioProxy(p) =
            run("pilot-agent", &proxy, &[("TESTAPP_TERM_EXIT", "143")]).unwrap()
        else {
            panic!("not the proxy")
        };
        assert_eq!(p.common.term_exit, 143);
    }

    #[test]
    fn istio_prestop_request_and_wait() {
        // Istio's native sidecar template: `pilot-agent request --debug-port=15020 POST drain`.
        let p = run(
            "pilot-agent",
            &["request", "--debug-port=15020", "POST", "drain"],
            &[],
        )
        .unwrap();
        let Personality::AgentRequest {
            port, method, path, ..
        } = p
        else {
            panic!("not request: {p:?}")
        };
        assert_eq!(
            (port, method.as_str(), path.as_str()),
            (15020, "POST", "/drain")
        );
        let Personality::AgentRequest { port, .. } =
            run("pilot-agent", &["request", "GET", "/ready"], &[]).unwrap()
        else {
            panic!("not request")
        };
        assert_eq!(port, 15000);
        assert!(
            run("pilot-agent", &["request", "POST"], &[])
                .unwrap_err()
                .contains("METHOD PATH")
        );
        assert_eq!(
            run("pilot-agent", &["wait", "--timeoutSeconds", "5"], &[]).unwrap(),
            Personality::AgentWait {
                timeout: Duration::from_secs(5)
            }
        );
        assert!(run("pilot-agent", &["discover"], &[]).is_err());
    }

    #[test]
    fn app_probers_http_tcp_and_errors() {
        let p = app_probers(
            r#"{"/app-health/a/readyz":{"httpGet":{"path":"/ready","port":8080},"timeoutSeconds":1},
                "/app-health/b/livez":{"tcpSocket":{"port":9000}}}"#,
        )
        .unwrap();
        assert!(p.contains(&AppProber {
            path: "/app-health/a/readyz".into(),
            probe: AppProbe::Http {
                port: 8080,
                path: "/ready".into()
            }
        }));
        assert!(p.contains(&AppProber {
            path: "/app-health/b/livez".into(),
            probe: AppProbe::Tcp { port: 9000 }
        }));
        assert!(app_probers("").unwrap().is_empty());
        assert!(app_probers("[").is_err());
        assert!(app_probers(r#"{"/x":{"grpc":{"port":1}}}"#).is_err());
        assert!(app_probers(r#"{"/x":{"httpGet":{"port":"http"}}}"#).is_err());
    }
}
