//! The on-disk cache of compiled components.
//!
//! Compiling the engine with Cranelift takes a noticeable fraction of a second; a precompiled
//! artifact loads in milliseconds. An artifact is only valid for the exact wasmtime build and
//! configuration that produced it, so the key is the SHA-256 of the component's bytes *and* of the
//! engine's [`wasmtime::Engine::precompile_compatibility_hash`]. A corrupt or unreadable entry is
//! recompiled and replaced; writes go through a temporary file and a rename, so concurrent
//! processes never see half an artifact.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
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
    /// Compiled; no cache configured (or the cache could not be written).
    Uncached,
}

/// A directory of precompiled components (`<key>.cwasm`).
#[derive(Clone, Debug)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ComponentCache { dir: dir.into() }
    }

    /// `$DIFFTRACKER_CACHE_DIR`, else `$XDG_CACHE_HOME/difftracker`, else `~/.cache/difftracker`,
    /// else a directory under the system's temporary directory.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("DIFFTRACKER_CACHE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("difftracker");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(home).join(".cache").join("difftracker");
        }
        std::env::temp_dir().join("difftracker-cache")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_for(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// Loads the artifact for `bytes`, or compiles and stores it.
    pub fn load_or_compile(&self, engine: &wasmtime::Engine, bytes: &[u8]) -> Result<(Component, CacheOutcome)> {
        let path = self.path_for(&cache_key(engine, bytes));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of this same wasmtime
            // configuration (its name carries the compatibility hash) into a directory only this
            // program writes; wasmtime also checks the artifact's header before using it.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached component"),
            }
        }
        let component = compile(engine, bytes)?;
        match self.store(&path, &component) {
            Ok(()) => Ok((component, CacheOutcome::Compiled)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot cache compiled component");
                Ok((component, CacheOutcome::Uncached))
            }
        }
    }

    fn store(&self, path: &Path, component: &Component) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let artifact = component.serialize().map_err(wt)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, artifact).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }
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
