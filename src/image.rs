//! Image references: the docker reference grammar, the forms the annotation accepts, and
//! normalised comparison.
//!
//! The grammar check is `oci-spec`'s `distribution::Reference` (a port of docker's
//! `distribution/reference` regexp). On its own it is more permissive than docker in three places,
//! so we check those first: its tag `\w` is Unicode-aware in Rust's regex crate (docker's is
//! ASCII), it accepts upper-case hex in digests, and it accepts a 64-hex "name" (an image ID).
//! We also split registry and repository ourselves with docker's exact rule (`splitDockerDomain`,
//! which treats an upper-case first component as a registry host) so that an upper-case
//! repository is reported as such instead of as a generic format error.

use std::fmt;

use oci_spec::distribution::Reference;

use crate::memo::Memo;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
const MAX_TAG_LEN: usize = 128;
const MAX_NAME_LEN: usize = 255;

/// Why a string is not a usable image reference. Every message quotes the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image is empty")]
    Empty,
    #[error(
        "invalid image reference {image:?}: character {ch:?} is not allowed (image references are printable ASCII without spaces)"
    )]
    InvalidCharacter { image: String, ch: char },
    #[error("invalid image reference {image:?}: repository name is empty")]
    EmptyName { image: String },
    #[error("invalid image reference {image:?}: repository name must be lowercase")]
    Uppercase { image: String },
    #[error(
        "invalid image reference {image:?}: a 64-character hexadecimal string is an image ID, not a repository name"
    )]
    HexName { image: String },
    #[error(
        "invalid image reference {image:?}: repository name is longer than {MAX_NAME_LEN} characters"
    )]
    NameTooLong { image: String },
    #[error("invalid image reference {image:?}: tag is empty after ':'")]
    EmptyTag { image: String },
    #[error(
        "invalid image reference {image:?}: tag is {len} characters long, at most {MAX_TAG_LEN} are allowed"
    )]
    TagTooLong { image: String, len: usize },
    #[error(
        "invalid image reference {image:?}: tag {tag:?} must start with a letter, digit or '_' and contain only letters, digits, '_', '.' and '-'"
    )]
    InvalidTag { image: String, tag: String },
    #[error(
        "invalid image reference {image:?}: digest {digest:?} must be sha256: followed by 64 lowercase hex characters (or sha384:/sha512: with 96/128)"
    )]
    InvalidDigest { image: String, digest: String },
    #[error(
        "invalid image reference {image:?}: not a valid docker reference ([registry[:port]/]path[:tag][@sha256:digest], lowercase path components separated by '/')"
    )]
    InvalidFormat { image: String },
    #[error("cannot resolve {spec:?} against the container's current image {current:?}: {source}")]
    CurrentImage {
        spec: String,
        current: String,
        #[source]
        source: Box<ImageError>,
    },
}

/// A parsed, valid image reference. It remembers the string as written (that is what we write
/// to pods) and its normalised parts (what we compare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    written: String,
    /// Everything before `:tag` / `@digest`, as written.
    name: String,
    tag: Option<String>,
    digest: Option<String>,
    registry: String,
    repository: String,
}

impl ImageRef {
    /// Parse a full reference such as `nginx`, `docker.io/istio/proxyv2:1.24.2` or
    /// `registry:5000/a/b@sha256:<64 hex>`.
    pub fn parse(image: &str) -> Result<Self, ImageError> {
        if image.is_empty() {
            return Err(ImageError::Empty);
        }
        check_characters(image)?;
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => {
                check_digest(image, digest)?;
                (rest, Some(digest.to_string()))
            }
            None => (image, None),
        };
        let (name, tag) = split_tag(rest);
        if let Some(tag) = tag {
            check_tag(image, tag)?;
        }
        if name.is_empty() {
            return Err(ImageError::EmptyName {
                image: image.into(),
            });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ImageError::NameTooLong {
                image: image.into(),
            });
        }
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::HexName {
                image: image.into(),
            });
        }
        let (registry, path) = split_registry(name);
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageError::Uppercase {
                image: image.into(),
            });
        }
        if path.is_empty() {
            return Err(ImageError::EmptyName {
                image: image.into(),
            });
        }
        if !docker_grammar_accepts(image) {
            return Err(ImageError::InvalidFormat {
                image: image.into(),
            });
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_string()
        };
        // Docker checks the length of the normalised name (`docker.io/library/` added), so a
        // short name can be too long once normalised (found by fuzzing).
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ImageError::NameTooLong {
                image: image.into(),
            });
        }
        Ok(ImageRef {
            written: image.to_string(),
            name: name.to_string(),
            tag: tag.map(str::to_string),
            digest,
            registry,
            repository,
        })
    }

    /// The reference exactly as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// The repository part as written (no tag, no digest), e.g. `registry.istio.io/testing/proxyv2`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Normalised registry host (`docker.io` for Docker Hub, also when written `index.docker.io`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Normalised repository path (`library/nginx` for `nginx`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The last path segment of the repository (`proxyv2` for `registry.istio.io/testing/proxyv2`).
    pub fn last_segment(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    /// Docker's normalised form: `nginx` → `docker.io/library/nginx:latest`. A reference with a
    /// digest and no tag gets no `:latest`, as in docker's `TagNameOnly`.
    pub fn normalized(&self) -> String {
        let mut out = format!("{}/{}", self.registry, self.repository);
        match (&self.tag, &self.digest) {
            (Some(tag), _) => {
                out.push(':');
                out.push_str(tag);
            }
            (None, None) => {
                out.push(':');
                out.push_str(DEFAULT_TAG);
            }
            (None, Some(_)) => {}
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }

    /// Whether two references pull the same image: same normalised repository and, when both
    /// carry a digest, the same digest (a runtime ignores the tag next to a digest); when
    /// neither does, the same tag (`latest` when absent). One with a digest and one without
    /// cannot be proven equal, so they are not.
    pub fn same_image(&self, other: &ImageRef) -> bool {
        if self.registry != other.registry || self.repository != other.repository {
            return false;
        }
        match (&self.digest, &other.digest) {
            (Some(a), Some(b)) => a == b,
            (None, None) => {
                self.tag.as_deref().unwrap_or(DEFAULT_TAG)
                    == other.tag.as_deref().unwrap_or(DEFAULT_TAG)
            }
            _ => false,
        }
    }

    /// Same registry and repository, whatever the tag or digest.
    pub fn same_repository(&self, other: &ImageRef) -> bool {
        self.registry == other.registry && self.repository == other.repository
    }

    /// A bare `name:tag` / `name@digest` (no `/`, explicit tag or digest) may mean "this
    /// repository, another version" when `name` is the current image's last path segment.
    fn is_bare(&self) -> bool {
        !self.name.contains('/') && (self.tag.is_some() || self.digest.is_some())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// Normalised comparison of two image strings. When either is not a valid reference the
/// strings are compared literally, so a malformed pod image never equals a valid target.
pub fn same_image(a: &str, b: &str) -> bool {
    match (ImageRef::parse(a), ImageRef::parse(b)) {
        (Ok(a), Ok(b)) => a.same_image(&b),
        _ => a == b,
    }
}

/// The image half of an annotation entry, before it is resolved against a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSpec {
    /// A full reference, or a bare `name:tag` that is resolved against the current image.
    Reference(ImageRef),
    /// `:tag` alone: keep the current repository.
    Tag(String),
    /// `@sha256:…` alone: keep the current repository.
    Digest(String),
}

impl ImageSpec {
    pub fn parse(spec: &str) -> Result<Self, ImageError> {
        if spec.is_empty() {
            return Err(ImageError::Empty);
        }
        check_characters(spec)?;
        if let Some(tag) = spec.strip_prefix(':') {
            check_tag(spec, tag)?;
            return Ok(ImageSpec::Tag(tag.to_string()));
        }
        if let Some(digest) = spec.strip_prefix('@') {
            check_digest(spec, digest)?;
            return Ok(ImageSpec::Digest(digest.to_string()));
        }
        ImageRef::parse(spec).map(ImageSpec::Reference)
    }

    /// Resolve against the container's current image. The result is the string written to
    /// the pod; every later step (policy globs, comparison, status) uses it.
    ///
    /// - a full reference is taken literally;
    /// - `:tag` replaces the current tag and drops a current digest (which would otherwise pin
    ///   the old content and make the tag meaningless);
    /// - `@digest` replaces the current digest and drops a current tag (a tag next to a digest
    ///   is ignored by runtimes and would mislead readers);
    /// - a bare `name:tag` whose `name` equals the last path segment of the current repository
    ///   keeps the current registry and path as written; any other bare name is a full
    ///   reference (docker normalisation: `nginx:1` is `docker.io/library/nginx:1`).
    pub fn resolve(&self, current: &str) -> Result<String, ImageError> {
        let current_ref = || {
            ImageRef::parse(current).map_err(|source| ImageError::CurrentImage {
                spec: self.to_string(),
                current: current.to_string(),
                source: Box::new(source),
            })
        };
        match self {
            ImageSpec::Reference(r) if r.is_bare() => {
                let cur = current_ref()?;
                if cur.last_segment() == r.name() {
                    Ok(with_version(cur.name(), r.tag(), r.digest()))
                } else {
                    Ok(r.as_str().to_string())
                }
            }
            ImageSpec::Reference(r) => Ok(r.as_str().to_string()),
            ImageSpec::Tag(tag) => Ok(with_version(current_ref()?.name(), Some(tag), None)),
            ImageSpec::Digest(digest) => {
                Ok(with_version(current_ref()?.name(), None, Some(digest)))
            }
        }
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSpec::Reference(r) => f.write_str(r.as_str()),
            ImageSpec::Tag(tag) => write!(f, ":{tag}"),
            ImageSpec::Digest(digest) => write!(f, "@{digest}"),
        }
    }
}

fn with_version(name: &str, tag: Option<&str>, digest: Option<&str>) -> String {
    let mut out = name.to_string();
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    out
}

/// How many verdicts of oci-spec's grammar are remembered before the memory is emptied. A
/// cluster has a few hundred distinct images at most; the bound only stops a stream of
/// distinct strings from growing the memory (at most ~530 bytes each: the checks before this
/// one bound the name, tag and digest).
const GRAMMAR_VERDICTS: usize = 4096;

/// Builds oci-spec's reference regex now: it is compiled on first use, tens of milliseconds
/// of CPU that would otherwise land on the first pod a webhook admits (or on a reconcile).
pub fn compile_grammar() {
    let _ = Reference::try_from("docker.io/library/busybox:latest");
}

/// oci-spec's verdict on `image` (the authority on the grammar), remembered per string: its
/// regex is the costliest step of a parse by far, and the webhook parses the same few images
/// (a workload's annotation, its pods' current images) for every pod it admits.
fn docker_grammar_accepts(image: &str) -> bool {
    static VERDICTS: Memo<Box<str>, bool> = Memo::new(GRAMMAR_VERDICTS);
    // The regex takes microseconds; concurrent callers may run it twice.
    let verdict = VERDICTS.get_or_try(image, || {
        Ok::<_, std::convert::Infallible>(Reference::try_from(image).is_ok())
    });
    verdict.unwrap_or_else(|never| match never {})
}

fn check_characters(image: &str) -> Result<(), ImageError> {
    match image.chars().find(|c| !c.is_ascii_graphic()) {
        Some(ch) => Err(ImageError::InvalidCharacter {
            image: image.into(),
            ch,
        }),
        None => Ok(()),
    }
}

/// `name[:tag]`: a `:` after the last `/` starts the tag (before it, it is a registry port).
fn split_tag(rest: &str) -> (&str, Option<&str>) {
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry when it contains `.` or
/// `:`, is `localhost`, or has upper-case letters; otherwise the image is on Docker Hub.
fn split_registry(name: &str) -> (String, &str) {
    match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            let registry = if first == DOCKER_HUB_LEGACY {
                DOCKER_HUB
            } else {
                first
            };
            (registry.to_string(), path)
        }
        _ => (DOCKER_HUB.to_string(), name),
    }
}

fn check_tag(image: &str, tag: &str) -> Result<(), ImageError> {
    if tag.is_empty() {
        return Err(ImageError::EmptyTag {
            image: image.into(),
        });
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(ImageError::TagTooLong {
            image: image.into(),
            len: tag.len(),
        });
    }
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(ImageError::InvalidTag {
            image: image.into(),
            tag: tag.into(),
        });
    }
    Ok(())
}

fn check_digest(image: &str, digest: &str) -> Result<(), ImageError> {
    let valid = match digest.split_once(':') {
        Some((algorithm, hex)) => {
            let len = match algorithm {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => 0,
            };
            len != 0
                && hex.len() == len
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ImageError::InvalidDigest {
            image: image.into(),
            digest: digest.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            (
                "index.docker.io/library/nginx",
                "docker.io/library/nginx:latest",
            ),
            ("istio/proxyv2:1.24.2", "docker.io/istio/proxyv2:1.24.2"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("registry:5000/a/b:c", "registry:5000/a/b:c"),
            (
                "registry.istio.io/testing/proxyv2",
                "registry.istio.io/testing/proxyv2:latest",
            ),
            ("Registry.Example/app:v1", "Registry.Example/app:v1"),
            ("a/b/c/d:e", "docker.io/a/b/c/d:e"),
            ("my_app", "docker.io/library/my_app:latest"),
            ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest"),
        ];
        for (input, normalized) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.normalized(), normalized, "{input}");
            assert_eq!(r.as_str(), input);
        }
        let with_digest = format!("registry:5000/a/b@{D1}");
        let r = ImageRef::parse(&with_digest).expect("digest reference");
        assert_eq!(r.normalized(), with_digest);
        assert_eq!(r.digest(), Some(D1));
        assert_eq!(r.tag(), None);
        assert_eq!(r.name(), "registry:5000/a/b");
        let both = format!("nginx:1.25@{D1}");
        assert_eq!(
            ImageRef::parse(&both).expect("tag and digest").normalized(),
            format!("docker.io/library/nginx:1.25@{D1}")
        );
    }

    #[test]
    fn rejects_invalid_references() {
        let long_tag = format!("nginx:{}", "a".repeat(129));
        let ok_tag = format!("nginx:{}", "a".repeat(128));
        assert!(ImageRef::parse(&ok_tag).is_ok());
        let hex = "a".repeat(64);
        let cases: Vec<(String, ImageError)> = vec![
            ("".into(), ImageError::Empty),
            (
                "Nginx".into(),
                ImageError::Uppercase {
                    image: "Nginx".into(),
                },
            ),
            (
                "docker.io/Istio/proxy".into(),
                ImageError::Uppercase {
                    image: "docker.io/Istio/proxy".into(),
                },
            ),
            (
                "nginx :1".into(),
                ImageError::InvalidCharacter {
                    image: "nginx :1".into(),
                    ch: ' ',
                },
            ),
            (
                "nginx:tägé".into(),
                ImageError::InvalidCharacter {
                    image: "nginx:tägé".into(),
                    ch: 'ä',
                },
            ),
            (
                long_tag.clone(),
                ImageError::TagTooLong {
                    image: long_tag,
                    len: 129,
                },
            ),
            (
                "nginx:".into(),
                ImageError::EmptyTag {
                    image: "nginx:".into(),
                },
            ),
            (
                "nginx:-x".into(),
                ImageError::InvalidTag {
                    image: "nginx:-x".into(),
                    tag: "-x".into(),
                },
            ),
            (
                "nginx@sha256:abc".into(),
                ImageError::InvalidDigest {
                    image: "nginx@sha256:abc".into(),
                    digest: "sha256:abc".into(),
                },
            ),
            (hex.clone(), ImageError::HexName { image: hex.clone() }),
            (":1".into(), ImageError::EmptyName { image: ":1".into() }),
            (
                "a//b".into(),
                ImageError::InvalidFormat {
                    image: "a//b".into(),
                },
            ),
            (
                "-nginx".into(),
                ImageError::InvalidFormat {
                    image: "-nginx".into(),
                },
            ),
            (
                "registry:5000/".into(),
                ImageError::EmptyName {
                    image: "registry:5000/".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(ImageRef::parse(&input), Err(expected), "{input:?}");
        }
        // 255 characters once normalised (`docker.io/library/` + 237) is the longest name.
        let longest = "a".repeat(237);
        assert!(ImageRef::parse(&longest).is_ok());
        let too_long = "a".repeat(238);
        assert_eq!(
            ImageRef::parse(&too_long),
            Err(ImageError::NameTooLong {
                image: too_long.clone()
            })
        );
        let upper_digest = format!("nginx@sha256:{}", "A".repeat(64));
        assert!(matches!(
            ImageRef::parse(&upper_digest),
            Err(ImageError::InvalidDigest { .. })
        ));
    }

    #[test]
    fn same_image_follows_normalisation() {
        assert!(same_image("nginx", "docker.io/library/nginx:latest"));
        assert!(same_image("nginx", "index.docker.io/library/nginx"));
        assert!(same_image("istio/proxyv2:1", "docker.io/istio/proxyv2:1"));
        assert!(!same_image("nginx:1", "nginx:2"));
        assert!(!same_image("nginx", "quay.io/nginx"));
        assert!(same_image(&format!("nginx:1@{D1}"), &format!("nginx@{D1}")));
        assert!(!same_image(&format!("nginx@{D1}"), &format!("nginx@{D2}")));
        assert!(!same_image(&format!("nginx@{D1}"), "nginx:latest"));
        assert!(same_image("not an image", "not an image"));
        assert!(!same_image("not an image", "nginx"));
    }

    #[test]
    fn resolves_every_form() {
        let istio = "registry.istio.io/testing/proxyv2:latest";
        let pinned = format!("registry.istio.io/testing/proxyv2:1.23@{D1}");
        let at_d2 = format!("@{D2}");
        let bare_d2 = format!("proxyv2@{D2}");
        let cases: Vec<(&str, String, String)> = vec![
            // full references are literal
            (
                "docker.io/istio/proxyv2:1.24.2",
                istio.into(),
                "docker.io/istio/proxyv2:1.24.2".into(),
            ),
            ("quay.io/a/b:1", istio.into(), "quay.io/a/b:1".into()),
            // :tag keeps the repository, drops a digest
            (
                ":1.24.2",
                istio.into(),
                "registry.istio.io/testing/proxyv2:1.24.2".into(),
            ),
            (
                ":1.24.2",
                pinned.clone(),
                "registry.istio.io/testing/proxyv2:1.24.2".into(),
            ),
            (":2", "nginx".into(), "nginx:2".into()),
            (
                ":2",
                "localhost:5000/app:1".into(),
                "localhost:5000/app:2".into(),
            ),
            // @digest keeps the repository, drops a tag
            (
                at_d2.as_str(),
                pinned.clone(),
                format!("registry.istio.io/testing/proxyv2@{D2}"),
            ),
            // bare name:tag equal to the last segment keeps registry and path as written
            (
                "proxyv2:1.24.2",
                istio.into(),
                "registry.istio.io/testing/proxyv2:1.24.2".into(),
            ),
            (
                "proxyv2:1.24.2",
                "docker.io/istio/proxyv2:1.23.0".into(),
                "docker.io/istio/proxyv2:1.24.2".into(),
            ),
            (
                bare_d2.as_str(),
                istio.into(),
                format!("registry.istio.io/testing/proxyv2@{D2}"),
            ),
            // a bare name that is not the last segment is a Docker Hub reference
            ("envoy:1.30", istio.into(), "envoy:1.30".into()),
            // a bare name without tag is a full reference (docker.io/library/proxyv2:latest)
            ("proxyv2", istio.into(), "proxyv2".into()),
        ];
        for (spec, current, expected) in cases {
            let parsed = ImageSpec::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(parsed.to_string(), spec);
            assert_eq!(
                parsed.resolve(&current),
                Ok(expected),
                "{spec} on {current}"
            );
        }
    }

    #[test]
    fn resolution_against_a_broken_current_image_names_both() {
        let err = ImageSpec::parse(":2")
            .and_then(|s| s.resolve("Bad Image"))
            .expect_err("broken current image");
        assert_eq!(
            err.to_string(),
            "cannot resolve \":2\" against the container's current image \"Bad Image\": invalid image reference \"Bad Image\": character ' ' is not allowed (image references are printable ASCII without spaces)"
        );
        // A bare name:tag needs the current image to decide what it means...
        assert_eq!(
            ImageSpec::parse("nginx:2").and_then(|s| s.resolve("Bad Image")),
            Err(ImageError::CurrentImage {
                spec: "nginx:2".into(),
                current: "Bad Image".into(),
                source: Box::new(ImageError::InvalidCharacter {
                    image: "Bad Image".into(),
                    ch: ' '
                })
            })
        );
        // ...a reference with a path does not.
        assert_eq!(
            ImageSpec::parse("docker.io/library/nginx:2").and_then(|s| s.resolve("Bad Image")),
            Ok("docker.io/library/nginx:2".into())
        );
    }

    #[test]
    fn resolved_images_are_valid_references() {
        let r = ImageSpec::parse(":v2")
            .and_then(|s| s.resolve("registry.istio.io/testing/proxyv2:latest"))
            .expect("resolves");
        assert!(ImageRef::parse(&r).is_ok());
    }
}
