//! Builds the misbehaving test engine (`tests/guests/misbehaving/`, `wasm32-wasip2`, release)
//! the way `host/runtime/build.rs` builds the real one (same nested cargo, same target directory
//! `<target>/engine-wasm`, same scrubbed environment: `host/build-support/nested_wasm.rs`), so
//! the hostile-component tests and the demo's `builtin:misbehaving` tenant always run the
//! current `.wasm`. Its path is exported as `DIFFTRACKER_MISBEHAVING_WASM` for `env!`.

use anyhow::Result;

include!("../build-support/nested_wasm.rs");

fn main() -> Result<()> {
    let workspace = workspace_root(2)?;
    let guest_dir = workspace.join("tests").join("guests").join("misbehaving");
    for path in [
        guest_dir.join("src"),
        guest_dir.join("Cargo.toml"),
        workspace.join("wit"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let wasm = build_component(&workspace, "difftracker-misbehaving-engine", "difftracker_misbehaving_engine.wasm")?;
    println!("cargo:rustc-env=DIFFTRACKER_MISBEHAVING_WASM={}", wasm.display());
    Ok(())
}
