//! `difftracker replay --html FILE`: one self-contained page (no script, style or image is
//! fetched) that draws a replay's [`Timeline`] over virtual time, beside the report's summary
//! tables.
//!
//! - **States**: a stacked band per engine state (docs/ENGINE.md 4.1), the number of operations
//!   in each after every tick, so 10,000 Services read as a handful of bands.
//! - **Cloud calls**: one mark per pixel column that had calls, grey when all succeeded, red
//!   when some failed (hover: the errors).
//! - **In flight / waiting**: curves of the host's calls in flight, the operations running and
//!   the operations waiting (for a slot, a retry, a drain, the init gate).
//! - **Crashes** (red) and **restarts** (green) as vertical lines across the charts.
//! - **Services**: one row per operation, its state as coloured segments; the first
//!   [`ROWS_SHOWN`] are drawn in the page (the unsettled ones first), a filter box redraws the
//!   rows from the page's embedded data.
//!
//! The document is well-formed XML as well as HTML, so tests parse it; every element a reader
//! (or a test) checks carries its numbers in `data-*` attributes.

use super::report::Report;
use super::timeline::{Band, Timeline, STATES};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Chart width in pixels (also the number of time columns).
pub const WIDTH: usize = 1000;
/// Service rows drawn at most (the filter picks others).
pub const ROWS_SHOWN: usize = 200;
const LEFT: usize = 160;
const BAND_H: usize = 160;
const MARK_H: usize = 24;
const CURVE_H: usize = 120;
const ROW_H: usize = 12;
/// Errors listed on one failed mark's hover text.
const ERRORS_PER_MARK: usize = 5;

/// A colour per state, in [`STATES`] order.
pub const COLOURS: [&str; 7] = ["#9e9e9e", "#42a5f5", "#66bb6a", "#ffb74d", "#ef6c00", "#ab47bc", "#000000"];

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script>` of an HTML or XML document.
fn script_json(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default().replace('&', "\\u0026").replace('<', "\\u003c").replace('>', "\\u003e")
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{:01}s", s, (ms % 1000) / 100)
    }
}

/// Maps virtual time to chart columns.
struct Axis {
    start: u64,
    end: u64,
}

impl Axis {
    fn x(&self, at: u64) -> f64 {
        let span = (self.end - self.start).max(1) as f64;
        LEFT as f64 + (at.saturating_sub(self.start) as f64 / span * WIDTH as f64).min(WIDTH as f64)
    }
    fn column(&self, at: u64) -> usize {
        ((self.x(at) - LEFT as f64) as usize).min(WIDTH - 1)
    }
    fn ticks(&self, svg: &mut String, top: usize, height: usize) {
        for i in 0..=5 {
            let at = self.start + (self.end - self.start) * i / 5;
            let x = self.x(at);
            let _ = write!(
                svg,
                r##"<line class="grid" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"##,
                top + height,
                top + height + 12,
                human_ms(at)
            );
        }
    }
}

/// The page for `report` and `timeline`.
pub fn render(report: &Report, timeline: &Timeline) -> String {
    let start = timeline.points.first().map_or(0, |p| p.at_ms).min(timeline.marks.first().map_or(u64::MAX, |m| m.at_ms));
    let end = report["virtual_ms"].as_u64().unwrap_or(0).max(timeline.points.last().map_or(0, |p| p.at_ms)).max(start + 1);
    let axis = Axis { start, end };
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/>");
    page.push_str("<title>difftracker replay timeline</title><style>");
    page.push_str(STYLE);
    page.push_str("</style></head><body>");
    let calls: u64 = report["cloud_calls"].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
    let errors: u64 = report["cloud_errors"].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
    let _ = write!(
        page,
        r#"<h1>Replay timeline</h1><p id="summary" data-converged="{}" data-virtual-ms="{}">{} · {} of virtual time · {} cloud calls, {} failed · {} operations · {} crash(es)</p>"#,
        report["converged"] == true,
        end,
        if report["converged"] == true { "converged" } else { "did NOT converge" },
        human_ms(end),
        calls,
        errors,
        timeline.bands.len(),
        timeline.crashes_ms.len(),
    );
    page.push_str(&legend());
    page.push_str(&charts(&axis, timeline));
    page.push_str(&rows(&axis, timeline));
    page.push_str(&tables(report, timeline));
    page.push_str("<script type=\"application/json\" id=\"bands\">");
    page.push_str(&script_json(&bands_json(&axis, timeline)));
    page.push_str("</script><script>//<![CDATA[\n");
    page.push_str(SCRIPT);
    page.push_str("\n//]]></script></body></html>\n");
    page
}

fn legend() -> String {
    let mut s = String::from(r#"<p class="legend">"#);
    for (state, colour) in STATES.iter().zip(COLOURS) {
        let _ = write!(s, r#"<span><i style="background:{colour}"></i>{state}</span> "#);
    }
    s.push_str(
        r#"<span><i style="background:#c62828"></i>failed call / crash</span> <span><i style="background:#2e7d32"></i>restart</span></p>"#,
    );
    s
}

/// The three charts in one SVG: state bands, call marks, curves; crash and restart lines across.
fn charts(axis: &Axis, t: &Timeline) -> String {
    let mark_top = BAND_H + 20;
    let curve_top = mark_top + MARK_H + 20;
    let height = curve_top + CURVE_H + 20;
    let mut svg = String::new();
    let _ = write!(svg, r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}">"#, LEFT + WIDTH + 10);
    // --- state bands: the last point of each column, carried forward.
    let mut columns: Vec<Option<&super::timeline::Point>> = vec![None; WIDTH];
    for p in &t.points {
        columns[axis.column(p.at_ms)] = Some(p);
    }
    let mut carried = Vec::with_capacity(WIDTH);
    let mut last = None;
    for c in columns {
        last = c.or(last);
        carried.push(last.cloned().unwrap_or_default());
    }
    let max_total = carried.iter().map(|p| p.states.iter().sum::<u32>()).max().unwrap_or(0).max(1) as f64;
    let _ = write!(svg, r#"<text x="4" y="12" font-size="11">operations by state (max {max_total})</text>"#);
    axis.ticks(&mut svg, 0, BAND_H);
    let final_point = t.points.last().cloned().unwrap_or_default();
    for (si, state) in STATES.iter().enumerate() {
        let mut d = String::new();
        // Upper edge left to right, lower edge right to left.
        let y = |p: &super::timeline::Point, upto: usize| {
            let below: u32 = p.states[..upto].iter().sum();
            BAND_H as f64 - below as f64 / max_total * (BAND_H - 16) as f64
        };
        if carried.iter().all(|p| p.states[si] == 0) {
            continue;
        }
        for (i, p) in carried.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1} ", if i == 0 { "M" } else { "L" }, LEFT + i, y(p, si + 1));
        }
        for (i, p) in carried.iter().enumerate().rev() {
            let _ = write!(d, "L{:.1},{:.1} ", LEFT + i, y(p, si));
        }
        let _ = write!(
            svg,
            r#"<path class="band" data-state="{state}" data-final="{}" data-max="{}" fill="{}" d="{}Z"><title>{state}: {} at the end, at most {}</title></path>"#,
            final_point.states[si],
            carried.iter().map(|p| p.states[si]).max().unwrap_or(0),
            COLOURS[si],
            d.trim_end(),
            final_point.states[si],
            carried.iter().map(|p| p.states[si]).max().unwrap_or(0),
        );
    }
    // --- call marks, one per column.
    let _ = write!(svg, r#"<text x="4" y="{}" font-size="11">cloud calls</text>"#, mark_top + 14);
    let mut ok = vec![0u64; WIDTH];
    let mut failed: Vec<Vec<&super::timeline::Mark>> = vec![Vec::new(); WIDTH];
    for m in &t.marks {
        let c = axis.column(m.at_ms);
        if m.error.is_some() {
            failed[c].push(m);
        } else {
            ok[c] += 1;
        }
    }
    for (c, (n_ok, fails)) in ok.iter().zip(&failed).enumerate() {
        let x = LEFT + c;
        if *n_ok > 0 {
            let _ = write!(
                svg,
                r##"<rect class="mark ok" data-n="{}" x="{x}" y="{mark_top}" width="1" height="{MARK_H}" fill="#90a4ae"><title>{} call(s) ok</title></rect>"##,
                *n_ok, *n_ok
            );
        }
        if !fails.is_empty() {
            let mut title = format!("{} failed call(s):", fails.len());
            for m in fails.iter().take(ERRORS_PER_MARK) {
                let _ = write!(title, "\n{} {}: {}", human_ms(m.at_ms), m.call, m.error.as_deref().unwrap_or(""));
            }
            if fails.len() > ERRORS_PER_MARK {
                let _ = write!(title, "\n... and {} more", fails.len() - ERRORS_PER_MARK);
            }
            let _ = write!(
                svg,
                r##"<rect class="mark failed" data-n="{}" x="{x}" y="{mark_top}" width="2" height="{MARK_H}" fill="#c62828"><title>{}</title></rect>"##,
                fails.len(),
                esc(&title)
            );
        }
    }
    // --- curves.
    let _ = write!(svg, r#"<text x="4" y="{}" font-size="11">in flight / waiting</text>"#, curve_top + 14);
    axis.ticks(&mut svg, curve_top, CURVE_H);
    type Series = fn(&super::timeline::Point) -> u32;
    let series: [(&str, &str, Series); 3] = [
        ("calls_in_flight", "#1565c0", |p| p.calls_in_flight),
        ("operations_in_flight", "#2e7d32", |p| p.operations_in_flight),
        ("operations_waiting", "#ef6c00", |p| p.operations_waiting),
    ];
    let max_curve = carried.iter().flat_map(|p| series.iter().map(move |(_, _, f)| f(p))).max().unwrap_or(0).max(1) as f64;
    for (name, colour, f) in series {
        let mut pts = String::new();
        for (i, p) in carried.iter().enumerate() {
            let y = (curve_top + CURVE_H) as f64 - f(p) as f64 / max_curve * (CURVE_H - 16) as f64;
            let _ = write!(pts, "{},{:.1} ", LEFT + i, y);
        }
        let _ = write!(
            svg,
            r#"<polyline class="curve" data-series="{name}" data-max="{}" fill="none" stroke="{colour}" points="{}"><title>{name} (max {})</title></polyline>"#,
            carried.iter().map(f).max().unwrap_or(0),
            pts.trim_end(),
            carried.iter().map(f).max().unwrap_or(0),
        );
    }
    // --- crashes and restarts.
    for (class, colour, times) in [("crash", "#c62828", &t.crashes_ms), ("restart", "#2e7d32", &t.restarts_ms)] {
        for at in times {
            let x = axis.x(*at);
            let _ = write!(
                svg,
                r#"<line class="{class}" data-at-ms="{at}" x1="{x:.1}" y1="0" x2="{x:.1}" y2="{height}" stroke="{colour}" stroke-width="2" stroke-dasharray="4,3"><title>{class} at {}</title></line>"#,
                human_ms(*at)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The bands in the order the rows show them: those not ending `created` first, then by name.
fn ordered(t: &Timeline) -> Vec<(&String, &Band)> {
    let mut v: Vec<(&String, &Band)> = t.bands.iter().collect();
    let settled = |b: &Band| b.gone_ms.is_some() || b.segments.last().is_some_and(|(_, s)| *s == 2);
    v.sort_by(|a, b| settled(a.1).cmp(&settled(b.1)).then_with(|| a.1.name.cmp(&b.1.name)).then_with(|| a.0.cmp(b.0)));
    v
}

fn final_state(b: &Band) -> &'static str {
    match (b.gone_ms, b.segments.last()) {
        (Some(_), _) => "gone",
        (None, Some((_, s))) => STATES[*s],
        (None, None) => "unknown",
    }
}

fn bands_json(axis: &Axis, t: &Timeline) -> Value {
    let rows: Vec<Value> = ordered(t)
        .into_iter()
        .map(|(id, b)| {
            json!({
                "id": id, "name": b.name, "kind": b.kind, "state": final_state(b),
                "segments": b.segments.iter().map(|(at, s)| json!([axis.x(*at), *s])).collect::<Vec<_>>(),
                "gone": b.gone_ms.map(|g| axis.x(g)),
            })
        })
        .collect();
    json!({"rows": rows, "colours": COLOURS, "states": STATES, "right": LEFT + WIDTH, "left": LEFT, "row_h": ROW_H, "shown": ROWS_SHOWN})
}

fn rows(axis: &Axis, t: &Timeline) -> String {
    let ordered = ordered(t);
    let shown = ordered.len().min(ROWS_SHOWN);
    let mut s = format!(
        r#"<h2>Services and egress identities</h2><p><input id="filter" type="search" placeholder="filter: name, identity or state" size="40"/> <span id="count" data-total="{}" data-shown="{shown}">showing {shown} of {}</span></p>"#,
        ordered.len(),
        ordered.len()
    );
    let _ = write!(s, r#"<svg id="rows" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}">"#, LEFT + WIDTH + 10, shown * ROW_H + 4);
    for (i, (id, b)) in ordered.iter().take(ROWS_SHOWN).enumerate() {
        let y = i * ROW_H;
        let _ = write!(
            s,
            r#"<g class="svc" data-identity="{}" data-name="{}" data-kind="{}" data-state="{}"><text x="2" y="{}" font-size="10">{}</text>"#,
            esc(id),
            esc(&b.name),
            esc(&b.kind),
            final_state(b),
            y + 10,
            esc(&b.name.chars().take(26).collect::<String>())
        );
        for (k, (at, state)) in b.segments.iter().enumerate() {
            let x0 = axis.x(*at);
            let until = b.segments.get(k + 1).map(|(a, _)| *a).or(b.gone_ms).unwrap_or(axis.end);
            let x1 = axis.x(until).max(x0 + 1.0);
            let _ = write!(
                s,
                r#"<rect class="seg" data-state="{}" x="{x0:.1}" y="{}" width="{:.1}" height="{}" fill="{}"><title>{}: {} from {} to {}</title></rect>"#,
                STATES[*state],
                y + 1,
                x1 - x0,
                ROW_H - 2,
                COLOURS[*state],
                esc(&b.name),
                STATES[*state],
                human_ms(*at),
                human_ms(until)
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>");
    s
}

/// One two-column table of a JSON object's entries.
fn table(id: &str, title: &str, v: &Value) -> String {
    let mut s = format!(r#"<table id="{id}"><caption>{}</caption>"#, esc(title));
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = write!(s, r#"<tr><th>{}</th><td>{}</td></tr>"#, esc(k), esc(&text));
            }
        }
        _ => s.push_str("<tr><td>none</td></tr>"),
    }
    s.push_str("</table>");
    s
}

fn tables(report: &Report, t: &Timeline) -> String {
    let mut s = String::from(r#"<h2>Summary</h2><div class="tables">"#);
    s.push_str(&table("cloud_calls", "cloud calls", &report["cloud_calls"]));
    s.push_str(&table("cloud_errors", "cloud errors", &report["cloud_errors"]));
    s.push_str(&table("states", "operations by state at the end", &report["engine"]["states"]));
    s.push_str(&table("events", "Kubernetes Events", &report["kubernetes"]["events"]));
    s.push_str(&table("writes", "Kubernetes writes", &report["kubernetes"]["writes"]));
    let restarts: serde_json::Map<String, Value> = report["restarts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            (
                format!("restart {}", i + 1),
                Value::String(format!(
                    "crash at {}, back at {}, {} completions lost, start-up {}",
                    human_ms(r["crashed_at_ms"].as_u64().unwrap_or(0)),
                    human_ms(r["started_at_ms"].as_u64().unwrap_or(0)),
                    r["completions_lost"],
                    r["startup_ms"].as_u64().map_or("never finished".into(), human_ms)
                )),
            )
        })
        .collect();
    s.push_str(&table("restarts", "crashes and restarts", &Value::Object(restarts)));
    let differences: serde_json::Map<String, Value> = report["oracle"]["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .take(100)
        .enumerate()
        .map(|(i, d)| (format!("{}", i + 1), d.clone()))
        .collect();
    s.push_str(&table("oracle", "oracle differences", &Value::Object(differences)));
    s.push_str("</div>");
    if t.marks_thinned > 0 {
        let _ = write!(
            s,
            r#"<p id="thinned">{} successful call marks were thinned out of the chart (the tables count every call).</p>"#,
            t.marks_thinned
        );
    }
    s
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em;color:#222}svg{display:block;margin:.5em 0}\
.legend span{margin-right:1em;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:3px}\
.tables{display:flex;flex-wrap:wrap;gap:1em}table{border-collapse:collapse;font-size:12px}\
caption{font-weight:bold;text-align:left}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}";

/// Redraws the rows from the embedded data for the filter (no network: the data is in the page).
const SCRIPT: &str = r#"(function(){
var data=JSON.parse(document.getElementById('bands').textContent);
var svg=document.getElementById('rows'),count=document.getElementById('count');
var NS='http://www.w3.org/2000/svg';
function el(n,a){var e=document.createElementNS(NS,n);for(var k in a){e.setAttribute(k,a[k]);}return e;}
function draw(q){
  q=q.toLowerCase();
  var rows=data.rows.filter(function(r){return !q||r.name.toLowerCase().indexOf(q)>=0||r.id.indexOf(q)>=0||r.state===q;});
  while(svg.firstChild){svg.removeChild(svg.firstChild);}
  var shown=rows.slice(0,data.shown);
  shown.forEach(function(r,i){
    var y=i*data.row_h,g=el('g',{'class':'svc','data-identity':r.id,'data-name':r.name,'data-kind':r.kind,'data-state':r.state});
    var t=el('text',{x:2,y:y+10,'font-size':10});t.textContent=r.name.slice(0,26);g.appendChild(t);
    r.segments.forEach(function(s,k){
      var x0=s[0],x1=k+1<r.segments.length?r.segments[k+1][0]:(r.gone!==null?r.gone:data.right);
      var rect=el('rect',{'class':'seg','data-state':data.states[s[1]],x:x0,y:y+1,width:Math.max(1,x1-x0),height:data.row_h-2,fill:data.colours[s[1]]});
      var ti=el('title',{});ti.textContent=r.name+': '+data.states[s[1]];rect.appendChild(ti);g.appendChild(rect);
    });
    svg.appendChild(g);
  });
  svg.setAttribute('height',shown.length*data.row_h+4);
  count.textContent='showing '+shown.length+' of '+rows.length+(rows.length<data.rows.length?' matching ('+data.rows.length+' in all)':'');
  count.setAttribute('data-shown',shown.length);
}
document.getElementById('filter').addEventListener('input',function(e){draw(e.target.value);});
})();"#;
