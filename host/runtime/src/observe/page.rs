//! The status page for people: `GET /` answers a browser (an `Accept` naming `text/html`) with
//! one self-contained HTML page that polls `GET /status.json` (tenants) and `GET /operations`
//! (one filtered page of Services and egress identities) every [`POLL_MS`]; anything else gets
//! the plain-text page. A row links to `#op=<tenant>/<identity>`, which shows that one
//! operation. Nothing secret is on it: the JSON carries only what the status and the engine's
//! `OperationStatus` carry (no tenant configuration, no credential, no request body).

use super::{lock, states_line, Observatory};
use serde_json::{json, Value};

/// How often the page polls, in milliseconds.
pub const POLL_MS: u64 = 2000;

impl Observatory {
    /// `GET /status.json`: the process and, per tenant, its health and counts.
    pub fn status_json(&self) -> Value {
        // Before the tenants' lock: readiness takes it too.
        let readiness = match self.readiness() {
            Ok(s) => json!({"ready": true, "detail": s}),
            Err(e) => json!({"ready": false, "detail": e}),
        };
        let tenants = lock(&self.inner.shared.tenants);
        let mut out = serde_json::Map::new();
        for (name, t) in tenants.iter() {
            let kind = if t.engine_kind.is_empty() { "?" } else { t.engine_kind.as_str() };
            let Some(s) = t.status() else {
                out.insert(name.clone(), json!({"engine": kind, "health": "not started"}));
                continue;
            };
            let health = match (&s.error, s.stopped) {
                (Some(e), _) => format!("stopped on an error: {e}"),
                (None, true) => "stopped".to_string(),
                (None, false) if s.is_idle() => "running, settled".to_string(),
                (None, false) => "running, busy".to_string(),
            };
            let calls: serde_json::Map<String, Value> = t
                .calls
                .iter()
                .map(|(label, c)| {
                    (label.clone(), json!({"started": c.started, "ok": c.ok, "failed": c.failed, "in_flight": c.in_flight()}))
                })
                .collect();
            out.insert(
                name.clone(),
                json!({
                    "engine": kind,
                    "component_sha256": t.component,
                    "wit": s.wit,
                    "swaps": s.swaps,
                    "swaps_refused": s.swaps_refused,
                    "health": health,
                    "ticks": s.ticks,
                    "last_tick_s_ago": t.last_tick_at.map(|at| at.elapsed().as_secs_f64()),
                    "restarts": s.restarts,
                    "traps": s.traps,
                    "consecutive_traps": s.consecutive_traps,
                    "backoff_s": s.backoff.map(|d| d.as_secs_f64()),
                    "warning": s.warning,
                    "quarantined_total": s.quarantined_total,
                    "quarantined": s.quarantined.iter().map(|q| json!({"tick": q.tick, "input": q.summary, "reason": q.reason})).collect::<Vec<_>>(),
                    "init_phase": s.engine.initialization.phase.label(),
                    "init_failed_attempts": s.engine.initialization.failed_attempts,
                    "init_error": s.engine.initialization.error,
                    "states": s.engine.states.iter().cloned().collect::<std::collections::BTreeMap<String, u32>>(),
                    "states_line": states_line(&s.engine),
                    "operations_in_flight": s.engine.operations_in_flight,
                    "calls_in_flight": s.calls_outstanding,
                    "pending_deletions": s.engine.pending_deletions,
                    "pending_pod_deletions": s.engine.pending_pod_deletions,
                    "settled": s.engine.settled,
                    "operations_tracked": lock(&t.operations).len(),
                    "calls": calls,
                }),
            );
        }
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "up_s": self.inner.shared.started.elapsed().as_secs_f64(),
            "note": lock(&self.inner.shared.note).clone(),
            "readiness": readiness,
            "shard": self.shard_json(),
            "tenants": out,
        })
    }
}

/// The page (its script fetches only the two JSON endpoints of the same host).
pub const STATUS_HTML: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>difftracker status</title>
<style>
body{font-family:sans-serif;margin:1em;color:#222}table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f3f3f3}
.created{color:#2e7d32}.creation_in_progress,.update_in_progress{color:#1565c0}.deletion_pending,.deletion_in_progress{color:#ef6c00}
.bad{color:#c62828;font-weight:bold}#detail{border:1px solid #999;padding:.5em;margin:.5em 0;display:none}
</style></head><body>
<h1>difftracker status</h1>
<p id="summary">loading…</p>
<p id="shard"></p>
<table id="tenants"><thead><tr><th>tenant</th><th>engine</th><th>health</th><th>start-up</th><th>ticks</th><th>restarts</th><th>quarantined</th><th>operations by state</th><th>ops in flight</th><th>calls in flight</th><th>pending deletions</th><th>component</th><th>swaps</th></tr></thead><tbody></tbody></table>
<div id="detail"></div>
<h2>Services and egress identities</h2>
<p><input id="filter" type="search" placeholder="filter: name, UID, identity or state" size="40"/>
<button id="prev">previous</button> <span id="page">page 1</span> <button id="next">next</button></p>
<table id="operations"><thead><tr><th>tenant</th><th>Service / identity</th><th>kind</th><th>state</th><th>attempt</th><th>next retry (ms)</th><th>waiting for</th></tr></thead><tbody></tbody></table>
<script>
(function(){
var PAGE=50,offset=0,filter='',latest=0,POLL=__POLL_MS__;
function el(tag,text,cls){var e=document.createElement(tag);if(text!==undefined&&text!==null)e.textContent=String(text);if(cls)e.className=cls;return e;}
function get(url){return fetch(url,{cache:'no-store'}).then(function(r){if(!r.ok)throw new Error(url+': '+r.status);return r.json();});}
function tenants(s){
  var body=document.querySelector('#tenants tbody');body.textContent='';
  var names=Object.keys(s.tenants);
  document.getElementById('summary').textContent='difftracker '+s.version+' · up '+s.up_s.toFixed(0)+' s · '+(s.readiness.ready?'ready':'NOT READY: '+s.readiness.detail)+(s.note?' · '+s.note:'');
  document.getElementById('summary').setAttribute('data-ready',s.readiness.ready);
  var sh=s.shard,line=document.getElementById('shard');
  if(sh){var held=Object.keys(sh.holders).map(function(t){return t+' → '+(sh.holders[t]||'free');}).join(', ');
    line.textContent='shard '+sh.namespace+' · replica '+sh.identity+' · live replicas: '+sh.replicas.join(', ')+' · owns '+sh.owned.length+' of '+Object.keys(sh.holders).length+' (share '+sh.share+') · acquired '+sh.acquired+', lost '+sh.lost+', released '+sh.released+', lease errors '+sh.errors+(sh.last_error?' (last: '+sh.last_error+')':'')+' · leases: '+held;
    line.setAttribute('data-owned',sh.owned.join(' '));}
  names.forEach(function(n){
    var t=s.tenants[n],tr=el('tr');tr.setAttribute('data-tenant',n);
    [n,t.engine,t.health+(t.warning?' · WARNING: '+t.warning:''),t.init_phase+(t.init_failed_attempts?' ('+t.init_failed_attempts+' failed lists)':''),t.ticks,t.restarts,t.quarantined_total,t.states_line,t.operations_in_flight,t.calls_in_flight,t.pending_deletions,(t.component_sha256?t.component_sha256.slice(0,12)+' · ':'')+(t.wit||''),t.swaps+(t.swaps_refused?' ('+t.swaps_refused+' refused)':'')].forEach(function(v,i){
      var td=el('td',v);if(i===2&&(t.warning||t.health.indexOf('running')!==0))td.className='bad';tr.appendChild(td);});
    body.appendChild(tr);
  });
}
// Rows are rebuilt only when the answer changed, so a reader's click is not lost to a poll.
var shown='';
function operations(o){
  var key=offset+' '+JSON.stringify(o);if(key===shown)return;shown=key;
  var body=document.querySelector('#operations tbody');body.textContent='';var n=0;
  Object.keys(o).forEach(function(tenant){
    Object.keys(o[tenant]).forEach(function(id){
      var op=o[tenant][id],tr=el('tr');n++;
      tr.setAttribute('data-identity',id);tr.setAttribute('data-state',op.state);
      tr.appendChild(el('td',tenant));
      var td=el('td'),a=el('a',op.name?op.namespace+'/'+op.name:id);a.href='#op='+encodeURIComponent(tenant)+'/'+encodeURIComponent(id);a.className='op';td.appendChild(a);tr.appendChild(td);
      tr.appendChild(el('td',op.kind));tr.appendChild(el('td',op.state,op.state));tr.appendChild(el('td',op.retry_count));
      tr.appendChild(el('td',op.next_retry_at_ms));tr.appendChild(el('td',op.waiting_for||'nothing'));
      body.appendChild(tr);
    });
  });
  document.getElementById('page').textContent='rows '+(offset+1)+'–'+(offset+n);
  document.getElementById('page').setAttribute('data-rows',n);
}
function detail(){
  var box=document.getElementById('detail'),m=/^#op=([^/]*)\/(.*)$/.exec(location.hash);
  if(!m){box.style.display='none';return;}
  var tenant=decodeURIComponent(m[1]),id=decodeURIComponent(m[2]);
  get('operations?limit=1000&q='+encodeURIComponent(id)).then(function(o){
    var op=(o[tenant]||{})[id];box.textContent='';box.style.display='block';
    if(!op){box.appendChild(el('p',id+' is not tracked by '+tenant));return;}
    box.setAttribute('data-identity',id);box.setAttribute('data-state',op.state);
    box.appendChild(el('h3',(op.name?'Service '+op.namespace+'/'+op.name:'egress identity '+id)+' ('+tenant+')'));
    var dl=el('table');
    [['identity',id],['kind',op.kind],['state',op.state],['attempt (failed in this burst)',op.retry_count],['last attempt (ms)',op.last_attempt_ms],['next retry (ms)',op.next_retry_at_ms],
     ['retries exhausted',op.retries_exhausted],['terminal error',op.terminal],['call in flight',op.in_flight],['buffered endpoint changes',op.buffered_endpoints],
     ['waiting for',op.waiting_for||'nothing'],['correlation id',op.correlation_id]].forEach(function(r){var tr=el('tr');tr.appendChild(el('th',r[0]));tr.appendChild(el('td',r[1]));dl.appendChild(tr);});
    box.appendChild(dl);var back=el('a','back to the list');back.href='#';box.appendChild(back);
  });
}
function poll(){
  get('status.json').then(tenants).catch(function(e){document.getElementById('summary').textContent='cannot reach the host: '+e.message;});
  // Only the newest request renders: answers to an older filter or page arrive late.
  var asked=++latest;
  get('operations?offset='+offset+'&limit='+PAGE+'&q='+encodeURIComponent(filter)).then(function(o){if(asked===latest)operations(o);}).catch(function(){});
  if(location.hash)detail();
}
document.getElementById('filter').addEventListener('input',function(e){filter=e.target.value;offset=0;poll();});
document.getElementById('next').addEventListener('click',function(){offset+=PAGE;poll();});
document.getElementById('prev').addEventListener('click',function(){offset=Math.max(0,offset-PAGE);poll();});
window.addEventListener('hashchange',detail);
poll();setInterval(poll,POLL);
})();
</script></body></html>
"#;
