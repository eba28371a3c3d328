//! The `difftracker` binary as a user runs it: flags, errors and exit codes.

use std::process::Command;

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
        ("live", &["--trace", "--engine", "--polling", "--speed", "--keep-serving", "--listen", "--seed", "--quiet", "--timeout-secs"][..]),
        ("replay", &["--trace", "--report", "--faults", "--seed", "--engine", "--until-ms"][..]),
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
