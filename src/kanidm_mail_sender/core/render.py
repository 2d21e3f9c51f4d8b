"""Message templates: Jinja2 files per kind and version, built in or overridden by the operator.

For a kind such as ``credential_reset_v1`` there are three files: ``<kind>.subject.j2`` and
``<kind>.txt.j2`` (required) and ``<kind>.html.j2`` (optional; HTML is autoescaped). A file
of the same name in ``template_dir`` replaces the built-in one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import jinja2
import jinja2.meta
import jinja2.nodes

from kanidm_mail_sender.core.catalogs import Catalogs, bcp47
from kanidm_mail_sender.core.defaults import DEFAULT_LANGUAGE
from kanidm_mail_sender.core.links import InstanceUrl, action_url
from kanidm_mail_sender.core.localtime import Clock
from kanidm_mail_sender.core.messages import (
    TEMPLATE_KINDS,
    CredentialResetV1,
    Template,
    TestMessageV1,
)
from kanidm_mail_sender.core.trans import CompiledTrans, PlaceholderError
from kanidm_mail_sender.errors import RenderError, TemplateError

__all__ = ["SAMPLE_MESSAGE_ID", "RenderedMail", "Renderer", "rfc5322_utc", "sample_template"]

SAMPLE_MESSAGE_ID = UUID("0a9318dc-920f-4944-9ce4-91b4322b5dad")


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """The text parts of one mail, before headers are added, and their language."""

    subject: str
    text: str
    html: str | None
    language: str = DEFAULT_LANGUAGE  # BCP 47, for Content-Language
    unserved: str | None = None  # the language the message asked for, when none served it


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_utc(moment: datetime) -> str:
    """``email.utils.format_datetime`` of ``moment`` in UTC (English names, ``+0000``), at a
    third of its cost; the test compares the two."""
    t = moment.astimezone(UTC)
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000"
    )


def sample_template(kind: str, now: datetime) -> Template:
    """Representative data for previews and start-up checks."""
    if kind == CredentialResetV1.kind:
        return CredentialResetV1(
            display_name="Alice Example",
            intent_id="k4p9x-2hzat-vqe7c-83wbj",
            expiry_time=now.replace(microsecond=0) + timedelta(hours=1),
        )
    if kind == TestMessageV1.kind:
        return TestMessageV1(display_name="Alice Example")
    raise TemplateError(f"unknown message kind {kind!r}; known kinds: {', '.join(TEMPLATE_KINDS)}")


_ASKED = 1024  # languages asked for by messages whose answer is remembered

# What a template calls when it translates at render time ("*": it may, unseen).
_GETTEXT = frozenset({"gettext", "ngettext", "pgettext", "npgettext", "_", "*"})
# Names a template may read and still render the same for every mail of one language.
_INSTANCE_VARIABLES = frozenset({"instance_display_name", "instance_url", "kind", "language"}) | (
    _GETTEXT - {"*"}
)


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith(".html.j2"))


Parts = tuple[jinja2.Template, jinja2.Template, jinja2.Template | None]


class _Language:
    """One language's templates: compiled with its catalog, with its clock."""

    def __init__(
        self, name: str, loader: jinja2.BaseLoader, translations: Any, clock: Clock
    ) -> None:
        self.name = name
        self.tag = bcp47(name)
        self.clock = clock
        env = jinja2.Environment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,  # noqa: S701 - on for *.html.j2; text mail must not escape
            keep_trailing_newline=True,
            auto_reload=False,
            extensions=[CompiledTrans],
        )
        env.compile_translations = translations  # type: ignore[attr-defined]
        env.filters["format_datetime"] = clock.format
        self.env = env
        self.templates = {kind: self._load(kind) for kind in TEMPLATE_KINDS}
        self.reads: dict[str, frozenset[str]] = {}
        # A template that reads only the instance's settings renders the same for every
        # mail of this language (the built-in subjects): rendered once, at its first use.
        self.constant: dict[jinja2.Template, str] = {}
        self.varies: set[jinja2.Template] = set()
        for kind, parts in self.templates.items():
            names: set[str] = set()
            for template in parts:
                if template is None:
                    continue
                read = self._reads(template)
                names |= read
                if not read <= _INSTANCE_VARIABLES:
                    self.varies.add(template)
            self.reads[kind] = frozenset(names)
        if any(names & _GETTEXT for names in self.reads.values()):
            # Only for plurals and gettext() in expressions: every render then copies these
            # globals into its context, a tenth of a mail's render.
            env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]

    def _load(self, kind: str) -> Parts:
        def get(name: str, required: bool) -> jinja2.Template | None:
            try:
                return self.env.get_template(name)
            except jinja2.TemplateNotFound:
                if required:
                    raise TemplateError(f"template {name} is missing") from None
                return None
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"template {exc.filename or name}, line {exc.lineno}: {exc.message}"
                ) from None
            except PlaceholderError as exc:
                raise TemplateError(f"template {name}, language {self.tag}: {exc}") from None

        subject = get(f"{kind}.subject.j2", True)
        text = get(f"{kind}.txt.j2", True)
        assert subject is not None
        assert text is not None
        return subject, text, get(f"{kind}.html.j2", False)

    def _reads(self, template: jinja2.Template) -> set[str]:
        """The variables ``template`` reads; everything, when it includes or extends another
        or uses the one built-in filter whose output its input does not fix (``random``)."""
        name = template.name
        loader = self.env.loader
        if name is None or loader is None:
            return {"*"}
        source, _, _ = loader.get_source(self.env, name)
        tree = self.env.parse(source)
        if any(True for _ in jinja2.meta.find_referenced_templates(tree)) or any(
            f.name == "random" for f in tree.find_all(jinja2.nodes.Filter)
        ):
            return {"*"}
        # ``_`` is a global of the i18n extension, so Jinja does not count it as read.
        called = {n.name for n in tree.find_all(jinja2.nodes.Name)} & _GETTEXT
        return set(jinja2.meta.find_undeclared_variables(tree)) | called


class Renderer:
    """Renders a queued message's template into subject, text and optional HTML, in the
    message's language when a catalog serves it, else in the configured one."""

    def __init__(
        self,
        *,
        instance_display_name: str,
        instance_url: InstanceUrl | str,
        template_dir: Path | None = None,
        language: str = DEFAULT_LANGUAGE,
        timezone: tzinfo = UTC,
        catalog_dir: Path | None = None,
    ) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if template_dir is not None:
            if not template_dir.is_dir():
                raise TemplateError(
                    f"template_dir {template_dir} is not a directory; point it at the "
                    "directory that holds your templates, or remove the key to use the "
                    "built-in ones"
                )
            loaders.append(jinja2.FileSystemLoader(template_dir))
        loaders.append(jinja2.PackageLoader("kanidm_mail_sender.core", "templates"))
        self._loader = jinja2.ChoiceLoader(loaders)
        self._catalogs = Catalogs(catalog_dir)
        self._zone = timezone
        self._display_name = instance_display_name
        self._instance_url = (
            instance_url if isinstance(instance_url, InstanceUrl) else InstanceUrl(instance_url)
        )
        default = self._catalogs.match(language)
        if default is None:
            raise TemplateError(f"mail_language {self._catalogs.unserved(language)}")
        self._languages: dict[str, _Language] = {}
        self._default = self.language(default)
        self._asked: dict[str, _Language | None] = {}

    def language(self, name: str) -> _Language:
        """The templates of ``name`` (a Babel locale name with a catalog), built once."""
        found = self._languages.get(name)
        if found is None:
            found = self._languages[name] = _Language(
                name,
                self._loader,
                self._catalogs.translations(name),
                Clock(name, self._zone),
            )
        return found

    def _for(self, asked: str | None) -> tuple[_Language, bool]:
        """The language for a message that asks for ``asked``; True when it asked for one
        no catalog serves (it gets the configured one)."""
        if asked is None:
            return self._default, False
        if asked not in self._asked:
            if len(self._asked) >= _ASKED:  # the tags come from the queue: bounded
                self._asked.clear()
            name = self._catalogs.match(asked)
            self._asked[asked] = None if name is None else self.language(name)
        found = self._asked[asked]
        return (self._default, True) if found is None else (found, False)

    def context(
        self,
        template: Template,
        *,
        message_id: UUID,
        destination: str,
        language: _Language | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """The variables a template of this kind receives (documented in README); ``now``
        (the wall clock when left out) is what ``expires_in`` counts from."""
        lang = language or self._default
        context: dict[str, Any] = {
            "instance_display_name": self._display_name,
            "instance_url": self._instance_url,
            "display_name": template.display_name,
            "message_id": str(message_id),
            "destination": destination,
            "kind": template.kind,
            "language": lang.tag,
        }
        if isinstance(template, CredentialResetV1):
            expires = template.expiry_time
            context.update(
                intent_id=template.intent_id,
                reset_url=action_url(self._instance_url, "/ui/reset", template.intent_id),
                revoke_url=action_url(self._instance_url, "/ui/revoke", template.intent_id),
                expiry=_rfc5322(expires, self._zone),
                expiry_time=expires if self._zone is UTC else lang.clock.local(expires),
            )
            reads = lang.reads[template.kind]
            if "expiry_text" in reads or "*" in reads:
                context["expiry_text"] = lang.clock.at(expires)
            if "expires_in" in reads or "*" in reads:
                context["expires_in"] = lang.clock.left(expires, now or datetime.now(UTC))
        return context

    def render(
        self,
        template: Template,
        *,
        message_id: UUID,
        destination: str,
        language: str | None = None,
        now: datetime | None = None,
    ) -> RenderedMail:
        """Render all parts of one mail, in ``language`` (a BCP 47 tag the message carries)
        when a catalog serves it; raises RenderError naming the file and line."""
        lang, missed = self._for(language)
        subject_t, text_t, html_t = lang.templates[template.kind]
        context = self.context(
            template, message_id=message_id, destination=destination, language=lang, now=now
        )
        subject = " ".join(self._run(lang, subject_t, context).split())
        return RenderedMail(
            subject=subject,
            text=self._run(lang, text_t, context),
            html=None if html_t is None else self._run(lang, html_t, context),
            language=lang.tag,
            unserved=language if missed else None,
        )

    def _run(self, lang: _Language, template: jinja2.Template, context: dict[str, Any]) -> str:
        if template in lang.varies:
            return self._render(template, context)
        text = lang.constant.get(template)
        if text is None:
            text = lang.constant[template] = self._render(template, context)
        return text

    @staticmethod
    def _render(template: jinja2.Template, context: dict[str, Any]) -> str:
        try:
            return template.render(context)
        except jinja2.TemplateError as exc:
            line = _template_line(template.filename)
            where = f", line {line}" if line else ""
            raise RenderError(
                f"template {template.filename or template.name}{where}: {exc}"
            ) from None

    @classmethod
    def checked(cls, **settings: Any) -> Renderer:
        """A renderer (of :class:`Renderer`'s own arguments) whose every template was
        rendered once with sample data."""
        renderer = cls(**settings)
        renderer.check_all(datetime.now(UTC))
        return renderer

    def check_all(self, now: datetime, languages: list[str] | None = None) -> None:
        """Render every kind with sample data, in the configured language or each of
        ``languages`` (Babel names); raises TemplateError on the first broken one."""
        for name in languages or [self._default.name]:
            for kind in TEMPLATE_KINDS:
                try:
                    self.render(
                        sample_template(kind, now),
                        message_id=SAMPLE_MESSAGE_ID,
                        destination="alice@example.com",
                        language=bcp47(name),
                    )
                except RenderError as exc:
                    raise TemplateError(str(exc)) from None

    def languages(self) -> list[str]:
        """Every language with a catalog (Babel names)."""
        return self._catalogs.languages()

    def unserved(self, tag: str) -> str:
        """What to tell the operator of a language ``tag`` that no catalog serves."""
        return self._catalogs.unserved(tag)


def _rfc5322(moment: datetime, zone: tzinfo) -> str:
    """The expiry as upstream writes it (RFC 2822, UTC), or in the configured zone."""
    if zone is UTC:
        return rfc5322_utc(moment)
    return format_datetime(moment.astimezone(zone))


def _template_line(filename: str | None) -> int | None:
    """The template line of the error being handled, from Jinja's rewritten traceback."""
    tb = sys.exc_info()[2]
    line = None
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
