//! colo-proxy's DPDK telemetry commands: `/colo/stats`, `/colo/flows[,N]`, `/colo/lcores`,
//! answered from the [`DataPlane`] on DPDK's telemetry thread, and `/colo/mgmt` (divergences by
//! reason, checkpoint requests/completions, sinks) from management's shared snapshot. Call
//! [`register`] after EAL is up.

use std::sync::{Arc, Mutex};

use crate::control::proto::{DEFAULT_TOP_FLOWS, MAX_TOP_FLOWS};
use crate::control::DataPlane;
use crate::dpdk::telemetry::{self as tel, Handler, TelValue, MAX_ENTRIES, MAX_STR};
use crate::dpdk::DpdkError;

use super::MgmtStats;

/// A telemetry handler answering with JSON, flattened.
fn json(f: impl Fn(&str) -> serde_json::Value + Send + Sync + 'static) -> Handler {
    Arc::new(move |p| flatten(&f(p)))
}

fn sanitize(name: &str) -> String {
    // Telemetry names may hold only alphanumerics, '_' and '/'.
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '/' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(MAX_STR);
    s
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Flatten JSON into `path/to/key → value` entries (arrays use indices), at most
/// `MAX_ENTRIES - 1` of them; when more exist a final `truncated` entry says how many were left
/// out. Pure: no DPDK involved.
pub fn flatten(v: &serde_json::Value) -> Vec<(String, TelValue)> {
    fn walk(
        prefix: &str,
        v: &serde_json::Value,
        out: &mut Vec<(String, TelValue)>,
        skipped: &mut u64,
    ) {
        use serde_json::Value as V;
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}/{k}")
            }
        };
        let leaf = |out: &mut Vec<(String, TelValue)>, skipped: &mut u64, val: TelValue| {
            if out.len() < MAX_ENTRIES - 1 {
                let name = if prefix.is_empty() {
                    "value".to_string()
                } else {
                    sanitize(prefix)
                };
                out.push((name, val));
            } else {
                *skipped += 1;
            }
        };
        match v {
            V::Object(m) => m.iter().for_each(|(k, x)| walk(&key(k), x, out, skipped)),
            V::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| walk(&key(&i.to_string()), x, out, skipped)),
            V::Bool(b) => leaf(out, skipped, TelValue::U64(*b as u64)),
            V::Number(n) => leaf(
                out,
                skipped,
                match (n.as_u64(), n.as_i64().and_then(|i| i32::try_from(i).ok())) {
                    (Some(u), _) => TelValue::U64(u),
                    (None, Some(i)) => TelValue::Int(i),
                    _ => TelValue::Str(clip(&n.to_string())),
                },
            ),
            V::String(s) => leaf(out, skipped, TelValue::Str(clip(s))),
            V::Null => leaf(out, skipped, TelValue::Str("null".into())),
        }
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    walk("", v, &mut out, &mut skipped);
    if skipped > 0 {
        out.push(("truncated".into(), TelValue::U64(skipped)));
    }
    out
}

/// The per-lcore part of a stats snapshot: its `lcores` member when there is one.
pub fn lcores_of(stats: &serde_json::Value) -> serde_json::Value {
    stats
        .get("lcores")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}))
}

/// Register the commands; `mgmt` is [`super::Management::stats_handle`].
pub fn register(
    dp: Arc<dyn DataPlane>,
    mgmt: Option<Arc<Mutex<MgmtStats>>>,
) -> Result<(), DpdkError> {
    if let Some(m) = mgmt {
        tel::register(
            "/colo/mgmt",
            "colo-proxy management: divergences by reason, checkpoint requests and completions, sinks",
            json(move |_| {
                let s = m.lock().unwrap_or_else(|p| p.into_inner()).clone();
                serde_json::to_value(s).unwrap_or_default()
            }),
        )?;
    }
    let d = dp.clone();
    tel::register(
        "/colo/stats",
        "colo-proxy counters (totals and per lcore)",
        json(move |_| d.stats()),
    )?;
    let d = dp.clone();
    tel::register(
        "/colo/flows",
        "colo-proxy top flows by traffic; parameter: how many (default 20)",
        json(move |p| {
            let n = p
                .trim()
                .parse()
                .unwrap_or(DEFAULT_TOP_FLOWS)
                .min(MAX_TOP_FLOWS);
            d.flows(n)
        }),
    )?;
    tel::register(
        "/colo/lcores",
        "colo-proxy per-lcore counters",
        json(move |_| lcores_of(&dp.stats())),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_nested_json_into_telemetry_names() {
        let v = json!({"total": {"rx": 5, "drop-reason": {"full q": 2}}, "lcores": [{"id": 1, "busy": 0.5}], "neg": -3, "up": true, "s": "x"});
        let f = flatten(&v);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("total/rx"), Some(TelValue::U64(5)));
        assert_eq!(get("total/drop_reason/full_q"), Some(TelValue::U64(2)));
        assert_eq!(get("lcores/0/id"), Some(TelValue::U64(1)));
        assert_eq!(get("lcores/0/busy"), Some(TelValue::Str("0.5".into())));
        assert_eq!(get("neg"), Some(TelValue::Int(-3)));
        assert_eq!(get("up"), Some(TelValue::U64(1)));
        assert_eq!(get("s"), Some(TelValue::Str("x".into())));
        assert_eq!(
            flatten(&json!(7)),
            vec![("value".to_string(), TelValue::U64(7))]
        );
    }

    #[test]
    fn caps_entries_and_string_length() {
        let big: Vec<u64> = (0..1000).collect();
        let f = flatten(&json!({"a": big}));
        assert_eq!(f.len(), MAX_ENTRIES);
        assert_eq!(
            f.last().unwrap(),
            &(
                "truncated".to_string(),
                TelValue::U64(1000 - (MAX_ENTRIES as u64 - 1))
            )
        );
        let long = "é".repeat(200);
        match &flatten(&json!({ "k": long }))[0].1 {
            TelValue::Str(s) => assert!(s.len() <= MAX_STR && s.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
    }
}
