"""``service create|update|scale`` flags: the ServiceSpec they make, and Docker 20.10's texts for
every value it refuses (from the recorded sessions). Every case stops before a connection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from swarmctl import main
from swarmctl import serviceflags as sf
from swarmctl.commands import service as cmd
from swarmctl.errors import CLIError
from swarmctl.wire import spb


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main.main(["-H", "unix:///nonexistent/swarmd.sock", *argv])
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def parsed(command: click.Command, *argv: str) -> dict[str, Any]:
    with command.make_context(command.name or "", list(argv)) as ctx:
        return dict(ctx.params)


def create(*argv: str) -> spb.ServiceSpec:
    return cmd.create_spec(parsed(cmd.service_create, *argv))


SEE = "See 'swarmctl service create --help'.\n"


# -- create: the spec --------------------------------------------------------------------------

def test_create_leaves_unset_what_was_not_given() -> None:
    spec = create("bb:latest", "sleep", "100000")
    assert spec == spb.ServiceSpec(mode="replicated", task_template=spb.TaskTemplate(
        program="bb:latest", args=["sleep", "100000"]))
    for optional in ("replicas",):
        assert not spec.HasField(optional)
    t = spec.task_template
    assert not t.HasField("stop_grace_period_ns") and not t.restart_policy.HasField("delay_ns")
    assert not spec.update_config.HasField("parallelism") and not spec.update_config.HasField("monitor_ns")


def test_create_arguments_after_the_image_belong_to_the_program() -> None:
    spec = create("--name", "x", "sh", "-c", "sleep 1; exit 3", "--replicas", "2")
    assert list(spec.task_template.args) == ["-c", "sleep 1; exit 3", "--replicas", "2"]
    assert not spec.HasField("replicas")


def test_create_every_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\n  A=1\nFROM_HOST\nB=two words\n")
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.setenv("BARE", "b")
    spec = create(
        "--name", "web", "--replicas", "3", "--mode", "replicated", "-e", "X=1", "--env", "BARE",
        "--env", "UNSET_HERE_XYZ", "--env-file", str(env_file), "-l", "tier=front", "--label", "solo",
        "--constraint", "node.role==manager", "--constraint", "node.labels.zone!=x",
        "--replicas-max-per-node", "2", "--reserve-cpu", "0.5", "--reserve-memory", "512M",
        "--limit-cpu", "1.5", "--limit-memory", "1g", "--restart-condition", "on-failure",
        "--restart-delay", "1s", "--restart-max-attempts", "2", "--restart-window", "1m",
        "--update-parallelism", "2", "--update-delay", "3s", "--update-failure-action", "rollback",
        "--update-monitor", "2s", "--update-max-failure-ratio", "0.25", "--update-order", "start-first",
        "--rollback-parallelism", "0", "--rollback-delay", "1ms", "--rollback-failure-action", "continue",
        "--rollback-monitor", "0s", "--rollback-max-failure-ratio", "1", "--rollback-order", "stop-first",
        "--stop-signal", "SIGINT", "--stop-grace-period", "3s", "-w", "/tmp", "-u", "nobody",
        "-d", "-q", "/bin/sleep", "100")
    t = spec.task_template
    assert spec.name == "web" and spec.replicas == 3 and spec.mode == "replicated"
    assert dict(spec.labels) == {"tier": "front", "solo": ""}
    assert t.program == "/bin/sleep" and list(t.args) == ["100"]
    assert list(t.env) == ["A=1", "FROM_HOST=h", "B=two words", "X=1", "BARE=b", "UNSET_HERE_XYZ"]
    assert list(t.placement.constraints) == ["node.role==manager", "node.labels.zone!=x"]
    assert t.placement.max_replicas == 2
    assert t.resources.reservations == spb.Resources(nano_cpus=500_000_000, memory_bytes=512 << 20)
    assert t.resources.limits == spb.Resources(nano_cpus=1_500_000_000, memory_bytes=1 << 30)
    assert t.restart_policy == spb.RestartPolicy(condition="on-failure", delay_ns=10**9, max_attempts=2,
                                                 window_ns=60 * 10**9)
    assert spec.update_config == spb.UpdateConfig(parallelism=2, delay_ns=3 * 10**9, failure_action="rollback",
                                                  monitor_ns=2 * 10**9, max_failure_ratio=0.25, order="start-first")
    assert spec.rollback_config == spb.UpdateConfig(parallelism=0, delay_ns=10**6, failure_action="continue",
                                                    monitor_ns=0, max_failure_ratio=1.0, order="stop-first")
    assert spec.rollback_config.HasField("parallelism") and spec.rollback_config.HasField("monitor_ns")
    assert t.stop_signal == "SIGINT" and t.stop_grace_period_ns == 3 * 10**9
    assert t.workdir == "/tmp" and t.user == "nobody"


def test_create_global() -> None:
    spec = create("--mode", "global", "bb")
    assert spec.mode == "global" and not spec.HasField("replicas")


@pytest.mark.parametrize("argv, message", [
    (["--mode", "bogus"], "Unknown mode: bogus, only replicated and global supported"),
    (["--mode", "global", "--replicas", "2"], "replicas can only be used with replicated or replicated-job mode"),
    (["--mode", "global", "--replicas-max-per-node", "1"],
     "replicas-max-per-node can only be used with replicated or replicated-job mode"),
    (["-p", "80:80"], "Error: publishing ports is not supported yet"),
    (["--env-file", "/nonexistent/env"], "open /nonexistent/env: no such file or directory"),
])
def test_create_refusals_before_any_call(capsys: pytest.CaptureFixture[str], argv: list[str],
                                         message: str) -> None:
    assert run(capsys, "service", "create", "-d", *argv, "bb", "sleep", "1") == (1, "", message + "\n")


def test_env_file_with_a_spaced_name(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("BAD NAME=1\n")
    with pytest.raises(CLIError, match="^variable 'BAD NAME' contains whitespaces$"):
        create("--env-file", str(env_file), "bb")


# -- create: flag values Docker refuses (exit 125) ----------------------------------------------

@pytest.mark.parametrize("flag, value, why", [
    ("--replicas", "-1", 'strconv.ParseUint: parsing "-1": invalid syntax'),
    ("--replicas", "abc", 'strconv.ParseUint: parsing "abc": invalid syntax'),
    ("--update-delay", "5x", 'time: unknown unit "x" in duration "5x"'),
    ("--stop-grace-period", "abc", 'time: invalid duration "abc"'),
    ("--restart-delay", "10", 'time: missing unit in duration "10"'),
    ("--limit-cpu", "abc", "failed to parse abc as a rational number"),
    ("--reserve-cpu", "0.0000000001", "value is too precise"),
    ("--limit-memory", "10Q", "invalid size: '10Q'"),
    ("--limit-memory", "-5", "invalid size: '-5'"),
    ("--reserve-memory", "abc", "invalid size: 'abc'"),
    ("--restart-max-attempts", "-1", 'strconv.ParseUint: parsing "-1": invalid syntax'),
    ("--update-parallelism", "-1", 'strconv.ParseUint: parsing "-1": invalid syntax'),
    ("--rollback-monitor", "1d", 'time: unknown unit "d" in duration "1d"'),
    ("--update-max-failure-ratio", "x", 'strconv.ParseFloat: parsing "x": invalid syntax'),
    ("--replicas-max-per-node", "x", 'strconv.ParseUint: parsing "x": invalid syntax'),
])
def test_create_flag_values(capsys: pytest.CaptureFixture[str], flag: str, value: str, why: str) -> None:
    assert run(capsys, "service", "create", "-d", "--name", "e1", flag, value, "bb:latest", "sleep", "1") == (
        125, "", f'invalid argument "{value}" for "{flag}" flag: {why}\n{SEE}')


def test_flag_names_with_shorthand(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "service", "create", "-d", "--env", "=x", "bb") == (
        125, "", f'invalid argument "=x" for "-e, --env" flag: invalid environment variable: =x\n{SEE}')
    assert run(capsys, "service", "create", "-l", "=v", "bb") == (
        125, "", f"invalid argument \"=v\" for \"-l, --label\" flag: invalid label '=v': empty name\n{SEE}")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "service", "create", "-d", "--name", "e1") == (1, "", (
        '"swarmctl service create" requires at least 1 argument.\n' + SEE +
        "\nUsage:  swarmctl service create [OPTIONS] IMAGE [COMMAND] [ARG...]\n\nCreate a new service\n"))
    assert run(capsys, "service", "create", "-d", "--bogus", "bb:latest") == (
        125, "", "unknown flag: --bogus\n" + SEE)
    assert run(capsys, "service", "update", "--mode", "global", "web2") == (
        125, "", "unknown flag: --mode\nSee 'swarmctl service update --help'.\n")
    assert run(capsys, "service", "create", "-d", "bb", "--replicas") == (  # after IMAGE: the program's
        1, "", "Cannot connect to the swarmd daemon at unix:///nonexistent/swarmd.sock. "
               "Is the swarmd daemon running?\n")
    assert run(capsys, "service", "create", "--replicas") == (125, "", "flag needs an argument: --replicas\n" + SEE)
    assert run(capsys, "service", "update") == (1, "", (
        '"swarmctl service update" requires exactly 1 argument.\n'
        "See 'swarmctl service update --help'.\n\nUsage:  swarmctl service update [OPTIONS] SERVICE\n\n"
        "Update a service\n"))
    for sub, usage, short in (("rm", "SERVICE [SERVICE...]", "Remove one or more services"),
                              ("ps", "[OPTIONS] SERVICE [SERVICE...]", "List the tasks of one or more services"),
                              ("scale", "SERVICE=REPLICAS [SERVICE=REPLICAS...]",
                               "Scale one or multiple replicated services"),
                              ("inspect", "[OPTIONS] SERVICE [SERVICE...]",
                               "Display detailed information on one or more services")):
        assert run(capsys, "service", sub) == (1, "", (
            f'"swarmctl service {sub}" requires at least 1 argument.\n'
            f"See 'swarmctl service {sub} --help'.\n\nUsage:  swarmctl service {sub} {usage}\n\n{short}\n"))
    assert run(capsys, "service", "rollback")[0] == 1


# -- value parsers ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("512M", 512 << 20), ("512m", 512 << 20), ("1.5g", int(1.5 * (1 << 30))), ("10kb", 10 << 10),
    ("10KiB", 10 << 10), ("100", 100), ("100b", 100), ("500G", 500 << 30), ("1 k", 1 << 10),
])
def test_ram_in_bytes(text: str, size: int) -> None:
    assert sf.ram_in_bytes(text) == size


@pytest.mark.parametrize("text", ["", "-5", "10Q", "1.2.3", "abc", "1  k", "k"])
def test_ram_in_bytes_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid size: '{text}'$"):
        sf.ram_in_bytes(text)


@pytest.mark.parametrize("text, nano", [("0.5", 500_000_000), ("2", 2 * 10**9), ("1/4", 250_000_000),
                                        ("1e-3", 1_000_000), ("-1", -(10**9)), (".5", 500_000_000)])
def test_cpus(text: str, nano: int) -> None:
    assert sf.parse_cpus(text) == nano


@pytest.mark.parametrize("text", ["abc", "", " 1", "1/0", "0x1", "inf", "1_0"])
def test_cpus_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="as a rational number$"):
        sf.parse_cpus(text)


def test_go_float() -> None:
    assert [sf.go_float(v) for v in (0.0, 2.0, 0.5, 0.25, 1e21, 1e-7)] == ["0", "2", "0.5", "0.25", "1e+21", "1e-07"]


# -- update: the spec diff ------------------------------------------------------------------------

def current() -> spb.ServiceSpec:
    return spb.ServiceSpec(name="upd", labels={"a": "1", "b": "2"}, mode="replicated", replicas=4,
                           task_template=spb.TaskTemplate(
                               program="bb:latest", args=["sleep", "100000"], env=["A=1", "B=2"],
                               placement=spb.Placement(constraints=["node.role==worker"]),
                               stop_grace_period_ns=3 * 10**9),
                           update_config=spb.UpdateConfig(parallelism=2, delay_ns=3 * 10**9))


def updated(*argv: str) -> spb.ServiceSpec:
    spec = current()
    sf.apply_update(spec, cmd.update_options(parsed(cmd.service_update, *argv, "upd")))
    return spec


def test_update_without_flags_changes_nothing() -> None:
    assert updated() == current()
    bare = spb.ServiceSpec(name="b", task_template=spb.TaskTemplate(program="p"))
    before = bare.SerializeToString(deterministic=True)
    sf.apply_update(bare, cmd.update_options(parsed(cmd.service_update, "b")))
    assert bare.SerializeToString(deterministic=True) == before


def test_update_env_labels_constraints() -> None:
    spec = updated("--env-add", "B=3", "--env-add", "C=4", "--env-rm", "A",
                   "--label-add", "c=3", "--label-rm", "a", "--label-add", "b=9",
                   "--constraint-add", "node.labels.zone==x", "--constraint-rm", "node.role==worker")
    assert list(spec.task_template.env) == ["B=3", "C=4"]
    assert dict(spec.labels) == {"b": "9", "c": "3"}
    assert list(spec.task_template.placement.constraints) == ["node.labels.zone==x"]
    spec = updated("--constraint-add", "node.role==manager", "--constraint-add", "node.labels.a==b")
    assert list(spec.task_template.placement.constraints) == [  # Docker sorts them
        "node.labels.a==b", "node.role==manager", "node.role==worker"]


def test_update_a_key_added_and_removed_is_added() -> None:
    """Docker removes first, then adds."""
    spec = updated("--env-add", "A=9", "--env-rm", "A", "--label-add", "a=9", "--label-rm", "a")
    assert list(spec.task_template.env) == ["B=2", "A=9"] and spec.labels["a"] == "9"


def test_update_image_args_force_replicas_and_policies() -> None:
    spec = updated("--image", "bb:v2", "--args", "sh -c 'exit 3'", "--force", "--replicas", "6",
                   "--update-parallelism", "1", "--rollback-order", "start-first", "--stop-grace-period", "1s",
                   "--limit-memory", "64M", "--restart-condition", "none", "-w", "/", "-u", "1000")
    t = spec.task_template
    assert t.program == "bb:v2" and list(t.args) == ["sh", "-c", "exit 3"] and t.force_update == 1
    assert spec.replicas == 6 and spec.update_config.parallelism == 1
    assert spec.update_config.delay_ns == 3 * 10**9  # untouched
    assert spec.rollback_config.order == "start-first" and t.stop_grace_period_ns == 10**9
    assert t.resources.limits.memory_bytes == 64 << 20 and t.restart_policy.condition == "none"
    assert t.workdir == "/" and t.user == "1000"
    assert list(t.env) == ["A=1", "B=2"]


def test_update_replicas_of_a_global_service() -> None:
    spec = spb.ServiceSpec(name="g", mode="global")
    with pytest.raises(CLIError, match="^replicas can only be used with replicated mode$"):
        sf.apply_update(spec, cmd.update_options(parsed(cmd.service_update, "--replicas", "2", "g")))


def test_update_args_split_as_a_shell_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(updated("--args", "a 'b c' d\\ e").task_template.args) == ["a", "b c", "d e"]
    assert list(updated("--args", "").task_template.args) == []
    assert run(capsys, "service", "update", "--args", "sh -c 'x", "web") == (125, "", (
        "invalid argument \"sh -c 'x\" for \"--args\" flag: EOF found when expecting closing quote\n"
        "See 'swarmctl service update --help'.\n"))


def test_update_publish_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "service", "update", "--publish-add", "80", "web") == (
        1, "", "Error: publishing ports is not supported yet\n")


# -- scale arguments ------------------------------------------------------------------------------

def test_scale_specifier_checked_before_anything(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("web2", "web2:3"):
        assert run(capsys, "service", "scale", "ok=1", bad) == (1, "", (
            f"Invalid scale specifier '{bad}'.\nSee 'swarmctl service scale --help'.\n\n"
            "Usage:  swarmctl service scale SERVICE=REPLICAS [SERVICE=REPLICAS...]\n\n"
            "Scale one or multiple replicated services\n"))


@pytest.mark.parametrize("arg, result", [("web=5", ("web", 5)), ("web=0", ("web", 0)), ("a=b=3", ("a", None)),
                                         ("web=007", ("web", 7))])
def test_parse_scale(arg: str, result: tuple[str, int | None]) -> None:
    if result[1] is None:
        with pytest.raises(CLIError):
            cmd.parse_scale(arg)
    else:
        assert cmd.parse_scale(arg) == result


@pytest.mark.parametrize("count, why", [("x", "invalid syntax"), ("", "invalid syntax"), ("-1", "invalid syntax"), ("+1", "invalid syntax"),
                                        ("18446744073709551616", "value out of range")])
def test_parse_scale_refuses(count: str, why: str) -> None:
    with pytest.raises(CLIError) as e:
        cmd.parse_scale(f"web2={count}")
    assert e.value.message == f'invalid replicas value {count}: strconv.ParseUint: parsing "{count}": {why}'


@pytest.mark.parametrize("first", ["pb.InitRequest()", "spb.ServiceSpec()"])
def test_wire_modules_load_in_either_order(first: str) -> None:
    """swarm_pb2 imports services_pb2 when it runs: each must be whole whichever is used first."""
    script = (f"from swarmctl.wire import pb, spb\n{first}\n"
              "pb.InitRequest(); spb.CreateServiceRequest(spec=spb.ServiceSpec(name='x'))\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=Path(__file__).parents[2])
