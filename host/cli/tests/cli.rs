//! The `difftracker` binary as a user runs it: flags, errors and exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn difftracker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_difftracker"))
}

/// A missing trace file stops the main job before anything starts, with an error naming it.
#[test]
fn a_missing_trace_is_an_error_that_names_the_file() {
    let out = difftracker().args(["--trace", "/nonexistent/trace.jsonl", "--quiet"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/trace.jsonl"), "{stderr}");
}

/// Every documented command is there, with the flags the README names.
#[test]
fn the_commands_and_their_flags_are_the_documented_ones() {
    for (command, flags) in [
        (
            "live",
            &[
                "--trace",
                "--engine",
                "--polling",
                "--speed",
                "--keep-serving",
                "--listen",
                "--seed",
                "--quiet",
                "--timeout-secs",
                "--guest-memory-mib",
                "--guest-cpu-ms",
                "--max-request-bytes",
                "--max-request-entries",
                "--cloud-state",
            ][..],
        ),
        (
            "replay",
            &[
                "--trace",
                "--report",
                "--faults",
                "--seed",
                "--engine",
                "--until-ms",
                "--crash-at-ms",
                "--downtime-ms",
                "--cloud-state",
                "--max-request-bytes",
                "--max-request-entries",
                "--html",
                "--html-sample-ms",
            ][..],
        ),
        ("explain", &["--report", "--url"][..]),
        ("gen-trace", &["--services", "--nodes", "--egress", "--churn", "--endpoints", "--seed", "--output"][..]),
        ("emulator", &["--listen", "--faults", "--polling", "--no-default-natgw", "--state"][..]),
        ("apiserver", &["--listen", "--kubeconfig-out", "--faults"][..]),
        ("bench-engine", &["--services", "--engine", "--single-events"][..]),
        ("bench-tenants", &["--tenants", "--services", "--misbehaving", "--seconds", "--interval-ms", "--no-backoff", "--json"][..]),
        ("demo", &["--engine", "--component", "--services", "--timeout-secs"][..]),
    ] {
        let out = difftracker().args([command, "--help"]).output().unwrap();
        assert!(out.status.success(), "{command} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in flags {
            assert!(help.contains(flag), "`difftracker {command}` lacks {flag}:\n{help}");
        }
    }
}

/// A reader that goes away (`difftracker demo | head -1`) ends the command without a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let mut child = difftracker().args(["demo", "--engine", "native"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(!first.is_empty());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

/// A timeout larger than the clock can add is no timeout, not an overflow panic.
#[test]
fn an_enormous_timeout_is_not_a_panic() {
    let out = difftracker().args(["--timeout-secs", "18446744073709551615", "--quiet", "--speed", "1000"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

/// `difftracker apiserver --listen 127.0.0.1:0 --kubeconfig-out F` prints the address it serves
/// on, writes a kubeconfig naming it, and answers there.
#[test]
fn the_api_server_prints_its_address_and_writes_a_kubeconfig() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("difftracker-cli-apiserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let mut child = difftracker()
        .args(["apiserver", "--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    // Kept open to the end: a closed stdout ends the server at its next line (SIGPIPE).
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().rsplit(' ').next().unwrap_or("").to_string();
    let addr = url.strip_prefix("http://").unwrap_or_else(|| panic!("no address in {first:?}")).to_string();
    assert!(!addr.ends_with(":0"), "the chosen port is printed: {first:?}");
    let config = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(config.contains(&format!("server: {url}")), "{config}");
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /api/v1/namespaces/default/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    drop(stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"kind\":\"ServiceList\""), "{answer}");
}

/// `--guest-memory-mib` sizes the engine's sandbox: one too small for the engine is a clear
/// error about guest memory, not a hang or a panic; out-of-range values are refused by name.
#[test]
fn the_guest_memory_limit_comes_from_the_flag() {
    let out = difftracker().args(["live", "--guest-memory-mib", "1", "--quiet", "--timeout-secs", "60"]).output().unwrap();
    assert!(!out.status.success());
    assert!(out.status.code().is_some(), "killed by a signal: {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("memory"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = difftracker().args(["live", "--guest-memory-mib", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--guest-memory-mib"));
}

/// A scratch directory of this test process.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("difftracker-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn report_of(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `replay --crash-at-ms --downtime-ms` kills and restarts the host; the report lists the
/// restarts, the run still settles to the oracle, and its own report seeds another run through
/// `--cloud-state` (adopted: the same cluster, the same inventory). A malformed cloud state is an
/// error naming the file and the problem, not a panic.
#[test]
fn replay_crashes_restarts_and_starts_from_a_cloud_state() {
    let dir = scratch("crash");
    let trace = dir.join("trace.jsonl");
    let out = difftracker()
        .args(["gen-trace", "--services", "8", "--egress", "2", "--churn", "high", "--seed", "4", "-o"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = dir.join("report.json");
    let out = difftracker()
        .args(["replay", "--engine", "native", "--crash-at-ms", "1000,60000,500000", "--downtime-ms", "5000", "--trace"])
        .arg(&trace)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("restart 3 (crash at 8m20s, back at 8m25s)"), "{stdout}");
    let r = report_of(&report);
    assert_eq!(r["converged"], true);
    assert_eq!(r["oracle"]["matches"], true);
    assert_eq!(r["restarts"].as_array().unwrap().len(), 3);
    assert_eq!(r["restarts"][0]["crashed_at_ms"], 1000);
    assert_eq!(r["restarts"][0]["started_at_ms"], 6000);
    assert!(r["restarts"][2]["startup_list_calls"].as_u64().unwrap() >= 5);
    assert_eq!(r["replay"]["crash_at_ms"], serde_json::json!([1000, 60000, 500000]));

    let state = dir.join("cloud.json");
    std::fs::write(&state, serde_json::to_vec(&r["inventory"]).unwrap()).unwrap();
    let again = dir.join("again.json");
    let out = difftracker()
        .args(["replay", "--engine", "native", "--trace"])
        .arg(&trace)
        .arg("--report")
        .arg(&again)
        .arg("--cloud-state")
        .arg(&state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("start-up against the seeded cloud"), "{stdout}");
    let a = report_of(&again);
    assert_eq!(a["replay"]["cloud_state"], true);
    assert_eq!(a["oracle"]["matches"], true);
    assert_eq!(a["inventory"]["load_balancers"], r["inventory"]["load_balancers"]);

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"load_balancers": "not-a-list"}"#).unwrap();
    for args in [&["replay", "--report", "/dev/null", "--trace"][..], &["emulator", "--listen", "127.0.0.1:0", "--trace"][..]] {
        let mut cmd = difftracker();
        if args[0] == "replay" {
            cmd.args(args).arg(&trace).arg("--cloud-state").arg(&bad);
        } else {
            cmd.args(&args[..3]).arg("--state").arg(&bad);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} accepted a malformed cloud state", args[0]);
        assert!(stderr.contains("bad.json") && stderr.contains("load_balancers must be an array"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `replay --html` writes the timeline page beside the report; `explain` answers from that
/// report for a Service by `namespace/name`, and refuses a name it does not know. Standard error
/// is not a terminal here, so progress is plain lines (none for a run this short), never a bar's
/// control characters.
#[test]
fn replay_writes_a_timeline_and_explain_reads_its_report() {
    let dir = scratch("html");
    let trace = dir.join("trace.jsonl");
    let out = difftracker().args(["gen-trace", "--services", "6", "--churn", "low", "--seed", "2", "-o"]).arg(&trace).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\u{1b}'), "no terminal escapes when stderr is a file");
    let (report, page) = (dir.join("report.json"), dir.join("timeline.html"));
    let out = difftracker()
        .args(["replay", "--engine", "native", "--trace"])
        .arg(&trace)
        .arg("--report")
        .arg(&report)
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("timeline written to {}", page.display())), "{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\u{1b}'));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg id=\"timeline\""), "{}", &html[..200.min(html.len())]);

    let r = report_of(&report);
    let (id, op) = r["operations"].as_object().unwrap().iter().find(|(_, o)| o["state"] == "created").expect("a created Service");
    let who = format!("{}/{}", op["namespace"].as_str().unwrap(), op["name"].as_str().unwrap());
    let out = difftracker().args(["explain", &who, "--report"]).arg(&report).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("Service {who} (UID {id}): created — ")), "{stdout}");
    assert!(stdout.contains("waiting for: nothing"), "{stdout}");
    assert!(stdout.contains("history: ") && stdout.contains("last error: "), "{stdout}");

    let out = difftracker().args(["explain", "nobody/here", "--report"]).arg(&report).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Service or egress identity `nobody/here`"));
    let out = difftracker().args(["explain", "x"]).output().unwrap();
    assert!(!out.status.success(), "--report or --url is required");
}

/// `--log-format json` writes each log line as one JSON object; a bad format is refused.
#[test]
fn json_logs_are_one_object_a_line() {
    let out = difftracker().args(["demo", "--engine", "native", "--log-format", "json"]).env("RUST_LOG", "debug").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "debug logging says something");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    let out = difftracker().args(["demo", "--log-format", "xml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
}

/// `bench-tenants` at a tiny size: every healthy tenant converges, each endpoint change is
/// measured, the misbehaving tenant runs beside them, and the report has its documented shape.
#[test]
fn bench_tenants_reports_density_and_fair_share() {
    let out = difftracker()
        .args([
            "bench-tenants",
            "--tenants",
            "3",
            "--services",
            "5",
            "--misbehaving",
            "1",
            "--seconds",
            "1",
            "--interval-ms",
            "10",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["tenants"], 3);
    assert_eq!(report["services_per_tenant"], 5);
    assert_eq!(report["tenants_converged"], 3, "{report:#}");
    assert_eq!(report["backoff"], true);
    assert_eq!(report["instance_slots"], 4 * 2 + 1, "two slots per tenant, misbehaving ones included, and one spare");
    assert!(report["changes"].as_u64().unwrap() >= 3, "at least one change per healthy tenant: {report:#}");
    let spread = &report["change_converge"];
    let (p50, p99, max) = (spread["p50_ms"].as_f64().unwrap(), spread["p99_ms"].as_f64().unwrap(), spread["max_ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{spread}");
    assert!(report["converged"]["rss_bytes"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["mib_per_tenant"].is_number());
    assert!(report["guest_memory_bytes"].as_u64().unwrap() > 0, "the engines' linear memory is counted: {report:#}");
    assert_eq!(report["misbehaving"]["tenants"], 1);
    assert_eq!(report["misbehaving"]["stopped"], 0, "no restart bound for the misbehaving tenants here: {report:#}");
}
