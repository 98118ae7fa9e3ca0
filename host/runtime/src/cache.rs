//! Compiled plugins on disk: `<dir>/<sha256 of the wasm>-<engine compatibility hash>.cwasm`, with
//! a `.sha256` file beside it holding the digest of the compiled bytes. A compiled artifact is
//! native code, so it is only loaded when its digest matches; anything else is recompiled.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The engine's compatibility hash as hex: artifacts are only valid for the same wasmtime
/// version and configuration.
pub fn engine_key(engine: &Engine) -> String {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Compiles `wasm` (whose digest is `sha`), using and filling the cache in `dir` when given.
pub fn compile(
    engine: &Engine,
    dir: Option<&Path>,
    sha: &str,
    wasm: &[u8],
) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, wasm);
    };
    let artifact = dir.join(format!("{sha}-{}.cwasm", engine_key(engine)));
    let digest_file = PathBuf::from(format!("{}.sha256", artifact.display()));
    if let (Ok(bytes), Ok(expected)) = (
        std::fs::read(&artifact),
        std::fs::read_to_string(&digest_file),
    ) {
        if sha256_hex(&bytes) == expected.trim() {
            return deserialize(engine, &bytes);
        }
        tracing::warn!(artifact = %artifact.display(), "compiled plugin does not match its digest; recompiling");
    }
    let bytes = engine.precompile_component(wasm)?;
    std::fs::create_dir_all(dir)?;
    // write to temporary names and rename, so a crash never leaves a half-written artifact
    // (unique per writer: two compiles of one plugin at once must not rename each other's file)
    static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = artifact.with_extension(format!("cwasm.{}-{n}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::write(&digest_file, sha256_hex(&bytes))?;
    std::fs::rename(&tmp, &artifact)?;
    deserialize(engine, &bytes)
}

/// Removes what `compile` cached for `sha` (a plugin that compiled but was then refused).
pub fn discard(engine: &Engine, dir: Option<&Path>, sha: &str) {
    if let Some(dir) = dir {
        let artifact = dir.join(format!("{sha}-{}.cwasm", engine_key(engine)));
        let _ = std::fs::remove_file(format!("{}.sha256", artifact.display()));
        let _ = std::fs::remove_file(artifact);
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `bytes` is either what `precompile_component` just produced in this process, or a
    // file this function wrote earlier whose SHA-256 matches the digest recorded beside it. The
    // engine itself checks that the artifact was made by a compatible engine and configuration.
    unsafe { Component::deserialize(engine, bytes) }
}
