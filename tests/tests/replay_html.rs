//! `difftracker replay --html`: the page is one self-contained document whose bands, call marks,
//! curves, crash lines, Service rows and tables say what the report says. Issue 16, item 2.

use difftracker_runtime::driver::EngineKind;
use difftracker_simulation::replay::html::{render, ROWS_SHOWN};
use difftracker_simulation::replay::timeline::{Band, Mark, Timeline, STATES};
use difftracker_simulation::replay::{replay, CrashPlan, ReplayOptions};
use difftracker_simulation::samples::{sample_faults, sample_trace};
use roxmltree::{Document, Node};
use serde_json::Value;
use std::collections::BTreeMap;

/// The page as XML (its `<!DOCTYPE html>` is a DTD to the parser).
fn parse(page: &str) -> Document<'_> {
    Document::parse_with_options(page, roxmltree::ParsingOptions { allow_dtd: true, ..roxmltree::ParsingOptions::default() })
        .expect("the page is well-formed")
}

fn class_is(n: &Node, class: &str) -> bool {
    n.attribute("class").is_some_and(|c| c.split(' ').any(|c| c == class))
}

fn all<'a>(doc: &'a Document, class: &str) -> Vec<Node<'a, 'a>> {
    doc.descendants().filter(|n| n.is_element() && class_is(n, class)).collect()
}

fn n_of(n: &Node) -> u64 {
    n.attribute("data-n").and_then(|v| v.parse().ok()).expect("a data-n")
}

fn sum(v: &Value) -> u64 {
    v.as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0)
}

/// Nothing in the page is fetched: no external script, style, image, frame or link.
fn assert_self_contained(doc: &Document) {
    for n in doc.descendants().filter(|n| n.is_element()) {
        for attr in ["src", "href", "data", "srcset", "action"] {
            assert!(n.attribute(attr).is_none(), "<{}> has {attr}={:?}", n.tag_name().name(), n.attribute(attr));
        }
        assert!(!matches!(n.tag_name().name(), "link" | "img" | "iframe" | "object" | "embed"), "<{}>", n.tag_name().name());
    }
    let style = doc.descendants().find(|n| n.has_tag_name("style")).and_then(|n| n.text()).unwrap_or("");
    assert!(!style.contains("url(") && !style.contains("@import"), "the style fetches nothing");
}

#[test]
fn the_timeline_of_a_faulty_crashed_replay_matches_its_report() {
    let trace = sample_trace().unwrap();
    let end = trace.end_ms();
    let options = ReplayOptions {
        engine: EngineKind::Native,
        faults: Some(sample_faults().unwrap()),
        crashes: CrashPlan { at_ms: vec![end / 3], downtime_ms: 2_000 },
        timeline: Some(250),
        ..ReplayOptions::default()
    };
    let outcome = replay(&trace, &options).unwrap();
    let report = &outcome.report;
    let timeline = outcome.timeline.as_ref().expect("a timeline was asked for");
    assert_eq!(timeline.marks_thinned, 0);
    let page = render(report, timeline);
    let doc = parse(&page);
    assert_self_contained(&doc);

    // Every cloud call is a mark; the failed ones are red, with their errors on hover.
    let ok: u64 = all(&doc, "ok").iter().map(n_of).sum();
    let failed_marks = all(&doc, "failed");
    let failed: u64 = failed_marks.iter().map(n_of).sum();
    assert_eq!(ok + failed, sum(&report["cloud_calls"]), "marks = calls");
    assert_eq!(failed, sum(&report["cloud_errors"]), "red marks = errors");
    assert!(failed > 0, "the sample faults fail some calls");
    // Each listed error is `<time> <METHOD> <kind>: <status> [<code>]: <message>`, as counted in
    // the report's `cloud_errors` keys (`<METHOD> <kind> <status> [<code>]`).
    let keys: Vec<&String> = report["cloud_errors"].as_object().unwrap().keys().collect();
    for m in &failed_marks {
        assert_eq!(m.attribute("fill"), Some("#c62828"));
        let title = m.children().find(|c| c.has_tag_name("title")).and_then(|t| t.text()).unwrap_or("");
        assert!(title.starts_with(&format!("{} failed call(s):", n_of(m))), "{title}");
        for listed in title.lines().skip(1).filter(|l| !l.starts_with("...")) {
            let (_, rest) = listed.split_once(' ').unwrap();
            let (call, rest) = rest.split_once(": ").unwrap();
            let result = rest.split(": ").next().unwrap();
            assert!(keys.iter().any(|k| **k == format!("{call} {result}")), "{listed} not in {keys:?}");
        }
    }

    // The state bands end where the engine's states end.
    let states = report["engine"]["states"].as_object().unwrap();
    let bands: BTreeMap<String, u64> = all(&doc, "band")
        .iter()
        .map(|b| (b.attribute("data-state").unwrap().to_string(), b.attribute("data-final").unwrap().parse().unwrap()))
        .collect();
    for state in STATES {
        let expected = states.get(state).and_then(Value::as_u64).unwrap_or(0);
        assert_eq!(bands.get(state).copied().unwrap_or(0), expected, "band {state}");
    }
    assert!(bands.contains_key("created"), "{bands:?}");

    // Curves: calls in flight, operations running, operations waiting.
    let curves: Vec<&str> = all(&doc, "curve").iter().map(|c| c.attribute("data-series").unwrap()).collect();
    assert_eq!(curves, ["calls_in_flight", "operations_in_flight", "operations_waiting"]);
    let max_calls: u64 = all(&doc, "curve")[0].attribute("data-max").unwrap().parse().unwrap();
    assert!(max_calls > 0, "calls were in flight at some point");

    // One crash line, one restart line, where the report puts them.
    let crashes: Vec<u64> = all(&doc, "crash").iter().map(|l| l.attribute("data-at-ms").unwrap().parse().unwrap()).collect();
    let restarts: Vec<u64> = all(&doc, "restart").iter().map(|l| l.attribute("data-at-ms").unwrap().parse().unwrap()).collect();
    let reported = report["restarts"].as_array().unwrap();
    assert_eq!(crashes, reported.iter().map(|r| r["crashed_at_ms"].as_u64().unwrap()).collect::<Vec<_>>());
    assert_eq!(restarts, reported.iter().map(|r| r["started_at_ms"].as_u64().unwrap()).collect::<Vec<_>>());

    // One row per operation (all fit); each ends in the state the report gives it.
    let rows = all(&doc, "svc");
    assert_eq!(rows.len(), timeline.bands.len().min(ROWS_SHOWN));
    let ops = report["operations"].as_object().unwrap();
    let mut checked = 0;
    for row in &rows {
        let id = row.attribute("data-identity").unwrap();
        let state = row.attribute("data-state").unwrap();
        match ops.get(id).and_then(|o| o["state"].as_str()) {
            Some("not_tracked") | None => assert_eq!(state, "gone", "{id}"),
            Some(s) => {
                assert_eq!(state, s, "{id}");
                checked += 1;
            }
        }
        assert!(row.children().any(|c| class_is(&c, "seg")), "{id} has segments");
    }
    assert!(checked > 0);

    // The summary tables hold the report's numbers.
    let table = doc.descendants().find(|n| n.attribute("id") == Some("cloud_calls")).unwrap();
    let cells: BTreeMap<String, String> = table
        .children()
        .filter(|r| r.has_tag_name("tr"))
        .map(|r| {
            let text: Vec<String> = r.children().filter(|c| c.is_element()).map(|c| c.text().unwrap_or("").to_string()).collect();
            (text[0].clone(), text[1].clone())
        })
        .collect();
    for (call, n) in report["cloud_calls"].as_object().unwrap() {
        assert_eq!(cells.get(call), Some(&n.to_string()), "{call}");
    }
    let restart_rows =
        doc.descendants().find(|n| n.attribute("id") == Some("restarts")).unwrap().children().filter(|r| r.has_tag_name("tr")).count();
    assert_eq!(restart_rows, reported.len());
}

#[test]
fn without_html_nothing_is_recorded() {
    let trace = sample_trace().unwrap();
    let outcome = replay(&trace, &ReplayOptions { engine: EngineKind::Native, ..ReplayOptions::default() }).unwrap();
    assert!(outcome.timeline.is_none());
}

#[test]
fn ten_thousand_services_stay_a_bounded_page_with_a_filter_over_all_of_them() {
    let mut t = Timeline::new(1000);
    for i in 0..10_000u64 {
        let id = format!("uid-{i:05}");
        let state = if i % 100 == 0 { 1 } else { 2 };
        t.bands.insert(
            id.clone(),
            Band {
                name: format!("ns/svc-{i:05}"),
                kind: "inbound".into(),
                segments: vec![(0, 0), (i, 1), (i + 500, state)],
                gone_ms: None,
            },
        );
        for k in 0..20 {
            t.marks.push(Mark { at_ms: i * 10 + k, call: "PUT loadBalancers".into(), subjects: vec![id.clone()], error: None });
        }
    }
    let report = serde_json::json!({"virtual_ms": 200_000, "converged": true, "cloud_calls": {"PUT loadBalancers": 200_000}});
    let page = render(&report, &t);
    assert!(page.len() < 8 << 20, "{} bytes", page.len());
    let doc = parse(&page);
    // At most one mark per pixel column, every call counted.
    let marks = all(&doc, "mark");
    assert!(marks.len() <= difftracker_simulation::replay::html::WIDTH, "{}", marks.len());
    assert_eq!(marks.iter().map(n_of).sum::<u64>(), 200_000);
    // The rows drawn are the unsettled ones first, bounded; the filter's data has them all.
    let rows = all(&doc, "svc");
    assert_eq!(rows.len(), ROWS_SHOWN);
    assert!(rows.iter().take(100).all(|r| r.attribute("data-state") == Some("creation_in_progress")));
    let data: Value =
        serde_json::from_str(doc.descendants().find(|n| n.attribute("id") == Some("bands")).unwrap().text().unwrap()).unwrap();
    assert_eq!(data["rows"].as_array().unwrap().len(), 10_000);
    let count = doc.descendants().find(|n| n.attribute("id") == Some("count")).unwrap();
    assert_eq!(count.attribute("data-total"), Some("10000"));
    assert!(doc.descendants().any(|n| n.attribute("id") == Some("filter")));
}
