//! What the simulated container runtime makes of an image reference: its normalised
//! repository, its digest (`imageID`), and which failure it injects.
//!
//! Digests are deterministic: `sha256(normalised repository + "@" + content key)`, where the
//! content key is the tag, except that a tag containing `--` uses only the part after the last
//! `--` (a reference pinned by digest keeps that digest). So
//! `proxyv2:1.24.2--build7` and `proxyv2:stable--build7` are two tags of the same digest
//! (a "retag"), while `proxyv2:1.24.2` and `proxyv2:1.24.3` differ.

use ring::digest::{SHA256, digest};

/// A failure injected by the image name (anywhere in the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Nothing injected: pulls, starts, becomes ready by the probe rule.
    None,
    /// `fail-pull`: `ErrImagePull`, then `ImagePullBackOff`, alternating, forever.
    FailPull,
    /// `crashloop`: starts, exits 1 (`Error`), restarts with growing back-off
    /// (`CrashLoopBackOff`).
    CrashLoop,
    /// `never-ready`: runs, never ready.
    NeverReady,
    /// `flapping`: runs, and its readiness flips for as long as it runs: ready after the
    /// readiness delay, not ready again three readiness delays later, and so on.
    Flapping,
}

/// A parsed image reference, normalised the way containerd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `docker.io/library/nginx`, `registry.istio.io/testing/proxyv2`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins one.
    pub digest: Option<String>,
}

/// Why an image reference is not one a container runtime accepts (kubelet: `InvalidImageName`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct InvalidImage {
    pub reference: String,
    pub reason: &'static str,
}

impl ImageRef {
    /// Parses a reference with the docker normalisation rules (default registry `docker.io`,
    /// `library/` for single-segment names on it).
    pub fn parse(reference: &str) -> Result<Self, InvalidImage> {
        let invalid = |reason| InvalidImage {
            reference: reference.to_owned(),
            reason,
        };
        if reference.is_empty() {
            return Err(invalid("empty"));
        }
        let (name_and_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| invalid("digest must be sha256:<64 hex>"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(invalid("digest must be sha256:<64 lowercase hex>"));
                }
                (n, Some(d.to_owned()))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !tag.starts_with(['.', '-']);
            if !ok {
                return Err(invalid(
                    "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let mut segments: Vec<&str> = name.split('/').collect();
        let registry = if segments.len() > 1
            && (segments[0].contains(['.', ':']) || segments[0] == "localhost")
        {
            let r = segments.remove(0);
            if r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:-".contains(&b))
            {
                return Err(invalid("bad registry host"));
            }
            r.to_owned()
        } else {
            "docker.io".to_owned()
        };
        for s in &segments {
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
            if !ok {
                return Err(invalid(
                    "repository path must be lowercase [a-z0-9._-] segments",
                ));
            }
        }
        if registry == "docker.io" && segments.len() == 1 {
            segments.insert(0, "library");
        }
        Ok(Self {
            repository: format!("{registry}/{}", segments.join("/")),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// What `containerStatuses[].imageID` reports, as containerd's CRI does: for an image it
    /// holds without a repository digest (imported, as the real-node harness loads the test
    /// images) the image ID `sha256:<config digest>`; for a reference pinned by digest (which
    /// only a pull by digest provides) `<repository>@sha256:<digest>`. A pulled tag would
    /// report `<repository>@sha256:<manifest digest>`; the product compares neither form.
    /// The fully qualified name containerd reports for an image it holds under this
    /// reference (`docker.io/library/nginx:1.25` for `nginx:1.25`).
    pub fn normalised(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repository),
            (None, Some(d)) => format!("{}@{d}", self.repository),
            (None, None) => format!("{}:latest", self.repository),
        }
    }

    pub fn image_id(&self) -> String {
        if let Some(d) = &self.digest {
            return format!("{}@{d}", self.repository);
        }
        let content = content_key(self);
        let sum = digest(&SHA256, format!("{}@{content}", self.repository).as_bytes());
        format!("sha256:{}", hex(sum.as_ref()))
    }
}

/// The failure an image injects, by substring of the whole reference.
pub fn injected(reference: &str) -> Injected {
    if reference.contains("fail-pull") {
        Injected::FailPull
    } else if reference.contains("crashloop") {
        Injected::CrashLoop
    } else if reference.contains("never-ready") {
        Injected::NeverReady
    } else if reference.contains("flapping") {
        Injected::Flapping
    } else {
        Injected::None
    }
}

/// The exit code of a container's process when kubelet stops it with SIGTERM, by image name:
/// `exit0` or `exit143` anywhere in the reference decides; otherwise 0 for Istio's proxy
/// (`…/proxyv2`, whose agent drains and exits 0) and 143 for everything else (a process that
/// SIGTERM kills). The test images bake the same rule into their config (`testenv::images`),
/// so a name means the same on a simulated and a real node. It matters for native sidecars:
/// kubelet does not restart one whose last run exited 0 when its new image cannot start, so
/// its status shows no waiting reason.
pub fn exit_code_on_sigterm(reference: &str) -> i32 {
    if reference.contains("exit0") {
        0
    } else if reference.contains("exit143") {
        143
    } else if ImageRef::parse(reference)
        .is_ok_and(|r| r.repository.rsplit('/').next() == Some("proxyv2"))
    {
        0
    } else {
        143
    }
}

/// The content key of a tag: the part after the last `--` (the retag convention), else the
/// tag (`latest` when there is none).
pub fn content_key(reference: &ImageRef) -> &str {
    let tag = reference.tag.as_deref().unwrap_or("latest");
    tag.rsplit_once("--").map_or(tag, |(_, k)| k)
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx", None),
            ("nginx:1.27", "docker.io/library/nginx", Some("1.27")),
            (
                "istio/proxyv2:1.24.2",
                "docker.io/istio/proxyv2",
                Some("1.24.2"),
            ),
            (
                "registry.istio.io/testing/proxyv2:latest",
                "registry.istio.io/testing/proxyv2",
                Some("latest"),
            ),
            ("localhost/app", "localhost/app", None),
            ("registry:5000/a/b:v1", "registry:5000/a/b", Some("v1")),
        ];
        for (input, repo, tag) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.repository, repo, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
        }
    }

    #[test]
    fn rejects_what_a_runtime_rejects() {
        for input in [
            "",
            "Nginx:1",
            "nginx:",
            "nginx:-x",
            "a//b",
            "nginx@sha256:abc",
            "nginx@md5:00",
        ] {
            assert!(
                ImageRef::parse(input).is_err(),
                "{input:?} should be invalid"
            );
        }
    }

    #[test]
    fn image_id_is_deterministic_and_tag_specific() {
        let id = |s: &str| ImageRef::parse(s).unwrap().image_id();
        assert_eq!(id("nginx:1"), id("docker.io/library/nginx:1"));
        assert_ne!(id("nginx:1"), id("nginx:2"));
        assert_ne!(id("nginx:1"), id("other:1"));
        assert!(id("nginx:1").starts_with("sha256:"));
        assert_eq!(id("nginx:1").len(), "sha256:".len() + 64);
    }

    #[test]
    fn normalised_names_are_fully_qualified() {
        let n = |s: &str| ImageRef::parse(s).unwrap().normalised();
        assert_eq!(n("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(
            n("docker.io/library/nginx:1.25"),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(n("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            n("registry.istio.io/testing/proxyv2:1.24.2"),
            "registry.istio.io/testing/proxyv2:1.24.2"
        );
    }

    #[test]
    fn retag_convention_shares_a_digest() {
        let id = |s: &str| ImageRef::parse(s).unwrap().image_id();
        assert_eq!(id("proxyv2:1.24.2--b7"), id("proxyv2:stable--b7"));
        assert_ne!(id("proxyv2:1.24.2--b7"), id("proxyv2:1.24.2--b8"));
        let pinned = format!("app@sha256:{}", "ab".repeat(32));
        assert_eq!(
            id(&pinned),
            format!("docker.io/library/app@sha256:{}", "ab".repeat(32))
        );
    }

    #[test]
    fn exit_code_on_sigterm_by_name() {
        assert_eq!(
            exit_code_on_sigterm("registry.istio.io/testing/proxyv2:latest"),
            0
        );
        assert_eq!(exit_code_on_sigterm("docker.io/istio/proxyv2:1.24.2"), 0);
        assert_eq!(
            exit_code_on_sigterm("registry.istio.io/testing/proxyv2:latest-exit143"),
            143
        );
        assert_eq!(
            exit_code_on_sigterm("fake.docker.io/google-samples/hello-go-gke:1.0"),
            143
        );
        assert_eq!(exit_code_on_sigterm("hello-go-gke:1.0-exit0"), 0);
        assert_eq!(exit_code_on_sigterm("Not/Valid"), 143);
    }

    #[test]
    fn failure_injection_by_name() {
        assert_eq!(injected("app:fail-pull"), Injected::FailPull);
        assert_eq!(injected("crashloop/app:1"), Injected::CrashLoop);
        assert_eq!(injected("app:never-ready-2"), Injected::NeverReady);
        assert_eq!(injected("app:flapping"), Injected::Flapping);
        assert_eq!(injected("app:1"), Injected::None);
    }
}
