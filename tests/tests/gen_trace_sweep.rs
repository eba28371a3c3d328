//! A seeded sweep over `gen-trace` parameters, each trace replayed with the native engine and
//! held to the oracle: the emulator ends with exactly what the final cluster implies.
//!
//! The parameter space: nodes at the start 0..=4 (with churn a quarter more join later, every
//! third one dual-stack, so small clusters go from IPv4-only to dual-stack mid-run), egress
//! pods off or on (5 or 10 pods), churn none/low/medium/high, 1..=6 endpoints per Service and
//! 2..=6 Services. Every (nodes, egress on/off, churn) cell is run once with the rest drawn from
//! a seeded generator, then a seeded random draw over the whole space adds more. The traces are
//! small, so the sweep stays within a few seconds in the dev profile.

use difftracker_runtime::driver::EngineKind;
use difftracker_simulation::replay::gen::{write_trace, Churn, GenOptions, Rng};
use difftracker_simulation::replay::oracle::check_report;
use difftracker_simulation::replay::{parse_trace, replay, ReplayOptions};

const CHURN: [Churn; 4] = [Churn::None, Churn::Low, Churn::Medium, Churn::High];
const MAX_NODES: u64 = 4;
/// Extra random draws over the whole space, after the grid.
const RANDOM_DRAWS: usize = 20;

fn draw(rng: &mut Rng, nodes: usize, egress_on: bool, churn: Churn) -> GenOptions {
    GenOptions {
        services: rng.range(2, 6) as usize,
        nodes,
        egress: if egress_on { *rng.pick(&[5, 10]) } else { 0 },
        churn,
        seed: rng.range(1, 1_000_000),
        endpoints: rng.range(1, 6) as usize,
    }
}

/// The sweep's parameter sets, deterministic.
fn parameter_sets() -> Vec<GenOptions> {
    let mut rng = Rng::new(0x005e_ed11);
    let mut sets = Vec::new();
    for nodes in 0..=MAX_NODES as usize {
        for egress_on in [false, true] {
            for churn in CHURN {
                sets.push(draw(&mut rng, nodes, egress_on, churn));
            }
        }
    }
    for _ in 0..RANDOM_DRAWS {
        let nodes = rng.range(0, MAX_NODES) as usize;
        let egress_on = rng.chance(50);
        let churn = *rng.pick(&CHURN);
        sets.push(draw(&mut rng, nodes, egress_on, churn));
    }
    sets
}

/// What went wrong with one parameter set, or nothing.
fn run(options: &GenOptions) -> Option<String> {
    let mut buf = Vec::new();
    write_trace(options, &mut buf).expect("generating a trace");
    let trace = parse_trace(&buf).expect("a generated trace parses");
    let replay_options = ReplayOptions { seed: options.seed, engine: EngineKind::Native, ..ReplayOptions::default() };
    let outcome = match replay(&trace, &replay_options) {
        Ok(o) => o,
        Err(e) => return Some(format!("replay failed: {e:#}")),
    };
    match check_report(&outcome.report) {
        Ok(()) => None,
        Err(problems) => Some(problems.join("; ")),
    }
}

fn describe(o: &GenOptions) -> String {
    format!(
        "difftracker gen-trace --services {} --nodes {} --egress {} --churn {:?} --endpoints {} --seed {}",
        o.services, o.nodes, o.egress, o.churn, o.endpoints, o.seed
    )
    .replace("--churn None", "--churn none")
    .replace("--churn Low", "--churn low")
    .replace("--churn Medium", "--churn medium")
    .replace("--churn High", "--churn high")
}

#[test]
fn generated_parameter_sweep_settles_to_the_oracle() {
    let sets = parameter_sets();
    assert!(sets.len() >= 40, "{} parameter sets", sets.len());
    // The region that once failed (an egress NAT gateway created while every node was IPv4-only,
    // then a dual-stack node joining) is covered.
    assert!(sets.iter().any(|o| o.nodes <= 1 && o.egress > 0 && o.churn != Churn::None));
    let failures: Vec<String> = sets.iter().filter_map(|o| run(o).map(|why| format!("{}\n    {why}", describe(o)))).collect();
    assert!(failures.is_empty(), "{} of {} parameter sets fail the oracle:\n{}", failures.len(), sets.len(), failures.join("\n"));
}

#[test]
fn the_sweep_is_deterministic() {
    assert_eq!(parameter_sets(), parameter_sets());
}
