//! The status page and the replay timeline in a real browser: headless Chromium (Debian's
//! `chromium`, driven over WebDriver by Debian's `chromium-driver`; tests/browser/setup.sh
//! installs both when missing). The status page is loaded while the main job runs, checked
//! against the engine's status once it has finished, filtered, and followed into one Service;
//! the `--html` page of a replay is opened from its file and filtered. Screenshots go to
//! docs/img/ (README shows them). Issue 16, items 1 and 2. No assertion depends on timing: waits
//! poll the page, bounded only so that a broken build fails instead of hanging.

use base64::Engine as _;
use difftracker_runtime::driver::EngineKind;
use difftracker_simulation::live::{self, LiveOptions, TENANT};
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions};
use difftracker_simulation::replay::{html, parse_trace, replay, CrashPlan, ReplayOptions, Trace};
use difftracker_simulation::samples::sample_faults;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Bound of every wait; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn setup() {
    let script = repo().join("tests/browser/setup.sh");
    let status = Command::new("bash").arg(&script).status().expect("run tests/browser/setup.sh");
    assert!(status.success(), "tests/browser/setup.sh failed: Chromium and ChromeDriver are needed (see its message)");
}

/// A ChromeDriver child and one headless Chromium session on it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
}

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder().timeout(PATIENCE).build().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = client.get(format!("{base}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("difftracker-chromium-{}-{port}", std::process::id()));
        // As root, without a GPU, on a machine whose only network is the loopback: no sandbox,
        // no background networking (docs/TESTING.md, browser tests).
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let answer: Value = client.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_string();
        Browser { driver, base, session, client }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let answer = self.try_call(method, path, body).await;
        assert!(answer.get("error").is_none(), "{path}: {answer}");
        answer
    }

    /// The command's `value`, which names an `error` when ChromeDriver refused it.
    async fn try_call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        // ChromeDriver refuses a GET that carries a body.
        let request = match method {
            reqwest::Method::GET => self.client.get(&url),
            _ => self.client.request(method, &url).json(&body),
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": []})).await
    }

    /// Evaluates `script` until it returns something truthy (not null/false/0/"").
    async fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let v = self.eval(script).await;
            if !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("") {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self.call(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    /// Clicks what `css` selects. The page re-renders its rows when an answer changes, so an
    /// element found just before a re-render is stale: find it again, as a reader would.
    async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let id = self.element(css).await;
            let answer = self.try_call(reqwest::Method::POST, &format!("/element/{id}/click"), json!({})).await;
            match answer["error"].as_str() {
                None => return,
                Some("stale element reference") if tokio::time::Instant::now() < deadline => continue,
                Some(_) => panic!("click {css}: {answer}"),
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), json!({"text": text})).await;
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.call(reqwest::Method::GET, "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    async fn close(mut self) {
        let _ = self.client.delete(format!("{}/session/{}", self.base, self.session)).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn trace(services: usize, seed: u64) -> Trace {
    let mut buf = Vec::new();
    let opts = GenOptions { services, nodes: 3, churn: Churn::Medium, seed, endpoints: 3, ..GenOptions::default() };
    write_trace(&opts, &mut buf).unwrap();
    parse_trace(&buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_the_engines_status_live_and_links_into_one_service() {
    setup();
    let mut options = LiveOptions::for_trace(trace(60, 3), EngineKind::Wasm);
    options.speed = 20.0;
    options.timeout = PATIENCE;
    let run = live::start(options).await.expect("the main job starts");
    let url = run.observe_url();
    let observatory = run.observatory().clone();
    let browser = Browser::start().await;
    browser.go(&format!("{url}/")).await;

    // During the run: the tenant's row and some operations appear.
    let engine = browser
        .wait(
            "the tenant row",
            &format!("var r=document.querySelector('#tenants tr[data-tenant=\"{TENANT}\"]');return r&&r.children[1].textContent"),
        )
        .await;
    assert_eq!(engine, "wasm");
    browser.wait("operations", "return document.querySelectorAll('#operations tbody tr').length").await;

    let finished = run.finish().await.expect("the main job ends");
    assert!(finished.summary.converged);
    // Once it has finished, the page (polling) shows what the engine's status says.
    let client = reqwest::Client::new();
    let status: Value = client.get(format!("{url}/status.json")).send().await.unwrap().json().await.unwrap();
    let line = status["tenants"][TENANT]["states_line"].as_str().unwrap().to_string();
    // The plain-text page renders the same engine status on its own path.
    let text = observatory.status_page();
    let expected = text.lines().find_map(|l| l.trim().strip_prefix("operations by state: ")).expect("a states line").to_string();
    assert_eq!(line, expected);
    assert!(line.contains("created="), "{line}");
    browser
        .wait(
            "the final states",
            &format!(
                "var r=document.querySelector('#tenants tr[data-tenant=\"{TENANT}\"]');return r&&r.children[7].textContent==={}",
                json!(line)
            ),
        )
        .await;
    let ops: Value = client.get(format!("{url}/operations?limit=1000")).send().await.unwrap().json().await.unwrap();
    let ops = ops[TENANT].as_object().unwrap().clone();
    // The page polls: wait for a poll after the run ended, then every row is the engine's.
    let rows_script = "return Array.from(document.querySelectorAll('#operations tbody tr')).map(function(r){return [r.getAttribute('data-identity'),r.getAttribute('data-state')];})";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let rows = loop {
        let rows = browser.eval(rows_script).await;
        let agree = rows.as_array().is_some_and(|rows| {
            rows.len() == ops.len().min(50) && rows.iter().all(|r| ops.get(r[0].as_str().unwrap_or("")).is_some_and(|o| o["state"] == r[1]))
        });
        if agree {
            break rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "the page's rows {rows} never matched /operations {ops:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rows.as_array().unwrap().len(), ops.len().min(50), "one page of at most 50 rows");

    // Filter by one Service's name, follow its link.
    let (id, op) = ops.iter().find(|(_, o)| !o["name"].as_str().unwrap_or("").is_empty()).expect("an inbound Service");
    let name = op["name"].as_str().unwrap();
    browser.type_into("#filter", name).await;
    browser
        .wait(
            "the filtered rows",
            &format!(
                "var r=document.querySelectorAll('#operations tbody tr');return r.length>0&&Array.from(r).every(function(x){{return x.textContent.indexOf({})>=0;}})",
                json!(name)
            ),
        )
        .await;
    browser.click(&format!("#operations tr[data-identity=\"{id}\"] a.op")).await;
    let detail = browser
        .wait(
            "the Service's detail",
            "var d=document.getElementById('detail');return d.style.display==='block'&&d.getAttribute('data-identity')",
        )
        .await;
    assert_eq!(detail, json!(id));
    let state = browser.eval("return document.getElementById('detail').getAttribute('data-state')").await;
    assert_eq!(state, op["state"]);
    let text = browser.eval("return document.body.innerText").await;
    let text = text.as_str().unwrap();
    assert!(text.contains(&format!("Service {}/{name}", op["namespace"].as_str().unwrap())), "{text}");
    // No secret: nothing of a credential or an authorization header reaches the page.
    for secret in ["secret", "token", "password", "authorization", "bearer"] {
        assert!(!text.to_ascii_lowercase().contains(secret), "the page shows {secret}");
    }
    browser.click("#filter").await;
    browser.eval("var f=document.getElementById('filter');f.value='';f.dispatchEvent(new Event('input'));location.hash='';return 1").await;
    browser.wait("all rows again", "return document.querySelectorAll('#operations tbody tr').length>1").await;
    browser.screenshot(&repo().join("docs/img/status-page.png")).await;
    browser.close().await;
    finished.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_timeline_opens_in_the_browser_and_filters() {
    setup();
    let t = trace(40, 5);
    let end = t.end_ms();
    let options = ReplayOptions {
        engine: EngineKind::Native,
        faults: Some(sample_faults().unwrap()),
        crashes: CrashPlan { at_ms: vec![end / 2], downtime_ms: 3_000 },
        timeline: Some(250),
        ..ReplayOptions::default()
    };
    let outcome = replay(&t, &options).unwrap();
    let page = html::render(&outcome.report, outcome.timeline.as_ref().unwrap());
    let file = std::env::temp_dir().join(format!("difftracker-timeline-{}.html", std::process::id()));
    std::fs::write(&file, page).unwrap();
    let browser = Browser::start().await;
    browser.go(&format!("file://{}", file.display())).await;
    let total = browser.wait("the rows", "return document.querySelectorAll('#rows g.svc').length").await.as_u64().unwrap();
    assert_eq!(total as usize, outcome.timeline.as_ref().unwrap().bands.len().min(html::ROWS_SHOWN));
    let crashes = browser.eval("return document.querySelectorAll('#timeline line.crash').length").await;
    assert_eq!(crashes, json!(1));
    let name = browser.eval("return document.querySelector('#rows g.svc').getAttribute('data-name')").await;
    browser.type_into("#filter", name.as_str().unwrap()).await;
    let shown = browser
        .wait(
            "the filtered rows",
            "var c=document.getElementById('count');return c.getAttribute('data-shown')!==null&&Number(c.getAttribute('data-shown'))",
        )
        .await;
    assert!(shown.as_u64().unwrap() >= 1 && shown.as_u64().unwrap() < total, "{shown} of {total}");
    browser.eval("var f=document.getElementById('filter');f.value='';f.dispatchEvent(new Event('input'));return 1").await;
    browser.screenshot(&repo().join("docs/img/replay-timeline.png")).await;
    browser.close().await;
    let _ = std::fs::remove_file(file);
}
