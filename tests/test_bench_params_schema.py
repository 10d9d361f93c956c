"""One set of benchmark parameters on both sides of the host/device line: the host's
BenchParams, the CLI's bench options, the agent's parser and the lab suite's [bench] keys
must name the same things with the same defaults (a drift means a benchmark that is not
the one that was asked for)."""

from __future__ import annotations

import dataclasses
import importlib.util

import click

from edgeshrink.agent import AGENT_PATH
from edgeshrink.bench import BenchParams
from edgeshrink.cli.run import bench as bench_command
from edgeshrink.lab.config import _BENCH_KEYS

# Host-only fields: how the host drives the agent, not options a user types.
HOST_ONLY = {"int_bounds", "check_output", "seed"}
ON_OFF = {"flash_attn"}  # a bool on the host, "on"/"off" on the command lines


def _agent_defaults() -> dict[str, object]:
    spec = importlib.util.spec_from_file_location("_agent_for_schema", AGENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench = module.build_parser()._subparsers._group_actions[0].choices["bench"]
    return {
        action.dest: tuple(action.default) if isinstance(action.default, list) else action.default
        for action in bench._actions
        if action.dest != "help"
    }


def _cli_defaults() -> dict[str, object]:
    options = [p for p in bench_command.params if isinstance(p, click.Option)]
    # A flag's unset default (click's sentinel) means off.
    return {
        p.name: (p.default is True)
        if p.is_flag
        else tuple(p.default or ())
        if p.multiple and isinstance(p.default, (list, tuple))
        else ()
        if p.multiple
        else p.default
        for p in options
    }


def _host(field: dataclasses.Field) -> object:
    value = field.default
    if field.name in ON_OFF:
        return "on" if value else "off"
    return value


def test_the_cli_options_are_the_hosts_parameters_with_the_same_defaults() -> None:
    cli = _cli_defaults()
    for field in dataclasses.fields(BenchParams):
        if field.name in HOST_ONLY:
            continue
        assert field.name in cli, f"BenchParams.{field.name} has no `bench --{field.name}`"
        assert cli[field.name] == _host(field), field.name


def test_the_agent_parses_every_parameter_with_the_same_default() -> None:
    agent = _agent_defaults()
    for field in dataclasses.fields(BenchParams):
        if field.name in ("int_bounds", "check_output"):
            continue
        assert field.name in agent, f"the agent has no --{field.name.replace('_', '-')}"
        assert agent[field.name] == _host(field), field.name
    # ... and the host passes the agent only options it has.
    args = BenchParams(
        int_bounds=(("input_ids", 5),), dims=(("seq", 8),), check_output=True
    ).agent_args("onnx")
    args += BenchParams().agent_args("gguf")
    flags = {a[2:].replace("-", "_") for a in args if a.startswith("--")}
    assert flags <= set(agent) | {"int_bound", "dim"}  # appended to int_bound, dims


def test_the_lab_suite_keys_are_bench_parameters() -> None:
    names = {f.name for f in dataclasses.fields(BenchParams)}
    assert set(_BENCH_KEYS) <= names, set(_BENCH_KEYS) - names
