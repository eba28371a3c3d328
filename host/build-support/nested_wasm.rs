// Shared by the build scripts that build a `wasm32-wasip2` component with a nested cargo
// (`host/runtime/build.rs`: the engine, WIT 0.3.0; `host/simulation/build.rs`: the misbehaving
// test engine, and the same engine built for WIT 0.2.0 as a test fixture); each `include!`s this
// file, so all scrub the environment the same way.
//
// The nested cargo gets its own target directory (`<target>/engine-wasm`): sharing the outer one
// would deadlock on its build lock. Two nested builds into that directory take turns on its lock.
// A build with other features of the same package (the 0.2.0 engine) gets a directory of its own
// (`Build::dir`), since cargo writes both artifacts to the same file name.
// Variables that the outer cargo exports to build scripts and that would leak into the nested
// build (flags for another target, the outer target dir, the jobserver, wrappers such as coverage
// tools) are removed.

const WASM_TARGET: &str = "wasm32-wasip2";
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// The workspace root, `levels` directories above this crate's manifest.
fn workspace_root(levels: usize) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    Ok(manifest_dir.ancestors().nth(levels).context("the crate is not where the build script expects it in the workspace")?.to_path_buf())
}

/// One nested build: a workspace member, the file name cargo gives its component, its features
/// and the directory under the target directory it builds in.
struct Build<'a> {
    package: &'a str,
    artifact: &'a str,
    features: &'a [&'a str],
    dir: &'a str,
}

impl<'a> Build<'a> {
    /// `package` with its default features, in `<target>/engine-wasm`.
    fn new(package: &'a str, artifact: &'a str) -> Build<'a> {
        Build { package, artifact, features: &[], dir: "engine-wasm" }
    }
}

/// Builds `package` (a workspace member) for `wasm32-wasip2` in release, checks that the result
/// is a component and returns its path. `artifact` is the file name cargo gives it.
fn build_component(workspace: &std::path::Path, package: &str, artifact: &str) -> anyhow::Result<std::path::PathBuf> {
    build(workspace, &Build::new(package, artifact))
}

/// [`build_component`] of a [`Build`].
fn build(workspace: &std::path::Path, build: &Build<'_>) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::{bail, Context};
    let Build { package, artifact, features, dir } = *build;
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(target) => absolute(workspace, std::path::Path::new(&target)).join(dir),
        None => workspace.join("target").join(dir),
    };

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    ensure_wasm_target(&rustc)?;

    let mut cmd = std::process::Command::new(&cargo);
    cmd.current_dir(workspace).args(["build", "-p", package, "--release", "--target", WASM_TARGET, "--target-dir"]).arg(&target_dir);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    scrub_env(&mut cmd);
    let output = cmd.output().with_context(|| format!("running {cargo:?} to build the component {package}"))?;
    if !output.status.success() {
        bail!(
            "building the component {package} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let wasm = target_dir.join(WASM_TARGET).join("release").join(artifact);
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    if bytes.len() < 8 || bytes[..8] != COMPONENT_HEADER {
        bail!("{} is not a WebAssembly component (header {:02x?})", wasm.display(), &bytes[..bytes.len().min(8)]);
    }
    Ok(wasm)
}

fn absolute(base: &std::path::Path, path: &std::path::Path) -> std::path::PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Installs the wasm32-wasip2 standard library through rustup when this toolchain lacks it.
fn ensure_wasm_target(rustc: &std::ffi::OsStr) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    use std::process::Command;
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = libdir
        .as_ref()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .map(|mut entries| entries.any(|e| e.map(|e| e.file_name().to_string_lossy().starts_with("libstd")).unwrap_or(false)))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", WASM_TARGET]);
    // Install into the toolchain that runs this build (rustup's proxy exports RUSTUP_TOOLCHAIN).
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    let status = cmd.status().context("the wasm32-wasip2 target is missing and `rustup` could not be run")?;
    if !status.success() {
        bail!("`rustup target add {WASM_TARGET}` failed ({status}); install the target and build again");
    }
    Ok(())
}

/// Removes what the outer cargo exports to build scripts and a nested cargo would misread.
fn scrub_env(cmd: &mut std::process::Command) {
    const EXACT: &[&str] = &[
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_INCREMENTAL",
        "CARGO_LLVM_COV",
        "CARGO_LLVM_COV_TARGET_DIR",
        "LLVM_PROFILE_FILE",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTC_LINKER",
        "RUSTDOC",
    ];
    const PREFIXES: &[&str] = &["CARGO_CFG_", "CARGO_FEATURE_", "CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_PROFILE_", "CARGO_TARGET_"];
    for name in EXACT {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if PREFIXES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(name.as_ref());
        }
    }
}
