"""``--probe``, the image's health check every 30 s: it loads only config and state."""

from __future__ import annotations

import sys

from kanidm_mail_sender.exitcodes import ExitCode
from tests.helpers import run

_PROBE = """
import sys
from kanidm_mail_sender.cli import main
code = main(["--probe", "-m", "/nonexistent/mail-sender"], {})
heavy = ("httpx", "h11", "httpcore", "aiosmtplib", "jinja2")
print(code, sorted(m for m in heavy if m in sys.modules))
"""


async def test_the_probe_loads_no_http_smtp_or_template_library() -> None:
    code, out, err = await run([sys.executable, "-c", _PROBE])
    assert code == ExitCode.OK, err
    assert out.splitlines()[-1] == "1 []"  # unhealthy (no daemon here), and nothing loaded
