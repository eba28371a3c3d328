//! `difftracker run` as a user runs it: a process pointed at a kubeconfig (the in-repo API
//! server, served by the test) and at the emulator through `--arm-endpoint ... --credential
//! none`, with its Azure side from an `azure.json`. It converges the cluster, answers `/readyz`,
//! stops cleanly on SIGTERM; two replicas with `--leader-elect` fail over when the leader is
//! SIGKILLed; bad configuration is refused naming the file and the key.

use difftracker_runtime::k8s::SERVICE_FINALIZERS;
use difftracker_simulation::apiserver::{serve, ApiServerHandle, ApiServerOptions, Kind};
use difftracker_simulation::emulator::{self, EmulatorHandle, EmulatorOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(120);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("difftracker-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct World {
    api: ApiServerHandle,
    cloud: EmulatorHandle,
    kubeconfig: PathBuf,
    cloud_config: PathBuf,
}

async fn world(dir: &Path) -> World {
    let api = serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), ApiServerOptions::default()).await.unwrap();
    let cloud = emulator::serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), EmulatorOptions::default()).await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let c = cloud.tenant_config();
    // The keys upstream's azure.json has, plus some this controller ignores.
    let azure = json!({"cloud": "AzurePublicCloud", "tenantId": "t", "subscriptionId": c.subscription_id,
                       "resourceGroup": c.resource_group, "location": c.location, "vnetName": c.vnet_name,
                       "useManagedIdentityExtension": true, "loadBalancerSku": "standard"});
    let cloud_config = dir.join("azure.json");
    std::fs::write(&cloud_config, azure.to_string()).unwrap();
    let n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                   "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.4"}]}});
    api.api().write(|s| s.create(Kind::Node, "", n)).unwrap();
    World { api, cloud, kubeconfig, cloud_config }
}

fn seed_service(api: &ApiServerHandle, name: &str, pod_ip: &str) -> String {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                     "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}});
    let svc = api.api().write(|s| s.create(Kind::Service, "default", svc)).unwrap();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": format!("{name}-x"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
                       "addressType": "IPv4", "endpoints": [{"addresses": [pod_ip], "nodeName": "n1", "conditions": {"ready": true}}]});
    api.api().write(|s| s.create(Kind::EndpointSlice, "default", slice)).unwrap();
    svc["metadata"]["uid"].as_str().unwrap().to_string()
}

fn converged(w: &World, name: &str, uid: &str) -> bool {
    let inventory = w.cloud.inventory();
    let pip = inventory["public_ips"][format!("{uid}-pip")].as_str().map(str::to_string);
    let svc: Option<Value> = w.api.api().read(|s| s.get(Kind::Service, "default", name)).ok();
    let ingress = svc.as_ref().and_then(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().map(str::to_string));
    let finalizers = svc.as_ref().map(|s| s["metadata"]["finalizers"].clone()).unwrap_or_default();
    pip.is_some() && ingress == pip && SERVICE_FINALIZERS.iter().all(|f| finalizers.as_array().is_some_and(|a| a.iter().any(|x| x == f)))
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(w: &World, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_difftracker"))
        .arg("run")
        .arg("--kubeconfig")
        .arg(&w.kubeconfig)
        .arg("--cloud-config")
        .arg(&w.cloud_config)
        .args(["--arm-endpoint", &w.cloud.base_url(), "--credential", "none", "--engine", "native"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start difftracker run")
}

async fn readyz(port: u16) -> Option<(u16, String)> {
    let rsp = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.ok()?;
    let status = rsp.status().as_u16();
    Some((status, rsp.text().await.unwrap_or_default()))
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

fn stderr_of(child: Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_converges_the_cluster_its_kubeconfig_names_and_stops_on_sigterm() {
    let dir = scratch("converge");
    let w = world(&dir).await;
    let web = seed_service(&w.api, "web", "10.1.0.5");
    let port = free_port();
    let child = run(&w, port, &[]);
    eventually("web converges", || converged(&w, "web", &web)).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((200, body)) = readyz(port).await {
            assert!(body.contains("ready"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {:?}", readyz(port).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    let (status, stderr) = stderr_of(child);
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_process_takes_over_when_the_leader_is_killed() {
    let dir = scratch("failover");
    let w = world(&dir).await;
    let web = seed_service(&w.api, "web", "10.1.0.5");
    let lease = ["--leader-elect", "--leader-elect-lease-duration", "3", "--leader-elect-renew-deadline", "2"];
    let timing = ["--leader-elect-retry-period-ms", "200"];
    let (pa, pb) = (free_port(), free_port());
    let mut a = run(&w, pa, &[&lease[..], &timing, &["--leader-elect-identity", "a"]].concat());
    eventually("a leads", || holder(&w) == "a").await;
    let b = run(&w, pb, &[&lease[..], &timing, &["--leader-elect-identity", "b"]].concat());
    eventually("web converges", || converged(&w, "web", &web)).await;
    let deadline = Instant::now() + PATIENCE;
    while readyz(pb).await.is_none() {
        assert!(Instant::now() < deadline, "b never serves /readyz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = readyz(pb).await.unwrap();
    assert_eq!(status, 503, "a standby is not ready: {body}");
    assert!(body.contains("standby"), "{body}");

    a.kill().unwrap(); // SIGKILL: no release
    let _ = a.wait();
    let db = seed_service(&w.api, "db", "10.1.0.7");
    eventually("b leads", || holder(&w) == "b").await;
    eventually("db converges under b", || converged(&w, "db", &db)).await;
    assert!(converged(&w, "web", &web));
    assert_eq!(w.cloud.inventory()["load_balancers"].as_array().map(Vec::len), Some(2));
    sigterm(&b);
    let (status, stderr) = stderr_of(b);
    assert!(status.success(), "exit {status}: {stderr}");
    assert_eq!(holder(&w), "", "b released the Lease on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

fn holder(w: &World) -> String {
    w.api
        .api()
        .read(|s| s.get(Kind::Lease, "kube-system", "difftracker"))
        .map(|l| l["spec"]["holderIdentity"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_naming_the_file_and_the_key() {
    let dir = scratch("bad");
    let w = world(&dir).await;
    let missing = dir.join("nope.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_difftracker"))
        .args(["run", "--credential", "none", "--arm-endpoint", &w.cloud.base_url()])
        .arg("--kubeconfig")
        .arg(&missing)
        .arg("--cloud-config")
        .arg(&w.cloud_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("kubeconfig") && stderr.contains("nope.yaml"), "{stderr}");

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"subscriptionId": 7, "resourceGroup": "rg"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_difftracker")).args(["run", "--cloud-config"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.json") && stderr.contains("`subscriptionId` must be a string"), "{stderr}");

    let partial = dir.join("partial.json");
    std::fs::write(&partial, r#"{"subscriptionId": "s", "resourceGroup": "rg", "location": "l"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_difftracker"))
        .args(["run", "--credential", "none", "--cloud-config"])
        .arg(&partial)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("vnetName") && stderr.contains("--vnet"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_difftracker"))
        .args(["run", "--credential", "none", "--leader-elect", "--leader-elect-lease-duration", "5", "--leader-elect-renew-deadline", "5"])
        .arg("--cloud-config")
        .arg(&w.cloud_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("renew deadline"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
