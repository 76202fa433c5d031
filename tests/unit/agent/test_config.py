"""Agent command line and environment, and dataplane selection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ipvsmgr_agent._config import AgentConfig, Endpoint, parse_args
from ipvsmgr_agent.dataplane._select import DataplaneUnavailable, NoAddresses, select_dataplane


def test_defaults() -> None:
    config = parse_args([], environ={})
    assert config.servers == (Endpoint("127.0.0.1", 8210),)
    assert config.listen_metrics == Endpoint("127.0.0.1", 8310)
    assert (config.dataplane, config.resync_interval, config.log_format) == ("auto", 30.0, "auto")
    assert config.state_dir == Path("ipvsmgr-agent-state")
    assert config.node_id
    assert config.labels == {}


def test_flags() -> None:
    argv = [
        "--node-id=lb1",
        "--servers",
        "10.0.0.1:8210, [2001:db8::1]:8210",
        "--label",
        "role=lb",
        "--label=zone=a",
        "--address=10.0.0.5",
        "--dataplane=USERSPACE",
        "--state-dir=/var/lib/x",
        "--listen-metrics=off",
        "--resync-interval=2.5",
        "--log-format=json",
    ]
    config = parse_args(argv, environ={})
    assert config == AgentConfig(
        node_id="lb1",
        servers=(Endpoint("10.0.0.1", 8210), Endpoint("2001:db8::1", 8210)),
        dataplane="userspace",
        state_dir=Path("/var/lib/x"),
        listen_metrics=None,
        labels={"role": "lb", "zone": "a"},
        addresses=("10.0.0.5",),
        resync_interval=2.5,
        log_format="json",
    )
    assert str(config.servers[1]) == "[2001:db8::1]:8210"


def test_environment_sets_defaults_and_flags_win() -> None:
    env = {"IPVSMGR_AGENT_SERVERS": "a:1,b:2", "IPVSMGR_AGENT_LABEL": "role=lb,zone=b", "IPVSMGR_AGENT_NODE_ID": "n9"}
    config = parse_args(["--node-id", "n1"], environ=env)
    assert config.node_id == "n1"
    assert config.servers == (Endpoint("a", 1), Endpoint("b", 2))
    assert config.labels == {"role": "lb", "zone": "b"}


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--servers", "nohost"], {}, "--servers: 'nohost' is not host:port"),
        (["--servers", "h:99999"], {}, "port must be a number from 1 to 65535"),
        (["--servers", "::1:80"], {}, "write IPv6 addresses as [addr]:port"),
        (["--label", "novalue"], {}, "--label: 'novalue' is not key=value"),
        (["--dataplane", "xdp"], {}, "'xdp' is not one of auto, ipvs, userspace"),
        (["--resync-interval", "0"], {}, "must be more than 0 seconds"),
        (["--address", "host"], {}, "'host' is not an IP address"),
        ([], {"IPVSMGR_AGENT_RESYNC_INTERVAL": "soon"}, "IPVSMGR_AGENT_RESYNC_INTERVAL='soon': 'soon' is not a number"),
    ],
)
def test_bad_input_is_explained(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, environ=env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_userspace_selection_needs_no_addresses() -> None:
    selection = select_dataplane("userspace")
    assert selection.dataplane.name == "userspace"
    assert isinstance(selection.addresses, NoAddresses)
    assert selection.nat is None


def test_auto_without_root_picks_userspace() -> None:
    selection = select_dataplane("auto", is_root=False)
    assert selection.dataplane.name == "userspace"
    assert "not running as root" in selection.reason


def test_auto_as_root_follows_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipvsmgr_agent.dataplane import _addresses

    monkeypatch.setattr(_addresses, "kernel_has_ipvs", lambda: False)
    assert "kernel has no IPVS" in select_dataplane("auto", is_root=True).reason
    monkeypatch.setattr(_addresses, "kernel_has_ipvs", lambda: True)
    selection = select_dataplane("auto", is_root=True)
    assert (selection.dataplane.name, selection.nat is not None) == ("ipvs", True)


def test_a_missing_dataplane_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipvsmgr_agent.dataplane import _addresses

    monkeypatch.setitem(sys.modules, "ipvsmgr_agent.dataplane._ipvs", None)  # makes the import fail
    with pytest.raises(DataplaneUnavailable, match="IPVS dataplane cannot be loaded"):
        select_dataplane("ipvs")
    monkeypatch.setattr(_addresses, "kernel_has_ipvs", lambda: True)
    selection = select_dataplane("auto", is_root=True)
    assert selection.dataplane.name == "userspace"
    assert "cannot be loaded" in selection.reason
