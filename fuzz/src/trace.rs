//! The trace reader (`replay --trace`, `live --trace`): any bytes are a trace or a
//! [`TraceError`](difftracker_simulation::replay::TraceError) naming a line of the input.

use difftracker_simulation::replay::parse_trace;

pub fn run(data: &[u8]) {
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    match parse_trace(data) {
        Ok(trace) => {
            // Events are applied in time order, and each names the line it began on.
            assert!(trace.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "trace events out of time order");
            for e in &trace.events {
                assert!(e.line >= 1 && e.line <= lines, "event line {} outside the input's {lines} lines", e.line);
            }
            assert!(trace.end_ms() >= trace.events.last().map_or(0, |e| e.at_ms));
        }
        Err(e) => {
            assert!(e.line >= 1 && e.line <= lines, "error line {} outside the input's {lines} lines", e.line);
            // The message describes the problem; it does not echo an unbounded part of the input.
            assert!(e.to_string().len() <= 4096 + 64, "trace error of {} bytes", e.to_string().len());
        }
    }
}
