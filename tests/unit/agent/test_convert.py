"""Translation of the control plane's desired state into the dataplane model."""

from __future__ import annotations

from typing import Any

import pytest

from ipvsmgr_agent._convert import ConversionError, service_key, service_state, vip_addresses
from ipvsmgr_agent._desired import DesiredModel
from ipvsmgr_agent.dataplane import DestKey, DestSpec, ServiceKey, ServiceSpec
from ipvsmgr_proto import v1


def web(**fields: Any) -> v1.Service:
    base: dict[str, Any] = {"name": "web", "vip": "10.0.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr"}
    return v1.Service(**{**base, **fields})


def test_service_key_from_vip_port_protocol_is_canonical() -> None:
    assert service_key(web(vip="2001:DB8:0::10", protocol="UDP")) == ServiceKey("udp", "2001:db8::10", 80, family=6)


def test_protocol_defaults_to_tcp() -> None:
    assert service_key(web(protocol="")).protocol == "tcp"


def test_fwmark_service_key_takes_family_from_vip_or_backends() -> None:
    assert service_key(v1.Service(name="m", fwmark=7)) == ServiceKey("fwmark", "", 0, fwmark=7, family=4)
    assert service_key(v1.Service(name="m", fwmark=7, vip="2001:db8::1")).family == 6
    backends = [v1.Backend(address="2001:db8::2", port=80, weight=1)]
    assert service_key(v1.Service(name="m", fwmark=7, backends=backends)).family == 6


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"vip": "not-an-ip"}, "not an IP address"),
        ({"protocol": "icmp"}, "unknown protocol"),
        ({"port": 0}, "not 1-65535"),
        ({"forwarding": "magic"}, "unknown forwarding"),
        ({"persistence": v1.Persistence(timeout=60, netmask="255.0.255.0")}, "persistence netmask"),
    ],
)
def test_invalid_services_are_refused_with_a_reason(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(ConversionError, match=reason):
        service_state(web(**fields))


def test_backends_states_weights_and_forwarding() -> None:
    svc = web(
        forwarding="dr",
        backends=[
            v1.Backend(address="10.1.0.1", port=8080, weight=3, state="enabled"),
            v1.Backend(address="10.1.0.2", port=8080, weight=5, state="draining"),
            v1.Backend(address="10.1.0.3", port=8080, weight=2, state="disabled"),
            v1.Backend(address="10.1.0.4", port=8080, weight=1, forwarding="tunnel"),
        ],
    )
    state = service_state(svc)
    assert state.spec == ServiceSpec(ServiceKey("tcp", "10.0.0.10", 80), scheduler="wrr")
    assert sorted(state.dests.values()) == [
        DestSpec(DestKey("10.1.0.1", 8080), 3, "dr"),
        DestSpec(DestKey("10.1.0.2", 8080), 0, "dr"),
        DestSpec(DestKey("10.1.0.4", 8080), 1, "tunnel"),
    ]


def test_forwarding_defaults_to_nat_and_scheduler_to_wlc() -> None:
    state = service_state(web(scheduler="", backends=[v1.Backend(address="10.1.0.1", port=80, weight=1)]))
    assert state.spec.scheduler == "wlc"
    assert state.dests[DestKey("10.1.0.1", 80)].forwarding == "nat"


def test_persistence_is_normalised_like_the_kernel_reads_it() -> None:
    assert service_state(web(persistence=v1.Persistence(timeout=300))).spec.persistence_netmask == "255.255.255.255"
    v4 = service_state(web(persistence=v1.Persistence(timeout=300, netmask="24"))).spec
    assert (v4.persistence_timeout, v4.persistence_netmask) == (300, "255.255.255.0")
    v6 = service_state(web(vip="2001:db8::1", persistence=v1.Persistence(timeout=60, netmask="ffff:ffff::"))).spec
    assert v6.persistence_netmask == "32"
    none = service_state(web(persistence=v1.Persistence(timeout=0, netmask="255.255.255.0"))).spec
    assert (none.persistence_timeout, none.persistence_netmask) == (0, "")


def test_sorry_backend_only_when_no_backend_is_enabled() -> None:
    sorry = v1.Backend(address="10.9.0.1", port=80)
    enabled = [v1.Backend(address="10.1.0.1", port=80, weight=1)]
    assert DestKey("10.9.0.1", 80) not in service_state(web(sorry_backend=sorry, backends=enabled)).dests
    drained = [v1.Backend(address="10.1.0.1", port=80, weight=1, state="draining")]
    dests = service_state(web(sorry_backend=sorry, backends=drained)).dests
    assert dests[DestKey("10.9.0.1", 80)] == DestSpec(DestKey("10.9.0.1", 80), 1, "nat")
    assert dests[DestKey("10.1.0.1", 80)].weight == 0


def test_duplicate_backend_is_an_error() -> None:
    twice = [v1.Backend(address="10.1.0.1", port=80, weight=1), v1.Backend(address="10.1.0.1", port=80, weight=2)]
    with pytest.raises(ConversionError, match="listed twice"):
        service_state(web(backends=twice))


def test_vip_addresses_skip_floating_ones() -> None:
    vips = [
        v1.Vip(address="10.0.0.20", mode="all-nodes"),
        v1.Vip(address="10.0.0.30", mode="floating", holder="n1"),
        v1.Vip(address="2001:db8:0::40", mode="all-nodes"),
    ]
    services = ["10.0.0.10", "10.0.0.30", "10.0.0.10"]
    assert vip_addresses(services, vips, "n1") == {"10.0.0.10", "10.0.0.20", "2001:db8::40"}


def model_with(*services: v1.Service, vips: list[v1.Vip] | None = None) -> DesiredModel:
    model = DesiredModel("n1")
    model.replace(v1.DesiredState(services=list(services), vips=vips or []), revision=5)
    return model


def test_model_full_state_builds_table_addresses_and_errors() -> None:
    model = model_with(web(), web(name="bad", vip="nope"), vips=[v1.Vip(address="10.0.0.99", mode="all-nodes")])
    assert list(model.table) == [ServiceKey("tcp", "10.0.0.10", 80)]
    assert model.addresses() == {"10.0.0.10", "10.0.0.99"}
    assert model.errors() == ["service 'bad' vip: 'nope' is not an IP address"]
    assert model.revision == 5


def test_model_delta_returns_the_keys_it_touched() -> None:
    model = model_with(web(), web(name="api", port=8443))
    moved = web(port=81)
    touched = model.apply_delta(v1.Delta(upsert_services=[moved], delete_services=["api"]), revision=6)
    old, new, api = (
        ServiceKey("tcp", "10.0.0.10", 80),
        ServiceKey("tcp", "10.0.0.10", 81),
        ServiceKey("tcp", "10.0.0.10", 8443),
    )
    assert touched == {old, new, api}
    assert set(model.table) == {new}
    assert model.revision == 6


def test_model_key_clash_keeps_first_name_and_reports_the_other() -> None:
    model = model_with(web(name="b-web", scheduler="rr"), web(name="a-web"))
    key = ServiceKey("tcp", "10.0.0.10", 80)
    assert model.table[key].spec.scheduler == "wrr"
    assert model.errors() == [f"service 'b-web': {key} is already used by service 'a-web'"]
    model.apply_delta(v1.Delta(delete_services=["a-web"]), revision=6)
    assert model.table[key].spec.scheduler == "rr"
    assert model.errors() == []


def test_model_vip_deltas_change_addresses() -> None:
    model = model_with(web())
    model.apply_delta(v1.Delta(upsert_vips=[v1.Vip(address="10.0.0.10", mode="floating")]), revision=6)
    assert model.addresses() == set()
    model.apply_delta(v1.Delta(delete_vips=["10.0.0.10"]), revision=7)
    assert model.addresses() == {"10.0.0.10"}
    model.apply_delta(v1.Delta(delete_services=["web"]), revision=8)
    assert model.addresses() == set()


def test_model_round_trips_through_proto() -> None:
    model = model_with(web(), vips=[v1.Vip(address="10.0.0.99", mode="all-nodes")])
    again = model_with(*model.to_proto().services, vips=model.to_proto().vips)
    assert again.table == model.table
    assert again.addresses() == model.addresses()


def test_model_keeps_the_last_good_version_of_a_service_that_turns_invalid() -> None:
    model = model_with(web())
    key = ServiceKey("tcp", "10.0.0.10", 80)
    good = model.table[key]
    touched = model.apply_delta(v1.Delta(upsert_services=[web(protocol="quic")]), revision=6)
    assert model.table == {key: good}
    assert touched == {key}
    assert model.errors() == ["service 'web': unknown protocol 'quic'; keeping its previous version"]
    model.replace(v1.DesiredState(services=[web(protocol="quic")]), revision=7)
    assert model.table == {key: good}
    model.apply_delta(v1.Delta(delete_services=["web"]), revision=8)
    assert model.table == {}
    assert model.errors() == []
