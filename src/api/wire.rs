//! The API's wire shapes: the envelope and the task object with the seed's names
//! (`ServiceInfo`, `State`, `StartFaultNum`, `StopFaultNum`, `Pids`) plus extension fields.
//!
//! A task's JSON changes only when its snapshot does, so it is serialised once per snapshot
//! version and cached: `/task/get` then costs a copy per task, not a serialisation.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::config::ServiceInfo;
use crate::supervisor::TaskSnapshot;

#[derive(Serialize)]
struct Envelope<T> {
    data: T,
    msg: &'static str,
}

/// `{"data": …, "msg": "SUCCESS"}`.
pub fn ok<T: Serialize>(data: T) -> Response {
    let body = serde_json::to_vec(&Envelope { data, msg: "SUCCESS" }).expect("API data always serialises");
    json_response(body)
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One task as the seed shows it, plus extensions.
#[derive(Serialize)]
pub struct TaskWire<'a> {
    #[serde(rename = "ServiceInfo")]
    pub info: &'a ServiceInfo,
    #[serde(rename = "State")]
    pub state: u8,
    #[serde(rename = "StartFaultNum")]
    pub start_faults: u64,
    #[serde(rename = "StopFaultNum")]
    pub stop_faults: u64,
    #[serde(rename = "Pids")]
    pub pids: &'a [i32],
    /// Extension: the state's name (see the README's state table).
    #[serde(rename = "StateName")]
    pub state_name: &'static str,
    #[serde(rename = "Health")]
    pub health: &'static str,
    #[serde(rename = "Restarts")]
    pub restarts: u64,
    /// Extension: when the current state was entered (Unix seconds); uptime when running.
    #[serde(rename = "Since")]
    pub since: u64,
    #[serde(rename = "LastExit", skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<&'a str>,
    /// Extension: when `LastExit` happened (Unix seconds).
    #[serde(rename = "LastExitTime", skip_serializing_if = "Option::is_none")]
    pub last_exit_time: Option<u64>,
    #[serde(rename = "LastError", skip_serializing_if = "Option::is_none")]
    pub last_error: Option<&'a str>,
    #[serde(rename = "LastErrorTime", skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<u64>,
    /// Extension: consecutive failed health checks of the current run (with a check).
    #[serde(rename = "HealthStreak", skip_serializing_if = "Option::is_none")]
    pub health_streak: Option<u32>,
    /// Extension: the latest health check of the current run.
    #[serde(rename = "LastCheck", skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckWire<'a>>,
    /// Extension: in backoff, when the next start is due (Unix milliseconds) and why it restarts.
    #[serde(rename = "NextStart", skip_serializing_if = "Option::is_none")]
    pub next_start: Option<u64>,
    #[serde(rename = "RestartCause", skip_serializing_if = "Option::is_none")]
    pub restart_cause: Option<&'static str>,
    /// Extension: the operator's stop is in force (kept in state.json): the service stays stopped,
    /// across restarts of air-nanny, until it is started again.
    #[serde(rename = "OperatorStop", skip_serializing_if = "std::ops::Not::not")]
    pub operator_stop: bool,
}

/// A health check as the task object shows it.
#[derive(Serialize)]
pub struct CheckWire<'a> {
    /// Unix seconds.
    #[serde(rename = "Time")]
    pub time: u64,
    #[serde(rename = "DurationMs")]
    pub duration_ms: u64,
    #[serde(rename = "Ok")]
    pub ok: bool,
    #[serde(rename = "Error", skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// The first 512 bytes of what it printed.
    #[serde(rename = "Output")]
    pub output: &'a str,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl<'a> From<&'a TaskSnapshot> for TaskWire<'a> {
    fn from(t: &'a TaskSnapshot) -> Self {
        TaskWire {
            info: &t.info,
            state: t.state.code(),
            start_faults: t.start_faults,
            stop_faults: t.stop_faults,
            pids: &t.pids,
            state_name: t.state.name(),
            health: t.health.name(),
            restarts: t.restarts,
            since: unix_secs(t.since),
            last_exit: t.last_exit.as_deref(),
            last_exit_time: t.last_exit_at.map(unix_secs),
            last_error: t.last_error.as_deref(),
            last_error_time: t.last_error_at.map(unix_secs),
            health_streak: t.info.health_check.is_health_check.then_some(t.streak),
            last_check: t.last_check.as_ref().map(|c| CheckWire {
                time: unix_secs(c.at),
                duration_ms: c.took.as_millis().min(u64::MAX as u128) as u64,
                ok: c.failure.is_none(),
                error: c.failure.as_deref(),
                output: &c.output,
            }),
            next_start: t
                .next_try
                .map(|(at, _)| at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)),
            restart_cause: t.next_try.map(|(_, cause)| cause),
            operator_stop: false,
        }
    }
}

/// A task's JSON and what it was made from: the snapshot's version and whether the operator's stop
/// held it.
type Cached = ((u64, bool), Arc<[u8]>);

/// Serialised tasks by service name, valid for one snapshot version each.
#[derive(Default)]
pub struct TaskCache {
    entries: Mutex<HashMap<String, Cached>>,
}

impl TaskCache {
    fn json(&self, entries: &mut HashMap<String, Cached>, t: &TaskSnapshot, held: bool) -> Arc<[u8]> {
        match entries.get(&t.info.name) {
            Some((key, bytes)) if *key == (t.version, held) => bytes.clone(),
            _ => {
                let wire = TaskWire { operator_stop: held, ..TaskWire::from(t) };
                let bytes: Arc<[u8]> = serde_json::to_vec(&wire).expect("tasks serialise").into();
                entries.insert(t.info.name.clone(), ((t.version, held), bytes.clone()));
                bytes
            }
        }
    }

    /// `{"data": [task…], "msg": "SUCCESS"}`; forgets services that are no longer listed. `held`:
    /// the services the operator's stop holds.
    pub fn list_response(&self, tasks: &[Arc<TaskSnapshot>], held: &BTreeSet<String>) -> Response {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() > tasks.len() {
            entries.retain(|name, _| tasks.iter().any(|t| &t.info.name == name));
        }
        let parts: Vec<Arc<[u8]>> =
            tasks.iter().map(|t| self.json(&mut entries, t, held.contains(&t.info.name))).collect();
        drop(entries);
        let mut body = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 32);
        body.extend_from_slice(b"{\"data\":[");
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(p);
        }
        body.extend_from_slice(b"],\"msg\":\"SUCCESS\"}");
        json_response(body)
    }

    /// `{"data": task, "msg": "SUCCESS"}`.
    pub fn one_response(&self, task: &TaskSnapshot, held: bool) -> Response {
        let json = self.json(&mut self.entries.lock().expect("cache lock"), task, held);
        let mut body = Vec::with_capacity(json.len() + 32);
        body.extend_from_slice(b"{\"data\":");
        body.extend_from_slice(&json);
        body.extend_from_slice(b",\"msg\":\"SUCCESS\"}");
        json_response(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_json_is_the_serialised_task_and_follows_versions() {
        let info = ServiceInfo::from_json(br#"{"name":"a","script":{"programFilePath":"/a"}}"#).unwrap();
        let mut snap = TaskSnapshot::new(Arc::new(info));
        let cache = TaskCache::default();
        let body = |r: Response| {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let bytes = rt.block_on(axum::body::to_bytes(r.into_body(), usize::MAX)).unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let v = body(cache.list_response(&[Arc::new(snap.clone())], &BTreeSet::new()));
        assert_eq!(v["msg"], "SUCCESS");
        assert_eq!(v["data"][0]["State"], 0);
        assert_eq!(v["data"][0], serde_json::to_value(TaskWire::from(&snap)).unwrap());
        snap.state = crate::supervisor::State::Running;
        snap.pids = vec![42];
        snap.version += 1;
        let v = body(cache.one_response(&snap, false));
        assert_eq!((v["data"]["State"].as_u64(), v["data"]["Pids"][0].as_u64()), (Some(2), Some(42)));
        assert!(v["data"].get("OperatorStop").is_none());
        let v = body(cache.one_response(&snap, true));
        assert_eq!(v["data"]["OperatorStop"], true, "the operator's stop is part of what is cached");
    }
}
