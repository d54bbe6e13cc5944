//! The test images: every name the suites use, built from one static `testapp` binary into
//! deterministic OCI archives ([`crate::oci`]) that containerd imports, kind loads and skopeo
//! pushes.
//!
//! A name decides the content through the same rules the simulated kubelet applies to it, so
//! a pod spec means the same on both kinds of node:
//! - the repository picks the personality: `…/proxyv2` is Istio's `pilot-agent` stand-in
//!   (`istio-iptables …` exits 0, `proxy sidecar …` answers 15021/15020), `…/pause` the
//!   sandbox, anything else the app (HTTP server answering its version);
//! - `crashloop`, `never-ready`, `flapping` in the name set the mode
//!   ([`crate::image::injected`]); `fail-pull` names are deliberately never built;
//! - the exit code on SIGTERM is [`crate::image::exit_code_on_sigterm`] (`exit0`/`exit143`,
//!   else 0 for `proxyv2`, 143 for the rest);
//! - the version the app answers is the tag's content key ([`crate::image::content_key`]:
//!   after the last `--`), so `proxyv2:1.24.2--b7` and `proxyv2:stable--b7` are one image
//!   (one digest) under two names: a retag.
//!
//! [`build`] writes one archive per distinct image (with all its names) and `all.tar` holding
//! every image except the large one, and caches by content: a second call with the same
//! binary and set only reads `images.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::image::{ImageRef, Injected, content_key, exit_code_on_sigterm, hex, injected};
use crate::oci::{self, Image, Layer, RunConfig};

/// The sandbox image (containerd's `sandbox_image`, kubelet's pod-infra image).
pub const PAUSE: &str = "registry.k8s.io/pause:3.10";
/// Istio's proxy as the fixtures in `../shared/fixtures/istio` name it.
pub const PROXY: &str = "registry.istio.io/testing/proxyv2";
/// Our own app repository for suites that do not use the Istio fixtures.
pub const TESTAPP: &str = "registry.inplace.test/testapp";
/// An image with an extra incompressible layer of [`BIG_PADDING`] bytes, for pull-time
/// measurements through the loopback registry. Not in `all.tar`.
pub const BIG: &str = "registry.inplace.test/testapp:big";
pub const BIG_PADDING: usize = 50 << 20;

/// Bumped when the layout of the images changes, so cached archives are rebuilt.
const BUILDER_VERSION: &str = "testenv-images-1";
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Set to a static testapp binary to skip `cargo build`.
pub const BIN_ENV: &str = "INPLACE_TESTAPP_BIN";
/// `PATH` in every image: exec hooks (`pilot-agent request …`, `/usr/sbin/nginx -s quit`) are
/// looked up with the container's environment.
const PATH: &str = "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the static {what} failed ({status}):\n{stderr}")]
    Build {
        what: String,
        status: String,
        stderr: String,
    },
    #[error(transparent)]
    Oci(#[from] oci::Error),
    #[error("image set: {0}")]
    Set(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let io = oci::io(what);
    move |source| Error::from(io(source))
}

/// One image of the set: its names (normalised references) and what it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub names: Vec<String>,
    pub run: RunConfig,
    /// Carries the padding layer ([`BIG`]).
    pub big: bool,
}

/// Every name the suites use, grouped by content. Pure: no I/O.
pub fn specs() -> Vec<Spec> {
    let hello = "fake.docker.io/google-samples/hello-go-gke";
    let mut names: Vec<String> = Vec::new();
    let mut add = |repo: &str, tags: &[&str]| {
        names.extend(tags.iter().map(|t| format!("{repo}:{t}")));
    };
    add(
        PROXY,
        &[
            "latest",
            "1.24.1",
            "1.24.2",
            "1.25.0",
            "1.26.0",
            "1.24.2-crashloop",
            "1.24.2-never-ready",
            "1.24.2--b7",
            "stable--b7",
            "latest-exit143",
            "1.24.1-exit143",
        ],
    );
    add("docker.io/istio/proxyv2", &["1.23.0", "1.24.2"]);
    add(
        hello,
        &[
            "1.0",
            "2.0",
            "1.0-exit0",
            "2.0-crashloop",
            "2.0-never-ready",
            "flapping",
        ],
    );
    add("fake.docker.io/google-samples/hello-frontend", &["1.0"]);
    add("docker.io/istio/examples-bookinfo-reviews-v1", &["1.20.2"]);
    add(
        TESTAPP,
        &[
            "1.0",
            "2.0",
            "1.0-exit0",
            "2.0-crashloop",
            "2.0-never-ready",
            "1.0--r1",
            "stable--r1",
        ],
    );
    names.push(PAUSE.to_owned());
    names.push(BIG.to_owned());

    let mut by_content: Vec<Spec> = Vec::new();
    for name in names {
        let spec = spec_for(&name);
        match by_content
            .iter_mut()
            .find(|s| s.run == spec.run && s.big == spec.big)
        {
            Some(s) => s.names.push(name),
            None => by_content.push(spec),
        }
    }
    let mut forward = spec_for(&format!("{TESTAPP}:forward"));
    forward.run.cmd = vec!["forward".into()];
    forward.run.env.push("TESTAPP_LISTEN=15006".into());
    forward.run.env.push("TESTAPP_FORWARD_TO=8080".into());
    forward.run.exposed_ports = vec!["15006/tcp".into()];
    by_content.push(forward);
    by_content
}

/// What a name runs (see the module doc for the rules).
fn spec_for(name: &str) -> Spec {
    let parsed = ImageRef::parse(name).ok();
    let repo = parsed.as_ref().map_or(name, |r| r.repository.as_str());
    let last = repo.rsplit('/').next().unwrap_or(repo);
    let version = parsed.as_ref().map_or("latest", content_key).to_owned();
    let mode = match injected(name) {
        Injected::CrashLoop => "crash",
        Injected::NeverReady => "never-ready",
        Injected::Flapping => "flapping",
        Injected::None | Injected::FailPull => "normal",
    };
    let mut env = vec![
        PATH.to_owned(),
        format!("TESTAPP_VERSION={version}"),
        format!("TESTAPP_MODE={mode}"),
        format!("TESTAPP_TERM_EXIT={}", exit_code_on_sigterm(name)),
    ];
    let (entrypoint, ports): (&str, &[&str]) = match last {
        "pause" => ("/pause", &[]),
        "proxyv2" => (
            "/usr/local/bin/pilot-agent",
            &["15000", "15020", "15021", "15090"],
        ),
        "hello-go-gke" => ("/usr/local/bin/testapp", &["80", "81"]),
        "hello-frontend" => ("/usr/local/bin/testapp", &["80"]),
        "examples-bookinfo-reviews-v1" => ("/usr/local/bin/testapp", &["9080"]),
        _ => ("/usr/local/bin/testapp", &["8080"]),
    };
    if last == "pause" {
        env.truncate(1);
    } else if last != "proxyv2" {
        env.push(format!("TESTAPP_LISTEN={}", ports.join(",")));
    }
    Spec {
        names: vec![name.to_owned()],
        run: RunConfig {
            entrypoint: vec![entrypoint.to_owned()],
            env,
            exposed_ports: ports.iter().map(|p| format!("{p}/tcp")).collect(),
            labels: [(
                "io.inplace-upgrade.testapp.version".to_owned(),
                version.clone(),
            )]
            .into(),
            ..RunConfig::default()
        },
        big: name == BIG,
    }
}

/// The executables every image holds ([`base_layer`]): what a container's `command` can run.
/// The simulated kubelet fails any other absolute path as runc does (`StartError`).
pub const EXECUTABLES: &[&str] = &[
    "/usr/local/bin/testapp",
    "/usr/local/bin/pilot-agent",
    "/usr/sbin/nginx",
    "/pause",
];

/// The files every image shares: the binary and the names it answers to.
pub fn base_layer(testapp: Vec<u8>) -> Result<Layer, oci::Error> {
    Layer::new()
        .file("usr/local/bin/testapp", 0o755, testapp)?
        .symlink("usr/local/bin/pilot-agent", "testapp")?
        .symlink("usr/sbin/nginx", "../local/bin/testapp")?
        .symlink("pause", "usr/local/bin/testapp")?
        .dir("etc", 0o755)?
        .dir("tmp", 0o1777)
}

/// Deterministic incompressible bytes (xorshift64*), so a registry, a compressor or a
/// rate-limited link all see the full size.
fn padding(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One built image of the set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    pub names: Vec<String>,
    /// An archive with this image under all its names.
    pub archive: PathBuf,
    /// Manifest digest.
    pub digest: String,
    /// `sha256:<config digest>`: the `imageID` CRI reports for the imported image.
    pub id: String,
    pub layers_size: u64,
    /// Also in [`ImageSet::bundle`].
    pub in_bundle: bool,
}

/// The built set, as [`build`] returns it and `images.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSet {
    key: String,
    /// One archive with every image but [`BIG`]: one `ctr import` loads the set.
    pub bundle: PathBuf,
    pub images: Vec<Built>,
}

impl ImageSet {
    /// The image built under `name`.
    pub fn get(&self, name: &str) -> Option<&Built> {
        self.images
            .iter()
            .find(|b| b.names.iter().any(|n| n == name))
    }

    /// Every name with its archive.
    pub fn names(&self) -> BTreeMap<&str, &Path> {
        self.images
            .iter()
            .flat_map(|b| b.names.iter().map(|n| (n.as_str(), b.archive.as_path())))
            .collect()
    }
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/inplace-upgrade` (as `tests/k8s/build.sh`).
pub fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("inplace-upgrade")
}

/// Where [`build`] writes by default.
pub fn default_dir() -> PathBuf {
    cache_root().join("images")
}

/// The static testapp: `$INPLACE_TESTAPP_BIN`, else [`static_release_binary`] of
/// `tests/testapp`.
pub fn testapp_binary() -> Result<PathBuf, Error> {
    if let Some(bin) = std::env::var_os(BIN_ENV) {
        return Ok(PathBuf::from(bin));
    }
    static_release_binary("testapp", "testapp", "testapp")
}

/// `cargo build --release --locked -p PACKAGE --bin BIN` of this workspace, linked statically
/// (`-C target-feature=+crt-static`: static glibc — this machine has `libc.a` but cannot
/// fetch the musl target), stripped, into a target directory of its own
/// (`$CARGO_TARGET_DIR/<target_dir>-static`, else `<cache>/<target_dir>-target`), so its flags
/// never invalidate the caller's build. Static glibc cannot load
/// NSS modules: such a binary must not resolve host names through NSS (the testapp resolves
/// none; the product reaches the API server by the IP in `KUBERNETES_SERVICE_HOST`).
pub fn static_release_binary(package: &str, bin: &str, target_dir: &str) -> Result<PathBuf, Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Beside the caller's own build output when it has a target directory of its own (CI and
    // every worktree set CARGO_TARGET_DIR): cargo fingerprints a path package by its
    // workspace-relative path and its files' mtimes, so one directory shared by two worktrees
    // of this repository hands one of them the binary the other built last (seen: a worktree
    // whose testapp had new flags got the old binary, and its pods crashed on the flags).
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir).join(format!("{target_dir}-static")),
        None => cache_root().join(format!("{target_dir}-target")),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            package,
            "--bin",
            bin,
        ])
        .args(["--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .output()
        .map_err(io(format!("run cargo build for {package}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        return Err(Error::Build {
            what: package.to_owned(),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let path = target_dir.join(TARGET).join("release").join(bin);
    let elf = std::fs::read(&path).map_err(io(format!("read {}", path.display())))?;
    if !oci::is_static_elf(&elf) {
        return Err(Error::Set(format!(
            "{} is not a static executable (it has an ELF interpreter): it would not run in an image without libc",
            path.display()
        )));
    }
    Ok(path)
}

/// Builds (or finds cached) every image of [`specs`] under `dir`.
pub fn build(dir: &Path) -> Result<ImageSet, Error> {
    let binary_path = testapp_binary()?;
    let binary =
        std::fs::read(&binary_path).map_err(io(format!("read {}", binary_path.display())))?;
    build_from(dir, binary)
}

/// [`build`] with the binary given.
pub fn build_from(dir: &Path, testapp: Vec<u8>) -> Result<ImageSet, Error> {
    let specs = specs();
    let mut key = Context::new(&SHA256);
    key.update(BUILDER_VERSION.as_bytes());
    key.update(&testapp);
    key.update(format!("{specs:?}").as_bytes());
    let key = hex(key.finish().as_ref());
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    // One builder at a time per directory, across threads and processes (test binaries run
    // in parallel); the others then find the record.
    let _lock = Flock::exclusive(&dir.join(".lock"))?;
    let record = dir.join("images.json");
    if let Ok(text) = std::fs::read(&record)
        && let Ok(set) = serde_json::from_slice::<ImageSet>(&text)
        && set.key == key
        && set.bundle.exists()
        && set.images.iter().all(|b| b.archive.exists())
    {
        return Ok(set);
    }
    let base = base_layer(testapp)?.build()?;
    let mut images = Vec::new();
    let mut built = Vec::new();
    for spec in &specs {
        let mut layers = vec![base.clone()];
        if spec.big {
            layers.push(
                Layer::new()
                    .file("padding", 0o644, Arc::new(padding(BIG_PADDING)))?
                    .build()?,
            );
        }
        let image = Image::new(layers, &spec.run)?;
        let file = dir.join(format!("{}.tar", file_name(&spec.names[0])));
        oci::write_archive(&file, &[(&image, spec.names.clone())])?;
        built.push(Built {
            names: spec.names.clone(),
            archive: file,
            digest: image.digest().to_owned(),
            id: image.id().to_owned(),
            layers_size: image.layers_size(),
            in_bundle: !spec.big,
        });
        images.push((image, spec));
    }
    let bundle = dir.join("all.tar");
    let in_bundle: Vec<(&Image, Vec<String>)> = images
        .iter()
        .filter(|(_, s)| !s.big)
        .map(|(i, s)| (i, s.names.clone()))
        .collect();
    oci::write_archive(&bundle, &in_bundle)?;
    let set = ImageSet {
        key,
        bundle,
        images: built,
    };
    let tmp = dir.join(format!("images.json.tmp.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(&set).map_err(|e| Error::Set(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &record).map_err(io(format!("rename {}", record.display())))?;
    Ok(set)
}

/// An exclusive `flock(2)`, held while the file is open (until dropped).
pub(crate) struct Flock {
    _file: std::fs::File,
}

impl Flock {
    pub(crate) fn exclusive(path: &Path) -> Result<Self, Error> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(format!("open {}", path.display())))?;
        // SAFETY: flock on a descriptor we own; blocks until granted.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(format!("lock {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { _file: f })
    }
}

/// `registry.istio.io/testing/proxyv2:1.25.0` → `registry.istio.io_testing_proxyv2_1.25.0`.
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(spec: &Spec, var: &str) -> Option<String> {
        spec.run
            .env
            .iter()
            .find_map(|e| e.strip_prefix(&format!("{var}=")).map(str::to_owned))
    }

    fn find(name: &str) -> Spec {
        specs()
            .into_iter()
            .find(|s| s.names.iter().any(|n| n == name))
            .unwrap_or_else(|| panic!("{name} is not in the set"))
    }

    #[test]
    fn every_name_is_normalised_unique_and_never_fail_pull() {
        let mut seen = std::collections::BTreeSet::new();
        for spec in specs() {
            for name in &spec.names {
                let r = ImageRef::parse(name).unwrap();
                let normalised =
                    format!("{}:{}", r.repository, r.tag.as_deref().unwrap_or("latest"));
                assert_eq!(
                    &normalised, name,
                    "containerd names images by the normalised reference"
                );
                assert!(seen.insert(name.clone()), "{name} twice");
                assert!(!name.contains("fail-pull"), "{name} must stay unpullable");
            }
        }
    }

    #[test]
    fn the_fixture_images_are_in_the_set() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/istio");
        let mut images = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "injected") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for line in text.lines() {
                let line = line.trim().trim_start_matches("- ");
                if let Some(image) = line.strip_prefix("image: ") {
                    images.insert(image.trim().to_owned());
                }
            }
        }
        assert!(images.len() >= 3, "{images:?}");
        for image in images {
            find(&image);
        }
    }

    #[test]
    fn names_decide_content_like_the_simulator() {
        let proxy = find("registry.istio.io/testing/proxyv2:latest");
        assert_eq!(proxy.run.entrypoint, ["/usr/local/bin/pilot-agent"]);
        assert_eq!(env(&proxy, "TESTAPP_TERM_EXIT").as_deref(), Some("0"));
        let proxy143 = find("registry.istio.io/testing/proxyv2:latest-exit143");
        assert_eq!(env(&proxy143, "TESTAPP_TERM_EXIT").as_deref(), Some("143"));
        let hello = find("fake.docker.io/google-samples/hello-go-gke:1.0");
        assert_eq!(env(&hello, "TESTAPP_TERM_EXIT").as_deref(), Some("143"));
        assert_eq!(env(&hello, "TESTAPP_LISTEN").as_deref(), Some("80,81"));
        assert_eq!(env(&hello, "TESTAPP_VERSION").as_deref(), Some("1.0"));
        assert_eq!(
            env(
                &find("fake.docker.io/google-samples/hello-go-gke:1.0-exit0"),
                "TESTAPP_TERM_EXIT"
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            env(
                &find("registry.istio.io/testing/proxyv2:1.24.2-crashloop"),
                "TESTAPP_MODE"
            )
            .as_deref(),
            Some("crash")
        );
        assert_eq!(
            env(
                &find("registry.inplace.test/testapp:2.0-never-ready"),
                "TESTAPP_MODE"
            )
            .as_deref(),
            Some("never-ready")
        );
        assert_eq!(find(PAUSE).run.entrypoint, ["/pause"]);
        assert!(find(BIG).big);
    }

    #[test]
    fn a_retag_is_one_image_under_two_names() {
        let retag = find("registry.istio.io/testing/proxyv2:1.24.2--b7");
        assert!(
            retag
                .names
                .contains(&"registry.istio.io/testing/proxyv2:stable--b7".to_owned())
        );
        assert_eq!(env(&retag, "TESTAPP_VERSION").as_deref(), Some("b7"));
        let app = find("registry.inplace.test/testapp:1.0--r1");
        assert_eq!(app.names.len(), 2);
        assert_ne!(
            find("registry.istio.io/testing/proxyv2:1.24.2").run,
            retag.run
        );
    }

    #[test]
    fn build_is_deterministic_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let fake = b"\x7fELF not really".to_vec();
        let set = build_from(dir.path(), fake.clone()).unwrap();
        let first: BTreeMap<PathBuf, Vec<u8>> = set
            .images
            .iter()
            .map(|b| (b.archive.clone(), std::fs::read(&b.archive).unwrap()))
            .collect();
        assert_eq!(
            set.get("registry.istio.io/testing/proxyv2:1.24.2--b7")
                .map(|b| &b.digest),
            set.get("registry.istio.io/testing/proxyv2:stable--b7")
                .map(|b| &b.digest)
        );
        assert!(
            set.get(BIG)
                .is_some_and(|b| !b.in_bundle && b.layers_size > BIG_PADDING as u64)
        );
        // Cached: the same call reads the record and rewrites nothing.
        let mtime = std::fs::metadata(&set.bundle).unwrap().modified().unwrap();
        assert_eq!(build_from(dir.path(), fake.clone()).unwrap(), set);
        assert_eq!(
            std::fs::metadata(&set.bundle).unwrap().modified().unwrap(),
            mtime
        );
        // Rebuilt from scratch: the same bytes.
        std::fs::remove_file(dir.path().join("images.json")).unwrap();
        let again = build_from(dir.path(), fake).unwrap();
        assert_eq!(again, set);
        for (path, bytes) in first {
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{}", path.display());
        }
    }
}
