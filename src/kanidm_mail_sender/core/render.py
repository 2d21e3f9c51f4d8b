"""Message templates: Jinja2 files per kind and version, built in or overridden by the operator.

For a kind such as ``credential_reset_v1`` there are three files: ``<kind>.subject.j2`` and
``<kind>.txt.j2`` (required) and ``<kind>.html.j2`` (optional; HTML is autoescaped). A file
of the same name in ``template_dir`` replaces the built-in one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import jinja2
import jinja2.meta
import jinja2.nodes

from kanidm_mail_sender.core.links import InstanceUrl, action_url
from kanidm_mail_sender.core.messages import (
    TEMPLATE_KINDS,
    CredentialResetV1,
    Template,
    TestMessageV1,
)
from kanidm_mail_sender.errors import RenderError, TemplateError

__all__ = ["SAMPLE_MESSAGE_ID", "RenderedMail", "Renderer", "rfc5322_utc", "sample_template"]

SAMPLE_MESSAGE_ID = UUID("0a9318dc-920f-4944-9ce4-91b4322b5dad")


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """The text parts of one mail, before headers are added."""

    subject: str
    text: str
    html: str | None


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


_INSTANCE_VARIABLES = frozenset({"instance_display_name", "instance_url", "kind"})


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith(".html.j2"))


class Renderer:
    """Renders a queued message's template into subject, text and optional HTML."""

    def __init__(
        self,
        *,
        instance_display_name: str,
        instance_url: InstanceUrl | str,
        template_dir: Path | None = None,
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
        self._env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,  # noqa: S701 - on for *.html.j2; text mail must not escape
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self._display_name = instance_display_name
        self._instance_url = (
            instance_url if isinstance(instance_url, InstanceUrl) else InstanceUrl(instance_url)
        )
        self._templates = {kind: self._load(kind) for kind in TEMPLATE_KINDS}
        # A template that reads only the instance's settings renders the same for every
        # mail (the built-in subjects): rendered once, at its first use.
        self._constant: dict[jinja2.Template, str] = {}
        self._varies = {
            template
            for parts in self._templates.values()
            for template in parts
            if template is not None and not self._instance_only(template)
        }

    def _load(self, kind: str) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template | None]:
        def get(name: str, required: bool) -> jinja2.Template | None:
            try:
                return self._env.get_template(name)
            except jinja2.TemplateNotFound:
                if required:
                    raise TemplateError(f"template {name} is missing") from None
                return None
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"template {exc.filename or name}, line {exc.lineno}: {exc.message}"
                ) from None

        subject = get(f"{kind}.subject.j2", True)
        text = get(f"{kind}.txt.j2", True)
        assert subject is not None
        assert text is not None
        return subject, text, get(f"{kind}.html.j2", False)

    def _instance_only(self, template: jinja2.Template) -> bool:
        """Whether ``template`` (with nothing it includes or extends) reads only the
        instance's settings, so that its output is the same for every mail."""
        name = template.name
        loader = self._env.loader
        if name is None or loader is None:
            return False
        source, _, _ = loader.get_source(self._env, name)
        tree = self._env.parse(source)
        if any(True for _ in jinja2.meta.find_referenced_templates(tree)):
            return False
        if any(f.name == "random" for f in tree.find_all(jinja2.nodes.Filter)):
            return False  # the one built-in filter whose output is not fixed by its input
        return jinja2.meta.find_undeclared_variables(tree) <= _INSTANCE_VARIABLES

    def context(self, template: Template, *, message_id: UUID, destination: str) -> dict[str, Any]:
        """The variables a template of this kind receives (documented in README)."""
        context: dict[str, Any] = {
            "instance_display_name": self._display_name,
            "instance_url": self._instance_url,
            "display_name": template.display_name,
            "message_id": str(message_id),
            "destination": destination,
            "kind": template.kind,
        }
        if isinstance(template, CredentialResetV1):
            context.update(
                intent_id=template.intent_id,
                reset_url=action_url(self._instance_url, "/ui/reset", template.intent_id),
                revoke_url=action_url(self._instance_url, "/ui/revoke", template.intent_id),
                expiry=rfc5322_utc(template.expiry_time),
                expiry_time=template.expiry_time,
            )
        return context

    def render(self, template: Template, *, message_id: UUID, destination: str) -> RenderedMail:
        """Render all parts of one mail; raises RenderError naming the file and line."""
        subject_t, text_t, html_t = self._templates[template.kind]
        context = self.context(template, message_id=message_id, destination=destination)
        subject = " ".join(self._run(subject_t, context).split())
        return RenderedMail(
            subject=subject,
            text=self._run(text_t, context),
            html=None if html_t is None else self._run(html_t, context),
        )

    def _run(self, template: jinja2.Template, context: dict[str, Any]) -> str:
        if template in self._varies:
            return self._render(template, context)
        text = self._constant.get(template)
        if text is None:
            text = self._constant[template] = self._render(template, context)
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
    def checked(
        cls,
        *,
        instance_display_name: str,
        instance_url: InstanceUrl | str,
        template_dir: Path | None = None,
    ) -> Renderer:
        """A renderer whose every template was rendered once with sample data."""
        renderer = cls(
            instance_display_name=instance_display_name,
            instance_url=instance_url,
            template_dir=template_dir,
        )
        renderer.check_all(datetime.now(UTC))
        return renderer

    def check_all(self, now: datetime) -> None:
        """Render every kind with sample data; raises TemplateError on the first broken one."""
        for kind in TEMPLATE_KINDS:
            try:
                self.render(
                    sample_template(kind, now),
                    message_id=SAMPLE_MESSAGE_ID,
                    destination="alice@example.com",
                )
            except RenderError as exc:
                raise TemplateError(str(exc)) from None


def _template_line(filename: str | None) -> int | None:
    """The template line of the error being handled, from Jinja's rewritten traceback."""
    tb = sys.exc_info()[2]
    line = None
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
