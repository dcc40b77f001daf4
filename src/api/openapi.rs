//! The OpenAPI 3.1 description of the API, served at `/openapi.json`: every route with its
//! `operationId`, parameters with their ranges, the shape of every answer (`Task`, `ServiceInfo`,
//! lists, the error envelope) and every status it can answer. Security is declared only when a
//! token is configured. A test checks that every route of the router is described here, and
//! `tests/all.sh` runs schemathesis against the live binary with this document.

use serde_json::{json, Map, Value};

use crate::config::service::{MAX_RETRIES, MAX_SECONDS, NAME_MAX_CHARS};

/// A `$ref` to a component schema.
fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The success envelope around `data`.
fn envelope(data: Value) -> Value {
    json!({
        "type": "object", "required": ["data", "msg"],
        "properties": { "data": data, "msg": { "const": "SUCCESS" } }
    })
}

/// A query parameter.
fn param(name: &str, required: bool, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": required, "description": description, "schema": schema })
}

fn name_param() -> Value {
    let mut p = param(
        "name",
        true,
        "a service's name: letters and digits of any script, '_', '.', '-'; not '.' or '..'",
        r("Name"),
    );
    p["example"] = json!("telemetry");
    p
}

fn integer(min: u64, max: u64, default: Option<u64>) -> Value {
    let mut s = json!({ "type": "integer", "minimum": min, "maximum": max });
    if let Some(d) = default {
        s["default"] = json!(d);
    }
    s
}

/// What an error answer looks like, for each status it is given for.
fn error(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": r("Error") } } })
}

/// One operation. `statuses`: the error statuses this route can answer besides those every route
/// can (403 for a foreign `Host` or `Origin`, 504 when it takes longer than `API_TIMEOUT`, and 401
/// when tokens are configured).
struct Op {
    id: &'static str,
    summary: &'static str,
    params: Vec<Value>,
    body: bool,
    ok: Value,
    statuses: &'static [u16],
}

fn describe(status: u16) -> &'static str {
    match status {
        400 => "bad input: msg names the field (or parameter) and the reason",
        403 => "a foreign Host or Origin, a read-only token on a change, or what the request would run is outside ALLOWED_DIRS (or a denied variable or check target)",
        404 => "no such service or task",
        413 => "the body is larger than API_BODY_LIMIT",
        415 => "a write whose body is not application/json",
        500 => "the change could not be written (services.json, state.json, the audit trail) or a file could not be read; msg says which",
        503 => "air-nanny is shutting down, or too many requests are queued for this service",
        504 => "the request took longer than API_TIMEOUT (what it started still completes)",
        401 => "missing or wrong bearer token",
        _ => "error",
    }
}

impl Op {
    fn render(self, secured: bool, writes: bool) -> Value {
        let mut responses = Map::new();
        responses.insert("200".into(), self.ok);
        let mut statuses: Vec<u16> = self.statuses.to_vec();
        statuses.extend([403, 504]);
        if writes {
            statuses.push(415);
        }
        if secured {
            statuses.push(401);
        }
        statuses.sort_unstable();
        statuses.dedup();
        for s in statuses {
            responses.insert(s.to_string(), error(describe(s)));
        }
        let mut o = json!({ "operationId": self.id, "summary": self.summary, "responses": responses });
        if !self.params.is_empty() {
            o["parameters"] = Value::Array(self.params);
        }
        if self.body {
            o["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": r("ServiceInfoInput") } } });
        }
        o
    }
}

fn json_ok(description: &str, data: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": envelope(data) } } })
}

fn schemas() -> Value {
    let seconds = |min: u64| json!({ "type": "integer", "minimum": min, "maximum": MAX_SECONDS });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    json!({
        "Name": { "type": "string", "minLength": 1, "maxLength": NAME_MAX_CHARS, "pattern": "^[\\p{L}\\p{N}_.-]+$", "not": { "enum": [".", ".."] } },
        "Error": { "type": "object", "required": ["data", "msg"],
                   "properties": { "data": { "type": "null" }, "msg": { "type": "string", "minLength": 1 } } },
        "ServiceInfo": {
            "type": "object", "required": ["name", "priority", "isInit", "isDaemon", "script", "healthCheck"],
            "description": "a service as services.json holds it (the seed's field names); unknown keys are kept",
            "properties": {
                "name": r("Name"), "priority": { "type": "integer" }, "isInit": { "type": "boolean" },
                "isDaemon": { "type": "boolean" },
                "script": { "type": "object", "required": ["execPath", "programFilePath", "startCommand", "stopCommand"], "properties": {
                    "execPath": { "type": "string" }, "programFilePath": { "type": "string" },
                    "startCommand": { "type": "string" }, "stopCommand": { "type": "string" },
                    "args": strings, "env": { "type": "object", "additionalProperties": { "type": "string" } },
                    "user": { "type": "string" }, "workDir": { "type": "string" },
                    "startTimeout": seconds(1), "stopTimeout": seconds(1), "stopSignal": { "type": "string" } } },
                "healthCheck": { "type": "object", "required": ["isHealthCheck", "interval", "timeout", "start_period", "retries"], "properties": {
                    "isHealthCheck": { "type": "boolean" }, "interval": seconds(1), "timeout": seconds(1),
                    "start_period": seconds(0), "retries": { "type": "integer", "minimum": 1, "maximum": MAX_RETRIES },
                    "start_interval": seconds(1), "test": strings } } } },
        "ServiceInfoInput": {
            "type": "object", "required": ["name", "script"],
            "description": "a service to persist; every field but name and script.programFilePath has a default (see the README). Unknown keys are kept and reported as warnings",
            "properties": {
                "name": r("Name"), "priority": { "type": "integer" }, "isInit": { "type": "boolean" },
                "isDaemon": { "type": "boolean" },
                "script": { "type": "object", "required": ["programFilePath"], "properties": {
                    "execPath": { "type": "string", "description": "the control script (script mode); empty or absent: direct mode" },
                    "programFilePath": { "type": "string", "minLength": 1, "pattern": "\\S", "description": "joined onto the public file's rootpath" },
                    "startCommand": { "type": "string" }, "stopCommand": { "type": "string" },
                    "args": strings, "env": { "type": "object", "additionalProperties": { "type": "string" } },
                    "user": { "type": "string", "minLength": 1 }, "workDir": { "type": "string", "minLength": 1, "pattern": "\\S" },
                    "startTimeout": seconds(1), "stopTimeout": seconds(1),
                    "stopSignal": { "type": "string", "description": "a signal name such as SIGTERM" } } },
                "healthCheck": { "type": "object", "properties": {
                    "isHealthCheck": { "type": "boolean" }, "interval": seconds(1), "timeout": seconds(1),
                    "start_period": seconds(0), "retries": { "type": "integer", "minimum": 1, "maximum": MAX_RETRIES },
                    "start_interval": seconds(1),
                    "test": { "type": "array", "minItems": 1, "items": { "type": "string" },
                              "description": "[\"CMD\", prog, args…], [\"CMD-SHELL\", cmd], [\"HTTP\", url], [\"TCP\", host:port] or [\"NONE\"]" } } } } },
        "Check": { "type": "object", "required": ["Time", "DurationMs", "Ok", "Output"], "properties": {
            "Time": { "type": "integer", "description": "Unix seconds" }, "DurationMs": { "type": "integer" },
            "Ok": { "type": "boolean" }, "Error": { "type": "string" },
            "Output": { "type": "string", "description": "the first 512 bytes of what the check printed" } } },
        "Task": {
            "type": "object",
            "required": ["ServiceInfo", "State", "StartFaultNum", "StopFaultNum", "Pids", "StateName", "Health", "Restarts", "Since"],
            "properties": {
                "ServiceInfo": r("ServiceInfo"),
                "State": { "type": "integer", "enum": [0, 1, 2, 3, 4, 5, 6], "description": "0 stopped, 1 starting, 2 running, 3 stopping, 4 backoff, 5 failed, 6 exited" },
                "StateName": { "enum": ["stopped", "starting", "running", "stopping", "backoff", "failed", "exited"] },
                "StartFaultNum": { "type": "integer", "minimum": 0 }, "StopFaultNum": { "type": "integer", "minimum": 0 },
                "Pids": { "type": "array", "items": { "type": "integer", "minimum": 1 } },
                "Health": { "enum": ["none", "starting", "healthy", "unhealthy"] },
                "Restarts": { "type": "integer", "minimum": 0 },
                "Since": { "type": "integer", "description": "Unix seconds: when the state was entered" },
                "LastExit": { "type": "string", "description": "how the program last ended: exit code or signal" },
                "LastExitTime": { "type": "integer" }, "LastError": { "type": "string" }, "LastErrorTime": { "type": "integer" },
                "HealthStreak": { "type": "integer", "minimum": 0, "description": "consecutive failed checks (with a check)" },
                "LastCheck": r("Check"),
                "NextStart": { "type": "integer", "description": "in backoff: the next start (Unix milliseconds)" },
                "RestartCause": { "type": "string" },
                "OperatorStop": { "const": true, "description": "the operator's stop is in force (kept across restarts of air-nanny)" } } },
        "Event": { "type": "object", "required": ["seq", "time", "kind", "message"], "properties": {
            "seq": { "type": "integer", "minimum": 1 }, "time": { "type": "string" },
            "kind": { "enum": ["state", "exit", "health", "restart", "start", "stop", "config", "operator"] },
            "message": { "type": "string" }, "state": { "type": "string" }, "output": { "type": "string" } } },
        "AuditRecord": { "type": "object", "required": ["time", "peer", "identity", "method", "endpoint", "status", "result"], "properties": {
            "time": { "type": "string" }, "peer": { "type": "string" }, "identity": { "type": "string" },
            "method": { "type": "string" }, "endpoint": { "type": "string" }, "service": { "type": "string" },
            "status": { "type": "integer" }, "result": { "type": "string" } } },
        "BootGroup": { "type": "object", "required": ["isInit", "priority", "services"], "properties": {
            "isInit": { "type": "boolean" }, "priority": { "type": "integer" }, "services": { "type": "array", "items": r("Name") } } },
        "ReloadSummary": { "type": "object", "required": ["added", "removed", "changed", "unchanged"], "properties": {
            "added": { "type": "array", "items": r("Name") }, "removed": { "type": "array", "items": r("Name") },
            "changed": { "type": "array", "items": r("Name") }, "unchanged": { "type": "array", "items": r("Name") } } },
        "Log": { "type": "object", "required": ["name", "lines", "offset"], "properties": {
            "name": r("Name"), "lines": strings, "offset": { "type": "integer", "minimum": 0, "description": "the byte of the current log file after the last line: follow with ?after=" },
            "rotated": { "type": "boolean" } } },
        "Events": { "type": "object", "required": ["name", "events"], "properties": {
            "name": r("Name"), "events": { "type": "array", "items": r("Event") } } },
        "Health": { "type": "object", "required": ["status"], "properties": {
            "status": { "const": "ok" }, "server": { "type": "string" }, "version": { "type": "string" },
            "pid": { "type": "integer" }, "tls": { "type": "boolean" }, "ownership": { "enum": ["cgroup", "fallback"] },
            "output": { "enum": ["pipe", "file"] } } }
    })
}

/// The document. `secured`: a token is configured, so every route but `/health` and `/` needs it.
pub fn document(secured: bool) -> Value {
    let name = || vec![name_param()];
    let wait = |what: &str| param("wait", false, what, integer(0, 30, Some(0)));
    let task_or_null = || json!({ "oneOf": [r("Task"), { "type": "null" }] });
    let routes: Vec<(&str, &str, Op)> = vec![
        ("/serviceInfo/get", "get", Op { id: "listServiceInfo", summary: "All service configurations (services.json)", params: vec![], body: false,
            ok: json_ok("every configuration", json!({ "type": "array", "items": r("ServiceInfo") })), statuses: &[] }),
        ("/serviceInfo/find", "get", Op { id: "findServiceInfo", summary: "One service configuration", params: name(), body: false,
            ok: json_ok("the configuration", r("ServiceInfo")), statuses: &[400, 404] }),
        ("/serviceInfo/set", "post", Op { id: "setServiceInfo", summary: "Add or replace a configuration (persisted; the running task is not touched)", params: vec![], body: true,
            ok: json_ok("the configuration as stored", r("ServiceInfo")), statuses: &[400, 403, 413, 500] }),
        ("/serviceInfo/del", "delete", Op { id: "deleteServiceInfo", summary: "Remove a configuration (persisted; a running task is not stopped)", params: name(), body: false,
            ok: json_ok("the configuration removed", r("ServiceInfo")), statuses: &[400, 404, 500] }),
        ("/task/get", "get", Op { id: "listTasks", summary: "Every task, in start order. The X-Tasks-Version header counts visible changes; with since and wait it answers at the next change (long-poll)",
            params: vec![
                param("since", false, "a X-Tasks-Version seen before: wait for a change after it", integer(0, u64::MAX, None)),
                wait("seconds to wait for a change after since (at most API_TIMEOUT - 1)")], body: false,
            ok: {
                let mut ok = json_ok("every task", json!({ "type": "array", "items": r("Task") }));
                ok["headers"] = json!({ "X-Tasks-Version": { "description": "the count of visible changes this list includes", "schema": { "type": "integer", "minimum": 0 } } });
                ok
            }, statuses: &[400] }),
        ("/task/find", "get", Op { id: "findTask", summary: "One task, its processes read at this moment", params: name(), body: false,
            ok: json_ok("the task", r("Task")), statuses: &[400, 404] }),
        ("/task/set", "post", Op { id: "setTask", summary: "Persist a configuration and apply it now (start, or restart if changed)", params: vec![], body: true,
            ok: json_ok("the task (null when it has none)", task_or_null()), statuses: &[400, 403, 413, 500, 503] }),
        ("/task/del", "delete", Op { id: "deleteTask", summary: "Stop the service and stop supervising it (its configuration stays)", params: name(), body: false,
            ok: json_ok("done", json!({ "type": "null" })), statuses: &[400, 404, 500, 503] }),
        ("/task/start", "post", Op { id: "startTask", summary: "Start a service (and start it at boot again)", params: name(), body: false,
            ok: json_ok("the task", task_or_null()), statuses: &[400, 404, 500, 503] }),
        ("/task/stop", "post", Op { id: "stopTask", summary: "Stop a service; it stays stopped across restarts of air-nanny. A stop that needed force answers 200 and counts in StopFaultNum", params: name(), body: false,
            ok: json_ok("the task", task_or_null()), statuses: &[400, 404, 500, 503] }),
        ("/task/restart", "post", Op { id: "restartTask", summary: "Stop, then start a service", params: name(), body: false,
            ok: json_ok("the task", task_or_null()), statuses: &[400, 404, 500, 503] }),
        ("/task/logs", "get", Op { id: "taskLogs", summary: "The tail of a service's log; with after, the whole lines written since that byte, waiting for them with wait (how ctl logs -f follows)",
            params: vec![name_param(),
                param("lines", false, "how many of the last lines", integer(1, 10_000, Some(100))),
                param("after", false, "a byte offset from an earlier answer: the lines written after it", integer(0, u64::MAX, None)),
                wait("seconds to wait for new lines after after")], body: false,
            ok: json_ok("the lines", r("Log")), statuses: &[400, 404, 500] }),
        ("/task/events", "get", Op { id: "taskEvents", summary: "A service's history (state changes, exits, health results, restarts and their causes, operator actions), oldest first, kept across restarts of air-nanny; with since and wait, answers when the next event is written (long-poll)",
            params: vec![name_param(),
                param("since", false, "only events with a larger seq", integer(0, u64::MAX, None)),
                param("limit", false, "the newest N", integer(1, 1000, Some(100))),
                wait("seconds to wait for an event after since")], body: false,
            ok: json_ok("the events", r("Events")), statuses: &[400, 404, 500] }),
        ("/task/order", "get", Op { id: "bootOrder", summary: "The boot order of services.json: groups started one after the other (init first, then by priority), reversed at shutdown", params: vec![], body: false,
            ok: json_ok("the groups", json!({ "type": "array", "items": r("BootGroup") })), statuses: &[] }),
        ("/reload", "post", Op { id: "reload", summary: "Re-read services.json and apply only the difference (as SIGHUP)", params: vec![], body: false,
            ok: json_ok("what changed", r("ReloadSummary")), statuses: &[400, 500, 503] }),
        ("/audit", "get", Op { id: "auditTrail", summary: "The newest records of the audit trail of changes, oldest first",
            params: vec![param("limit", false, "the newest N", integer(1, 10_000, Some(100)))], body: false,
            ok: json_ok("the records", json!({ "type": "array", "items": r("AuditRecord") })), statuses: &[400, 500] }),
        ("/health", "get", Op { id: "health", summary: "Liveness of air-nanny itself (no token needed; the details only with one)", params: vec![], body: false,
            ok: json_ok("alive", r("Health")), statuses: &[] }),
        ("/metrics", "get", Op { id: "metrics", summary: "Prometheus metrics (text exposition format 0.0.4): per service state, health, failing streak, restarts, start and stop faults, processes, uptime, last exit, and from its cgroup memory and CPU; air-nanny's own resident memory, open descriptors and API requests. A read token suffices", params: vec![], body: false,
            ok: json!({ "description": "the metrics", "content": { "text/plain": { "schema": { "type": "string" } } } }), statuses: &[500] }),
        ("/openapi.json", "get", Op { id: "openapi", summary: "This document", params: vec![], body: false,
            ok: json!({ "description": "the document", "content": { "application/json": { "schema": { "type": "object" } } } }), statuses: &[] }),
        ("/", "get", Op { id: "console", summary: "The web console (no token needed for the page; it asks for one)", params: vec![], body: false,
            ok: json!({ "description": "the page", "content": { "text/html": { "schema": { "type": "string" } } } }), statuses: &[] }),
    ];
    let mut paths = Map::new();
    for (path, method, op) in routes {
        let open = path == "/health" || path == "/";
        let writes = method != "get";
        let mut o = op.render(secured && !open, writes);
        if secured && open {
            o["security"] = json!([]);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = o;
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": { "title": "air-nanny", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Process supervisor API. Every JSON answer is {\"data\": …, \"msg\": \"SUCCESS\"}, or {\"data\": null, \"msg\": reason} with an error status; a reason names the field and why. A method a path does not have answers 405." },
        "components": { "schemas": schemas() },
        "paths": paths,
    });
    if secured {
        doc["components"]["securitySchemes"] = json!({ "bearer": { "type": "http", "scheme": "bearer" } });
        doc["security"] = json!([{ "bearer": [] }]);
    }
    doc
}
