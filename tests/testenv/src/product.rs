//! The product image without Docker: the release `inplace-upgrade` binary, linked statically,
//! in a minimal image built by the same OCI code as the test images ([`crate::oci`]). It
//! describes the same image as `deploy/Dockerfile` (distroless `static:nonroot` with the
//! binary): entrypoint `/inplace-upgrade`, user `65532:65532`, ports 8080 (admin) and 8443
//! (webhook), no shell, no libc; a test here keeps the two and deploy/'s manifests in step.
//!
//! Its files: the binary, `/etc/passwd` and `/etc/group` naming root and `nonroot` (65532, as
//! distroless), `/home/nonroot`, and `/tmp`. No CA bundle: the binary talks only to the API
//! server, with the CA of its ServiceAccount or kubeconfig.
//!
//! The name is `registry.inplace.test/inplace-upgrade:dev-<12 hex of the image ID>`, so a
//! rebuilt binary never hides behind a cached image on a node; `deploy/` refers to
//! `ghcr.io/inplace-upgrade/inplace-upgrade` and an overlay swaps the name
//! (`kustomize edit set image`).

use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::image::hex;
use crate::images::{Error, Flock, cache_root, io, static_release_binary};
use crate::oci::{self, Image, Layer, RunConfig};

/// Where the image is named on nodes (never pulled: it is imported).
pub const REPOSITORY: &str = "registry.inplace.test/inplace-upgrade";
/// What deploy/ names the image (the overlay swaps it for [`Built::name`]).
pub const DEPLOY_IMAGE: &str = "ghcr.io/inplace-upgrade/inplace-upgrade";
/// distroless's `nonroot` user and group.
pub const USER: &str = "65532:65532";
pub const ENTRYPOINT: &str = "/inplace-upgrade";
/// The admin port (metrics, health) and the webhook's HTTPS port.
pub const PORTS: [u16; 2] = [8080, 8443];
/// Set to a static `inplace-upgrade` binary to skip `cargo build`.
pub const BIN_ENV: &str = "INPLACE_PRODUCT_BIN";
/// Bumped when the layout changes.
const BUILDER_VERSION: &str = "product-image-1";

/// What the image runs. Pure.
pub fn run_config() -> RunConfig {
    RunConfig {
        entrypoint: vec![ENTRYPOINT.to_owned()],
        user: Some(USER.to_owned()),
        exposed_ports: PORTS.iter().map(|p| format!("{p}/tcp")).collect(),
        labels: [(
            "org.opencontainers.image.title".to_owned(),
            "inplace-upgrade".to_owned(),
        )]
        .into(),
        ..RunConfig::default()
    }
}

/// The image's one layer.
pub fn layer(binary: Vec<u8>) -> Result<Layer, oci::Error> {
    Layer::new()
        .file(ENTRYPOINT, 0o755, binary)?
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".to_vec(),
        )?
        .file("etc/group", 0o644, b"root:x:0:\nnonroot:x:65532:\n".to_vec())?
        .dir("home/nonroot", 0o755)?
        .dir("tmp", 0o1777)
}

/// The built image, as [`build`] returns it and `product.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    key: String,
    /// `registry.inplace.test/inplace-upgrade:dev-<hex>`.
    pub name: String,
    /// The OCI archive (`ctr images import`, `kind load image-archive`, skopeo).
    pub archive: PathBuf,
    /// Manifest digest.
    pub digest: String,
    /// `sha256:<config digest>`: the `imageID` CRI reports for the imported image.
    pub id: String,
    pub size: u64,
}

/// `${cache}/product`.
pub fn default_dir() -> PathBuf {
    cache_root().join("product")
}

/// The static release binary: `$INPLACE_PRODUCT_BIN`, else a cached `cargo build --release`.
pub fn binary() -> Result<PathBuf, Error> {
    if let Some(bin) = std::env::var_os(BIN_ENV) {
        return Ok(PathBuf::from(bin));
    }
    static_release_binary("inplace-upgrade", "inplace-upgrade", "product")
}

/// Builds (or finds cached) the image under `dir`.
pub fn build(dir: &Path) -> Result<Built, Error> {
    let path = binary()?;
    let bytes = std::fs::read(&path).map_err(io(format!("read {}", path.display())))?;
    build_from(dir, bytes)
}

/// [`build`] with the binary given. Cached by content: the same binary only reads the record.
pub fn build_from(dir: &Path, binary: Vec<u8>) -> Result<Built, Error> {
    let mut key = Context::new(&SHA256);
    key.update(BUILDER_VERSION.as_bytes());
    key.update(&binary);
    build_cached(dir, key, || layer(binary))
}

/// The image the test suites install in CI: the same image ([`layer`], [`run_config`]) with
/// a dynamically linked `inplace-upgrade` — the debug binary `cargo test` has already built
/// (`CARGO_BIN_EXE_inplace-upgrade`) — plus the shared libraries `ldd` says it loads, at the
/// paths it names (glibc, libm, libgcc_s and the loader `/lib64/ld-linux-x86-64.so.2`).
///
/// Why not [`build`]: the static release build is a second compile of the whole dependency
/// tree (58 min cold under load here), too slow for CI; this one costs a tar of the binary.
/// What users ship stays [`build`] (static, no libc); this image runs the same code, the same
/// entrypoint, user and ports, and is named like it (`…:dev-<hex>`). It holds a libc but no
/// shell. Cached by content in `dir`, like [`build_from`].
pub fn build_with_shared_libraries(dir: &Path, binary: &Path) -> Result<Built, Error> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io(format!("run ldd {}", binary.display())))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Set(format!(
            "ldd {} failed ({}): {}{}",
            binary.display(),
            out.status,
            listing,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let libraries = shared_libraries(&listing)
        .map_err(|e| Error::Set(format!("ldd {}: {e}", binary.display())))?;
    let read = |p: &Path| std::fs::read(p).map_err(io(format!("read {}", p.display())));
    let mut files = vec![(PathBuf::from(ENTRYPOINT), read(binary)?)];
    for library in libraries {
        // Follows symlinks: the layer holds the library's bytes at the path the loader asks for.
        let bytes = read(&library)?;
        files.push((library, bytes));
    }
    let mut key = Context::new(&SHA256);
    key.update(BUILDER_VERSION.as_bytes());
    key.update(b"shared-libraries");
    for (path, bytes) in &files {
        key.update(path.to_string_lossy().as_bytes());
        key.update(&(bytes.len() as u64).to_le_bytes());
        key.update(bytes);
    }
    build_cached(dir, key, move || {
        let mut files = files.into_iter();
        let (_, binary) = files.next().expect("the binary comes first");
        files.try_fold(layer(binary)?, |layer, (path, bytes)| {
            layer.file(&path.to_string_lossy(), 0o755, bytes)
        })
    })
}

/// The absolute paths of the shared objects in `ldd`'s listing, the dynamic loader included
/// and the kernel's vDSO left out; a library ldd could not find is an error naming it. Pure.
pub fn shared_libraries(ldd: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest.split(" (").next().unwrap_or_default().trim()
            }
            None => line.split(" (").next().unwrap_or_default().trim(),
        };
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        } else if !path.starts_with("linux-vdso") && !path.starts_with("linux-gate") {
            return Err(format!("unexpected line {line:?}"));
        }
    }
    if paths.is_empty() {
        return Err("no shared libraries listed (a static binary? use the product image)".into());
    }
    Ok(paths)
}

/// Writes the image of `layer` into `dir` unless `product.json` there records `key` (the
/// builder's inputs, to which the run config is added) with its archive present.
fn build_cached(
    dir: &Path,
    mut key: Context,
    layer: impl FnOnce() -> Result<Layer, oci::Error>,
) -> Result<Built, Error> {
    key.update(format!("{:?}", run_config()).as_bytes());
    let key = hex(key.finish().as_ref());
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let _lock = Flock::exclusive(&dir.join(".lock"))?;
    let record = dir.join("product.json");
    if let Ok(text) = std::fs::read(&record)
        && let Ok(built) = serde_json::from_slice::<Built>(&text)
        && built.key == key
        && built.archive.exists()
    {
        return Ok(built);
    }
    let image = Image::new(vec![layer()?.build()?], &run_config())?;
    let short = &image.id().trim_start_matches("sha256:")[..12];
    let name = format!("{REPOSITORY}:dev-{short}");
    let archive = dir.join("inplace-upgrade.tar");
    oci::write_archive(&archive, &[(&image, vec![name.clone()])])?;
    let built = Built {
        key,
        name,
        archive,
        digest: image.digest().to_owned(),
        id: image.id().to_owned(),
        size: image.layers_size(),
    };
    let text = serde_json::to_vec_pretty(&built).map_err(|e| Error::Set(e.to_string()))?;
    let tmp = dir.join(format!("product.json.tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &record).map_err(io(format!("rename {}", record.display())))?;
    Ok(built)
}

/// A kustomization that installs `base` (a path relative to `dir`, e.g. the repository's
/// `deploy`) with only the image swapped for `built` — what a user writes with
/// `kustomize edit set image`.
pub fn overlay(built: &Built, base: &str) -> String {
    let (name, tag) = built
        .name
        .rsplit_once(':')
        .unwrap_or((&built.name, "latest"));
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\nimages:\n- name: {DEPLOY_IMAGE}\n  newName: {name}\n  newTag: {tag}\n"
    )
}

/// Writes `dir/kustomization.yaml`: [`overlay`] of the repository's `deploy/`, by a path
/// relative to `dir` (kustomize refuses absolute ones, and a `dir` inside `deploy/`).
pub fn write_overlay(built: &Built, dir: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let deploy = deploy
        .canonicalize()
        .map_err(io(format!("find {}", deploy.display())))?;
    let from = dir
        .canonicalize()
        .map_err(io(format!("find {}", dir.display())))?;
    let common = from
        .components()
        .zip(deploy.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative = PathBuf::new();
    for _ in from.components().skip(common) {
        relative.push("..");
    }
    relative.extend(deploy.components().skip(common));
    let file = dir.join("kustomization.yaml");
    std::fs::write(&file, overlay(built, &relative.display().to_string()))
        .map_err(io(format!("write {}", file.display())))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The final stage of deploy/Dockerfile: (instruction, arguments) after its last `FROM`.
    fn dockerfile_final_stage() -> Vec<(String, String)> {
        let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
        let lines: Vec<(String, String)> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .map(|(i, a)| (i.to_ascii_uppercase(), a.trim().to_owned()))
            .collect();
        let last_from = lines.iter().rposition(|(i, _)| i == "FROM").unwrap();
        lines[last_from..].to_vec()
    }

    #[test]
    fn the_image_and_the_dockerfile_describe_the_same_image() {
        let stage = dockerfile_final_stage();
        let get = |what: &str| -> Vec<String> {
            stage
                .iter()
                .filter(|(i, _)| i == what)
                .map(|(_, a)| a.clone())
                .collect()
        };
        assert!(
            get("FROM")[0].contains(":nonroot"),
            "a distroless nonroot base: {:?}",
            get("FROM")
        );
        let run = run_config();
        let entrypoint: Vec<String> = serde_json::from_str(&get("ENTRYPOINT")[0]).unwrap();
        assert_eq!(entrypoint, run.entrypoint);
        assert_eq!(get("USER"), [run.user.clone().unwrap()]);
        let mut exposed: Vec<String> = get("EXPOSE")
            .iter()
            .flat_map(|a| a.split_whitespace().map(|p| format!("{p}/tcp")))
            .collect();
        exposed.sort();
        let mut ours = run.exposed_ports.clone();
        ours.sort();
        assert_eq!(exposed, ours);
        assert!(
            get("CMD").is_empty(),
            "no CMD: deploy/ gives the subcommand"
        );
        assert_eq!(
            get("COPY"),
            [format!("--from=build {ENTRYPOINT} {ENTRYPOINT}")]
        );
    }

    #[test]
    fn deploy_runs_the_image_as_its_user_on_its_ports() {
        let uid: i64 = USER.split(':').next().unwrap().parse().unwrap();
        let mut ports_used = std::collections::BTreeSet::new();
        for file in ["controller.yaml", "webhook.yaml"] {
            let text = std::fs::read_to_string(repo().join("deploy/base").join(file)).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = Value::deserialize(doc).unwrap();
                if v["kind"] != "Deployment" {
                    continue;
                }
                let pod = &v["spec"]["template"]["spec"];
                assert_eq!(pod["securityContext"]["runAsUser"], uid, "{file}");
                assert_eq!(pod["securityContext"]["runAsGroup"], uid, "{file}");
                for c in pod["containers"].as_array().unwrap() {
                    assert_eq!(
                        c["image"], "inplace-upgrade",
                        "{file}: the kustomize image name"
                    );
                    assert!(
                        c.get("command").is_none(),
                        "{file}: the image's entrypoint runs"
                    );
                    for p in c["ports"].as_array().unwrap() {
                        let port = p["containerPort"].as_u64().unwrap() as u16;
                        assert!(PORTS.contains(&port), "{file}: port {port} not exposed");
                        ports_used.insert(port);
                    }
                }
            }
        }
        assert_eq!(ports_used.into_iter().collect::<Vec<_>>(), PORTS);
        let k = std::fs::read_to_string(repo().join("deploy/base/kustomization.yaml")).unwrap();
        assert!(k.contains(&format!("newName: {DEPLOY_IMAGE}")), "{k}");
    }

    #[test]
    fn the_image_is_minimal_deterministic_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let fake = b"\x7fELF not really".to_vec();
        let built = build_from(dir.path(), fake.clone()).unwrap();
        assert!(built.name.starts_with(&format!("{REPOSITORY}:dev-")));
        let bytes = std::fs::read(&built.archive).unwrap();
        let mtime = std::fs::metadata(&built.archive)
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(build_from(dir.path(), fake.clone()).unwrap(), built);
        assert_eq!(
            std::fs::metadata(&built.archive)
                .unwrap()
                .modified()
                .unwrap(),
            mtime,
            "cached"
        );
        std::fs::remove_file(dir.path().join("product.json")).unwrap();
        assert_eq!(build_from(dir.path(), fake).unwrap(), built);
        assert_eq!(std::fs::read(&built.archive).unwrap(), bytes, "same bytes");

        // Only these files: no shell, no libc.
        let layer = layer(b"bin".to_vec()).unwrap().build().unwrap();
        let mut tar = tar::Archive::new(layer.bytes.as_slice());
        let mut paths: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "etc/",
                "etc/group",
                "etc/passwd",
                "home/",
                "home/nonroot/",
                "inplace-upgrade",
                "tmp/"
            ]
        );
    }

    #[test]
    fn ldd_listings_give_the_libraries_and_the_loader() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f20)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f13)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f53)\n";
        assert_eq!(
            shared_libraries(debian).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let missing = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        assert_eq!(
            shared_libraries(missing).unwrap_err(),
            "libfoo.so.1 not found"
        );
        assert!(
            shared_libraries("\tstatically linked\n").is_err(),
            "a static binary is not this image's"
        );
        assert!(shared_libraries("").is_err());
    }

    /// The debug binary of this build with what it links, as CI installs it: the same
    /// entrypoint, user and ports as the product image, and every library ldd names.
    #[test]
    fn the_shared_library_image_holds_the_binary_and_its_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let binary = std::env::current_exe().unwrap();
        let built = build_with_shared_libraries(dir.path(), &binary).unwrap();
        assert!(built.name.starts_with(&format!("{REPOSITORY}:dev-")));
        assert_eq!(
            build_with_shared_libraries(dir.path(), &binary).unwrap(),
            built,
            "cached"
        );
        let archive = std::fs::read(&built.archive).unwrap();
        let mut outer = tar::Archive::new(archive.as_slice());
        let mut paths = Vec::new();
        for entry in outer.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().size().unwrap() < 1024 * 1024 {
                continue;
            }
            let mut blob = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut blob).unwrap();
            if let Ok(entries) = tar::Archive::new(blob.as_slice()).entries() {
                paths.extend(
                    entries
                        .filter_map(Result::ok)
                        .map(|e| format!("/{}", e.path().unwrap().display())),
                );
            }
        }
        assert!(paths.iter().any(|p| p == ENTRYPOINT), "{paths:?}");
        assert!(paths.iter().any(|p| p == "/etc/passwd"), "{paths:?}");
        assert!(
            paths.iter().any(|p| p.contains("/ld-linux")),
            "the loader: {paths:?}"
        );
        assert!(paths.iter().any(|p| p.contains("/libc.so")), "{paths:?}");
    }

    #[test]
    fn the_overlay_swaps_only_the_image() {
        let built = build_from(tempfile::tempdir().unwrap().path(), b"\x7fELF".to_vec()).unwrap();
        let v: Value = serde_yaml::from_str(&overlay(&built, "../deploy")).unwrap();
        assert_eq!(v["resources"], serde_json::json!(["../deploy"]));
        assert_eq!(v["images"][0]["name"], DEPLOY_IMAGE);
        assert_eq!(
            format!(
                "{}:{}",
                v["images"][0]["newName"].as_str().unwrap(),
                v["images"][0]["newTag"].as_str().unwrap()
            ),
            built.name
        );
        assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
    }
}
