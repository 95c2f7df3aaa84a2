"""The deployment files (deploy/) agree with the code they deploy.

Nothing here starts Docker, Kubernetes or systemd. The files are parsed (YAML, nginx, systemd
units, the Dockerfile) and checked against the code itself:

* every EXCHANGE_* variable a deploy file names is one the code reads (found by grepping
  src/exchange, so a variable the code stops reading fails here);
* every `exchange ...` command is accepted by the real CLI parser, with the environment the
  file gives it (settings.load and the bot's settings validate the values too);
* probe, health-check and scrape paths are routes of the app that answers them (the engine's
  and the gateway's route tables, built without a database);
* ports agree across the Dockerfile, compose, Kubernetes, nginx, Prometheus and systemd;
* the image runs as a non-root user with a HEALTHCHECK; stop timeouts cover the service's
  graceful shutdown; nginx's body limit and websocket timeout match the service's;
* metric names in the alert rules and the runbook exist in exchange.metrics.

Where the real tool is installed (nginx, systemd-analyze, kubectl) it checks the files too;
those checks alone are skipped when the tool is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from exchange import cli, settings
from exchange.app import create_app
from exchange.gateway import create_gateway_app
from exchange.metrics import Metrics
from exchange.settings import Settings
from exchange.ws import HEARTBEAT_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SRC = ROOT / "src" / "exchange"
OPERATIONS = ROOT / "docs" / "operations.md"
IMAGE = "hibei-exchange"
VAR = re.compile(r"\bEXCHANGE_[A-Z][A-Z0-9_]*\b")
# The service must have this long on SIGTERM: in-flight requests (SHUTDOWN_TIMEOUT_S), then the
# sequencer's drain and closing the database.
MIN_STOP_S = cli.SHUTDOWN_TIMEOUT_S + 10


# ---------------------------------------------------------------- the code's side


def variables_read_by_code() -> set[str]:
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        found |= set(VAR.findall(path.read_text(encoding="utf-8")))
    return found


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        out.add((route.method, info))
    return out


def engine_app() -> web.Application:
    return create_app(Settings())


def gateway_app() -> web.Application:
    # Building the app does not connect: the database is opened in its cleanup context.
    return create_gateway_app(Settings(database_url="postgresql://deploy-test@invalid.invalid/none"))


def get_paths(app: web.Application) -> set[str]:
    return {path for method, path in routes_of(app) if method in ("GET", "*")}


ROLE_APPS = {"serve": engine_app, "gateway": gateway_app}


def cli_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def subcommands(capsys: pytest.CaptureFixture[str]) -> set[str]:
    text = cli_help([], capsys)
    found = re.search(r"\{([a-z,]+)\}", text)
    assert found, text
    return set(found.group(1).split(","))


def metric_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics.create().registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


# ---------------------------------------------------------------- the deploy side


def deploy_text_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env")


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def compose() -> dict[str, Any]:
    docs = load_yaml_docs(DEPLOY / "compose.yaml")
    assert len(docs) == 1
    return docs[0]


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (systemd EnvironmentFile / compose .env); comments and blanks skipped."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line!r}"
        out[key.strip()] = value.strip()
    return out


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}, from deploy/env.example."""

    def one(m: re.Match[str]) -> str:
        name, kind, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        assert kind != "?", f"{name} is required by compose.yaml but empty in env.example"
        return arg if kind == "-" else ""

    return _INTERPOLATION.sub(one, value)


@dataclass
class Process:
    """One `exchange ...` process a deploy file starts."""

    where: str
    argv: list[str]  # after `exchange`
    env: dict[str, str]
    ports: set[int] = field(default_factory=set)  # what the file says it listens on
    probes: list[tuple[str, int | str]] = field(default_factory=list)  # (path, port)

    @property
    def sub(self) -> str:
        return self.argv[0]

    def flag(self, name: str) -> str | None:
        for i, arg in enumerate(self.argv):
            if arg == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None

    @property
    def listen_port(self) -> int:
        raw = self.flag("--port") or self.env.get("EXCHANGE_PORT") or str(Settings().port)
        return int(raw)


def _healthcheck_urls(test: Any) -> list[tuple[str, int]]:
    text = " ".join(test) if isinstance(test, list) else str(test)
    return [(m.group(2), int(m.group(1))) for m in re.finditer(r"http://127\.0\.0\.1:(\d+)(/[\w/.-]*)", text)]


def compose_processes() -> dict[str, Process]:
    doc = compose()
    dot_env = env_file(DEPLOY / "env.example")
    out = {}
    for name, svc in doc["services"].items():
        if not str(svc.get("image", "")).startswith(IMAGE):
            continue
        env = {k: interpolate(str(v), dot_env) for k, v in (svc.get("environment") or {}).items()}
        hc = svc.get("healthcheck") or {}
        probes: list[tuple[str, int | str]] = [] if hc.get("disable") else list(_healthcheck_urls(hc.get("test")))
        out[name] = Process(f"compose.yaml services.{name}", list(svc["command"]), env,
                            {int(p) for p in svc.get("expose", [])}, probes)
    return out


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for d in load_yaml_docs(path):
            d["_file"] = path.name
            docs.append(d)
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def k8s_data(kind: str, name: str) -> dict[str, str]:
    for d in k8s_kind(kind):
        if d["metadata"]["name"] == name:
            return {k: str(v) for k, v in (d.get("data") or d.get("stringData") or {}).items()}
    raise AssertionError(f"no {kind} named {name} in deploy/k8s")


def k8s_container_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(k8s_data("ConfigMap", src["configMapRef"]["name"]))
        if "secretRef" in src:
            env.update(k8s_data("Secret", src["secretRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            data = k8s_data("Secret", ref["secretKeyRef"]["name"])
            key = ref["secretKeyRef"]["key"]
        else:
            data = k8s_data("ConfigMap", ref["configMapKeyRef"]["name"])
            key = ref["configMapKeyRef"]["key"]
        assert key in data, f"{container['name']}: {key} is not in the referenced object"
        env[item["name"]] = data[key]
    return env


def k8s_processes() -> dict[str, Process]:
    out = {}
    for dep in k8s_kind("Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            if not c["image"].startswith(IMAGE):
                continue
            ports = {p["containerPort"] for p in c.get("ports", [])}
            named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            probes: list[tuple[str, int | str]] = []
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in c:
                    port = c[kind]["httpGet"]["port"]
                    probes.append((c[kind]["httpGet"]["path"], named.get(port, port)))
            out[dep["metadata"]["name"]] = Process(f"k8s/{dep['_file']} {dep['metadata']['name']}", list(c["args"]),
                                                   k8s_container_env(c), ports, probes)
    return out


def unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit as {Section.Key: [values]} (comments and blank lines skipped)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r}"
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def units() -> dict[str, dict[str, list[str]]]:
    return {p.name: unit(p) for p in sorted((DEPLOY / "systemd").glob("*.service"))}


def systemd_processes() -> dict[str, Process]:
    out = {}
    for name, u in units().items():
        argv = shlex.split(u["Service.ExecStart"][0].replace("%i", "8081"))
        assert argv[0].endswith("/exchange"), f"{name}: ExecStart runs {argv[0]}"
        env: dict[str, str] = {}
        for ef in u.get("Service.EnvironmentFile", []):
            example = DEPLOY / "systemd" / (Path(ef.lstrip("-")).name + ".example")
            assert example.exists(), f"{name}: EnvironmentFile {ef} has no example {example.name} in deploy/systemd"
            env.update(env_file(example))
        out[name] = Process(f"systemd/{name}", argv[1:], env)
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        stages[-1].append((instr.upper(), args.strip()))
    return [s for s in stages if s and s[0][0] == "FROM"]  # lines before the first FROM are global ARGs


def final_stage() -> list[tuple[str, str]]:
    stages = dockerfile_stages()
    assert stages[-1][0][0] == "FROM"
    return stages[-1]


def instr(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for i, args in stage if i == name]


def dockerfile_process() -> Process:
    stage = final_stage()
    entry = json.loads(instr(stage, "ENTRYPOINT")[-1])
    cmd = json.loads(instr(stage, "CMD")[-1])
    assert entry == ["exchange"], entry
    return Process("Dockerfile", cmd, {})


def exposed_ports() -> set[int]:
    return {int(p.split("/")[0]) for args in instr(final_stage(), "EXPOSE") for p in args.split()}


# ---- nginx: a small parser of the configuration language


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{self.name} {self.args}: {len(found)} {name}"
        return found[0]


def _nginx_tokens(text: str) -> Iterator[str]:
    for m in re.finditer(r'#[^\n]*|"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([{};])|([^\s{};"\']+)', text):
        if m.group(0).startswith("#"):
            continue
        if m.group(1) is not None or m.group(2) is not None:
            yield m.group(1) if m.group(1) is not None else m.group(2)
        else:
            yield m.group(0)


def parse_nginx(text: str) -> list[Directive]:
    tokens = list(_nginx_tokens(text))
    pos = 0

    def block() -> list[Directive]:
        nonlocal pos
        out: list[Directive] = []
        words: list[str] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok == ";":
                out.append(Directive(words[0], words[1:]))
                words = []
            elif tok == "{":
                d = Directive(words[0], words[1:], [])
                d.block = block()
                out.append(d)
                words = []
            elif tok == "}":
                assert not words, f"nginx: unterminated directive {words}"
                return out
            else:
                words.append(tok)
        assert not words, f"nginx: unterminated directive {words}"
        return out

    return block()


def nginx() -> Directive:
    return Directive("http", [], parse_nginx((DEPLOY / "nginx" / "exchange.conf").read_text(encoding="utf-8")))


def nginx_upstreams() -> dict[str, list[tuple[str, int]]]:
    out = {}
    for up in nginx().all("upstream"):
        servers = []
        for s in up.all("server"):
            host, _, port = s.args[0].rpartition(":")
            servers.append((host, int(port)))
        out[up.args[0]] = servers
    return out


def nginx_locations() -> dict[str, Directive]:
    server = nginx().one("server")
    return {" ".join(loc.args): loc for loc in server.all("location")}


def nginx_size(text: str) -> int:
    units_ = {"k": 1024, "m": 1024 * 1024}
    return int(text[:-1]) * units_[text[-1].lower()] if text[-1].lower() in units_ else int(text)


def nginx_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", text)
    assert m, text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def seconds(text: str | int) -> float:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"(\d+)(ms|s|m|min)?", str(text).strip())
    assert m, text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "min": 60, None: 1}[m.group(2)]


def all_processes() -> list[Process]:
    return [dockerfile_process(), *compose_processes().values(), *k8s_processes().values(),
            *systemd_processes().values()]


# ================================================================ variables


def test_every_exchange_variable_in_a_deploy_file_is_read_by_the_code() -> None:
    known = variables_read_by_code()
    # the grep finds what settings.py declares, and the CLI's and the bot's own variables
    assert set(settings.ENVIRONMENT_VARIABLES) <= known
    assert {"EXCHANGE_URL", "EXCHANGE_BOT_KEY", "EXCHANGE_ADMIN_TOKEN", "EXCHANGE_DATABASE_URL"} <= known
    files = [*deploy_text_files(), OPERATIONS]
    unknown = {}
    for path in files:
        names = set(VAR.findall(path.read_text(encoding="utf-8")))
        if names - known:
            unknown[str(path.relative_to(ROOT))] = sorted(names - known)
    assert not unknown, f"deploy files name variables the code never reads: {unknown}"


def test_the_variables_given_to_processes_are_read_by_the_code() -> None:
    known = variables_read_by_code()
    for p in all_processes():
        extra = {k for k in p.env if k.startswith("EXCHANGE_")} - known
        assert not extra, f"{p.where}: {sorted(extra)}"


def test_the_configmap_holds_only_service_settings_and_the_secret_the_secrets() -> None:
    config = k8s_data("ConfigMap", "exchange-config")
    assert set(config) <= set(settings.ENVIRONMENT_VARIABLES), set(config) - set(settings.ENVIRONMENT_VARIABLES)
    secret_names = {"EXCHANGE_DATABASE_URL", "EXCHANGE_ADMIN_TOKEN", "EXCHANGE_BOT_KEY"}
    assert not set(config) & secret_names
    assert set(k8s_data("Secret", "exchange-secrets")) == secret_names


# ================================================================ commands


def test_every_command_is_a_real_subcommand_with_real_flags(capsys: pytest.CaptureFixture[str]) -> None:
    subs = subcommands(capsys)
    processes = all_processes()
    assert {p.sub for p in processes} >= {"serve", "gateway", "bot"}
    for p in processes:
        assert p.sub in subs, f"{p.where}: `exchange {p.sub}` is not a subcommand ({sorted(subs)})"
        options = set(re.findall(r"(--[a-z][a-z0-9-]*)", cli_help([p.sub], capsys)))
        for arg in p.argv[1:]:
            if arg.startswith("--"):
                assert arg.split("=")[0] in options, f"{p.where}: exchange {p.sub} has no option {arg}"


class _Started(Exception):
    """The CLI got as far as running its coroutine: arguments and settings were accepted."""


@pytest.mark.parametrize("process", all_processes(), ids=lambda p: p.where)
def test_each_command_is_accepted_with_the_environment_its_file_gives_it(
        process: Process, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in list(os.environ):
        if name.startswith("EXCHANGE_"):
            monkeypatch.delenv(name)
    env = dict(process.env)
    if process.sub == "bot" and not env.get("EXCHANGE_BOT_KEY"):
        # compose: the desk's key is created after the first start (env.example leaves it empty)
        env["EXCHANGE_BOT_KEY"] = "a-desk-key-created-after-the-first-start"
    if "change-me" in env.get("EXCHANGE_ADMIN_TOKEN", "").lower():
        # The example's placeholder is refused, so that nobody runs with a published admin token;
        # the operator sets a random one, as the example says.
        with pytest.raises(ValueError, match="placeholder"):
            settings.load(env)
        env["EXCHANGE_ADMIN_TOKEN"] = secrets.token_urlsafe(32)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started: list[str] = []

    def fake_run(coro: Any) -> None:
        started.append(coro.cr_code.co_name)
        coro.close()
        raise _Started

    monkeypatch.setattr(asyncio, "run", fake_run)
    monkeypatch.setattr(cli, "run_on_loop", lambda coro, _kind: fake_run(coro))  # serve, gateway, migrate
    monkeypatch.setattr(cli.logs, "configure", lambda *_a, **_k: None)
    try:
        cli.main(process.argv)
    except _Started:
        pass
    except SystemExit as exc:
        pytest.fail(f"{process.where}: `exchange {' '.join(process.argv)}` exits {exc.code}: "
                    f"{capsys.readouterr().err.strip()}")
    assert started, f"{process.where}: nothing was started"


def test_fenced_commands_in_the_docs_are_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    subs = subcommands(capsys)
    seen = set()
    for path in (OPERATIONS, DEPLOY / "README.md"):
        blocks = re.findall(r"```[a-z]*\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
        assert blocks, path
        for block in blocks:
            for line in block.splitlines():
                code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
                words = code.split()
                for i, (word, following) in enumerate(zip(words, words[1:], strict=False)):
                    if i and words[i - 1].startswith("-"):
                        continue  # an option's value (kubectl -n exchange, --data-dir .../exchange)
                    if (word == "exchange" or word.endswith("/exchange")) and "://" not in word \
                            and re.fullmatch(r"[a-z]+", following):
                        assert following in subs, f"{path.name}: `exchange {following}` is not a subcommand"
                        seen.add(following)
    assert {"serve", "cycle", "migrate"} <= seen, seen


# ================================================================ routes and probes


def test_probe_and_healthcheck_paths_are_routes_of_the_app_that_answers_them() -> None:
    paths = {role: get_paths(make()) for role, make in ROLE_APPS.items()}
    assert {"/healthz", "/readyz", "/metrics"} <= paths["serve"]
    checked = 0
    for p in [*compose_processes().values(), *k8s_processes().values()]:
        if p.sub not in ROLE_APPS:
            assert not p.probes, f"{p.where}: `exchange {p.sub}` serves no HTTP, yet is probed"
            continue
        assert p.probes, f"{p.where}: no health check"
        for path, port in p.probes:
            assert path in paths[p.sub], f"{p.where}: {path} is not a route of `exchange {p.sub}`"
            assert port == p.listen_port, f"{p.where}: probes port {port}, listens on {p.listen_port}"
            checked += 1
    assert checked >= 10
    # the image's own HEALTHCHECK serves every HTTP role on its default port
    hc = instr(final_stage(), "HEALTHCHECK")
    assert len(hc) == 1 and "urllib" in hc[0], "the final stage needs a HEALTHCHECK using python's urllib"
    urls = re.findall(r"http://127\.0\.0\.1:%s(/\w+)", hc[0])
    assert urls and all(u in paths["serve"] and u in paths["gateway"] for u in urls), hc
    assert "EXCHANGE_PORT', '8080'" in hc[0] and Settings().port == 8080


def test_kubernetes_http_deployments_have_readiness_and_liveness_probes() -> None:
    for dep in k8s_kind("Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            name = f"{dep['metadata']['name']}/{c['name']}"
            if c["args"][0] == "bot":
                assert not c.get("ports") and "readinessProbe" not in c, f"{name}: the bot serves no HTTP"
                continue
            assert "readinessProbe" in c and "livenessProbe" in c, name
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name


def test_the_engine_deployment_runs_a_leader_and_a_standby_and_can_roll() -> None:
    (engine,) = [d for d in k8s_kind("Deployment") if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "serve"]
    spec = engine["spec"]
    assert spec["replicas"] == 2
    # a standby is never Ready while the old leader holds the lock: anything less than 100%
    # unavailable would make the rollout wait forever for a new Ready pod
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"
    assert not k8s_kind("PodDisruptionBudget"), "a PDB would block draining the leader's node forever"
    (bot,) = [d for d in k8s_kind("Deployment") if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "bot"]
    assert bot["spec"]["replicas"] == 1 and bot["spec"]["strategy"]["type"] == "Recreate"
    (gateway,) = [d for d in k8s_kind("Deployment")
                  if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "gateway"]
    assert gateway["spec"]["replicas"] >= 2


def test_kubernetes_objects_are_namespace_agnostic_and_reference_what_exists() -> None:
    docs = k8s_docs()
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d.get("_file")
        assert "namespace" not in d["metadata"], f"{d['_file']}: {d['metadata']['name']} names a namespace"
    kust = load_yaml_docs(DEPLOY / "k8s" / "kustomization.yaml")[0]
    assert "namespace" not in kust
    for res in kust["resources"]:
        assert (DEPLOY / "k8s" / res).exists(), res
    for dep in k8s_kind("Deployment"):
        sel = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), dep["metadata"]["name"]
        for c in dep["spec"]["template"]["spec"]["containers"]:
            k8s_container_env(c)  # every ConfigMap/Secret reference resolves


# ================================================================ ports


def test_ports_agree_across_dockerfile_compose_kubernetes_and_systemd() -> None:
    exposed = exposed_ports()
    assert 8080 in exposed
    engine_ports, gateway_ports = set(), set()
    for p in [*compose_processes().values(), *k8s_processes().values()]:
        if p.sub not in ROLE_APPS:  # the bot and migrate serve no HTTP
            assert not p.ports, p.where
            continue
        assert p.ports == {p.listen_port}, f"{p.where}: declares {p.ports}, listens on {p.listen_port}"
        assert p.listen_port in exposed, f"{p.where}: port {p.listen_port} is not EXPOSEd by the Dockerfile"
        (engine_ports if p.sub == "serve" else gateway_ports).add(p.listen_port)
    assert engine_ports == {8080}, engine_ports
    assert gateway_ports == {8081}, gateway_ports
    sd = systemd_processes()
    assert sd["exchange.service"].listen_port == 8080
    assert sd["exchange-gateway@.service"].flag("--port") == "8081"  # %i, as substituted above

    # Kubernetes Services: targetPort is a containerPort of the pods they select
    deployments = k8s_kind("Deployment")
    for svc in k8s_kind("Service"):
        selector = svc["spec"]["selector"]
        pods = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, svc["metadata"]["name"]
        container_ports = {p["containerPort"] for c in pods[0]["spec"]["template"]["spec"]["containers"]
                           for p in c.get("ports", [])}
        names = {p["name"]: p["containerPort"] for c in pods[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", []) if "name" in p}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert names.get(target, target) in container_ports, f"{svc['metadata']['name']}: {target}"
    for dep in deployments:
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in ann:
            c = dep["spec"]["template"]["spec"]["containers"][0]
            assert c["args"][0] == "serve", "only the engine serves /metrics"
            assert int(ann["prometheus.io/port"]) in {p["containerPort"] for p in c["ports"]}
            assert ann["prometheus.io/path"] in get_paths(engine_app())


def test_nginx_upstreams_point_at_the_compose_services_on_their_ports() -> None:
    procs = compose_processes()
    ups = nginx_upstreams()
    assert set(ups) == {"exchange_engine", "exchange_gateway"}
    for upstream, role in (("exchange_engine", "serve"), ("exchange_gateway", "gateway")):
        servers = ups[upstream]
        assert len(servers) >= 2, upstream
        for host, port in servers:
            assert host in procs, f"{upstream}: {host} is not a compose service"
            assert procs[host].sub == role, f"{upstream}: {host} runs `exchange {procs[host].sub}`"
            assert port == procs[host].listen_port, f"{upstream}: {host}:{port}, listens on {procs[host].listen_port}"
    locs = nginx_locations()
    assert locs["= /v1/ws"].one("proxy_pass").args == ["http://exchange_gateway"]
    assert locs["/"].one("proxy_pass").args == ["http://exchange_engine"]
    assert ("GET", "/v1/ws") in routes_of(gateway_app())
    # compose publishes nginx's listen port; the bot reaches nginx there
    listen = int(nginx().one("server").one("listen").args[0])
    nginx_svc = compose()["services"]["nginx"]
    assert any(p.endswith(f":{listen}") for p in nginx_svc["ports"])
    assert "./nginx/exchange.conf" in nginx_svc["volumes"][0]
    assert procs["bot"].env["EXCHANGE_URL"] == f"http://nginx:{listen}"
    assert systemd_processes()["exchange-bot.service"].env["EXCHANGE_URL"].endswith(f":{listen}")
    k8s_bot = k8s_processes()["exchange-bot"].env["EXCHANGE_URL"]
    engine_svc = [s for s in k8s_kind("Service") if s["metadata"]["name"] == "exchange-engine"][0]
    assert k8s_bot == f"http://exchange-engine:{engine_svc['spec']['ports'][0]['port']}"


def test_nginx_matches_the_service_limits_and_passes_websockets_and_request_ids() -> None:
    server = nginx().one("server")
    assert nginx_size(server.one("client_max_body_size").args[0]) == Settings().max_body_bytes
    locs = nginx_locations()
    ws = locs["= /v1/ws"]
    headers = {d.args[0].lower(): d.args[1] for d in ws.all("proxy_set_header")}
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"].startswith("$")  # the upgrade map
    assert ws.one("proxy_http_version").args == ["1.1"]
    assert nginx_seconds(ws.one("proxy_read_timeout").args[0]) >= 10 * HEARTBEAT_S
    for name, loc in locs.items():
        if not loc.all("proxy_pass"):
            continue
        headers = {d.args[0].lower(): d.args[1] for d in loc.all("proxy_set_header")}
        assert "x-request-id" in headers, f"location {name} does not pass X-Request-Id"
    # the request id nginx makes up fits the service's pattern (32 hex digits)
    assert any(d.args[0] == "$http_x_request_id" for d in nginx().all("map"))
    # non-idempotent requests are never resent after errors or timeouts (an order may have
    # been applied) ...
    for loc in locs.values():
        for d in loc.all("proxy_next_upstream"):
            assert "non_idempotent" not in d.args
    # ... but an engine's 503 (the standby's not_leader; every 503 means "not applied") is
    # retried once on the other engine, POSTs included: without this nginx keeps sending
    # POSTs to the standby (it neither resends them nor counts their 503 as a failure)
    root = locs["/"]
    assert root.one("proxy_intercept_errors").args == ["on"]
    assert root.one("error_page").args == ["503", "=", "@engine_retry"]
    retry = locs["@engine_retry"]
    assert retry.one("proxy_pass").args == ["http://exchange_engine"]
    assert not retry.all("error_page"), "the retry must not retry again"
    # after a failover the new leader is found through never-failing backup entries
    engine = next(u for u in nginx().all("upstream") if u.args == ["exchange_engine"])
    backups = [s.args[0] for s in engine.all("server") if "backup" in s.args]
    primaries = [s.args[0] for s in engine.all("server") if "backup" not in s.args]
    assert sorted(backups) == sorted(primaries)
    assert all("max_fails=0" in s.args for s in engine.all("server") if "backup" in s.args)


def test_prometheus_scrapes_only_what_serves_metrics() -> None:
    prom = load_yaml_docs(DEPLOY / "prometheus.yml")[0]
    procs = compose_processes()
    paths = {"serve": get_paths(engine_app()), "gateway": get_paths(gateway_app())}
    targets = 0
    for job in prom["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, _, port = target.rpartition(":")
                p = procs[host]
                assert path in paths.get(p.sub, set()), f"{target} runs `exchange {p.sub}`, which serves no {path}"
                assert int(port) == p.listen_port, target
                targets += 1
    # every engine and gateway is scraped
    assert targets == sum(1 for p in procs.values() if p.sub in paths)
    # the rule file prometheus loads is the one compose mounts
    mounts = compose()["services"]["prometheus"]["volumes"]
    for rule_file in prom["rule_files"]:
        assert any(m.endswith(":" + rule_file + ":ro") for m in mounts), rule_file
    job_names = {job["job_name"] for job in prom["scrape_configs"]}
    for label in re.findall(r'job="([^"]+)"', (DEPLOY / "alerts.yml").read_text(encoding="utf-8")):
        assert label in job_names


def test_compose_bind_mounts_exist_and_dependencies_are_services() -> None:
    doc = compose()
    services = doc["services"]
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src}"
            else:
                assert src in doc["volumes"], f"{name}: volume {src}"
        deps = svc.get("depends_on") or {}
        for dep, cond in deps.items():
            assert dep in services, f"{name} depends on {dep}"
            if cond["condition"] == "service_healthy":
                hc = services[dep].get("healthcheck")
                assert hc and not hc.get("disable"), f"{name} waits for {dep} to be healthy; it has no health check"
    assert services["postgres"]["image"].split(":")[1].split(".")[0] in ("16", "17")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    build = services["engine-a"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    engines = [p for p in compose_processes().values() if p.sub == "serve"]
    assert len(engines) == 2
    assert len({p.env["EXCHANGE_DATABASE_URL"] for p in engines}) == 1, "engines must share one database"
    assert all(p.env.get("EXCHANGE_ADMIN_TOKEN") for p in engines)
    for p in compose_processes().values():
        if p.sub in ("gateway", "bot"):
            assert "EXCHANGE_ADMIN_TOKEN" not in p.env, f"{p.where} does not need the admin token"


# ================================================================ the image


def test_the_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    builder = stages[0]
    assert any("pip wheel" in args for i, args in builder if i == "RUN"), "the builder builds wheels"
    final = final_stage()
    assert "python:3.11-slim" in (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    users = instr(final, "USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert any("--from=builder" in args and "/opt/venv" in args for args in instr(final, "COPY"))
    assert instr(final, "HEALTHCHECK")
    assert json.loads(instr(final, "CMD")[-1])[:3] == ["serve", "--host", "0.0.0.0"]
    # what the builder copies from the context is not excluded by the Dockerfile's ignore file
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    copied = {src.rstrip("/") for args in instr(builder, "COPY") for src in args.split()[:-1]}
    # everything the package build reads: setup.py compiles the core with mypyc (ADR 0011)
    assert {"pyproject.toml", "setup.py", "README.md", "src"} <= copied, copied
    for args in instr(builder, "COPY"):
        for src in args.split()[:-1]:
            if not src.startswith("--"):
                assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, src
                assert (ROOT / src).exists(), src


# ================================================================ stopping and systemd


def test_stop_timeouts_cover_the_graceful_shutdown() -> None:
    for name, svc in compose()["services"].items():
        if str(svc.get("image", "")).startswith(IMAGE) and svc["command"][0] in ("serve", "gateway"):
            assert seconds(svc["stop_grace_period"]) >= MIN_STOP_S, name
    for dep in k8s_kind("Deployment"):
        if dep["spec"]["template"]["spec"]["containers"][0]["args"][0] in ("serve", "gateway"):
            assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= MIN_STOP_S
    for name, u in units().items():
        assert u["Service.KillSignal"] == ["SIGTERM"], name
        if "bot" not in name:
            assert seconds(u["Service.TimeoutStopSec"][0]) >= MIN_STOP_S, name


def test_systemd_units_are_hardened_and_restart_on_failure() -> None:
    for name, u in units().items():
        assert u["Service.Restart"] == ["on-failure"], name
        assert u["Service.User"] and u["Service.User"][0] != "root", name
        assert u["Service.EnvironmentFile"], name
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")):
            assert u.get(f"Service.{key}") == [value], f"{name}: {key}"
    engine = units()["exchange.service"]
    # the embedded PostgreSQL is the service's child: it stops it; systemd must not SIGTERM its backends
    assert engine["Service.KillMode"] == ["mixed"]
    data_dir = systemd_processes()["exchange.service"].flag("--data-dir")
    assert data_dir and data_dir in engine["Service.ReadWritePaths"][0].split()
    gateway = units()["exchange-gateway@.service"]
    assert "--port %i" in gateway["Service.ExecStart"][0]


# ================================================================ metrics


def test_metric_names_in_the_alerts_and_the_runbook_exist() -> None:
    names = metric_names()
    alerts = load_yaml_docs(DEPLOY / "alerts.yml")[0]
    exprs = " ".join(str(r["expr"]) for g in alerts["groups"] for r in g["rules"])
    used = set(re.findall(r"\bexchange_[a-z_]+\b", exprs))
    assert used and used <= names, used - names
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text[text.index("## Metrics"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    mentioned = set(re.findall(r"`(exchange_[a-z_]+)", section))
    families = {f.name + ("_total" if f.type == "counter" else "") for f in Metrics.create().registry.collect()}
    assert mentioned <= names | families, mentioned - names - families
    assert families <= mentioned, f"metrics the runbook does not explain: {families - mentioned}"


def test_routes_named_in_the_runbook_exist() -> None:
    table = routes_of(engine_app())
    patterns = [(method, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")) for method, path in table]
    text = OPERATIONS.read_text(encoding="utf-8")
    found = re.findall(r"\b(GET|POST|PUT|DELETE|PATCH) (/[A-Za-z0-9_/{}.-]*[A-Za-z0-9_}])", text)
    found += [(m.group(1), m.group(2)) for m in
              re.finditer(r"-X (GET|POST|PUT|DELETE|PATCH)[^\n]*?\$URL(/[A-Za-z0-9_/$.-]*[A-Za-z0-9_])", text)]
    assert len(found) >= 10
    for method, path in found:
        path = re.sub(r"\$[A-Z_]+", "1", path)
        assert any(m == method and p.match(path) for m, p in patterns), f"operations.md: {method} {path}"


# ================================================================ the real tools, where installed


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        pytest.skip("nginx is not installed here: the configuration was checked by parsing only")
    # upstream host names are compose services, unknown here: nginx -t resolves them, so use loopback
    text = (DEPLOY / "nginx" / "exchange.conf").read_text(encoding="utf-8")
    hosts = {h for servers in nginx_upstreams().values() for h, _ in servers}
    for host in hosts:
        text = re.sub(rf"\bserver {re.escape(host)}:", "server 127.0.0.1:", text)
    text = text.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "exchange.conf").write_text(text)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log {tmp_path}/access.log;\n  include {tmp_path}/exchange.conf;\n}}\n")
    result = subprocess.run([binary, "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed here: the units were checked by parsing only")
    # verify only checks that ExecStart names an executable
    exe = shutil.which("exchange") or sys.executable
    names = []
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        text = path.read_text(encoding="utf-8").replace("/opt/hibei-exchange/venv/bin/exchange", exe)
        # the unit's user does not exist on this machine; verify does not need it to
        text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
        name = path.name.replace("@.service", "@8081.service")
        (tmp_path / name).write_text(text)
        names.append(str(tmp_path / name))
    result = subprocess.run([binary, "verify", "--man=no", *names], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 0 and not problems, result.stderr


def test_kustomize_builds_the_manifests() -> None:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not installed here: the manifests were checked by parsing only")
    result = subprocess.run([binary, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout) if d)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Service", "Service"], kinds
