//! The API's wire shapes: the envelope and the task object with the seed's names
//! (`ServiceInfo`, `State`, `StartFaultNum`, `StopFaultNum`, `Pids`) plus extension fields.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::config::ServiceInfo;
use crate::supervisor::{State, TaskSnapshot};

/// `{"data": …, "msg": "SUCCESS"}`.
pub fn ok<T: Serialize>(data: T) -> Response {
    Json(serde_json::json!({ "data": data, "msg": "SUCCESS" })).into_response()
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
    /// Extension: when the current state was entered (Unix seconds).
    #[serde(rename = "Since")]
    pub since: u64,
    /// Extension: seconds in the running state, when running.
    #[serde(rename = "UptimeSecs", skip_serializing_if = "Option::is_none")]
    pub uptime: Option<u64>,
    #[serde(rename = "LastExit", skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<&'a str>,
    #[serde(rename = "LastError", skip_serializing_if = "Option::is_none")]
    pub last_error: Option<&'a str>,
}

impl<'a> From<&'a TaskSnapshot> for TaskWire<'a> {
    fn from(t: &'a TaskSnapshot) -> Self {
        let since = t.since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let uptime = (t.state == State::Running)
            .then(|| SystemTime::now().duration_since(t.since).map(|d| d.as_secs()).unwrap_or(0));
        TaskWire {
            info: &t.info,
            state: t.state.code(),
            start_faults: t.start_faults,
            stop_faults: t.stop_faults,
            pids: &t.pids,
            state_name: t.state.name(),
            health: t.health.name(),
            restarts: t.restarts,
            since,
            uptime,
            last_exit: t.last_exit.as_deref(),
            last_error: t.last_error.as_deref(),
        }
    }
}
