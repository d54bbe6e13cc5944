//! Deterministic OCI image-layout archives, built without Docker or a registry.
//!
//! A [`Layer`] is an uncompressed tar whose entries are sorted by path, with mtime 0, uid/gid
//! 0 and fixed modes; configs, manifests and indexes are JSON with sorted keys. So the same
//! files and config always give the same bytes and digests, and the same image under two
//! names has one digest (a retag).
//!
//! [`write_archive`] writes one tar that three consumers read:
//! - containerd (`ctr -n k8s.io images import`, which is also what `kind load image-archive`
//!   runs on every node): it reads `oci-layout` + `index.json` and names each image by the
//!   manifest descriptor's `io.containerd.image.name` annotation (a normalised reference such as
//!   `docker.io/library/nginx:1.27`; CRI looks images up by that name, and reports
//!   `imageID` = `sha256:<config digest>`);
//! - skopeo (`skopeo copy oci-archive:FILE:REF docker://…`): it picks the manifest whose
//!   `org.opencontainers.image.ref.name` equals `REF` — we write the same full reference there;
//! - `docker load` / `skopeo copy docker-archive:`: `manifest.json` (config, RepoTags, layer
//!   paths), which containerd ignores when `oci-layout` is present.
//!
//! Layers are not compressed: every consumer accepts `application/vnd.oci.image.layer.v1.tar`,
//! and gzip would add a compressor whose output must also be kept stable.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use ring::digest::{SHA256, digest};
use serde_json::Value;

use crate::image::hex;

/// Annotation containerd's importer names an image by.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI image-layout reference name (what `oci-archive:FILE:REF` selects).
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the image: {0}")]
    Spec(String),
    #[error("invalid layer entry {path:?}: {reason}")]
    Entry { path: String, reason: &'static str },
}

/// Maps an I/O error to [`Error::Io`] naming what was being done (shared by the image set and
/// the registry, whose errors wrap this one).
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn spec(e: impl std::fmt::Display) -> Error {
    Error::Spec(e.to_string())
}

/// A content-addressed blob: its bytes, `sha256:<hex>` and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: MediaType,
    pub bytes: Arc<Vec<u8>>,
    pub digest: String,
}

impl Blob {
    fn new(media_type: MediaType, bytes: Vec<u8>) -> Self {
        let digest = format!("sha256:{}", hex(digest(&SHA256, &bytes).as_ref()));
        Self {
            media_type,
            bytes: Arc::new(bytes),
            digest,
        }
    }

    fn json(media_type: MediaType, value: &impl serde::Serialize) -> Result<Self, Error> {
        let value = serde_json::to_value(value).map_err(spec)?;
        let bytes = serde_json::to_vec(&canonical(value)).map_err(spec)?;
        Ok(Self::new(media_type, bytes))
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The hex part of the digest (the file name under `blobs/sha256/`).
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    fn descriptor(&self) -> Result<Descriptor, Error> {
        DescriptorBuilder::default()
            .media_type(self.media_type.clone())
            .digest(
                self.digest
                    .parse::<oci_spec::image::Digest>()
                    .map_err(spec)?,
            )
            .size(self.size())
            .build()
            .map_err(spec)
    }
}

/// JSON with every object's keys sorted (the OCI types keep labels and annotations in
/// `HashMap`s, whose order differs per process).
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Arc<Vec<u8>> },
    Symlink { target: String },
}

/// The files of one layer. Paths are relative to `/` (a leading `/` is dropped); parent
/// directories are added with mode 0755 unless given.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Result<Self, Error> {
        let path = self.normalise(path)?;
        self.entries.insert(path, Entry::Dir { mode });
        Ok(self)
    }

    pub fn file(
        mut self,
        path: &str,
        mode: u32,
        data: impl Into<Arc<Vec<u8>>>,
    ) -> Result<Self, Error> {
        let path = self.normalise(path)?;
        self.entries.insert(
            path,
            Entry::File {
                mode,
                data: data.into(),
            },
        );
        Ok(self)
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Result<Self, Error> {
        let path = self.normalise(path)?;
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
        Ok(self)
    }

    fn normalise(&mut self, path: &str) -> Result<String, Error> {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let bad = |reason| Error::Entry {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        if path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad("empty, `.` or `..` segment"));
        }
        let mut parent = String::new();
        for segment in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(segment);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => return Err(bad("a parent is not a directory")),
            }
        }
        Ok(path.to_owned())
    }

    /// The layer as an uncompressed tar blob (its digest is also its diffID).
    pub fn build(&self) -> Result<Blob, Error> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty())
                        .map_err(io(path))?;
                }
                Entry::File { mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    tar.append_data(&mut header, path, data.as_slice())
                        .map_err(io(path))?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)
                        .map_err(io(path))?;
                }
            }
        }
        let bytes = tar.into_inner().map_err(io("finishing the layer"))?;
        Ok(Blob::new(MediaType::ImageLayer, bytes))
    }
}

/// What an image runs (the OCI config's `config` object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// `uid`, `uid:gid` or a name from the image's `/etc/passwd`.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// `8080/tcp`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// An image: its layers, config and manifest blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
}

impl Image {
    /// A linux/amd64 image of `layers` (bottom first) running `run`.
    pub fn new(layers: Vec<Blob>, run: &RunConfig) -> Result<Self, Error> {
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let mut config = ConfigBuilder::default();
        if let Some(v) = non_empty(&run.entrypoint) {
            config = config.entrypoint(v);
        }
        if let Some(v) = non_empty(&run.cmd) {
            config = config.cmd(v);
        }
        if let Some(v) = non_empty(&run.env) {
            config = config.env(v);
        }
        if let Some(v) = non_empty(&run.exposed_ports) {
            config = config.exposed_ports(v);
        }
        if let Some(v) = &run.user {
            config = config.user(v.clone());
        }
        if let Some(v) = &run.working_dir {
            config = config.working_dir(v.clone());
        }
        if let Some(v) = &run.stop_signal {
            config = config.stop_signal(v.clone());
        }
        if !run.labels.is_empty() {
            config = config.labels(
                run.labels
                    .clone()
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        }
        let configuration = ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(config.build().map_err(spec)?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>())
                    .build()
                    .map_err(spec)?,
            )
            .build()
            .map_err(spec)?;
        let config = Blob::json(MediaType::ImageConfig, &configuration)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config.descriptor()?)
            .layers(
                layers
                    .iter()
                    .map(Blob::descriptor)
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .build()
            .map_err(spec)?;
        let manifest = Blob::json(MediaType::ImageManifest, &manifest)?;
        Ok(Self {
            layers,
            config,
            manifest,
        })
    }

    /// What containerd's CRI reports as a container's `imageID` for this image once imported
    /// (no repository digest): `sha256:<config digest>`. Pulled, it reports
    /// `<repository>@<manifest digest>` instead.
    pub fn id(&self) -> &str {
        &self.config.digest
    }

    /// The manifest digest (what `repo@sha256:…` pins and a registry serves).
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Total bytes of the layers.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(Blob::size).sum()
    }
}

/// Whether `elf` is a 64-bit little-endian ELF executable without a program interpreter
/// (`PT_INTERP`): it needs no dynamic loader or libc in the image.
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6) != Some(&b"\x7fELF\x02\x01"[..]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    let headers_end = usize::from(phnum)
        .checked_mul(usize::from(phentsize))
        .and_then(|n| n.checked_add(phoff));
    if headers_end.is_none_or(|end| end > elf.len()) {
        return false;
    }
    (0..usize::from(phnum))
        .all(|i| u32_at(phoff + i * usize::from(phentsize)).is_some_and(|t| t != PT_INTERP))
}

/// Writes an archive holding `images`, each under its names (normalised references such as
/// `registry.istio.io/testing/proxyv2:1.25.0`). The bytes depend only on the arguments. The
/// file is written beside `path` and renamed into place.
pub fn write_archive(path: &Path, images: &[(&Image, Vec<String>)]) -> Result<(), Error> {
    let bytes = archive(images)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{seq}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))
}

/// The archive's bytes (see [`write_archive`]).
pub fn archive(images: &[(&Image, Vec<String>)]) -> Result<Vec<u8>, Error> {
    let mut blobs: BTreeMap<&str, &Blob> = BTreeMap::new();
    let mut index = Vec::new();
    let mut docker = Vec::new();
    for (image, names) in images {
        for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
            blobs.insert(blob.hex(), blob);
        }
        let names: BTreeSet<&String> = names.iter().collect();
        for name in &names {
            let mut d = image.manifest.descriptor()?;
            d.set_annotations(Some(
                [
                    (CONTAINERD_NAME.to_owned(), (*name).clone()),
                    (OCI_REF_NAME.to_owned(), (*name).clone()),
                ]
                .into(),
            ));
            d.set_platform(Some(
                PlatformBuilder::default()
                    .architecture(Arch::Amd64)
                    .os(Os::Linux)
                    .build()
                    .map_err(spec)?,
            ));
            index.push(d);
        }
        docker.push(serde_json::json!({
            "Config": format!("blobs/sha256/{}", image.config.hex()),
            "RepoTags": names,
            "Layers": image.layers.iter().map(|l| format!("blobs/sha256/{}", l.hex())).collect::<Vec<_>>(),
        }));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(index)
        .build()
        .map_err(spec)?;
    let index = Blob::json(MediaType::ImageIndex, &index)?;
    let docker = serde_json::to_vec(&canonical(Value::Array(docker))).map_err(spec)?;

    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], dir: bool| {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(if dir { 0o755 } else { 0o644 });
        header.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, name, data)
            .map_err(io(format!("archive entry {name}")))
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, false)?;
    add("index.json", &index.bytes, false)?;
    add("manifest.json", &docker, false)?;
    add("blobs/", &[], true)?;
    add("blobs/sha256/", &[], true)?;
    for (hex, blob) in blobs {
        add(&format!("blobs/sha256/{hex}"), &blob.bytes, false)?;
    }
    tar.into_inner().map_err(io("finishing the archive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of each type in `types`.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut e = vec![0u8; 0x40 + 0x38 * types.len()];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            e[0x40 + 0x38 * i..0x44 + 0x38 * i].copy_from_slice(&t.to_le_bytes());
        }
        e
    }

    #[test]
    fn a_static_executable_has_no_interpreter() {
        const LOAD: u32 = 1;
        const INTERP: u32 = 3;
        assert!(is_static_elf(&elf(&[LOAD, LOAD])));
        assert!(!is_static_elf(&elf(&[LOAD, INTERP, LOAD])));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // Program headers past the end of the file: not something we can run.
        let mut cut = elf(&[LOAD]);
        cut.truncate(0x50);
        assert!(!is_static_elf(&cut));
        // This test binary is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
    }

    fn layer() -> Blob {
        Layer::new()
            .file("/usr/local/bin/app", 0o755, b"#!binary".to_vec())
            .unwrap()
            .symlink("/usr/sbin/nginx", "../local/bin/app")
            .unwrap()
            .dir("/tmp", 0o1777)
            .unwrap()
            .build()
            .unwrap()
    }

    fn run(version: &str) -> RunConfig {
        RunConfig {
            entrypoint: vec!["/usr/local/bin/app".into()],
            env: vec![format!("VERSION={version}")],
            exposed_ports: vec!["8080/tcp".into(), "80/tcp".into()],
            labels: [("a".into(), "1".into()), ("b".into(), "2".into())].into(),
            ..RunConfig::default()
        }
    }

    #[test]
    fn same_content_same_bytes_and_digests() {
        let a = Image::new(vec![layer()], &run("1")).unwrap();
        let b = Image::new(vec![layer()], &run("1")).unwrap();
        let c = Image::new(vec![layer()], &run("2")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.id(), c.id());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.layers, c.layers, "one layer shared");
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let one = archive(&[(&a, names(&["x.io/app:1", "x.io/app:stable"]))]).unwrap();
        let two = archive(&[(&b, names(&["x.io/app:stable", "x.io/app:1"]))]).unwrap();
        assert_eq!(one, two, "names are sorted, bytes are stable");
    }

    #[test]
    fn layer_entries_are_sorted_with_parents_and_fixed_metadata() {
        let blob = layer();
        let mut tar = tar::Archive::new(blob.bytes.as_slice());
        let entries: Vec<(String, u32, u64, u64)> = tar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tmp/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/app",
                "usr/sbin/",
                "usr/sbin/nginx"
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 0 && e.3 == 0));
        assert_eq!(entries[0].1, 0o1777);
        assert_eq!(entries[4].1, 0o755);
    }

    #[test]
    fn bad_paths_are_refused() {
        assert!(Layer::new().file("", 0o644, vec![]).is_err());
        assert!(Layer::new().file("a/../b", 0o644, vec![]).is_err());
        let l = Layer::new().file("a", 0o644, vec![]).unwrap();
        assert!(l.file("a/b", 0o644, vec![]).is_err(), "a is a file");
    }

    #[test]
    fn archive_has_the_layout_both_indexes_and_every_blob() {
        let a = Image::new(vec![layer()], &run("1")).unwrap();
        let bytes = archive(&[(&a, vec!["x.io/app:1".into()])]).unwrap();
        let mut tar = tar::Archive::new(bytes.as_slice());
        let mut files = BTreeMap::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(e.path().unwrap().display().to_string(), data);
        }
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], a.digest());
        assert_eq!(m["annotations"][CONTAINERD_NAME], "x.io/app:1");
        assert_eq!(m["annotations"][OCI_REF_NAME], "x.io/app:1");
        assert_eq!(m["platform"]["architecture"], "amd64");
        let docker: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "x.io/app:1");
        for blob in a.layers.iter().chain([&a.config, &a.manifest]) {
            assert_eq!(
                files[&format!("blobs/sha256/{}", blob.hex())],
                *blob.bytes,
                "{}",
                blob.digest
            );
        }
        let config: Value = serde_json::from_slice(&a.config.bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], a.layers[0].digest);
        assert_eq!(
            config["config"]["ExposedPorts"]["80/tcp"],
            serde_json::json!({})
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/app");
        let manifest: Value = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(manifest["config"]["digest"], a.id());
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
    }
}
