"""CPU per mark of the mark-sent pipeline alone, today's against another revision's.

A loopback HTTPS peer in its own process answers every POST with 200 ``null`` (the project's
h11 server); this process marks N messages through ``build_mark_pipeline`` with every mark
submitted at once, as the marking stage does under a backlog, and measures its own CPU. The
other revision's ``kanidm/pipeline.py`` is read with ``git show`` and loaded beside the working
tree's: by default the last commit's, so a change to the pipeline is measured before it is
committed (and an unchanged one shows the noise of the machine).

    .venv/bin/python bench/pipeline.py [--marks 20000] [--rounds 3] [--against HEAD]

Revisions before the package's sub-packages (e32b548) kept the pipeline in a flat module whose
imports no longer resolve; their figure (8c54827's hand-written parser: 134 µs per mark) is
in README.md, Performance.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

from kanidm_mail_sender.config.settings import ClientConfig
from kanidm_mail_sender.kanidm import pipeline as current
from kanidm_mail_sender.sandbox.certs import Certs, make_certs

HERE = Path(__file__).resolve().parent


def _serve(certs: Certs, ready: Any) -> None:
    from kanidm_mail_sender.runtime.httpserver import Limits, Request, Response, serve

    async def handle(request: Request) -> Response:
        return Response(200, b"null")

    async def main() -> None:
        server = await serve(
            handle, "127.0.0.1", 0, ssl_context=certs.server_context(), limits=Limits()
        )
        ready.send(server.port)
        await asyncio.Event().wait()

    asyncio.run(main())


_PIPELINE = "src/kanidm_mail_sender/kanidm/pipeline.py"


def _old(revision: str) -> types.ModuleType:
    shown = subprocess.run(
        ["git", "show", f"{revision}:{_PIPELINE}"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:
        raise SystemExit(
            f"{revision} has no {_PIPELINE} (before e32b548 it was a flat module whose "
            "imports no longer resolve): name a later revision"
        )
    source = shown.stdout
    spec = importlib.util.spec_from_loader(f"pipeline_{revision}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{revision}:pipeline.py", "exec"), module.__dict__)  # noqa: S102
    return module


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _round(
    build: Callable[..., Any], config: ClientConfig, marks: int
) -> tuple[float, float]:
    pipeline = build(config, "bench-token", timeout=30)
    await pipeline.mark_sent(uuid4())  # connect and warm up outside the measurement
    ids = [uuid4() for _ in range(marks)]
    cpu, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(pipeline.mark_sent(i) for i in ids))
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    await pipeline.aclose()
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", default="HEAD")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp))
        receiver, sender = multiprocessing.Pipe(duplex=False)
        peer = multiprocessing.Process(target=_serve, args=(certs, sender), daemon=True)
        peer.start()
        port = receiver.recv()
        config = ClientConfig(uri=f"https://127.0.0.1:{port}", ca_path=certs.ca_path)
        builds = {
            "today": current.build_mark_pipeline,
            args.against: _old(args.against).build_mark_pipeline,
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
        for _ in range(args.rounds):
            for name, build in builds.items():  # alternated, so drift hits both alike
                results[name].append(asyncio.run(_round(build, config, args.marks)))
        peer.terminate()
    print(f"{args.marks} marks per round, {args.rounds} rounds, best and median CPU per mark")
    medians = {}
    for name, runs in results.items():
        per_mark = sorted(cpu / args.marks * 1e6 for cpu, _ in runs)
        rate = sorted(args.marks / wall for _, wall in runs)
        medians[name] = per_mark[len(per_mark) // 2]
        print(
            f"  {name:<10} CPU {per_mark[0]:6.1f} / {medians[name]:6.1f} µs per mark, "
            f"{rate[len(rate) // 2]:8.0f} marks/s (median)"
        )
    print(f"  today / {args.against}: {medians['today'] / medians[args.against]:.2f}")


if __name__ == "__main__":
    main()
