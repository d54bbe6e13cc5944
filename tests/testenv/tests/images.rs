//! The test images in a real containerd: the bundle imports under every name with the digests
//! we computed, a retag is one digest under two names, and the images run under runc with the
//! behaviour their names promise (version, exec hooks in the log, exit code on SIGTERM).
//!
//! Runs a private containerd (its own root, state, socket and `opt` dir under a temporary
//! directory; CRI plugin off; containers without cgroups or a network namespace of the host)
//! and removes everything after. Needs root and Debian's `containerd` package; without them the
//! tests print why and pass.

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Containerd, assert_host_clean};

use testenv::images::{self, ImageSet};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn image_set() -> Result<ImageSet, Box<dyn std::error::Error>> {
    Ok(images::build(&images::default_dir())?)
}

#[test]
fn the_bundle_imports_under_every_name_with_our_digests() -> TestResult {
    skip_unless_able!();
    let set = image_set()?;
    let dir_before = {
        let c = Containerd::start()?;
        // What the nodes harness runs; kind runs the same with `--all-platforms --digests`.
        c.ok(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            "--all-platforms",
            &set.bundle.display().to_string(),
        ])?;
        let listed = c.images("k8s.io")?;
        for built in set.images.iter().filter(|b| b.in_bundle) {
            for name in &built.names {
                assert!(
                    listed.iter().any(|(n, d)| n == name && *d == built.digest),
                    "{name} with {} among {listed:?}",
                    built.digest
                );
            }
            // The config containerd stores is ours: CRI's imageID is its digest.
            let manifest = c.ok(&["-n", "k8s.io", "content", "get", &built.digest])?;
            let manifest: serde_json::Value = serde_json::from_str(&manifest)?;
            assert_eq!(manifest["config"]["digest"], built.id.as_str());
        }
        let retag: Vec<&String> = listed
            .iter()
            .filter(|(n, _)| n.ends_with("--b7"))
            .map(|(_, d)| d)
            .collect();
        assert_eq!(retag.len(), 2, "{listed:?}");
        assert_eq!(retag[0], retag[1], "a retag is one digest");

        // One image's own archive, as `kind load image-archive` imports it.
        let big = set.get(images::BIG).ok_or("no big image")?;
        c.ok(&[
            "-n",
            "kind",
            "images",
            "import",
            "--all-platforms",
            "--digests",
            &big.archive.display().to_string(),
        ])?;
        let listed = c.images("kind")?;
        assert!(
            listed
                .iter()
                .any(|(n, d)| n == images::BIG && *d == big.digest),
            "{listed:?}"
        );
        c.dir.path().to_owned()
    };
    assert!(!dir_before.exists(), "the containerd directory was removed");
    assert_host_clean();
    Ok(())
}

/// Runs `image` under runc (no host network, no cgroup), then checks it from inside with exec
/// hooks and stops it with SIGTERM; returns (exit code, container log).
fn run_and_stop(
    c: &Containerd,
    image: &str,
    id: &str,
    command: &[&str],
    probe: &[&str],
    hook: &[&str],
) -> Result<(i32, String, String), Box<dyn std::error::Error>> {
    let fifo = c.dir.path().join("fifo");
    let mut run = c
        .run(image, id, command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // An exec in the container, as kubelet runs an exec probe or hook.
    let exec = |args: &[&str], n: usize| {
        let mut a = vec!["-n", "iu-images", "task", "exec", "--fifo-dir"];
        let fifo = fifo.display().to_string();
        let exec_id = format!("probe{n}");
        a.push(&fifo);
        a.extend(["--exec-id", &exec_id, id]);
        a.extend(args);
        c.ctr(&a)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let answer = loop {
        n += 1;
        let out = exec(probe, n);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if Instant::now() > deadline || matches!(run.try_wait(), Ok(Some(_))) {
            let _ = run.kill();
            let run = run.wait_with_output()?;
            return Err(format!(
                "{image}: {probe:?} did not succeed: {}\nthe container: {:?}",
                String::from_utf8_lossy(&out.stderr),
                run
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A preStop-like exec hook whose line lands in the container's log.
    n += 1;
    let hook = exec(hook, n);
    assert!(hook.status.success(), "{hook:?}");
    c.ok(&["-n", "iu-images", "task", "kill", "--signal", "SIGTERM", id])?;
    let status = run.wait()?;
    let mut log = String::new();
    run.stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut log)?;
    Ok((status.code().unwrap_or(-1), log, answer))
}

#[test]
fn images_run_under_runc_with_the_behaviour_their_names_promise() -> TestResult {
    skip_unless_able!();
    let set = image_set()?;
    {
        let c = Containerd::start()?;
        c.ok(&[
            "-n",
            "iu-images",
            "images",
            "import",
            &set.bundle.display().to_string(),
        ])?;

        // The app: answers its version; SIGTERM kills it with 143.
        let (code, log, answer) = run_and_stop(
            &c,
            "fake.docker.io/google-samples/hello-go-gke:1.0",
            "app",
            &[],
            &["pilot-agent", "request", "--debug-port=80", "GET", "/"],
            // The frontend fixture's preStop.
            &["/usr/sbin/nginx", "-s", "quit"],
        )?;
        assert!(answer.starts_with("version=1.0 "), "{answer}");
        assert_eq!(code, 143, "{log}");
        for line in [
            "event=start personality=app version=1.0",
            "event=hook kind=exec argv=\"/usr/sbin/nginx -s quit\"",
            "event=sigterm signal=SIGTERM exit=143",
        ] {
            assert!(log.contains(line), "{line:?} in\n{log}");
        }

        // Istio's proxy: ready on 15021, a drain through its preStop command, exit 0.
        let (code, log, answer) = run_and_stop(
            &c,
            "registry.istio.io/testing/proxyv2:1.25.0",
            "proxy",
            // The injected args; the image's entrypoint is pilot-agent, as Istio's.
            &[
                "/usr/local/bin/pilot-agent",
                "proxy",
                "sidecar",
                "--domain",
                "x.svc.cluster.local",
            ],
            &[
                "pilot-agent",
                "request",
                "--debug-port=15021",
                "GET",
                "/healthz/ready",
            ],
            // Istio's native-sidecar preStop.
            &[
                "pilot-agent",
                "request",
                "--debug-port=15020",
                "POST",
                "drain",
            ],
        )?;
        assert_eq!(answer, "ready\n");
        assert_eq!(code, 0, "{log}");
        for line in [
            "event=start personality=istio-proxy version=1.25.0",
            "event=hook kind=exec argv=\"pilot-agent request --debug-port=15020 POST drain\"",
            "event=drain via=/drain",
            "event=sigterm signal=SIGTERM exit=0",
        ] {
            assert!(log.contains(line), "{line:?} in\n{log}");
        }

        // The same image as istio-init: exits 0 at once.
        let init = c
            .run(
                "registry.istio.io/testing/proxyv2:1.25.0",
                "init",
                &[
                    "/usr/local/bin/pilot-agent",
                    "istio-iptables",
                    "-p",
                    "15001",
                ],
            )
            .output()?;
        assert!(init.status.success(), "{init:?}");
        assert!(String::from_utf8_lossy(&init.stdout).contains("event=istio-init"));

        // A crash-loop image exits 1 at start.
        let crash = c
            .run("registry.inplace.test/testapp:2.0-crashloop", "crash", &[])
            .output()?;
        assert_eq!(crash.status.code(), Some(1), "{crash:?}");
    }
    assert_host_clean();
    Ok(())
}
