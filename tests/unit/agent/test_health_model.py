"""How backend health shapes the desired table: drain or remove, sorry backend, quorum, shared checks."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from ipvsmgr_agent._desired import DesiredModel
from ipvsmgr_agent.dataplane import DestKey, ServiceKey
from ipvsmgr_agent.health import CheckResult, CheckSpec
from ipvsmgr_proto import v1

KEY = ServiceKey("tcp", "10.0.0.10", 80)


class ScriptedHealth:
    """Results set by the test; counts how many holders each check has (what a monitor would run)."""

    def __init__(self) -> None:
        self.holders: Counter[CheckSpec] = Counter()
        self.results: dict[CheckSpec, CheckResult] = {}

    def acquire(self, spec: CheckSpec) -> None:
        self.holders[spec] += 1

    def release(self, spec: CheckSpec) -> None:
        self.holders[spec] -= 1
        assert self.holders[spec] >= 0, f"{spec} released more often than acquired"
        if not self.holders[spec]:
            del self.holders[spec]
            self.results.pop(spec, None)

    def result(self, spec: CheckSpec) -> CheckResult | None:
        return self.results.get(spec)

    def set(self, address: str, port: int, healthy: bool, weight: int | None = None) -> CheckSpec:
        spec = next(s for s in self.holders if (s.address, s.port) == (address, port))
        self.results[spec] = CheckResult(healthy, "up" if healthy else "connection refused", time.time(), 0.001, weight)
        return spec


def backend(last: int, weight: int = 1, state: str = "enabled") -> v1.Backend:
    return v1.Backend(address=f"10.1.0.{last}", port=8080, weight=weight, state=state)


def web(name: str = "web", **fields: Any) -> v1.Service:
    base: dict[str, Any] = {
        "name": name,
        "vip": "10.0.0.10",
        "port": 80,
        "protocol": "tcp",
        "scheduler": "wrr",
        "health_check": v1.HealthCheck(type="tcp", interval=1.0, timeout=0.5, rise=2, fall=3),
        "backends": [backend(1, 3), backend(2, 2)],
    }
    merged = {k: v for k, v in {**base, **fields}.items() if v is not None}
    return v1.Service(**merged)


def model_with(health: ScriptedHealth, *services: v1.Service) -> DesiredModel:
    model = DesiredModel("n1", health)
    model.replace(v1.DesiredState(services=list(services)), revision=1)
    return model


def weights(model: DesiredModel, key: ServiceKey = KEY) -> dict[str, int]:
    return {str(k): d.weight for k, d in model.table[key].dests.items()}


def test_unchecked_backends_start_drained_and_take_their_weight_when_they_pass() -> None:
    health = ScriptedHealth()
    model = model_with(health, web())
    assert weights(model) == {"10.1.0.1:8080": 0, "10.1.0.2:8080": 0}
    spec = health.set("10.1.0.1", 8080, True)
    assert model.health_changed(spec) == {KEY}
    assert weights(model) == {"10.1.0.1:8080": 3, "10.1.0.2:8080": 0}


def test_remove_policy_leaves_failed_backends_out() -> None:
    health = ScriptedHealth()
    model = model_with(health, web(on_backend_failure="remove"))
    assert weights(model) == {}
    model.health_changed(health.set("10.1.0.2", 8080, True))
    assert weights(model) == {"10.1.0.2:8080": 2}


def test_sorry_backend_serves_while_no_backend_is_healthy() -> None:
    health = ScriptedHealth()
    sorry = v1.Backend(address="10.9.0.1", port=80, weight=1)
    model = model_with(health, web(sorry_backend=sorry))
    assert weights(model)["10.9.0.1:80"] == 1
    model.health_changed(health.set("10.1.0.1", 8080, True))
    assert "10.9.0.1:80" not in weights(model)
    model.health_changed(health.set("10.1.0.1", 8080, False))
    assert weights(model)["10.9.0.1:80"] == 1


def test_operator_state_wins_over_health() -> None:
    health = ScriptedHealth()
    model = model_with(health, web(backends=[backend(1, 3, "draining"), backend(2, 2, "disabled")]))
    assert "10.1.0.2:8080" not in {s.address + ":" + str(s.port) for s in health.holders}
    model.health_changed(health.set("10.1.0.1", 8080, True))
    assert weights(model) == {"10.1.0.1:8080": 0}


def test_quorum_withdraws_the_vip_until_enough_backends_are_healthy() -> None:
    health = ScriptedHealth()
    model = model_with(health, web(quorum=2))
    assert model.addresses() == set()
    model.health_changed(health.set("10.1.0.1", 8080, True))
    assert model.addresses() == set()
    model.health_changed(health.set("10.1.0.2", 8080, True))
    assert model.addresses() == {"10.0.0.10"}
    model.health_changed(health.set("10.1.0.2", 8080, False))
    assert model.addresses() == set()


def test_a_shared_backend_is_checked_once_and_its_result_moves_every_service() -> None:
    health = ScriptedHealth()
    api = web("api", port=443, backends=[backend(1, 5)])
    model = model_with(health, web(), api)
    assert sum(health.holders.values()) == 3
    assert len(health.holders) == 2
    touched = model.health_changed(health.set("10.1.0.1", 8080, True))
    assert touched == {KEY, ServiceKey("tcp", "10.0.0.10", 443)}
    assert weights(model, ServiceKey("tcp", "10.0.0.10", 443)) == {"10.1.0.1:8080": 5}


def test_weight_from_a_check_overrides_the_configured_weight() -> None:
    health = ScriptedHealth()
    model = model_with(health, web())
    model.health_changed(health.set("10.1.0.1", 8080, True, weight=7))
    assert weights(model)["10.1.0.1:8080"] == 7


def test_updating_a_service_keeps_the_results_of_unchanged_checks() -> None:
    health = ScriptedHealth()
    model = model_with(health, web())
    model.health_changed(health.set("10.1.0.1", 8080, True))
    model.apply_delta(v1.Delta(upsert_services=[web(scheduler="rr")]), revision=2)
    assert weights(model)["10.1.0.1:8080"] == 3
    model.apply_delta(v1.Delta(upsert_services=[web(backends=[backend(2, 2)])]), revision=3)
    assert [(s.address, s.port) for s in health.holders] == [("10.1.0.2", 8080)]
    model.replace(v1.DesiredState(services=[web(backends=[backend(2, 2)])]), revision=4)
    assert sum(health.holders.values()) == 1


def test_deleting_a_service_stops_its_checks() -> None:
    health = ScriptedHealth()
    model = model_with(health, web())
    model.apply_delta(v1.Delta(delete_services=["web"]), revision=2)
    assert not health.holders


def test_a_bad_check_makes_the_service_invalid_with_a_reason() -> None:
    health = ScriptedHealth()
    bad = v1.HealthCheck(type="http", interval=1.0, timeout=0.5, rise=1, fall=1, params={"colour": json.dumps("red")})
    model = model_with(health, web(health_check=bad))
    assert KEY not in model.table
    assert "colour" in model.errors()[0]
    assert not health.holders


def test_health_report_lists_checked_backends_with_results_per_service() -> None:
    health = ScriptedHealth()
    model = model_with(health, web(), web("api", port=443, backends=[backend(1, 5)]))
    spec = health.set("10.1.0.1", 8080, False)
    entries = model.health_report(spec)
    assert sorted((e.service, e.backend, e.healthy) for e in entries) == [
        ("api", "10.1.0.1:8080", False),
        ("web", "10.1.0.1:8080", False),
    ]
    assert entries[0].reason == "connection refused"
    assert len(model.health_report()) == 2  # 10.1.0.2 has no result yet


def test_services_without_checks_are_taken_as_configured() -> None:
    health = ScriptedHealth()
    model = model_with(health, web(health_check=None))
    assert weights(model) == {"10.1.0.1:8080": 3, "10.1.0.2:8080": 2}
    assert not health.holders
    assert DestKey("10.1.0.1", 8080) in model.table[KEY].dests
