"""Mail in the reader's language and zone: the shipped catalogs, the choice of language, the
expiry for a reader, the headers, an operator's catalogs, and English as it was."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from kanidm_mail_sender.core import mail
from kanidm_mail_sender.core.catalogs import SHIPPED_DIR, Catalogs, bcp47
from kanidm_mail_sender.core.mail import MailIdentity, build_message
from kanidm_mail_sender.core.messages import (
    CredentialResetV1,
    Template,
    TestMessageV1,
    parse_resource,
)
from kanidm_mail_sender.core.render import SAMPLE_MESSAGE_ID, RenderedMail, Renderer
from kanidm_mail_sender.errors import TemplateError

TEMPLATES = Path(__file__).parents[2] / "src" / "kanidm_mail_sender" / "core" / "templates"
GOLDEN = Path(__file__).with_name("golden")
NOW = datetime(2026, 12, 6, 18, 45, tzinfo=UTC)
RESET = CredentialResetV1("Zoë Ämtler", "k4p9x-2hzat-vqe7c-83wbj", NOW + timedelta(hours=1))
TEST = TestMessageV1("Zoë Ämtler")
INSTANCE = "Example IdM"
IDENTITY = MailIdentity(INSTANCE, "idm@example.com", "support@example.com")
SHIPPED = Catalogs().languages()
ASKED = ["en", "de", "fr", "es", "it", "nl", "pt-BR", "pl", "sv", "da", "nb", "fi", "cs", "ja"]


def _renderer(**settings: object) -> Renderer:
    return Renderer(
        instance_display_name=INSTANCE,
        instance_url="https://idm.example.com",
        **settings,  # type: ignore[arg-type]
    )


def _render(renderer: Renderer, template: Template, language: str | None) -> RenderedMail:
    return renderer.render(
        template,
        message_id=SAMPLE_MESSAGE_ID,
        destination="zoe@example.com",
        language=language,
        now=NOW,
    )


def _built(
    rendered: RenderedMail,
    identity: MailIdentity = IDENTITY,
    destination: str = "zoe@example.com",
) -> bytes:
    return build_message(
        rendered,
        identity=identity,
        destination=destination,
        message_id=SAMPLE_MESSAGE_ID,
        date=NOW,
    ).data


def _parsed(rendered: RenderedMail) -> EmailMessage:
    parsed = email.message_from_bytes(_built(rendered), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _extracted() -> list[str]:
    options = {"**.j2": {"extensions": "kanidm_mail_sender.core.trans.CompiledTrans"}}
    found = extract_from_dir(str(TEMPLATES), [("**.j2", "jinja2")], options)
    return sorted({str(message) for _, _, message, _, _ in found})


def _catalog(name: str) -> dict[str, str]:
    path = SHIPPED_DIR / name / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as source:
        catalog = read_po(source)
    return {str(m.id): str(m.string) for m in catalog if m.id}


def test_at_least_the_languages_the_issue_names_are_shipped() -> None:
    wanted = {"en", "de", "fr", "es", "it", "nl", "pt_BR", "pl", "sv", "da", "nb", "fi", "cs"}
    assert wanted | {"ja", "zh_Hans"} <= set(SHIPPED)


def test_the_template_catalog_is_what_the_templates_say() -> None:
    with (SHIPPED_DIR / "messages.pot").open("rb") as source:
        template = sorted(str(m.id) for m in read_po(source) if m.id)
    assert template == _extracted()


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "en"])
def test_every_message_is_translated_and_the_header_names_its_reviewers(name: str) -> None:
    translated = _catalog(name)
    assert sorted(translated) == _extracted()
    assert all(translated.values()), [k for k, v in translated.items() if not v]
    header = (SHIPPED_DIR / name / "LC_MESSAGES" / "messages.po").read_text()
    assert "X-Reviewed-By:" in header
    assert "may review it" in header


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("template", [RESET, TEST], ids=["reset", "test"])
def test_every_language_renders_both_kinds_with_every_placeholder(
    name: str, template: Template
) -> None:
    rendered = _render(_renderer(), template, bcp47(name))
    assert rendered.language == bcp47(name)
    assert rendered.unserved is None
    text = rendered.text
    assert "Zoë Ämtler" in text
    assert INSTANCE in rendered.subject
    assert text.endswith(f"msg_id: {SAMPLE_MESSAGE_ID}\n")
    if template is RESET:
        assert "https://idm.example.com/ui/reset?token=k4p9x-2hzat-vqe7c-83wbj" in text
        assert "https://idm.example.com/ui/revoke?token=k4p9x-2hzat-vqe7c-83wbj" in text
        assert "2026" in text  # the expiry, in one form or another
    else:
        assert INSTANCE in text
    if name != "en":
        english = _render(_renderer(), template, "en")
        assert rendered.subject != english.subject
        assert rendered.text != english.text
    parsed = _parsed(rendered)
    assert parsed["Content-Language"] == bcp47(name)
    assert parsed["Subject"] == rendered.subject
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == text


def test_a_german_mail_reads_the_expiry_in_german_and_in_berlin() -> None:
    renderer = _renderer(language="de", timezone=ZoneInfo("Europe/Berlin"))
    rendered = _render(renderer, RESET, None)
    assert rendered.subject == "Example IdM: Link zum Zurücksetzen der Zugangsdaten"
    assert "Der Link gilt bis 6. Dezember 2026, 20:45 MEZ (in 1 Stunde)." in rendered.text
    assert rendered.text.startswith("Hallo Zoë Ämtler,\n")
    parsed = _parsed(rendered)
    assert parsed["Content-Language"] == "de"
    assert parsed["Subject"] == rendered.subject
    assert parsed.get_content_charset() == "utf-8"


def test_a_japanese_subject_is_encoded_and_reads_back() -> None:
    rendered = _render(_renderer(language="ja"), RESET, None)
    data = _built(rendered, MailIdentity("例の認証", "idm@example.com", "support@example.com"))
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # RFC 2047 encoded words, no raw UTF-8 in the headers
    assert b"=?utf-8?" in head
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == "Example IdM: 認証情報のリセット用リンク"
    assert parsed["From"].addresses[0].display_name == "例の認証"
    assert parsed["Content-Language"] == "ja"


@pytest.mark.parametrize("kind", ["credential_reset_v1", "test_message_v1"])
def test_english_renders_as_it_did_with_only_content_language_added(kind: str) -> None:
    """The golden copies were made before languages came (``git log tests/core/golden``):
    the one change since is the Content-Language header."""
    template: Template = (
        CredentialResetV1("Alice Example", "k4p9x-2hzat-vqe7c-83wbj", NOW + timedelta(hours=1))
        if kind == "credential_reset_v1"
        else TestMessageV1("Alice Example")
    )
    renderer = Renderer(instance_display_name="Kanidm", instance_url="https://idm.example.com")
    rendered = renderer.render(
        template, message_id=SAMPLE_MESSAGE_ID, destination="alice@example.com"
    )
    identity = MailIdentity("Kanidm", "idm@example.com", "support@example.com")
    data = _built(rendered, identity, "alice@example.com")
    assert data == (GOLDEN / f"{kind}.eml").read_bytes()


@pytest.mark.parametrize(
    ("asked", "served", "unserved"),
    [
        (None, "fr", None),
        ("de", "de", None),
        ("de-AT", "de", None),
        ("pt-BR", "pt-BR", None),
        ("pt", "fr", "pt"),  # only Brazilian Portuguese is shipped
        ("zh-CN", "zh-Hans", None),
        ("zh-Hans-CN", "zh-Hans", None),
        ("no", "nb", None),
        ("nb-NO", "nb", None),
        ("EN", "en", None),
        ("tlh", "fr", "tlh"),
        ("not a tag", "fr", "not a tag"),
    ],
)
def test_a_message_s_own_language_wins_when_a_catalog_serves_it(
    asked: str | None, served: str, unserved: str | None
) -> None:
    rendered = _render(_renderer(language="fr"), RESET, asked)
    assert (rendered.language, rendered.unserved) == (served, unserved)


@pytest.mark.parametrize(
    ("value", "read"),
    [("de", "de"), ("pt-BR", "pt-BR"), (7, None), ("x" * 100, None), ("de\r\nX: y", None)],
)
def test_the_queue_s_language_field_is_read_and_a_bad_one_ignored(
    value: object, read: str | None
) -> None:
    resource = {
        "id": str(SAMPLE_MESSAGE_ID),
        "message_template": {"TestMessageV1": {"display_name": "Zoë"}},
        "mail_destination": [{"primary": True, "value": "zoe@example.com"}],
        "language": value,
    }
    assert parse_resource(resource).language == read


def test_compiled_translation_renders_as_jinja_s_own_i18n_does() -> None:
    """The compile-time translation is an optimisation only: for every shipped language
    and template, the same text as Jinja's run-time ``{% trans %}``."""
    renderer = _renderer()
    for name in SHIPPED:
        translations = Catalogs().translations(name)
        runtime = jinja2.Environment(  # noqa: S701 - text mail, as the renderer's
            loader=jinja2.FileSystemLoader(TEMPLATES),
            extensions=["jinja2.ext.i18n"],
            keep_trailing_newline=True,
            undefined=jinja2.StrictUndefined,
        )
        runtime.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
        language = renderer.language(name)
        for template in (RESET, TEST):
            context = renderer.context(
                template,
                message_id=SAMPLE_MESSAGE_ID,
                destination="zoe@example.com",
                language=language,
                now=NOW,
            )
            context.update(
                expiry_text=language.clock.at(RESET.expiry_time),
                expires_in=language.clock.left(RESET.expiry_time, NOW),
            )
            for suffix in ("subject.j2", "txt.j2"):
                file = f"{template.kind}.{suffix}"
                ours = language.env.get_template(file).render(context)
                assert ours == runtime.get_template(file).render(context), (name, file)


def _catalog_dir(root: Path, locale: str, entries: dict[str, str]) -> Path:
    folder = root / locale / "LC_MESSAGES"
    folder.mkdir(parents=True)
    lines = ['msgid ""', 'msgstr ""', '"Content-Type: text/plain; charset=UTF-8\\n"', ""]
    for msgid, msgstr in entries.items():
        lines += [f"msgid {_po(msgid)}", f"msgstr {_po(msgstr)}", ""]
    (folder / "messages.po").write_text("\n".join(lines), encoding="utf-8")
    return root


def _po(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def test_an_operator_s_catalog_adds_a_language_and_corrects_a_shipped_one(
    tmp_path: Path,
) -> None:
    _catalog_dir(tmp_path, "eo", {"Hello %(display_name)s,": "Saluton %(display_name)s,"})
    _catalog_dir(tmp_path, "de", {"Hello %(display_name)s,": "Servus %(display_name)s,"})
    renderer = _renderer(catalog_dir=tmp_path, language="eo")
    added = _render(renderer, TEST, None)
    assert added.language == "eo"
    assert added.text.startswith("Saluton Zoë Ämtler,\n")
    assert "sent you this message" in added.text  # untranslated: the English text
    corrected = _render(renderer, TEST, "de")
    assert corrected.text.startswith("Servus Zoë Ämtler,\n")


def test_a_translation_naming_a_variable_its_block_lacks_stops_the_start(tmp_path: Path) -> None:
    _catalog_dir(tmp_path, "de", {"Hello %(display_name)s,": "Hallo %(intent_id)s,"})
    renderer = _renderer(catalog_dir=tmp_path)
    with pytest.raises(TemplateError, match=r"language de: .*%\(intent_id\)s"):
        renderer.check_all(NOW, languages=["de"])


def test_an_override_template_translates_with_the_same_catalogs(tmp_path: Path) -> None:
    (tmp_path / "test_message_v1.txt.j2").write_text(
        "{% trans %}Hello {{ display_name }},{% endtrans %}\n"
        "{{ _('Hello %(display_name)s,', display_name='B') }}\n"
        "{{ expiry_like | format_datetime('d MMMM y') }}\n"
    )
    renderer = _renderer(template_dir=tmp_path, language="de")
    language = renderer.language("de")
    template = language.templates["test_message_v1"][1]
    text = template.render(
        renderer.context(
            TEST, message_id=SAMPLE_MESSAGE_ID, destination="z@example.com", language=language
        )
        | {"expiry_like": NOW}
    )
    assert text == "Hallo Zoë Ämtler,\nHallo B,\n6 Dezember 2026\n"


def test_an_unknown_language_is_refused_with_the_shipped_ones() -> None:
    with pytest.raises(TemplateError, match=r"there are: .*de.*zh-Hans"):
        _renderer(language="tlh")


@pytest.mark.parametrize("name", SHIPPED)
def test_a_translated_mail_is_built_fast_and_as_the_stdlib_builds_it(name: str) -> None:
    """Non-ASCII text takes the fast build too (the stdlib's costs a millisecond a mail);
    its bytes are the stdlib's, transfer encoding included."""
    for template in (RESET, TEST):
        rendered = _render(_renderer(), template, bcp47(name))
        parts = (rendered, IDENTITY, "zoe@example.com", "Sun, 06 Dec 2026 18:45:00 +0000", "<i>")
        fast = mail._fast_path(*parts)
        assert fast is not None
        assert fast == mail._stdlib_message(*parts)
