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
use python_support::{python_or_skip, run, TEST_PATIENCE};
use std::process::Command;

mod python_support;

/// The only token the emulators accept.
const TOKEN: &str = "python-sdk-test-token";
async fn emulator(options: EmulatorOptions) -> EmulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    serve(listener, options).await.expect("serve the emulator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_sdk_for_python_runs_its_ordinary_calls_against_the_emulator() {
    let Some((root, python)) = python_or_skip().await else { return };

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
