"""Log output: the text and JSON renderers, and secret redaction."""

from __future__ import annotations

import io
import json

import structlog

from kanidm_mail_sender.logs import configure_logging, get_logger


def test_json_logs_redact_secrets() -> None:
    stream = io.StringIO()
    configure_logging(debug=True, json=True, stream=stream)
    structlog.get_logger("t").info("event", token="abc", password="def", destination="x@y.z")
    line = json.loads(stream.getvalue())
    assert line["token"] == "[redacted]"
    assert line["password"] == "[redacted]"
    assert line["destination"] == "x@y.z"
    assert line["level"] == "info"


def test_text_lines_quote_only_what_needs_it_and_redact_secrets() -> None:
    stream = io.StringIO()
    configure_logging(debug=False, json=False, stream=stream)
    log = structlog.get_logger("t")
    log.debug("hidden")
    log.warning(
        "kanidm.mark_failed",
        message_id="0a93",
        error='Kanidm answered 500 "x"',
        attempts=2,
        password="hunter2",
        note="",
    )
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("engine.worker_error")
    first, second, *trace = stream.getvalue().splitlines()
    stamp, level, event, rest = first.split(" ", 3)
    assert stamp.endswith("Z")
    assert "T" in stamp
    assert (level, event) == ("warning", "kanidm.mark_failed")
    assert rest.split(" ", 1)[0] == "message_id=0a93"
    assert 'error="Kanidm answered 500 \\"x\\""' in rest
    assert "attempts=2" in rest
    assert "password=[redacted]" in rest
    assert 'note=""' in rest
    assert "hunter2" not in stream.getvalue()
    assert second.split()[1:3] == ["error", "engine.worker_error"]
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == "RuntimeError: boom"


def test_control_characters_from_kanidm_are_escaped_in_text_lines() -> None:
    stream = io.StringIO()
    configure_logging(debug=False, json=False, stream=stream)
    structlog.get_logger("t").error(
        "message.skipped",
        display_name="Eve\x1b[2J\x1b[31mroot\rFAKE LINE\u202egnp.exe\x7f\x9b",
        plain="ok",
    )
    line = stream.getvalue()
    assert line.count("\n") == 1  # one event, one line
    for raw in ("\x1b", "\r", "\u202e", "\x7f", "\x9b"):
        assert raw not in line
    for escaped in ("\\u001b", "\\r", "\\u202e", "\\u007f", "\\u009b"):
        assert escaped in line
    assert " plain=ok" in line


def test_every_line_names_the_part_of_the_daemon_that_wrote_it() -> None:
    for as_json in (False, True):
        stream = io.StringIO()
        configure_logging(debug=False, json=as_json, stream=stream)
        get_logger("kanidm_mail_sender.engine.sending").info("mail.accepted", destination="a@b.c")
        line = stream.getvalue()
        if as_json:
            assert json.loads(line)["component"] == "engine.sending"
        else:
            assert " mail.accepted component=engine.sending destination=a@b.c" in line
