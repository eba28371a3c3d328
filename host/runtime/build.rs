//! Builds the engine component (engine-component/ for `wasm32-wasip2`, release) so that
//! `cargo build` and `cargo test` at the root always run the current `.wasm`; nobody runs a wasm
//! step by hand. The nested cargo and its environment are those of
//! `host/build-support/nested_wasm.rs`, which `host/simulation/build.rs` shares. The path of the
//! component is exported as `DIFFTRACKER_ENGINE_WASM` for `env!`.

use anyhow::Result;

include!("../build-support/nested_wasm.rs");

fn main() -> Result<()> {
    let workspace = workspace_root(2)?;
    let engine_dir = workspace.join("engine-component");
    for path in [
        engine_dir.join("src"),
        engine_dir.join("Cargo.toml"),
        workspace.join("wit"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let wasm = build_component(&workspace, "difftracker-engine", "difftracker_engine.wasm")?;
    println!("cargo:rustc-env=DIFFTRACKER_ENGINE_WASM={}", wasm.display());
    Ok(())
}
