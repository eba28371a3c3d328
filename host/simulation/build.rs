//! Builds the misbehaving test engine (`tests/guests/misbehaving/`, `wasm32-wasip2`, release)
//! the way `host/runtime/build.rs` builds the real one (same nested cargo, same target directory
//! `<target>/engine-wasm`, same scrubbed environment: `host/build-support/nested_wasm.rs`), so
//! the hostile-component tests and the demo's `builtin:misbehaving` tenant always run the
//! current `.wasm`. Its path is exported as `DIFFTRACKER_MISBEHAVING_WASM` for `env!`.
//!
//! It also builds the engine for the previous WIT generation, `clb:difftracker@0.2.0`
//! (`cargo build -p difftracker-engine --features wit-0-2`, in `<target>/engine-wasm-0.2`), the
//! fixture of the tests that run 0.2.0 components and swap a tenant across generations; its path
//! is exported as `DIFFTRACKER_ENGINE_V0_2_WASM`.

use anyhow::Result;

include!("../build-support/nested_wasm.rs");

fn main() -> Result<()> {
    let workspace = workspace_root(2)?;
    let guest_dir = workspace.join("tests").join("guests").join("misbehaving");
    let engine_dir = workspace.join("engine-component");
    for path in [
        guest_dir.join("src"),
        guest_dir.join("Cargo.toml"),
        engine_dir.join("src"),
        engine_dir.join("Cargo.toml"),
        workspace.join("wit"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let wasm = build_component(&workspace, "difftracker-misbehaving-engine", "difftracker_misbehaving_engine.wasm")?;
    println!("cargo:rustc-env=DIFFTRACKER_MISBEHAVING_WASM={}", wasm.display());
    let v0_2 = Build { features: &["wit-0-2"], dir: "engine-wasm-0.2", ..Build::new("difftracker-engine", "difftracker_engine.wasm") };
    let wasm = build(&workspace, &v0_2)?;
    println!("cargo:rustc-env=DIFFTRACKER_ENGINE_V0_2_WASM={}", wasm.display());
    Ok(())
}
