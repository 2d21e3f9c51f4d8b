"""The gettext catalogs of the mails' text: shipped ones, and an operator's that add a
language or correct one.

Catalogs are ``.po`` files, ``<dir>/<locale>/LC_MESSAGES/messages.po`` as Babel lays them
out; each is read and compiled in memory the first time its language is used, so the
source tree holds only what translators edit. English is the templates' own text and needs
no catalog.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po
from babel.support import NullTranslations, Translations

from kanidm_mail_sender.core.defaults import DEFAULT_LANGUAGE
from kanidm_mail_sender.errors import TemplateError

__all__ = ["SHIPPED_DIR", "Catalogs", "bcp47", "locale_name"]

SHIPPED_DIR = Path(__file__).with_name("locales")
_DOMAIN = "messages"


def locale_name(tag: str) -> str | None:
    """``tag`` (BCP 47: ``de``, ``pt-BR``, ``zh-Hans-CN``) as a Babel locale name
    (``de``, ``pt_BR``, ``zh_Hans_CN``), or None when CLDR knows no such language."""
    try:
        return str(Locale.parse(tag.strip().replace("_", "-"), sep="-"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def bcp47(name: str) -> str:
    """A Babel locale name as a BCP 47 tag (``pt_BR`` -> ``pt-BR``), for Content-Language."""
    return name.replace("_", "-")


def _fallbacks(name: str) -> list[str]:
    """``zh_Hans_CN`` -> ``zh_Hans_CN``, ``zh_Hans``, ``zh``: the most specific first. Norwegian
    (``no``) is written Bokmål (``nb``) in practice."""
    parts = name.split("_")
    found = ["_".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if found[-1] == "no":
        found.append("nb")
    return found


@dataclass
class Catalogs:
    """The catalogs found in the operator's directory (first) and the shipped one."""

    extra_dir: Path | None = None
    _loaded: dict[str, NullTranslations] = field(default_factory=dict, init=False, repr=False)
    _names: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.extra_dir is not None and not self.extra_dir.is_dir():
            raise TemplateError(
                f"mail_catalog_dir {self.extra_dir} is not a directory; point it at a "
                "directory of <language>/LC_MESSAGES/messages.po, or remove the key"
            )
        # Found once: a catalog added while the daemon runs is read at the next start, as
        # its translations are.
        found = {DEFAULT_LANGUAGE}
        for root in self._roots():
            found |= {p.parent.parent.name for p in root.glob(f"*/LC_MESSAGES/{_DOMAIN}.po")}
        self._names = frozenset(found)

    def languages(self) -> list[str]:
        """Every language with a catalog (Babel names), and English, sorted."""
        return sorted(self._names)

    def match(self, tag: str) -> str | None:
        """The language with a catalog that serves ``tag`` best (``de-AT`` -> ``de``), or
        None when there is none."""
        name = locale_name(tag)
        if name is None:
            return None
        return next((n for n in _fallbacks(name) if n in self._names), None)

    def unserved(self, tag: str) -> str:
        """What to tell the operator of a language ``tag`` that no catalog serves."""
        there = ", ".join(bcp47(name) for name in self.languages())
        return f"{tag!r}: no catalog serves it; there are: {there} (or add one in mail_catalog_dir)"

    def translations(self, name: str) -> NullTranslations:
        """The compiled catalog of ``name`` (a result of :meth:`match`); for English the
        templates' own text. An operator's catalog replaces the shipped one of its name."""
        loaded = self._loaded.get(name)
        if loaded is None:
            loaded = self._loaded[name] = self._compile(name)
        return loaded

    def _roots(self) -> list[Path]:
        return [p for p in (self.extra_dir, SHIPPED_DIR) if p is not None]

    def _compile(self, name: str) -> NullTranslations:
        for root in self._roots():
            path = root / name / "LC_MESSAGES" / f"{_DOMAIN}.po"
            if path.is_file():
                return _read(path, name)
        return NullTranslations()  # English, or a name no catalog has


def _read(path: Path, name: str) -> Translations:
    try:
        with path.open("rb") as source:
            catalog = read_po(source, locale=name, domain=_DOMAIN, abort_invalid=True)
    except (OSError, PoFileError, ValueError) as exc:
        raise TemplateError(f"catalog {path}: cannot be read ({exc})") from None
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=_DOMAIN)
