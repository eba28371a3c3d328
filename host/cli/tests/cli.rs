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
            ][..],
        ),
        (
            "replay",
            &["--trace", "--report", "--faults", "--seed", "--engine", "--until-ms", "--max-request-bytes", "--max-request-entries"][..],
        ),
        ("gen-trace", &["--services", "--nodes", "--egress", "--churn", "--endpoints", "--seed", "--output"][..]),
        ("emulator", &["--listen", "--faults", "--polling", "--no-default-natgw"][..]),
        ("apiserver", &["--listen", "--kubeconfig-out", "--faults"][..]),
        ("bench-engine", &["--services", "--engine", "--single-events"][..]),
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
