//! The OpenAPI 3 description of the API, served at `/openapi.json`. A test checks that every route
//! of the router is described here.

use serde_json::{json, Value};

fn name_param() -> Value {
    json!([{ "name": "name", "in": "query", "required": true, "schema": { "type": "string", "pattern": "^[\\p{L}\\p{N}_.-]{1,64}$" } }])
}

fn op(summary: &str, params: bool, body: bool) -> Value {
    let mut o = json!({
        "summary": summary,
        "responses": {
            "200": { "description": "SUCCESS", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Envelope" } } } },
            "400": { "description": "bad input; msg names the field and the reason" },
            "401": { "description": "missing or wrong bearer token" },
            "403": { "description": "read-only token, a path outside the allowed directories, a denied variable or check target, or a cross-site request" },
            "415": { "description": "a write whose body is not application/json" },
            "404": { "description": "no such service or task" }
        }
    });
    if params {
        o["parameters"] = name_param();
    }
    if body {
        o["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ServiceInfo" } } } });
    }
    o
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": { "title": "air-nanny", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Process supervisor API. Every answer is {\"data\": …, \"msg\": \"SUCCESS\" | reason}." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Envelope": { "type": "object", "properties": { "data": {}, "msg": { "type": "string" } } },
                "ServiceInfo": { "type": "object", "required": ["name", "script"], "properties": {
                    "name": { "type": "string" }, "priority": { "type": "integer" }, "isInit": { "type": "boolean" },
                    "isDaemon": { "type": "boolean" },
                    "script": { "type": "object", "properties": {
                        "execPath": { "type": "string" }, "programFilePath": { "type": "string" },
                        "startCommand": { "type": "string" }, "stopCommand": { "type": "string" },
                        "args": { "type": "array", "items": { "type": "string" } },
                        "env": { "type": "object", "additionalProperties": { "type": "string" } },
                        "user": { "type": "string" }, "workDir": { "type": "string" },
                        "startTimeout": { "type": "integer" }, "stopTimeout": { "type": "integer" },
                        "stopSignal": { "type": "string" } } },
                    "healthCheck": { "type": "object", "properties": {
                        "isHealthCheck": { "type": "boolean" }, "interval": { "type": "integer" },
                        "timeout": { "type": "integer" }, "start_period": { "type": "integer" },
                        "retries": { "type": "integer" }, "start_interval": { "type": "integer" },
                        "test": { "type": "array", "items": { "type": "string" } } } } } },
                "Task": { "type": "object", "properties": {
                    "ServiceInfo": { "$ref": "#/components/schemas/ServiceInfo" },
                    "State": { "type": "integer", "description": "0 stopped, 1 starting, 2 running, 3 stopping, 4 backoff, 5 failed, 6 exited" },
                    "StartFaultNum": { "type": "integer" }, "StopFaultNum": { "type": "integer" },
                    "Pids": { "type": "array", "items": { "type": "integer" } },
                    "StateName": { "type": "string" }, "Health": { "type": "string" }, "Restarts": { "type": "integer" },
                    "Since": { "type": "integer" },
                    "LastExit": { "type": "string" }, "LastError": { "type": "string" } } }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/serviceInfo/get": { "get": op("All service configurations", false, false) },
            "/serviceInfo/find": { "get": op("One service configuration", true, false) },
            "/serviceInfo/set": { "post": op("Add or replace a configuration (persisted; the running task is not touched)", false, true) },
            "/serviceInfo/del": { "delete": op("Remove a configuration (persisted)", true, false) },
            "/task/get": { "get": op("All tasks", false, false) },
            "/task/find": { "get": op("One task", true, false) },
            "/task/set": { "post": op("Persist a configuration and apply it now (start, or restart if changed)", false, true) },
            "/task/del": { "delete": op("Stop the service and stop supervising it (configuration stays)", true, false) },
            "/task/start": { "post": op("Start a service (and start it at boot again)", true, false) },
            "/task/stop": { "post": op("Stop a service; it stays stopped across restarts of air-nanny", true, false) },
            "/task/restart": { "post": op("Stop, then start a service", true, false) },
            "/task/logs": { "get": { "summary": "Tail of a service's log", "parameters": [
                { "name": "name", "in": "query", "required": true, "schema": { "type": "string" } },
                { "name": "lines", "in": "query", "required": false, "schema": { "type": "integer", "default": 100 } }],
                "responses": { "200": { "description": "SUCCESS" } } } },
            "/task/events": { "get": { "summary": "A service's history of events (state changes, exits, health results, restarts and their causes, operator actions), oldest first, kept across restarts of air-nanny. With wait and nothing newer than since, answers when the next event is written (long-poll)",
                "parameters": [
                { "name": "name", "in": "query", "required": true, "schema": { "type": "string" } },
                { "name": "since", "in": "query", "required": false, "description": "only events with a larger seq", "schema": { "type": "integer", "minimum": 0 } },
                { "name": "limit", "in": "query", "required": false, "description": "the newest N", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } },
                { "name": "wait", "in": "query", "required": false, "description": "seconds to wait for a new event", "schema": { "type": "integer", "minimum": 0, "maximum": 30, "default": 0 } }],
                "responses": { "200": { "description": "SUCCESS: data is {name, events: [{seq, time, kind, message, state?, output?}…]}" }, "400": { "description": "bad parameter" }, "404": { "description": "no such service" } } } },
            "/reload": { "post": op("Re-read services.json and apply only the difference (as SIGHUP)", false, false) },
            "/task/order": { "get": { "summary": "The boot order of services.json: groups started one after the other (init first, then by priority), reversed at shutdown",
                "responses": { "200": { "description": "SUCCESS: data is [{isInit, priority, services: [name…]}…]" } } } },
            "/audit": { "get": { "summary": "The newest records of the audit trail of changes (time, peer, identity, endpoint, service, result), oldest first",
                "parameters": [{ "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 100 } }],
                "responses": { "200": { "description": "SUCCESS" }, "400": { "description": "bad limit" }, "401": { "description": "missing or wrong bearer token" } } } },
            "/health": { "get": { "summary": "Liveness of air-nanny itself (no token needed)", "security": [],
                "responses": { "200": { "description": "SUCCESS" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (text exposition format 0.0.4): per service state, health, failing streak, restarts, start and stop faults, processes, uptime, last exit, and from its cgroup memory and CPU; air-nanny's own resident memory, open descriptors and API requests. A read token suffices",
                "responses": { "200": { "description": "text/plain; version=0.0.4" }, "401": { "description": "missing or wrong bearer token" } } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "the document" } } } },
            "/": { "get": { "summary": "The web console (HTML; no token needed for the page, it asks for one)", "security": [],
                "responses": { "200": { "description": "text/html" } } } }
        }
    })
}
