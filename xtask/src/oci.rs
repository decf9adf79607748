//! Wasm filters as OCI images that Istio's and Envoy Gateway's fetchers accept, built without a
//! container engine, byte-for-byte reproducible, and pushed with the OCI distribution API.
//!
//! Two layouts:
//! - **compat** (default, widest support): an ordinary image whose single layer
//!   (`application/vnd.oci.image.layer.v1.tar+gzip`) is a tar.gz holding `plugin.wasm`; the
//!   manifest carries `module.wasm.image/variant: compat`.
//! - **oci**: config `application/vnd.module.wasm.config.v1+json` and two layers: that runtime
//!   config and the module itself (`application/vnd.module.wasm.content.layer.v1+wasm`).
//!
//! Reproducible: tar entries have mtime 0, uid/gid 0, mode 0644; gzip has mtime 0 and no name;
//! no `created` time anywhere. The same `.wasm` always gives the same manifest digest.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const IMAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const TAR_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

/// Which image layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Compat,
    Oci,
}

impl std::str::FromStr for Variant {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> {
        match s {
            "compat" => Ok(Variant::Compat),
            "oci" => Ok(Variant::Oci),
            other => Err(OciError::Usage(format!("unknown variant {other:?}: use compat (default) or oci"))),
        }
    }
}

/// Why packaging or pushing failed; every message says what to do.
#[derive(Debug)]
pub enum OciError {
    Usage(String),
    Io(String, std::io::Error),
    Unreachable { registry: String, detail: String },
    Auth { registry: String, status: u16 },
    Refused { what: String, status: u16, body: String },
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OciError::Usage(m) => f.write_str(m),
            OciError::Io(what, e) => write!(f, "{what}: {e}"),
            OciError::Unreachable { registry, detail } => {
                write!(f, "registry {registry} is unreachable ({detail}): check the address, and that it is running")
            }
            OciError::Auth { registry, status } => write!(
                f,
                "registry {registry} refused the credentials (HTTP {status}): log in with `docker login {registry}` or set UG_REGISTRY_USERNAME and UG_REGISTRY_PASSWORD"
            ),
            OciError::Refused { what, status, body } => {
                write!(f, "the registry refused {what}: HTTP {status}: {}", body.chars().take(300).collect::<String>())
            }
        }
    }
}

impl std::error::Error for OciError {}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

impl Blob {
    fn descriptor(&self) -> Value {
        let mut d = json!({"mediaType": self.media_type, "digest": digest(&self.bytes), "size": self.bytes.len()});
        if !self.annotations.is_empty() {
            d["annotations"] = json!(self.annotations);
        }
        d
    }
}

/// A built image: manifest, config and layers.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// sha256 (hex) of the `.wasm`: what Envoy's `remote` source and `http(s)` URLs pin.
    pub wasm_sha256: String,
}

impl Image {
    /// `sha256:<hex>` of the manifest: what `oci://` URLs pin.
    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }
}

/// Image annotations (`org.opencontainers.image.*`).
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    pub title: String,
    pub version: String,
    pub revision: String,
    pub source: String,
}

/// A tar.gz holding `plugin.wasm`, byte-for-byte reproducible.
pub fn plugin_tar_gz(wasm: &[u8]) -> Result<Vec<u8>, OciError> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_path("plugin.wasm").map_err(|e| OciError::Io("tar path".into(), e))?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, wasm).map_err(|e| OciError::Io("tar".into(), e))?;
    let tar_bytes = tar.into_inner().map_err(|e| OciError::Io("tar".into(), e))?;
    let mut gz = flate2::GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar_bytes).map_err(|e| OciError::Io("gzip".into(), e))?;
    gz.finish().map_err(|e| OciError::Io("gzip".into(), e))
}

fn uncompressed_tar_digest(gz: &[u8]) -> Result<String, OciError> {
    let mut out = Vec::new();
    std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut out).map_err(|e| OciError::Io("gunzip".into(), e))?;
    Ok(digest(&out))
}

/// Builds the image of one filter.
pub fn build_image(wasm: &[u8], variant: Variant, ann: &Annotations) -> Result<Image, OciError> {
    if !wasm.starts_with(b"\0asm") {
        return Err(OciError::Usage("not a WebAssembly module (it does not start with \\0asm)".into()));
    }
    let mut annotations = BTreeMap::from([
        ("org.opencontainers.image.title".to_string(), ann.title.clone()),
        ("org.opencontainers.image.version".to_string(), ann.version.clone()),
        ("org.opencontainers.image.revision".to_string(), ann.revision.clone()),
        ("org.opencontainers.image.source".to_string(), ann.source.clone()),
    ]);
    let (config, layers) = match variant {
        Variant::Compat => {
            annotations.insert("module.wasm.image/variant".into(), "compat".into());
            let layer = plugin_tar_gz(wasm)?;
            let config = json!({
                "architecture": "wasm",
                "os": "wasip1",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [uncompressed_tar_digest(&layer)?]},
            });
            (
                Blob {
                    media_type: IMAGE_CONFIG_MEDIA_TYPE.into(),
                    bytes: config.to_string().into_bytes(),
                    annotations: BTreeMap::new(),
                },
                vec![Blob { media_type: TAR_GZIP_LAYER.into(), bytes: layer, annotations: BTreeMap::new() }],
            )
        }
        Variant::Oci => {
            let runtime =
                json!({"type": "envoy_proxy", "abiVersions": ["v0-0.2.1"], "config": {"rootIds": [ann.title]}});
            let runtime = runtime.to_string().into_bytes();
            let title = |t: &str| BTreeMap::from([("org.opencontainers.image.title".to_string(), t.to_string())]);
            (
                Blob {
                    media_type: WASM_CONFIG_MEDIA_TYPE.into(),
                    bytes: runtime.clone(),
                    annotations: BTreeMap::new(),
                },
                vec![
                    Blob {
                        media_type: WASM_CONFIG_MEDIA_TYPE.into(),
                        bytes: runtime,
                        annotations: title("runtime-config.json"),
                    },
                    Blob {
                        media_type: WASM_LAYER_MEDIA_TYPE.into(),
                        bytes: wasm.to_vec(),
                        annotations: title("plugin.wasm"),
                    },
                ],
            )
        }
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    Ok(Image { manifest: manifest.to_string().into_bytes(), config, layers, wasm_sha256: hex(&Sha256::digest(wasm)) })
}

/// Writes the image as an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
pub fn write_layout(image: &Image, dir: &Path, tag: &str) -> Result<(), OciError> {
    let io = |what: &str| {
        let what = format!("{what} in {}", dir.display());
        move |e| OciError::Io(what, e)
    };
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io("create"))?;
    let mut all: Vec<&[u8]> = vec![&image.manifest, &image.config.bytes];
    all.extend(image.layers.iter().map(|l| l.bytes.as_slice()));
    for bytes in all {
        let name = digest(bytes).trim_start_matches("sha256:").to_string();
        std::fs::write(blobs.join(name), bytes).map_err(io("write blob"))?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("write oci-layout"))?;
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": MANIFEST_MEDIA_TYPE, "digest": image.manifest_digest(), "size": image.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).map_err(io("write index.json"))
}

/// `host[:port]/repo/path:tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl std::str::FromStr for Reference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> {
        let s = s.trim_start_matches("oci://");
        let bad = || {
            OciError::Usage(format!(
                "{s:?} is not an image reference like 127.0.0.1:5000/upstream-guard/diagnostics:0.1.0"
            ))
        };
        let (registry, rest) = s.split_once('/').ok_or_else(bad)?;
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (rest, "latest"),
        };
        if registry.is_empty() || repository.is_empty() || tag.is_empty() {
            return Err(bad());
        }
        Ok(Reference { registry: registry.into(), repository: repository.into(), tag: tag.into() })
    }
}

impl Reference {
    /// Plain HTTP for loopback registries, HTTPS for everything else.
    pub fn base_url(&self) -> String {
        let host = self.registry.rsplit_once(':').map_or(self.registry.as_str(), |(h, _)| h);
        let plain = matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.starts_with("127.");
        format!("{}://{}", if plain { "http" } else { "https" }, self.registry)
    }
}

/// Credentials: `UG_REGISTRY_USERNAME` / `UG_REGISTRY_PASSWORD`, else `~/.docker/config.json`.
fn basic_auth(registry: &str) -> Option<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    if let (Ok(u), Ok(p)) = (std::env::var("UG_REGISTRY_USERNAME"), std::env::var("UG_REGISTRY_PASSWORD")) {
        return Some(format!("Basic {}", b64.encode(format!("{u}:{p}"))));
    }
    let home = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let cfg: Value = serde_json::from_slice(&std::fs::read(home.join("config.json")).ok()?).ok()?;
    let auth = cfg["auths"][registry]["auth"].as_str()?;
    Some(format!("Basic {auth}"))
}

/// A push session: one registry, one repository, auth negotiated on the first 401.
struct Session {
    reference: Reference,
    agent: ureq::Agent,
    auth: Option<String>,
}

impl Session {
    fn send(
        &mut self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &[u8],
        what: &str,
    ) -> Result<ureq::Response, OciError> {
        for attempt in 0..2 {
            let mut req = self.agent.request(method, url);
            if let Some(a) = &self.auth {
                req = req.set("Authorization", a);
            }
            if let Some(ct) = content_type {
                req = req.set("Content-Type", ct);
            }
            match req.send_bytes(body) {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if attempt == 0 => self.authenticate(&r)?,
                Err(ureq::Error::Status(s @ (401 | 403), _)) => {
                    return Err(OciError::Auth { registry: self.reference.registry.clone(), status: s })
                }
                Err(ureq::Error::Status(status, r)) => {
                    return Err(OciError::Refused {
                        what: what.into(),
                        status,
                        body: r.into_string().unwrap_or_default(),
                    })
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(OciError::Unreachable {
                        registry: self.reference.registry.clone(),
                        detail: t.to_string(),
                    })
                }
            }
        }
        Err(OciError::Auth { registry: self.reference.registry.clone(), status: 401 })
    }

    /// Basic auth, or a bearer token from the realm the registry names.
    fn authenticate(&mut self, challenge: &ureq::Response) -> Result<(), OciError> {
        let basic = basic_auth(&self.reference.registry);
        let header = challenge.header("www-authenticate").unwrap_or_default().to_string();
        let Some(params) = header.strip_prefix("Bearer ") else {
            self.auth = basic;
            return if self.auth.is_some() {
                Ok(())
            } else {
                Err(OciError::Auth { registry: self.reference.registry.clone(), status: 401 })
            };
        };
        let field = |name: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_string())
            })
        };
        let realm = field("realm").ok_or(OciError::Auth { registry: self.reference.registry.clone(), status: 401 })?;
        let mut req = self.agent.get(&realm);
        if let Some(service) = field("service") {
            req = req.query("service", &service);
        }
        req = req.query("scope", &format!("repository:{}:pull,push", self.reference.repository));
        if let Some(b) = &basic {
            req = req.set("Authorization", b);
        }
        let token: Value = req
            .call()
            .map_err(|_| OciError::Auth { registry: self.reference.registry.clone(), status: 401 })?
            .into_string()
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let t = token["token"].as_str().or(token["access_token"].as_str()).unwrap_or_default();
        self.auth = Some(format!("Bearer {t}"));
        Ok(())
    }

    fn push_blob(&mut self, blob: &[u8]) -> Result<(), OciError> {
        let base = self.reference.base_url();
        let repo = self.reference.repository.clone();
        let d = digest(blob);
        let head = self.agent.head(&format!("{base}/v2/{repo}/blobs/{d}"));
        let head = match &self.auth {
            Some(a) => head.set("Authorization", a),
            None => head,
        };
        if head.call().is_ok() {
            return Ok(());
        }
        let started = self.send("POST", &format!("{base}/v2/{repo}/blobs/uploads/"), None, &[], "the upload")?;
        let location = started.header("location").unwrap_or_default().to_string();
        let location = if location.starts_with("http") { location } else { format!("{base}{location}") };
        let sep = if location.contains('?') { '&' } else { '?' };
        self.send(
            "PUT",
            &format!("{location}{sep}digest={d}"),
            Some("application/octet-stream"),
            blob,
            &format!("blob {d}"),
        )?;
        Ok(())
    }
}

/// Pushes `image` to `reference`; returns the manifest digest the registry reports (or ours).
pub fn push(image: &Image, reference: &Reference) -> Result<String, OciError> {
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(60)).build();
    let mut s = Session { reference: reference.clone(), agent, auth: None };
    s.push_blob(&image.config.bytes)?;
    for l in &image.layers {
        s.push_blob(&l.bytes)?;
    }
    let url = format!("{}/v2/{}/manifests/{}", reference.base_url(), reference.repository, reference.tag);
    let r = s.send("PUT", &url, Some(MANIFEST_MEDIA_TYPE), &image.manifest, "the manifest")?;
    Ok(r.header("docker-content-digest").map(str::to_string).unwrap_or_else(|| image.manifest_digest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    fn ann() -> Annotations {
        Annotations {
            title: "diagnostics".into(),
            version: "0.1.0".into(),
            revision: "abc".into(),
            source: "https://example.invalid/ug".into(),
        }
    }

    #[test]
    fn the_same_wasm_gives_the_same_digest() {
        let a = build_image(WASM, Variant::Compat, &ann()).unwrap();
        let b = build_image(WASM, Variant::Compat, &ann()).unwrap();
        assert_eq!(a.manifest_digest(), b.manifest_digest());
        assert_ne!(
            a.manifest_digest(),
            build_image(b"\0asm\x01\0\0\0\0", Variant::Compat, &ann()).unwrap().manifest_digest()
        );
    }

    #[test]
    fn compat_has_one_tar_gz_layer_holding_plugin_wasm() {
        let img = build_image(WASM, Variant::Compat, &ann()).unwrap();
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);
        assert_eq!(m["layers"][0]["mediaType"], TAR_GZIP_LAYER);
        assert_eq!(m["annotations"]["module.wasm.image/variant"], "compat");
        assert_eq!(m["annotations"]["org.opencontainers.image.title"], "diagnostics");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(img.layers[0].bytes.as_slice()));
        let mut entries = archive.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("plugin.wasm"));
        assert_eq!((e.header().mtime().unwrap(), e.header().uid().unwrap()), (0, 0));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        assert_eq!(bytes, WASM);
    }

    #[test]
    fn oci_variant_has_the_wasm_config_and_two_layers() {
        let img = build_image(WASM, Variant::Oci, &ann()).unwrap();
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m["config"]["mediaType"], WASM_CONFIG_MEDIA_TYPE);
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[1]["mediaType"], WASM_LAYER_MEDIA_TYPE);
        assert_eq!(img.layers[1].bytes, WASM);
    }

    #[test]
    fn non_wasm_input_is_refused() {
        assert!(matches!(build_image(b"hello", Variant::Compat, &ann()), Err(OciError::Usage(_))));
    }

    #[test]
    fn references_parse_and_pick_the_scheme() {
        let r: Reference = "127.0.0.1:5000/ug/diagnostics:0.1.0".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("127.0.0.1:5000", "ug/diagnostics", "0.1.0")
        );
        assert_eq!(r.base_url(), "http://127.0.0.1:5000");
        let r: Reference = "oci://ghcr.io/acme/ug".parse().unwrap();
        assert_eq!((r.tag.as_str(), r.base_url().as_str()), ("latest", "https://ghcr.io"));
        assert!("no-slash".parse::<Reference>().is_err());
    }
}
