"""CPU per mail of the daemon's parts, each alone and in this process: the floors that the
end-to-end figure of bench/throughput.py is made of (issue: throughput).

    .venv/bin/python -m bench.parts [--mails 20000]

Prints µs of CPU per mail (best of 5 rounds) for: reading a ready-list entry (scan, decode,
parse), planning it from the journal (one query per 64 entries), rendering and building the
mail, the one info log line, and the journal's commit of an acceptance at group sizes 1, 4
and 16 (in its thread, fsync included). The SMTP path and the mark pipeline are measured
against real peers by bench/throughput.py (e) and bench/pipeline.py.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import structlog

from kanidm_mail_sender.core.mail import MailIdentity, build_message
from kanidm_mail_sender.core.messages import QueuedMessage, parse_resource
from kanidm_mail_sender.core.planning import plan_message
from kanidm_mail_sender.core.render import Renderer
from kanidm_mail_sender.core.states import ACCEPTED
from kanidm_mail_sender.kanidm.readylist import ReadyListParser
from kanidm_mail_sender.logs import configure_logging
from kanidm_mail_sender.state.journal import STATES_BATCH, Journal


def entry(i: int) -> dict[str, object]:
    """A ready-list entry as Kanidm writes one (half resets, half test messages)."""
    now = datetime.now(UTC)
    template: dict[str, object] = (
        {
            "CredentialResetV1": {
                "display_name": f"User {i}",
                "intent_id": f"intent-{i:08d}-abcdefghij",
                "expiry_time": int((now + timedelta(hours=1)).timestamp()),
            }
        }
        if i % 2
        else {"TestMessageV1": {"display_name": f"User {i}"}}
    )
    return {
        "schemas": [],
        "id": str(uuid4()),
        "class": ["object", "outbound_message"],
        "delete_after": (now + timedelta(days=7)).isoformat().replace("+00:00", "Z"),
        "mail_destination": [{"primary": True, "value": f"user{i}@example.com"}],
        "message_template": template,
        "send_after": (now - timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
    }


def best(rounds: int, n: int, run: Callable[[], object]) -> float:
    """µs of CPU per item, best of ``rounds`` runs of ``run`` over ``n`` items."""
    figures = []
    for _ in range(rounds):
        started = time.process_time()
        run()
        figures.append((time.process_time() - started) / n * 1e6)
    return min(figures)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, rounds = int(args.mails), int(args.rounds)
    body = json.dumps({"schemas": [], "resources": [entry(i) for i in range(n)]}).encode()
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    def read_list() -> list[QueuedMessage]:
        reader = ReadyListParser()
        items: list[Any] = []
        for chunk in chunks:
            items.extend(reader.feed(chunk))
        items.extend(reader.feed(b"", final=True))
        return [parse_resource(item) for item in items]

    messages = read_list()
    print(f"per mail, µs of CPU, best of {rounds} rounds over {n:,} mails")
    print(f"  {best(rounds, n, read_list):7.1f}  read a ready-list entry (scan, decode, parse)")

    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp))

        def plan() -> None:
            now = time.time()
            for start in range(0, n, STATES_BATCH):
                batch = messages[start : start + STATES_BATCH]
                states = journal.states_of([m.id for m in batch])
                for message in batch:
                    plan_message(message, states.get(message.id, {}), now)

        print(f"  {best(rounds, n, plan):7.1f}  plan it from the journal")

        _render(messages, rounds, n)

        configure_logging(debug=False, json=False, stream=io.StringIO())
        log = structlog.get_logger("bench")

        def log_lines() -> None:
            for message in messages:
                log.info(
                    "mail.accepted",
                    message_id=str(message.id),
                    destination="user@example.com",
                    template="test_message_v1",
                    smtp_message_id="<0a9318dc-920f-4944-9ce4-91b4322b5dad@example.com>",
                    relay_queue_id="4Xyz1abcdE",
                    duration_ms=1.2,
                )

        print(f"  {best(rounds, n, log_lines):7.1f}  the info line of an accepted mail")

        async def commits(group: int) -> float:
            # process_time counts every thread: the journal's writer and its fsync included.
            cpu0 = time.process_time()
            for _ in range(0, n // 4, group):
                await asyncio.gather(
                    *(
                        journal.submit(uuid4(), "a@example.com", ACCEPTED, now=time.time())
                        for _ in range(group)
                    )
                )
            return (time.process_time() - cpu0) / (n // 4) * 1e6

        for group in (1, 4, 16):
            spent = min(asyncio.run(commits(group)) for _ in range(3))
            print(f"  {spent:7.1f}  journal commit of an acceptance, {group:>2} per commit")
        journal.close()


def _render(messages: list[QueuedMessage], rounds: int, n: int) -> None:
    """Render and build each mail: in English as upstream words it, and in German."""
    identity = MailIdentity("Kanidm", "idm@example.com", "help@example.com")
    for label, language, zone in (
        ("render and build the mail", "en", UTC),
        ("the same in German (UTF-8, Berlin time)", "de", ZoneInfo("Europe/Berlin")),
    ):
        renderer = Renderer(
            instance_display_name="Kanidm",
            instance_url="https://idm.example.com",
            language=language,
            timezone=zone,
        )

        def render(renderer: Renderer = renderer) -> None:
            for message in messages:
                destination = message.destinations[0]
                rendered = renderer.render(
                    message.template, message_id=message.id, destination=destination
                )
                build_message(
                    rendered,
                    identity=identity,
                    destination=destination,
                    message_id=message.id,
                    date=datetime.now(UTC),
                )

        print(f"  {best(rounds, n, render):7.1f}  {label}")


if __name__ == "__main__":
    main()
