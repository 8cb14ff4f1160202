"""The container image, built on a local Debian base and run the way production runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI, ROOT, SEED_REPORT, free_port, report, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONTAINER_DIR = ROOT / "deploy" / "container"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TOKEN = "container-test-token-0123456789"
API_KEY = "container-test-key-0123456789"


def buildah_env() -> dict[str, str]:
    # vfs and chroot work without overlay mounts or user namespaces (CI machines, nested
    # containers); a machine configured otherwise keeps its own choice.
    env = dict(os.environ)
    env.setdefault("STORAGE_DRIVER", "vfs")
    env.setdefault("BUILDAH_ISOLATION", "chroot")
    return env


def buildah(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        ["buildah", *args],
        env=buildah_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The Dockerfile built with buildah on the cached Debian base (python3 + venv)."""
    require_tool("buildah", "builds and runs the container image")
    require_tool("debootstrap", "builds the Debian base image")
    if os.geteuid() != 0:
        message = "buildah with chroot isolation and debootstrap need root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    # A tag of its own, so test sessions running side by side do not replace each other's.
    name = f"localhost/mboxii-dlr:test-{uuid.uuid4().hex[:8]}"
    env = {**buildah_env(), "IMAGE": name}
    if HOST_CA_BUNDLE.exists():
        # Lets pip inside the build trust what this machine trusts (a TLS-inspecting proxy).
        env["PIP_CERT"] = str(HOST_CA_BUNDLE)
    started = time.monotonic()
    built = subprocess.run(
        [str(CONTAINER_DIR / "build-image.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert built.returncode == 0, f"image build failed:\n{built.stderr[-5000:]}"
    print(f"image {name} built in {time.monotonic() - started:.0f}s")
    yield name
    buildah("rmi", name, check=False)


@pytest.fixture(scope="module")
def config(image: str) -> dict[str, Any]:
    """The image's Docker configuration (entrypoint, user, healthcheck, environment)."""
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    docker_config: dict[str, Any] = inspected["Docker"]["config"]
    return docker_config


class Container:
    """A working container of the image; processes in it are host processes (chroot
    isolation, host network), so the test finds and signals the server itself."""

    def __init__(self, image: str, config: dict[str, Any], tmp_path: Path) -> None:
        self.config = config
        self.name = buildah("from", "--pull=never", image).strip()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "DLR_CALLBACK_TOKENS": TOKEN,
            "DLR_API_KEYS": API_KEY,
            "DLR_PORT": str(self.port),
            # The image listens on 0.0.0.0; with the host's network, keep the test local.
            "DLR_HOST": "127.0.0.1",
        }
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def _run_args(self, command: list[str], user: str | None = None) -> list[str]:
        args = ["--network", "host"]
        args += [arg for k, v in self.env.items() for arg in ("-e", f"{k}={v}")]
        if user is not None:
            args += ["--user", user]
        return ["buildah", "run", *args, self.name, "--", *command]

    def run(self, *command: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the container as the image's user (or `user`) and wait."""
        return subprocess.run(
            self._run_args(list(command), user),
            env=buildah_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, timeout: float = 60) -> int:
        """Run the image's entrypoint and default command; return the server's host pid."""
        command = [*self.config["Entrypoint"], *self.config["Cmd"]]
        self.log_path = self.tmp_path / f"server-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self._run_args(command), env=buildah_env(), stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise AssertionError(f"server exited:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self.server_pid()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not answer /healthz in time:\n{self.output()}")

    def descendants(self) -> list[int]:
        """Host pids of every process under `buildah run`, parents before children."""
        assert self.proc is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
        found: list[int] = []
        todo = [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def server_pid(self) -> int:
        """The Python process serving, found among the descendants of `buildah run`."""
        found = []
        for pid in self.descendants():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if Path(argv[0].decode()).name.startswith("python"):
                found.append(pid)
        assert len(found) == 1, f"expected one server process, found {found}"
        return found[0]

    def stop(self, pid: int, timeout: float = 30) -> None:
        """SIGTERM the server, as an orchestrator does, and wait for `buildah run` to end."""
        assert self.proc is not None
        os.kill(pid, signal.SIGTERM)
        self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """End whatever still runs. Killing `buildah run` alone would orphan the server (no
        PID namespace), so its descendants are signalled first, by pid."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            pids = self.descendants()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in reversed(pids):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                try:
                    self.proc.wait(10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def remove(self) -> None:
        self.kill()
        buildah("rm", self.name, check=False)


@pytest.fixture
def container(image: str, config: dict[str, Any], tmp_path: Path) -> Iterator[Container]:
    box = Container(image, config, tmp_path)
    try:
        yield box
    finally:
        box.remove()


def test_image_config_runs_as_non_root_with_healthcheck(config: dict[str, Any]) -> None:
    assert config["User"] == "10001:10001"
    assert Path(config["Entrypoint"][0]).name == "mboxii-dlr"
    assert config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Healthcheck"]["Test"][1:] == [*config["Entrypoint"], "healthcheck"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["DLR_ENV"] == "production"
    assert env["DLR_HOST"] == "0.0.0.0"
    assert env["DLR_LOG_FORMAT"] == "json"
    assert env["DLR_WORKERS"] == "1"
    assert "8000/tcp" in config["ExposedPorts"]


def test_image_has_no_build_tools(container: Container) -> None:
    probe = container.run(
        "sh",
        "-c",
        "for tool in gcc cc make /opt/mboxii-dlr/bin/pip; do command -v $tool && exit 1; done; "
        "/opt/mboxii-dlr/bin/python -c 'import pip' 2>/dev/null && exit 2; "
        "ls -d /root/.cache/pip /tmp/pip-* /wheels /src 2>/dev/null && exit 3; exit 0",
        user="0:0",  # root, so that /root is readable to the probe
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr


def test_production_refuses_to_start_without_secrets(container: Container) -> None:
    container.env = {"DLR_PORT": str(container.port)}
    result = container.run(*container.config["Entrypoint"], "serve")
    assert result.returncode != 0
    assert "DLR_CALLBACK_TOKENS" in result.stderr


def test_migrate_serve_callback_read_and_sigterm(container: Container) -> None:
    migrated = container.run(*container.config["Entrypoint"], "migrate")
    assert migrated.returncode == 0, migrated.stderr

    pid = container.start()
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4, status

    callback = container.url + f"/callbacks/mboxii/{TOKEN}"
    r = httpx.post(callback, data=SEED_REPORT, headers={"X-Request-ID": "gateway-req-1"})
    assert (r.status_code, r.text) == (200, "OK")
    assert r.headers["x-request-id"] == "gateway-req-1"
    assert httpx.post(container.url + "/callbacks/mboxii/wrong", data=report()).status_code == 404

    delivery = container.url + "/v1/deliveries/208217564"
    assert httpx.get(delivery).status_code == 401
    r = httpx.get(delivery, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200
    assert (r.json()["mobile"], r.json()["outcome"]) == ("+886922161529", "delivered")
    assert httpx.get(container.url + "/readyz").status_code == 200

    health = container.run(*container.config["Healthcheck"]["Test"][1:])
    assert health.returncode == 0, health.stderr

    container.stop(pid)
    output = container.output()
    assert "Application shutdown complete" in output
    assert "Traceback" not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    lines = [line for line in lines if line["logger"] == "mboxii_dlr.access"]
    access = [line for line in lines if line["route"] == "/callbacks/mboxii/{token}"]
    # Acknowledged callbacks are summarised (at the latest when the writer stops), refused
    # ones get their own line.
    assert [(line["status"], line["method"]) for line in access] == [(404, "POST")]
    assert "ingest: 1 reports stored, 0 duplicates, in 1 commits" in output
    assert TOKEN not in output and "wrong" not in output

    # What was acknowledged before SIGTERM is still there after a restart.
    pid = container.start()
    r = httpx.get(delivery, headers={"X-API-Key": API_KEY})
    assert (r.status_code, r.json()["reports"]) == (200, 1)
    container.stop(pid)
