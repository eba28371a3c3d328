//! The three patch formats the API server accepts on `PATCH`: JSON patch (RFC 6902,
//! `application/json-patch+json`, `test` included), JSON merge patch (RFC 7386,
//! `application/merge-patch+json`) and the strategic merge patch
//! (`application/strategic-merge-patch+json`) for the cases kubectl sends: maps merged key by
//! key, `null` deleting, lists of objects merged by their Kubernetes merge key (`ports` by
//! `port`, `containers`/`env`/`volumes` by `name`, `conditions` by `type`, `ownerReferences` by
//! `uid`, `addresses` by `type`), `finalizers` merged as a set, and the directives `$patch`
//! (`replace`, `delete`), `$deleteFromPrimitiveList/…`, `$setElementOrder/…` and `$retainKeys`
//! (ordering and retention hints, not applied). Other lists are replaced whole.

use serde_json::{Map, Value};

/// Why a patch was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchError {
    /// The patch document itself is malformed (400 `BadRequest`).
    Malformed(String),
    /// A well-formed patch does not apply to the object: a failed `test`, a missing path
    /// (422 `Invalid`).
    NotApplicable(String),
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// An RFC 6901 pointer's tokens.
fn tokens(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer.strip_prefix('/').ok_or_else(|| PatchError::Malformed(format!("invalid JSON pointer {pointer:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn index(token: &str, len: usize, allow_end: bool, path: &str) -> Result<usize, PatchError> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let valid = !token.is_empty() && token.chars().all(|c| c.is_ascii_digit()) && (token == "0" || !token.starts_with('0'));
    let i: usize =
        if valid { token.parse().map_err(|_| PatchError::NotApplicable(format!("invalid index in {path:?}")))? } else { usize::MAX };
    if i > len || (!allow_end && i == len) {
        return Err(PatchError::NotApplicable(format!("index out of bounds in path {path:?}")));
    }
    Ok(i)
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String], path: &str) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => {
                let len = a.len();
                a.get_mut(index(t, len, false, path)?)
            }
            _ => None,
        }
        .ok_or_else(|| PatchError::NotApplicable(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur)
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, PatchError> {
    let toks = tokens(path)?;
    let mut cur = doc;
    for t in &toks {
        cur = match cur {
            Value::Object(m) => m.get(t),
            Value::Array(a) => a.get(index(t, a.len(), false, path)?),
            _ => None,
        }
        .ok_or_else(|| PatchError::NotApplicable(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let toks = tokens(path)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true, path)?;
            a.insert(i, value);
        }
        _ => return Err(PatchError::NotApplicable(format!("doc is missing path: {path:?}"))),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let toks = tokens(path)?;
    let Some((last, parents)) = toks.split_last() else {
        return Err(PatchError::NotApplicable("cannot remove the whole document".into()));
    };
    let missing = || PatchError::NotApplicable(format!("unable to remove nonexistent key: {last}: missing value"));
    match parent_mut(doc, parents, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i = index(last, a.len(), false, path)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 JSON patch (`patch` is its JSON text) to `doc`, all or nothing.
pub fn json_patch(doc: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    let ops: Value = serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(format!("invalid JSON patch: {e}")))?;
    let ops = ops.as_array().ok_or_else(|| PatchError::Malformed("a JSON patch must be a JSON array of operations".into()))?;
    let mut out = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        let field = |name: &str| -> Result<&str, PatchError> {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| PatchError::Malformed(format!("operation {i} of the JSON patch has no string {name:?}")))
        };
        let value =
            || op.get("value").cloned().ok_or_else(|| PatchError::Malformed(format!("operation {i} of the JSON patch has no \"value\"")));
        let path = field("path")?;
        match field("op")? {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                remove(&mut out, path)
                    .map_err(|_| PatchError::NotApplicable(format!("replace operation does not apply: doc is missing key: {path}")))?;
                add(&mut out, path, value()?)?;
            }
            "move" => {
                let from = field("from")?;
                if path.starts_with(from) && path[from.len()..].starts_with('/') {
                    return Err(PatchError::NotApplicable(format!("cannot move {from:?} into its own child {path:?}")));
                }
                let v = remove(&mut out, from)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let v = get(&out, field("from")?)?.clone();
                add(&mut out, path, v)?;
            }
            "test" => {
                let expected = value()?;
                let actual = get(&out, path).map_err(|_| PatchError::NotApplicable(format!("testing value {path} failed: test failed")))?;
                if actual != &expected {
                    return Err(PatchError::NotApplicable(format!("testing value {path} failed: test failed")));
                }
            }
            other => return Err(PatchError::Malformed(format!("unexpected kind of JSON patch operation: {other:?}"))),
        }
    }
    Ok(out)
}

/// Applies an RFC 7386 merge patch in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge key of a list field of the kinds served, if it is merged by key.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "ports" => Some("port"),
        "containers" | "initContainers" | "env" | "volumes" | "volumeMounts" | "imagePullSecrets" => Some("name"),
        "conditions" | "addresses" => Some("type"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Lists of strings merged as sets.
fn primitive_merge(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch to `target` in place.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    smp_map(target, patch)
}

fn smp_map(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut copy = p.clone();
            copy.remove("$patch");
            *target = Value::Object(copy);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some(other) => return Err(PatchError::Malformed(format!("unknown patch type: {other:?}"))),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v.as_array().ok_or_else(|| PatchError::Malformed(format!("{k} must be a list")))?;
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(PatchError::Malformed(format!("unsupported strategic merge patch directive {k:?}")));
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Array(items) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                smp_list(slot, k, items)?;
            }
            Value::Object(_) => smp_map(t.entry(k.clone()).or_insert(Value::Null), v)?,
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn smp_list(target: &mut Value, field: &str, items: &[Value]) -> Result<(), PatchError> {
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *target = Value::Array(items.iter().filter(|i| i.get("$patch").is_none()).cloned().collect());
        return Ok(());
    }
    if primitive_merge(field) {
        let list = match target {
            Value::Array(a) => a,
            other => {
                *other = Value::Array(Vec::new());
                other.as_array_mut().expect("made an array")
            }
        };
        for i in items {
            if !list.contains(i) {
                list.push(i.clone());
            }
        }
        return Ok(());
    }
    let Some(key) = merge_key(field).filter(|_| items.iter().all(Value::is_object)) else {
        *target = Value::Array(items.to_vec());
        return Ok(());
    };
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let list = target.as_array_mut().expect("made an array");
    for item in items {
        let id = item.get(key).ok_or_else(|| PatchError::Malformed(format!("map in {field} has no merge key {key:?}")))?;
        let pos = list.iter().position(|x| x.get(key) == Some(id));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                list.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => smp_map(&mut list[p], item)?,
            None => {
                let mut fresh = Value::Object(Map::new());
                smp_map(&mut fresh, item)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_applies_all_operations_or_none() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x/y": "1"}}, "spec": {"ports": [{"port": 80}]}});
        let patch = br#"[
            {"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
            {"op": "add", "path": "/spec/ports/-", "value": {"port": 443}},
            {"op": "replace", "path": "/metadata/labels/x~1y", "value": "2"},
            {"op": "copy", "from": "/spec/ports/0", "path": "/spec/first"},
            {"op": "move", "from": "/spec/first", "path": "/spec/moved"}]"#;
        let out = json_patch(&doc, patch).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["b"], "labels": {"x/y": "2"}}, "spec": {"ports": [{"port": 80}, {"port": 443}], "moved": {"port": 80}}})
        );
        let failing =
            br#"[{"op": "remove", "path": "/metadata/finalizers/0"}, {"op": "test", "path": "/metadata/finalizers/0", "value": "a"}]"#;
        assert!(matches!(json_patch(&doc, failing), Err(PatchError::NotApplicable(m)) if m.contains("test failed")));
        assert!(matches!(json_patch(&doc, br#"[{"op": "replace", "path": "/nope", "value": 1}]"#), Err(PatchError::NotApplicable(_))));
        assert!(matches!(json_patch(&doc, br#"{"op": "add"}"#), Err(PatchError::Malformed(_))));
        assert!(matches!(json_patch(&doc, br#"[{"op": "frob", "path": "/a"}]"#), Err(PatchError::Malformed(_))));
    }

    #[test]
    fn merge_patch_merges_maps_and_deletes_nulls() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_patch_merges_lists_by_key_and_finalizers_as_a_set() {
        let mut doc = json!({"metadata": {"finalizers": ["a"]}, "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 81}], "selector": {"app": "x"}}});
        let patch = json!({
            "metadata": {"finalizers": ["b", "a"]},
            "spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 443}],
                     "ports": [{"port": 80, "name": "web"}, {"port": 443}, {"port": 81, "$patch": "delete"}],
                     "selector": {"app": null, "tier": "t"}}});
        strategic_merge_patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"ports": [{"port": 80, "name": "web"}, {"port": 443}], "selector": {"tier": "t"}}})
        );
        strategic_merge_patch(&mut doc, &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["b"]));
        assert!(strategic_merge_patch(&mut doc, &json!({"$frob": 1})).is_err());
    }
}
