"""Templates: upstream's subjects and content order, links, overrides, HTML, broken files."""

from __future__ import annotations

import email
import email.policy
import email.utils
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import pytest

from kanidm_mail_sender.core.links import InstanceUrl, action_url
from kanidm_mail_sender.core.mail import MailIdentity, build_message, stable_message_id
from kanidm_mail_sender.core.messages import CredentialResetV1, TestMessageV1
from kanidm_mail_sender.core.render import Renderer, rfc5322_utc
from kanidm_mail_sender.errors import ConfigError, RenderError, TemplateError

MID = UUID("6f1c2d4e-8a3b-4c5d-9e7f-0123456789ab")
RESET = CredentialResetV1(
    "Alice Example", "k4p9x-2hzat-vqe7c-83wbj", datetime(2026, 2, 18, 4, 0, 5, tzinfo=UTC)
)


def renderer(template_dir: Path | None = None, name: str = "Kanidm Localhost") -> Renderer:
    return Renderer(
        instance_display_name=name,
        instance_url="https://idm.example.com",
        template_dir=template_dir,
    )


def test_credential_reset_content_in_upstream_order() -> None:
    mail = renderer().render(RESET, message_id=MID, destination="alice@example.com")
    assert mail.subject == "Kanidm Localhost: Credential Reset Link"
    lines = mail.text.splitlines()
    reset = "https://idm.example.com/ui/reset?token=k4p9x-2hzat-vqe7c-83wbj"
    revoke = "https://idm.example.com/ui/revoke?token=k4p9x-2hzat-vqe7c-83wbj"
    assert lines[0] == "Hello Alice Example,"
    order = [
        lines.index(reset),
        next(i for i, x in enumerate(lines) if "Wed, 18 Feb 2026 04:00:05 +0000" in x),
        next(i for i, x in enumerate(lines) if "did not ask" in x),
        lines.index(revoke),
    ]
    assert order == sorted(order)
    assert lines[-2:] == ["", f"msg_id: {MID}"]
    assert not mail.text.endswith(" \n")


def test_test_message_content() -> None:
    mail = renderer().render(TestMessageV1("Ellie"), message_id=MID, destination="e@x.org")
    assert mail.subject == "Kanidm Localhost: Test Message"
    assert mail.text.startswith("Hello Ellie,\n")
    assert mail.text.endswith(f"\n\nmsg_id: {MID}\n")
    assert mail.html is None


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://idm.example.com", "https://idm.example.com/ui/reset?token=a+b"),
        ("https://idm.example.com/kanidm/", "https://idm.example.com/ui/reset?token=a+b"),
        (
            "https://idm.example.com:8443/?x=1#frag",
            "https://idm.example.com:8443/ui/reset?x=1&token=a+b#frag",
        ),
    ],
)
def test_links_replace_the_path_and_append_the_token(base: str, expected: str) -> None:
    assert action_url(InstanceUrl(base), "/ui/reset", "a b") == expected


def test_override_replaces_one_file_and_the_rest_fall_back(tmp_path: Path) -> None:
    (tmp_path / "credential_reset_v1.subject.j2").write_text("Reset for {{ display_name }}\n")
    r = renderer(tmp_path)
    subject = r.render(RESET, message_id=MID, destination="a@x.org").subject
    assert subject == "Reset for Alice Example"
    assert "/ui/reset?token=" in r.render(RESET, message_id=MID, destination="a@x.org").text
    test = r.render(TestMessageV1("E"), message_id=MID, destination="a@x.org")
    assert test.subject == "Kanidm Localhost: Test Message"


def test_html_override_makes_multipart_alternative_with_escaping(tmp_path: Path) -> None:
    (tmp_path / "test_message_v1.html.j2").write_text(
        "<p>Hello {{ display_name }} from {{ instance_display_name }}</p>\n"
    )
    r = renderer(tmp_path, name="<script>alert(1)</script>")
    rendered = r.render(TestMessageV1("<b>Eve</b>"), message_id=MID, destination="e@x.org")
    envelope = build_message(
        rendered,
        identity=MailIdentity("<script>", "i@x.org", "r@x.org"),
        destination="e@x.org",
        message_id=MID,
        date=datetime.now(UTC),
    )
    msg = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "Hello <b>Eve</b>" in text.get_content()
    assert html.get_content_type() == "text/html"
    assert "&lt;b&gt;Eve&lt;/b&gt;" in html.get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html.get_content()
    assert "<script>" not in html.get_content()
    assert html["MIME-Version"] is None
    assert msg["MIME-Version"] == "1.0"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "credential_reset_v1.txt.j2").write_text("line one\n{{ reset_url \n")
    with pytest.raises(TemplateError, match=r"credential_reset_v1.txt.j2, line 2"):
        renderer(tmp_path)


def test_undefined_variable_is_an_error_with_line(tmp_path: Path) -> None:
    (tmp_path / "test_message_v1.txt.j2").write_text("ok\nstill ok\n{{ no_such_thing }}\n")
    r = renderer(tmp_path)
    with pytest.raises(TemplateError, match=r"test_message_v1.txt.j2, line 3: 'no_such_thing'"):
        r.check_all(datetime.now(UTC))


def test_a_failure_on_one_message_s_data_is_a_render_error_not_a_config_error(
    tmp_path: Path,
) -> None:
    """Works on the samples (so the daemon starts), fails for one person's data: that mail
    fails alone, which the engine tells from a configuration error by its type."""
    (tmp_path / "test_message_v1.txt.j2").write_text(
        '{% if display_name == "Eve" %}{{ no_such_thing }}{% endif %}hello\n'
    )
    r = renderer(tmp_path)
    r.check_all(datetime.now(UTC))
    with pytest.raises(RenderError, match="line 1: 'no_such_thing'") as caught:
        r.render(TestMessageV1(display_name="Eve"), message_id=uuid.uuid4(), destination="e@x.y")
    assert not isinstance(caught.value, ConfigError)


@pytest.mark.parametrize(
    ("display_name", "destination"),
    [
        ("Kanidm", "alice@example.org"),  # the fast path
        ("Kanidm Åland", "alice@example.org"),  # the stdlib path (encoded name)
        ("Kanidm", "älice@example.org"),  # the stdlib path with SMTPUTF8
    ],
)
def test_every_mail_tells_responders_it_is_automatic(display_name: str, destination: str) -> None:
    """RFC 3834's Auto-Submitted, and Exchange's own header (out-of-office and auto-replies
    only, so a bounce still comes back), whichever way the mail is built."""
    rendered = renderer().render(RESET, message_id=MID, destination=destination)
    envelope = build_message(
        rendered,
        identity=MailIdentity(display_name, "kanidm@example.com", "help@example.com"),
        destination=destination,
        message_id=MID,
        date=datetime(2026, 2, 18, 3, 0, 6, tzinfo=UTC),
    )
    msg = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "OOF, AutoReply"


def test_headers_of_a_reset_mail() -> None:
    rendered = renderer().render(RESET, message_id=MID, destination="alice.backup@example.org")
    date = datetime(2026, 2, 18, 3, 0, 6, tzinfo=UTC)
    envelope = build_message(
        rendered,
        identity=MailIdentity("Kanidm Localhost", "kanidm@example.com", "tobias@example.com"),
        destination="alice.backup@example.org",
        message_id=MID,
        date=date,
    )
    msg = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert list(msg.keys())[:6] == ["From", "Reply-To", "To", "Subject", "Date", "Message-ID"]
    assert msg["From"] == "Kanidm Localhost <kanidm@example.com>"
    assert msg["Reply-To"] == "Kanidm Localhost <tobias@example.com>"
    assert msg["To"] == "alice.backup@example.org"
    assert msg["Date"] == "Wed, 18 Feb 2026 03:00:06 +0000"
    assert msg["Content-Type"] == 'text/plain; charset="utf-8"'
    assert msg["Message-ID"] == stable_message_id(
        MID, "alice.backup@example.org", "kanidm@example.com"
    )
    assert envelope.data.isascii()
    assert b"\r\n" in envelope.data


@pytest.mark.parametrize(
    "destination",
    [
        "=?utf-8?q?victim=40evil.example=2C_x?=@example.com",  # an encoded word as local part
        '"=?utf-8?b?dmljdGltQGV2aWwuZXhhbXBsZQ==?="@example.com',  # the same, quoted
        "=?utf-8?q?a?=@example.com",
        "älice@example.org",  # SMTPUTF8: raw UTF-8
    ],
)
def test_the_to_header_is_the_envelope_s_address_verbatim(destination: str) -> None:
    """RFC 2047 section 5: no encoded word inside an addr-spec, so none is read there: the
    header names exactly the envelope's one recipient."""
    rendered = renderer().render(RESET, message_id=MID, destination=destination)
    envelope = build_message(
        rendered,
        identity=MailIdentity("Kanidm", "kanidm@example.com", "help@example.com"),
        destination=destination,
        message_id=MID,
        date=datetime(2026, 2, 18, 3, 0, 6, tzinfo=UTC),
    )
    head = envelope.data.split(b"\r\n\r\n", 1)[0].decode("utf-8").split("\r\n")
    assert [line for line in head if line.startswith("To:")] == [f"To: {destination}"]
    assert head.index(f"To: {destination}") == 2  # after From and Reply-To, as the fast path
    assert envelope.recipient == destination


@pytest.mark.parametrize("instance", ["Kanidm", "Kanidm Åland"])  # fast path, stdlib path
def test_a_display_name_that_looks_like_an_encoded_word_stays_text(
    tmp_path: Path, instance: str
) -> None:
    """An operator's subject template names the person; their display name (their own to
    edit) must not become a header (an encoded CR LF) or other text in a mail reader."""
    (tmp_path / "test_message_v1.subject.j2").write_text("Hello {{ display_name }}")
    hostile = "=?utf-8?q?x=0D=0ABcc:_evil@example.com?="
    rendered = renderer(tmp_path, name=instance).render(
        TestMessageV1(hostile), message_id=MID, destination="a@example.com"
    )
    envelope = build_message(
        rendered,
        identity=MailIdentity(instance, "kanidm@example.com", "help@example.com"),
        destination="a@example.com",
        message_id=MID,
        date=datetime(2026, 2, 18, 3, 0, 6, tzinfo=UTC),
    )
    assert b"\r\nBcc:" not in envelope.data
    msg = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert msg["Bcc"] is None
    assert msg["Subject"] == f"Hello {hostile}"


def test_non_ascii_names_are_encoded_and_round_trip() -> None:
    name = "Ünïcødé IDM, Inc."
    r = renderer(name=name)
    rendered = r.render(TestMessageV1("Zoë Ærø"), message_id=MID, destination="z@example.com")
    envelope = build_message(
        rendered,
        identity=MailIdentity(name, "i@example.com", "r@example.com"),
        destination="z@example.com",
        message_id=MID,
        date=datetime.now(UTC),
    )
    assert envelope.data.isascii()  # 7-bit clean on the wire
    msg = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert msg["From"].addresses[0].display_name == name
    assert msg["Subject"] == f"{name}: Test Message"
    assert "Hello Zoë Ærø," in msg.get_content()


def test_message_id_is_stable_per_destination() -> None:
    a = stable_message_id(MID, "a@example.com", "i@example.org")
    assert a == stable_message_id(MID, "a@example.com", "i@example.org")
    assert a != stable_message_id(MID, "b@example.com", "i@example.org")
    assert a.endswith("@example.org>")


def test_a_template_of_instance_settings_only_is_rendered_once(tmp_path: Path) -> None:
    (tmp_path / "test_message_v1.subject.j2").write_text("{{ instance_display_name }} says hi\n")
    (tmp_path / "test_message_v1.txt.j2").write_text("{{ ['a', 'b'] | random }} {{ kind }}\n")
    r = renderer(tmp_path, name="K")
    mails = [
        r.render(TestMessageV1(name), message_id=MID, destination="a@x.org")
        for name in ("Ann", "Bob") * 20
    ]
    assert {mail.subject for mail in mails} == {"K says hi"}
    assert {mail.text for mail in mails} == {"a test_message_v1\n", "b test_message_v1\n"}
    reset = r.render(RESET, message_id=MID, destination="a@x.org")
    assert reset.subject == "K: Credential Reset Link"  # the built-in subject, per kind


@pytest.mark.parametrize("name", ["a@example.com", "", "jösé@exämple.test", "x" * 300])
def test_the_message_id_is_the_stdlib_uuid5(name: str) -> None:
    for namespace in (MID, UUID(int=0), UUID(int=2**128 - 1)):
        expected = f"<{uuid.uuid5(namespace, name.lower())}@example.org>"
        assert stable_message_id(namespace, name, "i@example.org") == expected


@pytest.mark.parametrize(
    "base",
    ["https://idm.example.com", "https://u:p@idm.example.com:8443/k/?a=1&b=%20#f", "http://[::1]/"],
)
@pytest.mark.parametrize("intent", ["k4p9x-2hzat", "a b&c=d/é?#", ""])
def test_links_are_what_urlencode_and_urlunsplit_give(base: str, intent: str) -> None:
    parts = urllib.parse.urlsplit(base)
    token = urllib.parse.urlencode({"token": intent})
    query = f"{parts.query}&{token}" if parts.query else token
    expected = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/ui/reset", query, parts.fragment)
    )
    assert action_url(InstanceUrl(base), "/ui/reset", intent) == expected


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 2, 18, 4, 0, 5, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 7, 4, 9, 3, 0, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        *(datetime(2026, m, d, tzinfo=UTC) for m in range(1, 13) for d in (1, 7)),
    ],
)
def test_dates_are_what_the_stdlib_writes(moment: datetime) -> None:
    assert rfc5322_utc(moment) == email.utils.format_datetime(moment.astimezone(UTC))
