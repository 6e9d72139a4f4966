"""deploy/: the container image and the Kubernetes example agree with what wsgate does.

- Every manifest under deploy/kubernetes/ is validated against the Kubernetes API schemas
  of every minor version kubernetes-validate ships, in strict mode (unknown fields are
  errors, so a misspelled key does not pass silently). The schemas come with the package:
  no cluster and no network is needed.
- The ConfigMap's config.yaml goes through the real ``wsgate check`` with the image's own
  arguments, then a real wsgate serves it (on loopback, against a real redis-server): the
  Deployment's probes, the Dockerfile's HEALTHCHECK and the SIGTERM drain are tried on it.
- The Dockerfile and .dockerignore are read instruction by instruction and pattern by
  pattern. The image itself is not built here.

Each static check is a function that returns a list of problems. Each is also run on
broken copies of the files, and must report them: a check that could not fail would
show up there.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from wsgate.config import Registry, Settings, parse_config

try:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, all_versions, major_minor
except ImportError:  # pragma: no cover
    pytest.fail("kubernetes-validate is not installed: run the README's test command (scripts/test)",
                pytrace=False)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
MANIFEST_FILES = sorted(K8S.glob("*.yaml"))
KUBERNETES_VERSIONS = sorted({major_minor(v) for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
# What wsgate serves (wsgate/app.py) and what the README promises.
PROBES = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
PORT = 8080

Manifests = dict[str, list[dict[str, Any]]]


def load_manifests() -> Manifests:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in MANIFEST_FILES}


def find(manifests: Manifests, kind: str, name: str) -> dict[str, Any] | None:
    for docs in manifests.values():
        for doc in docs:
            if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
                return doc
    return None


def _config_text(manifests: Manifests) -> str:
    configmap = find(manifests, "ConfigMap", "wsgate-config")
    assert configmap is not None, "no ConfigMap wsgate-config under deploy/kubernetes/"
    text: str = configmap["data"]["config.yaml"]
    return text


def config_settings(manifests: Manifests) -> Settings:
    """The ConfigMap's config.yaml, validated as wsgate validates it."""
    return parse_config(_config_text(manifests), "configmap.yaml", Registry())


# --- schemas ---------------------------------------------------------------------------

def schema_problems(doc: dict[str, Any], version: str) -> list[str]:
    """What the Kubernetes ``version`` API schema (strict) says is wrong with ``doc``."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{name} on Kubernetes {version}: {'.'.join(map(str, exc.path)) or '(top)'}: {exc.message}"]
    except SchemaNotFoundError as exc:
        # The command-line tool only warns here; an unknown kind is an error for us.
        return [f"{name}: {exc.message}"]
    return []


def test_there_is_one_of_each_manifest() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for docs in load_manifests().values() for d in docs)
    assert kinds == [("ConfigMap", "wsgate-config"), ("Deployment", "redis"), ("Deployment", "wsgate"),
                     ("Service", "redis"), ("Service", "wsgate")]
    assert len(KUBERNETES_VERSIONS) >= 2, KUBERNETES_VERSIONS


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_manifest_is_valid_for_every_kubernetes_version(path: Path) -> None:
    docs = load_manifests()[path.name]
    assert docs, f"{path.name} holds no resource"
    problems = [p for doc in docs for v in KUBERNETES_VERSIONS for p in schema_problems(doc, v)]
    assert not problems, "\n".join(problems)


CONTAINERS_MD = ROOT / "docs" / "containers.md"
_YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_resources(text: str) -> list[dict[str, Any]]:
    """The Kubernetes resources (YAML blocks with a ``kind``) in a Markdown text."""
    found = []
    for block in _YAML_BLOCK.findall(text):
        found += [d for d in yaml.safe_load_all(block) if isinstance(d, dict) and "kind" in d]
    return found


def test_the_resources_shown_in_docs_containers_md_are_valid() -> None:
    resources = doc_resources(CONTAINERS_MD.read_text())
    assert [r["kind"] for r in resources] == ["Ingress"]
    problems = [p for doc in resources for v in KUBERNETES_VERSIONS for p in schema_problems(doc, v)]
    assert not problems, "\n".join(problems)
    ingress = resources[0]
    service = find(load_manifests(), "Service", "wsgate")
    assert service is not None
    port_names = {p["name"] for p in service["spec"]["ports"]}
    paths = {}
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            backend = entry["backend"]["service"]
            assert backend["name"] == "wsgate"
            assert backend["port"]["name"] in port_names
            paths[entry["path"]] = entry["pathType"]
    endpoints = [e.path for e in config_settings(load_manifests()).endpoints]
    assert all(paths.get(e) == "Exact" for e in endpoints), paths
    assert "/metrics" not in paths
    assert "/api" not in paths


def test_doc_resources_finds_and_the_validator_rejects_a_broken_ingress() -> None:
    text = CONTAINERS_MD.read_text()
    assert "secretName:" in text
    (ingress,) = doc_resources(text.replace("secretName:", "secret:", 1))
    problems = schema_problems(ingress, KUBERNETES_VERSIONS[-1])
    assert any("'secret' was unexpected" in p for p in problems), problems


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = doc["spec"]["template"]["spec"]["containers"][0]
    return container


BROKEN_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "misspelled key": (lambda d: _container(d).__setitem__("livenesProbe", _container(d).pop("livenessProbe")),
                       "'livenesProbe' was unexpected"),
    "replicas as text": (lambda d: d["spec"].__setitem__("replicas", "two"), "spec.replicas"),
    "grace period with a unit": (lambda d: d["spec"]["template"]["spec"].__setitem__(
        "terminationGracePeriodSeconds", "30s"), "terminationGracePeriodSeconds"),
    "container without a name": (lambda d: _container(d).pop("name"), "'name' is a required property"),
    "capabilities not a list": (lambda d: _container(d)["securityContext"]["capabilities"].__setitem__(
        "drop", "ALL"), "capabilities.drop"),
    "unknown kind": (lambda d: d.__setitem__("kind", "Deploymnet"), "Couldn't find schema for kind Deploymnet"),
}


@pytest.mark.parametrize("case", BROKEN_MANIFESTS)
def test_the_validator_rejects_a_broken_deployment(case: str) -> None:
    breaks, expected = BROKEN_MANIFESTS[case]
    doc = copy.deepcopy(find(load_manifests(), "Deployment", "wsgate"))
    assert doc is not None
    breaks(doc)
    problems = schema_problems(doc, KUBERNETES_VERSIONS[-1])
    assert any(expected in p for p in problems), problems


# --- the Dockerfile --------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of ``CMD ["a", "b"]``; None for the shell form."""
        return _exec_form(self.args)


def _exec_form(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Dockerfile:
    stages: list[list[Instruction]] = field(default_factory=list)

    @property
    def final(self) -> list[Instruction]:
        return self.stages[-1] if self.stages else []

    def last(self, keyword: str) -> Instruction | None:
        """The final stage's last ``keyword`` instruction: the one that takes effect."""
        found = [i for i in self.final if i.keyword == keyword]
        return found[-1] if found else None


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions by stage: continuation lines joined, comments and blank lines dropped."""
    parsed = Dockerfile()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            following = lines[i].strip()
            i += 1
            if following.startswith("#"):
                continue
            line = line[:-1].rstrip() + " " + following
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        if instruction.keyword == "FROM":
            parsed.stages.append([])
        elif not parsed.stages:
            continue  # ARG before the first FROM
        parsed.stages[-1].append(instruction)
    return parsed


def _cmd_option(cmd: list[str], option: str) -> str | None:
    return cmd[cmd.index(option) + 1] if option in cmd[:-1] else None


def healthcheck_command(dockerfile: Dockerfile) -> list[str] | None:
    check = dockerfile.last("HEALTHCHECK")
    if check is None:
        return None
    _, sep, command = check.args.partition("CMD ")
    return _exec_form(command.strip()) if sep else None


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile meant to run wsgate as deploy/kubernetes/ expects."""
    dockerfile = parse_dockerfile(text)
    problems = []
    if not dockerfile.stages:
        return ["no FROM"]
    for stage in dockerfile.stages:
        image = stage[0].args.split()[0]
        if image != "python:3.12-slim":
            problems.append(f"line {stage[0].line}: FROM {image}, not python:3.12-slim")
    user = dockerfile.last("USER")
    if user is None:
        problems.append("the final stage has no USER: it would run as root")
    else:
        name = user.args.split(":")[0]
        if name in ("root", "0"):
            problems.append(f"line {user.line}: USER {user.args} is root")
        elif not name.isdigit():
            problems.append(f"line {user.line}: USER {user.args} is not numeric: Kubernetes cannot verify "
                            "runAsNonRoot for a user name")
    entrypoint = dockerfile.last("ENTRYPOINT")
    if entrypoint is None or entrypoint.exec_form() != ["wsgate"]:
        problems.append('ENTRYPOINT is not ["wsgate"] in exec form (a shell would be PID 1 and keep SIGTERM)')
    cmd_instruction = dockerfile.last("CMD")
    cmd = cmd_instruction.exec_form() if cmd_instruction else None
    if cmd is None:
        problems.append("CMD is missing or not in exec form")
    else:
        if cmd[:1] != ["serve"]:
            problems.append(f"CMD {cmd} does not start with serve")
        if _cmd_option(cmd, "--host") != "0.0.0.0":
            problems.append(f"CMD {cmd} does not bind 0.0.0.0: nothing outside the container could connect")
        config = _cmd_option(cmd, "--config")
        copied = [i for i in dockerfile.final if i.keyword == "COPY" and i.args.split()[-1] == config]
        if config is None or not copied:
            problems.append(f"CMD's --config {config} is not a file the final stage copies")
    exposed = {p.split("/")[0] for i in dockerfile.final if i.keyword == "EXPOSE" for p in i.args.split()}
    if str(PORT) not in exposed:
        problems.append(f"EXPOSE does not list {PORT}")
    stop = dockerfile.last("STOPSIGNAL")
    if stop is None or stop.args not in ("SIGTERM", "15"):
        problems.append("STOPSIGNAL is not SIGTERM, the signal that drains")
    health = healthcheck_command(dockerfile)
    if health is None:
        problems.append("no HEALTHCHECK with an exec-form CMD")
    elif health[0] != "python" or "urllib.request" not in " ".join(health):
        problems.append(f"HEALTHCHECK {health} does not use python's urllib (the slim image has no curl)")
    elif f":{PORT}/healthz" not in " ".join(health):
        problems.append(f"HEALTHCHECK {health} does not request :{PORT}/healthz")
    if not any(i.keyword == "RUN" and "'wsgate[redis]'" in i.args for i in dockerfile.final):
        problems.append("the final stage does not install 'wsgate[redis]': the Redis broker would not load")
    return problems


def test_the_dockerfile_runs_wsgate_as_deploy_expects() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


BROKEN_DOCKERFILES = {
    "root user": ("USER 10001:10001", "USER root", "is root"),
    "uid 0": ("USER 10001:10001", "USER 0:0", "is root"),
    "user by name": ("USER 10001:10001", "USER wsgate", "not numeric"),
    "no user": ("USER 10001:10001", "", "no USER"),
    "shell-form entrypoint": ('ENTRYPOINT ["wsgate"]', "ENTRYPOINT wsgate", "ENTRYPOINT"),
    "loopback bind": ('"--host", "0.0.0.0"', '"--host", "127.0.0.1"', "does not bind 0.0.0.0"),
    "config path not copied": ('"--config", "/etc/wsgate/config.yaml"', '"--config", "/config.yaml"',
                               "not a file the final stage copies"),
    "other port": ("EXPOSE 8080", "EXPOSE 8000", "EXPOSE"),
    "stop signal": ("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL", "STOPSIGNAL"),
    "healthcheck on readyz": ("8080/healthz", "8080/readyz", "does not request"),
    "healthcheck with curl": ('CMD ["python", "-c", "import urllib.request;',
                              'CMD ["curl", "-c", "import urllib.request;', "urllib"),
    "no redis client": ("'wsgate[redis]'\n", "wsgate\n", "wsgate[redis]"),
    "other base": ("FROM python:3.12-slim\n", "FROM python:3.12\n", "not python:3.12-slim"),
}


@pytest.mark.parametrize("case", BROKEN_DOCKERFILES)
def test_dockerfile_check_reports_a_broken_copy(case: str) -> None:
    old, new, expected = BROKEN_DOCKERFILES[case]
    text = DOCKERFILE.read_text()
    assert old in text, f"the case {case!r} no longer matches deploy/Dockerfile"
    problems = dockerfile_problems(text.replace(old, new))
    assert any(expected in p for p in problems), problems


def test_a_user_set_in_the_build_stage_only_does_not_count() -> None:
    text = "FROM python:3.12-slim AS build\nUSER 10001\nFROM python:3.12-slim\nENTRYPOINT [\"wsgate\"]\n"
    assert any("no USER" in p for p in dockerfile_problems(text))


# --- .dockerignore ---------------------------------------------------------------------

def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether the build context leaves ``path`` out: the last matching pattern decides, and a
    pattern that matches a folder matches everything in it."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        forms = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(c, f) for c in candidates for f in forms):
            excluded = not negated
    return excluded


def dockerignore_problems(ignore_text: str, dockerfile_text: str) -> list[str]:
    patterns = [ln.strip() for ln in ignore_text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    problems = []
    for instruction in (i for stage in parse_dockerfile(dockerfile_text).stages for i in stage):
        if instruction.keyword not in ("COPY", "ADD") or "--from=" in instruction.args:
            continue
        sources = [a for a in instruction.args.split()[:-1] if not a.startswith("--")]
        for source in sources:
            top = ROOT / source
            files = [top] if top.is_file() else [
                p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            ]
            if not files:
                problems.append(f"line {instruction.line}: COPY {source}: nothing there")
            for f in files:
                relative = f.relative_to(ROOT).as_posix()
                if dockerignored(patterns, relative):
                    problems.append(f"line {instruction.line}: COPY needs {relative}, which .dockerignore leaves out")
    for private in (".git", ".venv/bin/python", "tests/conftest.py", "node_modules/ws/index.js", ".env"):
        if not dockerignored(patterns, private):
            problems.append(f"{private} would be sent to the builder")
    return problems


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private() -> None:
    assert dockerignore_problems(DOCKERIGNORE.read_text(), DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("!web\n", "", "COPY needs web/"),
    ("!handlers\n", "", "COPY needs handlers/"),
    ("*\n", "", ".git would be sent"),
])
def test_dockerignore_check_reports_a_broken_copy(old: str, new: str, expected: str) -> None:
    text = DOCKERIGNORE.read_text()
    assert old in text
    problems = dockerignore_problems(text.replace(old, new, 1), DOCKERFILE.read_text())
    assert any(expected in p for p in problems), problems


# --- the Kubernetes example against wsgate and the image ------------------------------

def _port_number(container: dict[str, Any], port: object) -> object:
    """A probe's or Service's port, by number or by the container port's name."""
    for entry in container.get("ports", []):
        if port in (entry.get("name"), entry.get("containerPort")):
            return entry.get("containerPort")
    return port


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pre_stop_sleep(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0


def kubernetes_problems(manifests: Manifests, dockerfile_text: str) -> list[str]:
    """Where the manifests disagree with wsgate, its config, the image or each other."""
    problems: list[str] = []
    deployment = find(manifests, "Deployment", "wsgate")
    if deployment is None:
        return ["no Deployment wsgate"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    container = pod["containers"][0]
    settings = config_settings(manifests)
    server = settings.config.server
    dockerfile = parse_dockerfile(dockerfile_text)

    if server.host != "0.0.0.0":
        problems.append(f"the config binds {server.host}: the kubelet and the Service could not connect")
    if server.port != PORT:
        problems.append(f"the config's server.port is {server.port}, not {PORT}")
    if not any(p.get("containerPort") == server.port for p in container.get("ports", [])):
        problems.append(f"no containerPort {server.port} (the config's server.port)")
    for probe, path in PROBES.items():
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            problems.append(f"{probe} asks {get.get('path')}, not {path}")
        if _port_number(container, get.get("port")) != server.port:
            problems.append(f"{probe} asks port {get.get('port')}, not {server.port}")

    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre_stop = _pre_stop_sleep(container)
    if pre_stop <= 0:
        problems.append("no preStop sleep: the drain would start before the endpoint left the Service")
    if not grace > server.shutdown_timeout + pre_stop:
        problems.append(f"terminationGracePeriodSeconds {grace} is not above shutdown_timeout "
                        f"{server.shutdown_timeout:g} + preStop {pre_stop:g}")

    if "command" in container or "args" in container:
        problems.append("the container overrides the image's ENTRYPOINT or CMD")
    cmd_instruction = dockerfile.last("CMD")
    cmd = (cmd_instruction.exec_form() if cmd_instruction else None) or []
    config_path = PurePosixPath(_cmd_option(cmd, "--config") or "")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = [n for n, m in mounts.items() if m["mountPath"] == str(config_path.parent)]
    if not mounted:
        problems.append(f"nothing is mounted at {config_path.parent}, where the image's CMD reads its config")
    elif volumes.get(mounted[0], {}).get("configMap", {}).get("name") != "wsgate-config":
        problems.append(f"{config_path.parent} is not the ConfigMap wsgate-config")
    configmap = find(manifests, "ConfigMap", "wsgate-config")
    if configmap is not None and config_path.name not in configmap.get("data", {}):
        problems.append(f"the ConfigMap has no key {config_path.name}")

    user = dockerfile.last("USER")
    image_uid = user.args.split(":")[0] if user else None
    pod_context = pod.get("securityContext", {})
    if str(pod_context.get("runAsUser")) != image_uid:
        problems.append(f"runAsUser {pod_context.get('runAsUser')} is not the image's USER {image_uid}")
    context = container.get("securityContext", {})
    if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
        problems.append("runAsNonRoot is not set")
    if context.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if context.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities are not all dropped")

    service = find(manifests, "Service", "wsgate")
    if service is None:
        problems.append("no Service wsgate")
    else:
        if not _labels_match(service["spec"].get("selector", {}), labels):
            problems.append("the Service wsgate does not select the wsgate pods")
        for port in service["spec"].get("ports", []):
            if _port_number(container, port.get("targetPort", port.get("port"))) != server.port:
                problems.append(f"the Service wsgate sends port {port.get('port')} to {port.get('targetPort')}, "
                                f"not {server.port}")

    broker = urlsplit(settings.config.broker)
    redis_service = find(manifests, "Service", broker.hostname or "")
    redis_deployment = find(manifests, "Deployment", "redis")
    if redis_service is None or redis_deployment is None:
        problems.append(f"the broker {settings.config.broker} names no Service and Deployment in the example")
    else:
        if not any(p.get("port") == (broker.port or 6379) for p in redis_service["spec"].get("ports", [])):
            problems.append(f"the Service {broker.hostname} has no port {broker.port or 6379}")
        redis_labels = redis_deployment["spec"]["template"]["metadata"].get("labels", {})
        if not _labels_match(redis_service["spec"].get("selector", {}), redis_labels):
            problems.append(f"the Service {broker.hostname} does not select the redis pod")
    return problems


def test_the_manifests_agree_with_wsgate_the_image_and_each_other() -> None:
    manifests = load_manifests()
    assert kubernetes_problems(manifests, DOCKERFILE.read_text()) == []
    settings = config_settings(manifests)
    assert settings.config.broker == "redis://redis:6379/0"
    assert [e.path for e in settings.endpoints] == ["/ws", "/chat"]
    assert [e.handler_ref for e in settings.endpoints] == ["echo", "chat"]
    assert find(manifests, "Deployment", "wsgate")["spec"]["replicas"] == 2  # type: ignore[index]


def _set(path: str, value: object) -> Callable[[Manifests], None]:
    """Set ``kind/name:dotted.path`` (list indexes as numbers) in a copy of the manifests."""
    def apply(manifests: Manifests) -> None:
        kind_name, _, dotted = path.partition(":")
        kind, name = kind_name.split("/")
        node: Any = find(manifests, kind, name)
        *parents, last = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        for key in parents:
            node = node[key]
        node[last] = value
    return apply


def _edit_config(old: str, new: str) -> Callable[[Manifests], None]:
    def apply(manifests: Manifests) -> None:
        configmap = find(manifests, "ConfigMap", "wsgate-config")
        assert configmap is not None
        assert old in configmap["data"]["config.yaml"]
        configmap["data"]["config.yaml"] = configmap["data"]["config.yaml"].replace(old, new)
    return apply


C = "Deployment/wsgate:spec.template.spec.containers.0"
BROKEN_EXAMPLES: dict[str, tuple[Callable[[Manifests], None], str]] = {
    "liveness on readyz": (_set(f"{C}.livenessProbe.httpGet.path", "/readyz"), "livenessProbe asks /readyz"),
    "readiness on healthz": (_set(f"{C}.readinessProbe.httpGet.path", "/healthz"), "readinessProbe asks /healthz"),
    "probe on another port": (_set(f"{C}.readinessProbe.httpGet.port", 9090), "readinessProbe asks port 9090"),
    "container port": (_set(f"{C}.ports.0.containerPort", 8000), "no containerPort 8080"),
    "grace equal to the drain": (_set("Deployment/wsgate:spec.template.spec.terminationGracePeriodSeconds", 15),
                                 "terminationGracePeriodSeconds 15"),
    "longer preStop": (_set(f"{C}.lifecycle.preStop.exec.command", ["sleep", "25"]), "preStop 25"),
    "longer drain": (_edit_config("shutdown_timeout: 10s", "shutdown_timeout: 30s"), "shutdown_timeout 30"),
    "no preStop": (_set(f"{C}.lifecycle", {}), "no preStop sleep"),
    "loopback bind": (_edit_config("host: 0.0.0.0", "host: 127.0.0.1"), "binds 127.0.0.1"),
    "writable root": (_set(f"{C}.securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
    "escalation": (_set(f"{C}.securityContext.allowPrivilegeEscalation", True), "allowPrivilegeEscalation"),
    "capabilities": (_set(f"{C}.securityContext.capabilities.drop", ["NET_RAW"]), "capabilities"),
    "root": (_set("Deployment/wsgate:spec.template.spec.securityContext.runAsUser", 0), "runAsUser 0"),
    "args override": (_set(f"{C}.args", ["serve"]), "overrides the image's"),
    "config elsewhere": (_set(f"{C}.volumeMounts.0.mountPath", "/config"), "nothing is mounted at /etc/wsgate"),
    "service target": (_set("Service/wsgate:spec.ports.0.targetPort", 8081), "to 8081"),
    "service selector": (_set("Service/wsgate:spec.selector", {"app": "other"}), "does not select"),
    "broker host": (_edit_config("redis://redis:6379/0", "redis://cache:6379/0"), "names no Service"),
    "redis port": (_set("Service/redis:spec.ports.0.port", 6380), "no port 6379"),
}


@pytest.mark.parametrize("case", BROKEN_EXAMPLES)
def test_example_check_reports_a_broken_copy(case: str) -> None:
    breaks, expected = BROKEN_EXAMPLES[case]
    manifests = copy.deepcopy(load_manifests())
    breaks(manifests)
    problems = kubernetes_problems(manifests, DOCKERFILE.read_text())
    assert any(expected in p for p in problems), problems


# --- the real CLI and a real server ----------------------------------------------------

def _wsgate(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    return subprocess.run([sys.executable, "-m", "wsgate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _image_args(config: Path, command: str) -> list[str]:
    """The image's CMD, with ``command`` for serve and ``config`` for its config path."""
    instruction = parse_dockerfile(DOCKERFILE.read_text()).last("CMD")
    cmd = instruction.exec_form() if instruction else None
    assert cmd, "deploy/Dockerfile has no exec-form CMD"
    assert cmd[0] == "serve"
    assert "--config" in cmd
    args = [command, *cmd[1:]]
    args[args.index("--config") + 1] = str(config)
    return args


def test_the_configmap_config_passes_check_as_the_image_runs_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_config_text(load_manifests()))
    result = _wsgate(_image_args(config, "check"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is valid: 2 endpoint(s)" in result.stdout
    assert "would listen on 0.0.0.0:8080" in result.stdout
    assert "broker redis://redis:6379/0" in result.stdout


def test_check_refuses_a_broken_configmap_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_config_text(load_manifests()).replace("shutdown_timeout:", "shutdown_timout:"))
    result = _wsgate(_image_args(config, "check"), tmp_path)
    assert result.returncode == 2
    assert "shutdown_timout" in result.stderr


def _get(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK command, pointed at ``port``."""
    command = healthcheck_command(parse_dockerfile(DOCKERFILE.read_text()))
    assert command is not None
    assert command[0] == "python"
    script = command[-1]
    assert f":{PORT}/" in script
    return subprocess.run([sys.executable, *command[1:-1], script.replace(f":{PORT}/", f":{port}/")],
                          capture_output=True, text=True, timeout=30, check=False)


def _close_code(ws: ClientConnection, within: float) -> int | None:
    """Read until the server closes; the code it sent."""
    try:
        while True:
            ws.recv(timeout=within)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


@pytest.fixture
def example_gateway(tmp_path: Path, wsgate_process: Callable[..., Any], redis_server: Any) -> Any:
    """The ConfigMap's config served as the image serves it, on loopback, with a real Redis
    standing in for the Service ``redis``."""
    config = tmp_path / "config.yaml"
    config.write_text(_config_text(load_manifests()))
    args = _image_args(config, "serve")
    args[args.index("--host") + 1] = "127.0.0.1"
    args.remove("--config")
    args.remove(str(config))
    return wsgate_process(config, *args, env={"WSGATE_BROKER": redis_server.url})


def test_the_probes_and_the_healthcheck_get_200_from_the_example(example_gateway: Any) -> None:
    container = _container(find(load_manifests(), "Deployment", "wsgate"))  # type: ignore[arg-type]
    # The kubelet names the pod's IP in Host.
    pod_host = f"10.1.2.3:{PORT}"
    for probe in PROBES:
        path = container[probe]["httpGet"]["path"]
        assert _get(example_gateway.url + path, pod_host) == 200, probe
    assert _get(example_gateway.url + "/nothing-here", "127.0.0.1") == 404
    result = _healthcheck(example_gateway.port)
    assert result.returncode == 0, result.stderr
    example_gateway.stop()
    assert _healthcheck(example_gateway.port).returncode != 0


def test_the_example_chats_through_redis_and_drains_within_the_grace_period(example_gateway: Any) -> None:
    manifests = load_manifests()
    pod = find(manifests, "Deployment", "wsgate")["spec"]["template"]["spec"]  # type: ignore[index]
    shutdown_timeout = config_settings(manifests).config.server.shutdown_timeout
    with connect(example_gateway.ws_url + "/chat?room=lobby&name=ada") as ws:
        welcome = json.loads(ws.recv(timeout=10))
        assert welcome["type"] == "welcome", welcome
        ws.send("hello")
        while (event := json.loads(ws.recv(timeout=10)))["type"] != "message":
            pass
        assert isinstance(event["id"], int), f"Redis gave the message no id: {event}"
        started = time.monotonic()
        example_gateway.signal(signal.SIGTERM)
        assert _close_code(ws, within=shutdown_timeout + 5) == 1001
    assert example_gateway.proc.wait(timeout=shutdown_timeout + 5) == 0
    elapsed = time.monotonic() - started
    assert elapsed < shutdown_timeout
    assert elapsed + _pre_stop_sleep(pod["containers"][0]) < pod["terminationGracePeriodSeconds"]
