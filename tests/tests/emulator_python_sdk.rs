//! The emulator judged by a real client: the Azure SDK for Python (`azure-mgmt-network`, pinned
//! in `tests/python/requirements.txt` to the release whose api-version is 2025-05-01) runs its
//! ordinary calls against two emulators on loopback, one answering at once and one answering
//! with long-running operations, both requiring a bearer token. The test is
//! `tests/python/test_emulator_sdk.py` (pytest).
//!
//! The virtual environment is `target/py-venv` (or `$DIFFTRACKER_PY_VENV`); when it is missing or
//! was made from another requirements file, `tests/python/setup.sh` makes it, from the Python
//! package registry. If that fails, this test fails: it never skips silently. Set
//! `DIFFTRACKER_SKIP_PYTHON=1` to skip it on purpose.

use difftracker_simulation::emulator::{serve, EmulatorAuth, EmulatorHandle, EmulatorOptions, EmulatorScope, LroMode, PollingOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The only token the emulators accept.
const TOKEN: &str = "python-sdk-test-token";
/// Bound of the setup and of the pytest run; only reached when something hangs.
const SETUP_PATIENCE: Duration = Duration::from_secs(900);
const TEST_PATIENCE: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate lives in the repository").to_path_buf()
}

fn venv_dir(root: &Path) -> PathBuf {
    match std::env::var_os("DIFFTRACKER_PY_VENV").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => root.join("target").join("py-venv"),
    }
}

/// Runs `cmd` to completion within `patience`; returns (success, stdout + stderr).
fn run(mut cmd: Command, patience: Duration) -> (bool, String) {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let out_path = std::env::temp_dir().join(format!("difftracker-py-{}-{stamp}.log", std::process::id()));
    let log = std::fs::File::create(&out_path).expect("a log file in the temp directory");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (set DIFFTRACKER_SKIP_PYTHON=1 to skip the Python SDK test)"));
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
fn python(root: &Path) -> PathBuf {
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
        "tests/python/setup.sh failed, so the Azure SDK for Python could not be installed (does pip reach the Python package \
         registry?). Set DIFFTRACKER_SKIP_PYTHON=1 to skip this test on purpose.\n{output}"
    );
    assert!(python.exists(), "setup.sh made no {}", python.display());
    python
}

async fn emulator(options: EmulatorOptions) -> EmulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    serve(listener, options).await.expect("serve the emulator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_sdk_for_python_runs_its_ordinary_calls_against_the_emulator() {
    if std::env::var("DIFFTRACKER_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("skipped on purpose: DIFFTRACKER_SKIP_PYTHON=1");
        return;
    }
    let root = repo_root();
    let python = tokio::task::spawn_blocking({
        let root = root.clone();
        move || python(&root)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    let other = EmulatorScope {
        subscription: "55555555-0000-0000-0000-000000000000".into(),
        resource_group: "MC_python_other".into(),
        location: "westus3".into(),
        vnet_name: "other-vnet".into(),
    };
    let auth = EmulatorAuth::Token(TOKEN.into());
    let sync = emulator(EmulatorOptions { auth: auth.clone(), ..Default::default() }).await;
    let polling = emulator(EmulatorOptions {
        auth,
        lro: LroMode::Polling(PollingOptions { in_progress_polls: 1, ..Default::default() }),
        extra_scopes: vec![other.clone()],
        ..Default::default()
    })
    .await;
    let scope = sync.emulator().options().scope.clone();

    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/python/test_emulator_sdk.py"])
        .current_dir(&root)
        .env("EMULATOR_SYNC_URL", sync.base_url())
        .env("EMULATOR_POLLING_URL", polling.base_url())
        .env("EMULATOR_SUBSCRIPTION", &scope.subscription)
        .env("EMULATOR_RESOURCE_GROUP", &scope.resource_group)
        .env("EMULATOR_LOCATION", &scope.location)
        .env("EMULATOR_OTHER_SUBSCRIPTION", &other.subscription)
        .env("EMULATOR_OTHER_RESOURCE_GROUP", &other.resource_group)
        .env("EMULATOR_TOKEN", TOKEN)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (ok, output) = tokio::task::spawn_blocking(move || run(cmd, TEST_PATIENCE)).await.expect("running pytest");
    println!("{output}");
    assert!(ok, "the Azure SDK for Python failed against the emulator:\n{output}");
    assert!(output.contains(" passed"), "pytest ran no test:\n{output}");
}
