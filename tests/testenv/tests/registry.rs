//! The loopback registry with a real containerd: images pushed with skopeo pull through the
//! `config_path` hosts directory with the digests we built; a tag never pushed is "not found"
//! (kubelet's `ErrImagePull`); a host we did not list goes to the registry too (`_default`),
//! never to the network; the rate limit slows a pull down. Needs root, containerd,
//! docker-registry and skopeo; otherwise prints why and passes.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Containerd, assert_host_clean};
use testenv::images::{self, BIG, PROXY};
use testenv::registry::{self, Registry};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn pull(c: &Containerd, hosts: &Path, name: &str) -> std::process::Output {
    c.ctr(&[
        "-n",
        "k8s.io",
        "images",
        "pull",
        "--hosts-dir",
        &hosts.display().to_string(),
        name,
    ])
}

#[test]
fn containerd_pulls_from_the_loopback_registry_and_nothing_else() -> TestResult {
    skip_unless_able!();
    for tool in ["docker-registry", "skopeo", "unshare"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()?
            .success()
        {
            eprintln!("skipped: {tool} is not installed");
            return Ok(());
        }
    }
    let set = images::build(&images::default_dir())?;
    let dir = tempfile::Builder::new().prefix("iu-registry-").tempdir()?;
    let (registry_pid, registry_dir) = {
        let registry = Registry::start(&dir.path().join("registry"), None)?;
        let proxy = format!("{PROXY}:1.25.0");
        let retag = [format!("{PROXY}:1.24.2--b7"), format!("{PROXY}:stable--b7")];
        let start = Instant::now();
        registry.push_set(&set, |n| {
            n == proxy || retag.iter().any(|r| r == n) || n == BIG
        })?;
        eprintln!(
            "pushed 4 names (one 53.8 MB image) in {:?}",
            start.elapsed()
        );

        let hosts = dir.path().join("certs.d");
        let hosts_list = registry::hosts(&set);
        let hosts_ref: Vec<&str> = hosts_list.iter().map(String::as_str).collect();
        registry.write_hosts_dir(&hosts, &hosts_ref)?;
        assert!(hosts.join("registry.istio.io/hosts.toml").exists());
        assert!(hosts.join("_default/hosts.toml").exists());

        let c = Containerd::start()?;
        let start = Instant::now();
        let out = pull(&c, &hosts, &proxy);
        assert!(out.status.success(), "{out:?}");
        eprintln!("pulled {proxy} (1.4 MB) in {:?}", start.elapsed());
        for name in [&proxy, &retag[0], &retag[1]] {
            let built = set.get(name).ok_or("not built")?;
            if name != &proxy {
                let out = pull(&c, &hosts, name);
                assert!(out.status.success(), "{out:?}");
            }
            let listed = c.images("k8s.io")?;
            assert!(
                listed.iter().any(|(n, d)| n == name && *d == built.digest),
                "{name} {} in {listed:?}",
                built.digest
            );
        }

        // A tag that was never pushed: the registry's 404, what kubelet turns into ErrImagePull.
        let missing = pull(&c, &hosts, &format!("{PROXY}:1.24.2-fail-pull"));
        assert!(!missing.status.success());
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(stderr.contains("not found"), "{stderr}");

        // A host not in the list goes to `_default` = this registry. Pulled from a network
        // namespace with only loopback, so even a wrong configuration could not send a packet
        // out: the error must name our proxy, not the host.
        let out = Command::new("unshare")
            .args(["-n", "sh", "-c"])
            .arg(format!(
                "ip link set lo up; ctr --address {} -n k8s.io images pull --hosts-dir {} quay.io/elsewhere/app:1",
                c.socket().display(),
                hosts.display()
            ))
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&registry.addr().to_string()),
            "the pull went to {}: {stderr}",
            registry.addr()
        );

        // Rate-limited: the 50 MiB layer this node lacks (the base layer is shared with the
        // proxy image already pulled) cannot arrive at 20 MiB/s in less than 2.5 s (a lower
        // bound, so a slow machine never fails it).
        let big = set.get(BIG).ok_or("no big image")?;
        let rate = 20 << 20;
        registry.set_rate_limit(Some(rate));
        let served = registry.bytes_served();
        let start = Instant::now();
        let out = pull(&c, &hosts, BIG);
        let took = start.elapsed();
        assert!(out.status.success(), "{out:?}");
        let floor = Duration::from_secs_f64(images::BIG_PADDING as f64 / rate as f64);
        eprintln!(
            "pulled {BIG} ({} bytes of layers) at {rate} B/s in {took:?} (floor {floor:?})",
            big.layers_size
        );
        assert!(took >= floor.mul_f64(0.95), "{took:?} < {floor:?}");
        assert!(registry.bytes_served() - served >= images::BIG_PADDING as u64);
        (registry.pid(), dir.path().join("registry"))
    };
    // Dropped: the registry process is gone.
    assert!(
        !Path::new(&format!("/proc/{registry_pid}")).exists() || {
            let stat =
                std::fs::read_to_string(format!("/proc/{registry_pid}/stat")).unwrap_or_default();
            stat.split(' ').nth(2) == Some("Z")
        }
    );
    assert!(registry_dir.join("registry.yml").exists());
    drop(dir);
    assert_host_clean();
    Ok(())
}
