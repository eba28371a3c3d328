//! The on-disk cache of compiled components.
//!
//! Compiling the engine with Cranelift takes a noticeable fraction of a second; a precompiled
//! artifact loads in milliseconds. An artifact is only valid for the exact wasmtime build and
//! configuration that produced it, so the key is the SHA-256 of the component's bytes *and* of the
//! engine's [`wasmtime::Engine::precompile_compatibility_hash`]. A corrupt or unreadable entry is
//! recompiled and replaced; writes go through a temporary file and a rename, so concurrent
//! processes never see half an artifact.
//!
//! An artifact is native code that runs as the engine, so nothing is loaded on its name alone:
//!
//! - Next to each `<key>.cwasm` is its **integrity record** `<key>.cwasm.mac`: the key (bound to
//!   the component's SHA-256 and the engine's compatibility hash) and an HMAC-SHA256 of the key
//!   and the artifact's bytes under a per-user secret, the 32 random bytes of the cache's `key`
//!   file. An artifact is deserialized only from the very bytes whose record checked out; a
//!   missing or wrong record (a planted or swapped artifact, a cache written by an older
//!   version) is logged and the component recompiled, and the entry replaced.
//! - The directory is created `0700` and every file in it `0600`. A directory owned by another
//!   user, or writable by its group or others, is not used at all (a warning, then every load
//!   compiles); nor is a key file that is not the user's own and private.
//! - With no `HOME` the default directory is `difftracker-cache-<uid>` under the system's
//!   temporary directory, subject to the same checks, so another user cannot prepare it.

use anyhow::{anyhow, bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

use super::wt;

/// Where the compiled component came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a cached artifact.
    Hit,
    /// Compiled and stored.
    Compiled,
    /// Compiled; no cache configured (or the cache could not be used or written).
    Uncached,
}

/// The cache's secret: `key` in the directory.
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
/// First word of a record; changes with its format.
const RECORD_VERSION: &str = "difftracker-cache-record-v1";
/// Longest artifact read back (the engine's is a few MiB).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// A directory of precompiled components (`<key>.cwasm`, each with its `<key>.cwasm.mac`).
#[derive(Clone, Debug)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ComponentCache { dir: dir.into() }
    }

    /// `$DIFFTRACKER_CACHE_DIR`, else `$XDG_CACHE_HOME/difftracker`, else `~/.cache/difftracker`,
    /// else `difftracker-cache-<uid>` under the system's temporary directory.
    pub fn default_dir() -> PathBuf {
        default_dir_from(|name| std::env::var_os(name), std::env::temp_dir(), current_uid())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_for(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// The integrity record of the artifact of `key`.
    pub fn record_path_for(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm.mac"))
    }

    /// Loads the verified artifact for `bytes`, or compiles and stores it.
    pub fn load_or_compile(&self, engine: &wasmtime::Engine, bytes: &[u8]) -> Result<(Component, CacheOutcome)> {
        let secret = match self.open() {
            Ok(secret) => secret,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %format!("{e:#}"), "not using the compiled-component cache");
                return Ok((compile(engine, bytes)?, CacheOutcome::Uncached));
            }
        };
        let key = cache_key(engine, bytes);
        let path = self.path_for(&key);
        match self.read_verified(&secret, &key) {
            Ok(None) => {}
            Ok(Some(artifact)) => {
                // SAFETY: these are the bytes `Component::serialize` wrote for this component and
                // this engine configuration: their record's MAC, under a secret only this user
                // can read, binds them to the key (component hash and compatibility hash), and
                // they are deserialized from memory, not re-read from the file. wasmtime also
                // checks the artifact's header before using it.
                match unsafe { Component::deserialize(engine, &artifact) } {
                    Ok(component) => return Ok((component, CacheOutcome::Hit)),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached component"),
                }
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %format!("{e:#}"),
                "refusing a cached component that fails its integrity check; recompiling"
            ),
        }
        let component = compile(engine, bytes)?;
        match self.store(&secret, &key, &component) {
            Ok(()) => Ok((component, CacheOutcome::Compiled)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot cache compiled component");
                Ok((component, CacheOutcome::Uncached))
            }
        }
    }

    /// Creates the directory (`0700`) if needed, checks it is the user's own and private, and
    /// returns its secret (creating it on first use).
    fn open(&self) -> Result<[u8; KEY_LEN]> {
        create_private_dir(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let meta = std::fs::metadata(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?;
        if let Some(problem) = dir_problem(&meta, current_uid()) {
            bail!("{} {problem}", self.dir.display());
        }
        let key_path = self.dir.join(KEY_FILE);
        if let Some(secret) = read_secret(&key_path)? {
            return Ok(secret);
        }
        // First use: publish a fresh secret without overwriting one another process just wrote.
        let mut secret = [0u8; KEY_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut secret))
            .context("reading random bytes for the cache key")?;
        let tmp = self.dir.join(format!("{KEY_FILE}.tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, &secret)?;
        let linked = std::fs::hard_link(&tmp, &key_path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", key_path.display())),
        }
        read_secret(&key_path)?.ok_or_else(|| anyhow!("{} vanished", key_path.display()))
    }

    /// The artifact of `key` if its record checks out; `None` if there is no artifact.
    fn read_verified(&self, secret: &[u8; KEY_LEN], key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_for(key);
        let artifact = match std::fs::File::open(&path) {
            Ok(file) => {
                let mut bytes = Vec::new();
                file.take(MAX_ARTIFACT_BYTES).read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record_path = self.record_path_for(key);
        let mut record = String::new();
        std::fs::File::open(&record_path)
            .and_then(|f| f.take(4096).read_to_string(&mut record))
            .with_context(|| format!("reading its integrity record {}", record_path.display()))?;
        let mut words = record.split_whitespace();
        let (version, recorded_key, mac) = (words.next(), words.next(), words.next());
        if version != Some(RECORD_VERSION) || recorded_key != Some(key) {
            bail!("its integrity record {} is not a record of this component and engine", record_path.display());
        }
        let mac = mac.and_then(unhex).ok_or_else(|| anyhow!("its integrity record {} is malformed", record_path.display()))?;
        artifact_mac(secret, key, &artifact)
            .verify_slice(&mac)
            .map_err(|_| anyhow!("the artifact does not match its integrity record {}", record_path.display()))?;
        Ok(Some(artifact))
    }

    fn store(&self, secret: &[u8; KEY_LEN], key: &str, component: &Component) -> Result<()> {
        let artifact = component.serialize().map_err(wt)?;
        let mac = hex(&artifact_mac(secret, key, &artifact).finalize().into_bytes());
        let record = format!("{RECORD_VERSION} {key} {mac}\n");
        let path = self.path_for(key);
        let record_path = self.record_path_for(key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let tmp_record = path.with_extension(format!("mac.tmp{}", std::process::id()));
        write_private(&tmp, &artifact)?;
        write_private(&tmp_record, record.as_bytes())?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        std::fs::rename(&tmp_record, &record_path)
            .with_context(|| format!("renaming {} to {}", tmp_record.display(), record_path.display()))?;
        Ok(())
    }
}

/// HMAC-SHA256 of the key and the artifact under the cache's secret.
fn artifact_mac(secret: &[u8; KEY_LEN], key: &str, artifact: &[u8]) -> Hmac<Sha256> {
    // A 32-byte key is always a valid HMAC key.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(RECORD_VERSION.as_bytes());
    mac.update(b"\0");
    mac.update(key.as_bytes());
    mac.update(b"\0");
    mac.update(artifact);
    mac
}

fn default_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>, tmp: PathBuf, uid: u32) -> PathBuf {
    if let Some(dir) = var("DIFFTRACKER_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("difftracker");
    }
    if let Some(home) = var("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("difftracker");
    }
    tmp.join(format!("difftracker-cache-{uid}"))
}

#[cfg(unix)]
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(not(unix))]
fn current_uid() -> u32 {
    0
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(_dir: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("the compiled-component cache needs Unix file permissions"))
}

/// Creates `path` (which must not exist) readable and writable by the user only, with `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> std::io::Result<()> {
        let mut file = options.open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// The secret in `path`; `None` if there is none yet. One that is not the user's own, not
/// private or not 32 bytes is an error: the cache is not used.
fn read_secret(path: &Path) -> Result<Option<[u8; KEY_LEN]>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != current_uid() || meta.mode() & 0o077 != 0 {
            bail!("the cache key {} must be the user's own with mode 0600 (remove it to start over)", path.display());
        }
    }
    let mut secret = [0u8; KEY_LEN];
    if meta.len() != KEY_LEN as u64 || file.read_exact(&mut secret).is_err() {
        bail!("the cache key {} is not {KEY_LEN} bytes (remove it to start over)", path.display());
    }
    Ok(Some(secret))
}

/// Why a cache directory must not be used: owned by someone other than `uid`, writable by its
/// group or others, or not a directory.
#[cfg(unix)]
fn dir_problem(meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() {
        return Some("is not a directory".into());
    }
    if meta.uid() != uid {
        return Some(format!("is owned by uid {}, not by this user (uid {uid})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!("is writable by its group or others (mode {:o}); make it 0700", meta.mode() & 0o7777));
    }
    None
}

#[cfg(not(unix))]
fn dir_problem(_meta: &std::fs::Metadata, _uid: u32) -> Option<String> {
    Some("cannot be checked for ownership on this platform".into())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

pub fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component> {
    Component::new(engine, bytes).map_err(wt).context("compiling the engine component")
}

/// Hex SHA-256 of the component's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The cache key: SHA-256 over the component's bytes and the engine's compatibility hash.
pub fn cache_key(engine: &wasmtime::Engine, bytes: &[u8]) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    hasher.0.update(b"difftracker component cache v1\0");
    hasher.0.update(Sha256::digest(bytes));
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize())
}

/// Feeds `Hash` input into SHA-256, so the key is stable across processes (unlike `DefaultHasher`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_directory_owned_by_another_user_or_open_to_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("difftracker-cache-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let set = |mode: u32| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(&dir).unwrap()
        };
        let me = set(0o700).uid();
        assert_eq!(dir_problem(&set(0o700), me), None);
        assert_eq!(dir_problem(&set(0o755), me), None, "readable by others is fine: nothing in it is secret but the key");
        let foreign = dir_problem(&set(0o700), me.wrapping_add(1)).expect("refused");
        assert!(foreign.contains(&format!("owned by uid {me}")), "{foreign}");
        for mode in [0o770, 0o707, 0o777, 0o1777] {
            let open = dir_problem(&set(mode), me).expect("refused");
            assert!(open.contains("writable by its group or others"), "{mode:o}: {open}");
        }
        let file = dir.join("f");
        std::fs::write(&file, b"").unwrap();
        set(0o700);
        assert!(dir_problem(&std::fs::metadata(&file).unwrap(), me).unwrap().contains("not a directory"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_home_the_cache_is_a_directory_of_the_user_under_the_temporary_directory() {
        let none = |_: &str| None;
        assert_eq!(default_dir_from(none, PathBuf::from("/tmp"), 1234), PathBuf::from("/tmp/difftracker-cache-1234"));
        let home = |name: &str| (name == "HOME").then(|| std::ffi::OsString::from("/home/u"));
        assert_eq!(default_dir_from(home, PathBuf::from("/tmp"), 1234), PathBuf::from("/home/u/.cache/difftracker"));
        let explicit = |name: &str| (name == "DIFFTRACKER_CACHE_DIR" || name == "HOME").then(|| std::ffi::OsString::from("/x"));
        assert_eq!(default_dir_from(explicit, PathBuf::from("/tmp"), 1234), PathBuf::from("/x"));
    }
}
