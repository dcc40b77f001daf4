#!/usr/bin/env python3
"""Parses air-nanny's /metrics with Prometheus' own text parser (prometheus_client, from PyPI) and
checks its values against /task/get. Usage: check.py METRICS_FILE TASKS_JSON_FILE.
Called by the end-to-end test api::metrics_parse_with_a_real_parser_and_match_the_tasks."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

STATES = ["stopped", "starting", "running", "stopping", "backoff", "failed", "exited"]


def main(metrics_path, tasks_path):
    with open(metrics_path) as f:
        text = f.read()
    with open(tasks_path) as f:
        tasks = json.load(f)["data"]
    samples = {}
    for family in text_string_to_metric_families(text):  # raises on anything malformed
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        if key not in samples:
            raise SystemExit(f"missing sample {name}{labels}")
        return samples[key]

    problems = []

    def expect(what, got, want):
        if got != want:
            problems.append(f"{what}: /metrics says {got}, /task/get says {want}")

    expect("services", get("air_nanny_services"), len(tasks))
    for t in tasks:
        name = t["ServiceInfo"]["name"]
        for i, state in enumerate(STATES):
            expect(f"{name} state {state}", get("air_nanny_service_state", service=name, state=state), 1.0 if t["State"] == i else 0.0)
        expect(f"{name} up", get("air_nanny_service_up", service=name), 1.0 if t["State"] == 2 else 0.0)
        expect(f"{name} health", get("air_nanny_service_health", service=name, health=t["Health"]), 1.0)
        expect(f"{name} restarts", get("air_nanny_service_restarts_total", service=name), t["Restarts"])
        expect(f"{name} start faults", get("air_nanny_service_start_faults_total", service=name), t["StartFaultNum"])
        expect(f"{name} stop faults", get("air_nanny_service_stop_faults_total", service=name), t["StopFaultNum"])
        expect(f"{name} processes", get("air_nanny_service_processes", service=name), len(t["Pids"]))
        if "LastExit" in t:
            expect(f"{name} last exit", get("air_nanny_service_last_exit_timestamp_seconds", service=name, exit=t["LastExit"]) // 1, t["LastExitTime"])
        if t["State"] == 2 and get("air_nanny_service_uptime_seconds", service=name) <= 0:
            problems.append(f"{name}: running with no uptime")
    if get("air_nanny_resident_memory_bytes") <= 0 or get("air_nanny_open_fds") <= 0:
        problems.append("air-nanny's own figures are missing")
    if get("air_nanny_api_requests_total", code="2xx") < 1:
        problems.append("no API request counted")
    if problems:
        raise SystemExit("\n".join(problems))
    print(f"ok: {len(samples)} samples, {len(tasks)} services")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
