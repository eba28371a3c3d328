//! Runs one fuzz target on one input and prints what it found:
//! `cargo run --example reproduce -- <target> <file>` (`DIFFTRACKER_FUZZ_VERBOSE=1` also prints
//! the history an `engine_intake` input decodes to).

use difftracker_fuzz::TARGETS;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, file] = args.as_slice() else {
        eprintln!("usage: reproduce <target> <file>; targets: {:?}", TARGETS.map(|t| t.0));
        std::process::exit(2);
    };
    let Some((_, run)) = TARGETS.iter().find(|t| t.0 == target) else {
        eprintln!("unknown target {target}; targets: {:?}", TARGETS.map(|t| t.0));
        std::process::exit(2);
    };
    let data = std::fs::read(file).unwrap_or_else(|e| {
        eprintln!("{file}: {e}");
        std::process::exit(2);
    });
    if target == "engine_intake" && std::env::var_os("DIFFTRACKER_FUZZ_MINIMIZE").is_some() {
        minimize(&data);
    }
    run(&data);
    println!("{target}: no defect on {file} ({} bytes)", data.len());
}

/// Drops steps of an `engine_intake` history one at a time while it still fails, and prints the
/// shortest failing history found.
fn minimize(data: &[u8]) {
    use difftracker_fuzz::intake::{decode, run_steps};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let fails = |steps: &[difftracker_fuzz::intake::Step]| catch_unwind(AssertUnwindSafe(|| run_steps(steps))).is_err();
    let mut steps = decode(data);
    if !fails(&steps) {
        return;
    }
    std::panic::set_hook(Box::new(|_| {}));
    let mut i = 0;
    while i < steps.len() {
        let mut fewer = steps.clone();
        fewer.remove(i);
        if fails(&fewer) {
            steps = fewer;
        } else {
            i += 1;
        }
    }
    let _ = std::panic::take_hook();
    eprintln!("a shortest failing history ({} steps): {steps:#?}", steps.len());
    run_steps(&steps);
}
