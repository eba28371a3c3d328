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
