"""The agent Dockerfile cannot be built here (no docker engine): check that it is multi-stage,
static, non-root, builds the right package and runs the file it copies."""

from __future__ import annotations

import json
import re
import tomllib

from conftest import CC, REPO

DOCKERFILE = CC / "docker" / "Dockerfile.agent"


def instructions() -> list[tuple[str, str]]:
    out = []
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def test_multi_stage_static_nonroot():
    ins = instructions()
    froms = [r for op, r in ins if op == "FROM"]
    assert len(froms) == 2
    assert re.fullmatch(r"rust:\d+\.\d+-\w+ AS build", froms[0]), froms[0]
    assert froms[1].startswith("gcr.io/distroless/static"), "final image must be static (no libc)"
    assert ":nonroot" in froms[1]
    users = [r for op, r in ins if op == "USER"]
    assert users and not users[-1].startswith("0") and users[-1] != "root"


def test_builds_the_agent_package_for_musl():
    ins = instructions()
    runs = " ".join(r for op, r in ins if op == "RUN")
    agent_pkg = tomllib.loads((REPO / "agent" / "Cargo.toml").read_text())["package"]["name"]
    assert f"-p {agent_pkg}" in runs
    assert "--locked" in runs and "--release" in runs
    assert "--target x86_64-unknown-linux-musl" in runs
    assert "rustup target add x86_64-unknown-linux-musl" in runs


def test_entrypoint_runs_the_copied_binary():
    ins = instructions()
    copies = [r for op, r in ins if op == "COPY" and r.startswith("--from=build")]
    assert len(copies) == 1
    dest = copies[0].split()[-1]
    entry = json.loads(next(r for op, r in ins if op == "ENTRYPOINT"))
    assert entry == [dest]
    ports = {int(p) for op, r in ins if op == "EXPOSE" for p in r.split()}
    assert ports == {4317, 4318, 9464}


def test_rust_version_matches_workspace():
    ws = tomllib.loads((REPO / "Cargo.toml").read_text())
    want = ws["workspace"]["package"]["rust-version"]
    first = next(r for op, r in instructions() if op == "FROM")
    assert first.startswith(f"rust:{want}-"), (first, want)


def test_build_context_excludes_build_outputs():
    ignore = (CC / "docker" / "Dockerfile.agent.dockerignore").read_text().split()
    assert {"target", ".git", ".cache"} <= set(ignore)
