//! What the Python tests share: the virtual environment `target/py-venv` (or
//! `$DIFFTRACKER_PY_VENV`), made by `tests/python/setup.sh` from `tests/python/requirements.txt`
//! when it is missing or stale, and a bounded runner of its interpreter.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound of the setup and of the pytest run; only reached when something hangs.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(900);
pub const TEST_PATIENCE: Duration = Duration::from_secs(300);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate lives in the repository").to_path_buf()
}

pub fn venv_dir(root: &Path) -> PathBuf {
    match std::env::var_os("DIFFTRACKER_PY_VENV").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => root.join("target").join("py-venv"),
    }
}

/// Runs `cmd` to completion within `patience`; returns (success, stdout + stderr).
pub fn run(mut cmd: Command, patience: Duration) -> (bool, String) {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let out_path = std::env::temp_dir().join(format!("difftracker-py-{}-{stamp}.log", std::process::id()));
    let log = std::fs::File::create(&out_path).expect("a log file in the temp directory");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (set DIFFTRACKER_SKIP_PYTHON=1 to skip the Python tests)"));
    let deadline = Instant::now() + patience;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match status {
        Some(s) => (s.success(), output),
        None => (false, format!("{output}\n(killed after {} s)", patience.as_secs())),
    }
}

/// The venv's python, after making the venv if it is missing or stale.
pub fn python(root: &Path) -> PathBuf {
    let venv = venv_dir(root);
    let python = venv.join("bin").join("python");
    let requirements = std::fs::read_to_string(root.join("tests/python/requirements.txt")).expect("tests/python/requirements.txt");
    let marker = std::fs::read_to_string(venv.join(".difftracker-requirements")).unwrap_or_default();
    if python.exists() && marker == requirements {
        return python;
    }
    eprintln!("making the Python environment at {} (tests/python/setup.sh)", venv.display());
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("tests/python/setup.sh")).env("DIFFTRACKER_PY_VENV", &venv).current_dir(root);
    let (ok, output) = run(cmd, SETUP_PATIENCE);
    assert!(
        ok,
        "tests/python/setup.sh failed, so the Python test packages could not be installed (does pip reach the Python package \
         registry?). Set DIFFTRACKER_SKIP_PYTHON=1 to skip the Python tests on purpose.\n{output}"
    );
    assert!(python.exists(), "setup.sh made no {}", python.display());
    python
}

/// The repository root and the venv's python, made off the async runtime; `None` (after saying
/// so) when `DIFFTRACKER_SKIP_PYTHON=1` skips the Python tests on purpose.
pub async fn python_or_skip() -> Option<(PathBuf, PathBuf)> {
    if std::env::var("DIFFTRACKER_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("skipped on purpose: DIFFTRACKER_SKIP_PYTHON=1");
        return None;
    }
    let root = repo_root();
    let python = tokio::task::spawn_blocking({
        let root = root.clone();
        move || python(&root)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    Some((root, python))
}
