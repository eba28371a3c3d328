//! The in-repo Kubernetes API server judged by a client nobody here wrote: `kubectl`, unmodified,
//! against the server on loopback through the kubeconfig the server writes. It applies, gets,
//! lists with label selectors, watches an update arrive, patches (JSON and merge), deletes a
//! Service held by a finalizer, writes the `status` subresource, sees an EndpointSlice collected
//! with its Service and a Lease replace with a stale resourceVersion refused.
//!
//! `tests/kubectl/setup.sh` runs first: it installs Debian's `kubernetes-client` when `kubectl`
//! is missing (as root), and this test fails if it cannot. `DIFFTRACKER_SKIP_KUBECTL=1` skips it
//! on purpose.

use difftracker_simulation::apiserver::{serve, ApiServerHandle, ApiServerOptions};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate lives in the repository").to_path_buf()
}

struct Kubectl {
    dir: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("HOME", &self.dir)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        let out = self.command(args).output().expect("kubectl runs");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    /// Runs and expects success.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.ok, "kubectl {args:?} failed:\n{}{}", out.stdout, out.stderr);
        out.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?} printed no JSON ({e}):\n{out}"))
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> =
        list["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()).collect();
    n.sort();
    n
}

fn setup_kubectl(root: &Path) {
    let out = Command::new("bash").arg(root.join("tests/kubectl/setup.sh")).stdin(Stdio::null()).output().expect("bash runs");
    assert!(
        out.status.success(),
        "tests/kubectl/setup.sh could not provide kubectl (set DIFFTRACKER_SKIP_KUBECTL=1 to skip this test on purpose):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn server() -> ApiServerHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    serve(listener, ApiServerOptions::default()).await.expect("serve the API server")
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: PORT, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: db
  labels: {app: db, tier: back}
spec:
  selector: {app: db}
  ports:
  - {port: 5432}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_the_api_server_unmodified() {
    if std::env::var("DIFFTRACKER_SKIP_KUBECTL").is_ok_and(|v| v == "1") {
        eprintln!("skipped on purpose: DIFFTRACKER_SKIP_KUBECTL=1");
        return;
    }
    let root = repo_root();
    tokio::task::spawn_blocking(move || setup_kubectl(&root)).await.unwrap();
    let api = server().await;
    let dir = std::env::temp_dir().join(format!("difftracker-kubectl-{}-{}", std::process::id(), api.addr().port()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kubeconfig"), api.kubeconfig()).unwrap();
    let k = Kubectl { dir: dir.clone() };
    let url = api.url();
    tokio::task::spawn_blocking(move || story(&k, &url)).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    api.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn story(k: &Kubectl, url: &str) {
    // kubectl apply creates, then (a second apply) patches with its strategic merge patch.
    let file = k.write("services.yaml", &WEB.replace("PORT", "80"));
    let created = k.ok(&["apply", "-f", &file]);
    assert!(created.contains("service/web created") && created.contains("service/db created"), "{created}");
    let web = k.json(&["get", "svc", "web"]);
    assert_eq!(web["spec"]["ports"][0]["port"], 80);
    assert_eq!(web["metadata"]["namespace"], "default");
    let first_rv = web["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    k.write("services.yaml", &WEB.replace("PORT", "81"));
    let applied = k.ok(&["apply", "-f", &file]);
    assert!(applied.contains("service/web configured"), "{applied}");
    let web = k.json(&["get", "svc", "web"]);
    assert_eq!(web["spec"]["ports"].as_array().unwrap().len(), 1, "the old port is gone: {}", web["spec"]);
    assert_eq!(web["spec"]["ports"][0]["port"], 81);
    assert_ne!(web["metadata"]["resourceVersion"].as_str().unwrap(), first_rv);

    // Lists with label selectors, and across namespaces.
    assert_eq!(names(&k.json(&["get", "svc"])), ["db", "web"]);
    assert_eq!(names(&k.json(&["get", "svc", "-l", "app=web"])), ["web"]);
    assert_eq!(names(&k.json(&["get", "svc", "-l", "app!=web"])), ["db"]);
    assert_eq!(names(&k.json(&["get", "svc", "-l", "app in (web,db),!tier"])), ["web"]);
    assert_eq!(names(&k.json(&["get", "svc", "-l", "tier"])), ["db"]);
    assert_eq!(names(&k.json(&["get", "svc", "--all-namespaces"])), ["db", "web"]);
    assert_eq!(names(&k.json(&["get", "svc", "-n", "elsewhere"])), Vec::<String>::new());

    // A watch sees an update arrive.
    let mut watch =
        k.command(&["get", "svc", "web", "--watch", "-o", "json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.lock().unwrap().contains(what) {
            assert!(Instant::now() < deadline, "the watch never showed {what:?}:\n{}", seen.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("\"name\": \"web\"");
    k.ok(&["label", "svc", "web", "stage=watched"]);
    wait_for("\"stage\": \"watched\"");
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();

    // JSON and merge patches.
    k.ok(&["patch", "svc", "web", "--type=json", "-p", r#"[{"op":"add","path":"/metadata/finalizers","value":["example.com/hold"]}]"#]);
    k.ok(&[
        "patch",
        "svc",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"annotations":{"note":"merged"}},"spec":{"selector":{"app":null,"role":"web"}}}"#,
    ]);
    let web = k.json(&["get", "svc", "web"]);
    assert_eq!(web["metadata"]["finalizers"][0], "example.com/hold");
    assert_eq!(web["metadata"]["annotations"]["note"], "merged");
    assert_eq!(web["spec"]["selector"], serde_json::json!({"role": "web"}));

    // The status subresource: written through it, kept by writes to the object.
    let status = r#"{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.7"}]}}}"#;
    let help = k.ok(&["patch", "--help"]);
    if help.contains("--subresource") {
        k.ok(&["patch", "svc", "web", "--subresource=status", "--type=merge", "-p", status]);
    } else {
        // kubectl before 1.24 has no --subresource: the same PATCH, sent directly.
        eprintln!("this kubectl has no `patch --subresource`: the status patch is sent over HTTP");
        let answer = reqwest::blocking_patch(&format!("{url}/api/v1/namespaces/default/services/web/status"), status);
        assert_eq!(answer, 200);
    }
    assert_eq!(k.json(&["get", "svc", "web"])["status"]["loadBalancer"]["ingress"][0]["ip"], "203.0.113.7");
    k.ok(&["patch", "svc", "web", "--type=merge", "-p", r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.1"}]}}}"#]);
    assert_eq!(
        k.json(&["get", "svc", "web"])["status"]["loadBalancer"]["ingress"][0]["ip"],
        "203.0.113.7",
        "the main resource does not write status"
    );

    // Delete with a finalizer: the Service stays, marked, until a patch removes the finalizer.
    let deleted = k.ok(&["delete", "svc", "web", "--wait=false"]);
    assert!(deleted.contains("\"web\" deleted"), "{deleted}");
    let web = k.json(&["get", "svc", "web"]);
    assert!(web["metadata"]["deletionTimestamp"].is_string(), "marked for deletion: {}", web["metadata"]);
    let guarded = k.run(&[
        "patch",
        "svc",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/metadata/finalizers/0","value":"example.com/other"},{"op":"remove","path":"/metadata/finalizers/0"}]"#,
    ]);
    // kubectl before 1.2x prints a 422 without its message.
    let invalid = guarded.stderr.contains("test failed") || guarded.stderr.contains("The request is invalid");
    assert!(!guarded.ok && invalid, "a failed test op is refused as invalid:\n{}", guarded.stderr);
    assert!(k.run(&["get", "svc", "web"]).ok, "the refused patch changed nothing");
    k.ok(&[
        "patch",
        "svc",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/metadata/finalizers/0","value":"example.com/hold"},{"op":"remove","path":"/metadata/finalizers/0"}]"#,
    ]);
    let gone = k.run(&["get", "svc", "web"]);
    assert!(!gone.ok && gone.stderr.contains("NotFound") && gone.stderr.contains("\"web\" not found"), "{}", gone.stderr);

    // An EndpointSlice owned by a Service goes with it.
    let db_uid = k.json(&["get", "svc", "db"])["metadata"]["uid"].as_str().unwrap().to_string();
    let slice = k.write(
        "slice.json",
        &serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "db-abc12", "labels": {"kubernetes.io/service-name": "db"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "db", "uid": db_uid, "controller": true}]},
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}}], "ports": [{"port": 5432}]})
        .to_string(),
    );
    k.ok(&["create", "-f", &slice]);
    assert_eq!(names(&k.json(&["get", "endpointslices", "-l", "kubernetes.io/service-name=db"])), ["db-abc12"]);
    k.ok(&["delete", "svc", "db"]);
    assert_eq!(names(&k.json(&["get", "endpointslices"])), Vec::<String>::new(), "collected with its Service");

    // A Lease replaced with a stale resourceVersion is a conflict.
    let lease = k.write(
        "lease.json",
        r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"difftracker-leader"},
            "spec":{"holderIdentity":"a","leaseDurationSeconds":15}}"#,
    );
    k.ok(&["create", "-f", &lease]);
    let mut held = k.json(&["get", "lease", "difftracker-leader"]);
    held["spec"]["holderIdentity"] = "b".into();
    let renewed = k.write("renewed.json", &held.to_string());
    k.ok(&["replace", "-f", &renewed]);
    held["spec"]["holderIdentity"] = "c".into();
    let stale = k.write("stale.json", &held.to_string());
    let refused = k.run(&["replace", "-f", &stale]);
    assert!(
        !refused.ok && refused.stderr.contains("Conflict") && refused.stderr.contains("the object has been modified"),
        "{}",
        refused.stderr
    );
    assert_eq!(k.json(&["get", "lease", "difftracker-leader"])["spec"]["holderIdentity"], "b");
}

/// A tiny blocking PATCH for old kubectl versions (no `--subresource`).
mod reqwest {
    pub fn blocking_patch(url: &str, body: &str) -> u16 {
        let (url, body) = (url.to_string(), body.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                ::reqwest::Client::new()
                    .patch(&url)
                    .header("Content-Type", "application/merge-patch+json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .join()
        .unwrap()
    }
}
