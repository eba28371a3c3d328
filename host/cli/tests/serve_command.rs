//! `difftracker serve` and `difftracker admin` as a user runs them: the bundled
//! `examples/tenants.toml` (three tenants on the embedded emulator and API servers, one of them
//! misbehaving) in a process; `admin tenants` lists them, the healthy ones converge and the
//! misbehaving one is contained; SIGHUP reloads an edited file; an invalid edit is refused and
//! the running tenants keep running; SIGTERM stops it cleanly; an invalid file at start is
//! refused naming the tenant and the key.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(120);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difftracker-serve-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The bundled example, copied beside its trace into `dir`, listening on `port`.
fn example_config(dir: &Path, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(examples().join("tenants.toml")).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:9090\""), "the example listens on 9090");
    let text = text.replace("listen = \"127.0.0.1:9090\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::copy(examples().join("sample-trace.jsonl"), dir.join("sample-trace.jsonl")).unwrap();
    let path = dir.join("tenants.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn serve(config: &Path, dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_difftracker"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start difftracker serve")
}

/// `difftracker admin ... tenants`, parsed; `None` while the host does not answer yet.
fn admin_tenants(port: u16, token_file: &Path) -> Option<Vec<Value>> {
    let out = Command::new(env!("CARGO_BIN_EXE_difftracker"))
        .args(["admin", "--url", &format!("http://127.0.0.1:{port}"), "--token-file"])
        .arg(token_file)
        .arg("tenants")
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout).ok()
}

fn tenant<'a>(tenants: &'a [Value], name: &str) -> Option<&'a Value> {
    tenants.iter().find(|t| t["name"] == name)
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
}

fn eventually_tenants(port: u16, token_file: &Path, what: &str, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(tenants) = admin_tenants(port, token_file) {
            if done(&tenants) {
                return tenants;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what} ({:?})", admin_tenants(port, token_file));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn converged(t: Option<&Value>) -> bool {
    t.is_some_and(|t| t["phase"] == "running" && t["settled"] == true)
}

#[test]
fn serve_runs_the_bundled_example_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = scratch("example");
    let port = free_port();
    let config = example_config(&dir, port);
    let child = serve(&config, &dir);
    let token_file = dir.join("admin.token");
    let tenants =
        eventually_tenants(port, &token_file, "shop and lab converge", |t| converged(tenant(t, "shop")) && converged(tenant(t, "lab")));
    let names: Vec<&str> = tenants.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["lab", "noisy", "shop"]);
    assert!(std::fs::metadata(&token_file).is_ok(), "the admin token file was created");
    assert!(dir.join("state/lab.kubeconfig").exists(), "lab's kubeconfig is written for kubectl");

    // Add a tenant and send SIGHUP.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[tenant]]\nname = \"late\"\ncluster = \"embedded\"\n");
    std::fs::write(&config, &text).unwrap();
    signal(&child, libc::SIGHUP);
    eventually_tenants(port, &token_file, "late is added and converges", |t| converged(tenant(t, "late")));

    // An invalid edit is refused; everything keeps running.
    std::fs::write(&config, text.replace("name = \"late\"", "name = \"Late!\"")).unwrap();
    signal(&child, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    eventually_tenants(port, &token_file, "the four tenants still run, converged", |t| {
        t.len() == 4 && converged(tenant(t, "late")) && converged(tenant(t, "shop"))
    });

    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert!(stderr.contains("reload refused") && stderr.contains("Late!"), "{stderr}");
    assert!(stderr.contains("stopping every tenant"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_an_invalid_configuration_naming_the_tenant_and_the_key() {
    let dir = scratch("invalid");
    let config = dir.join("tenants.toml");
    std::fs::write(&config, "[[tenant]]\nname = \"alpha\"\ncluster = \"embedded\"\ncpu_deadline_ms = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_difftracker")).arg("serve").arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("tenants.toml: tenant 1 (\"alpha\"): cpu_deadline_ms: must be between 10 and 60000, found 1"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_difftracker"))
        .args(["admin", "--url", "http://127.0.0.1:9", "--token-file"])
        .arg(dir.join("missing.token"))
        .arg("tenants")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.token"));
    let _ = std::fs::remove_dir_all(&dir);
}
