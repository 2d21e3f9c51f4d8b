"""``{% trans %}`` translated when a template is compiled, not each time it renders.

Jinja's i18n extension turns a ``{% trans %}`` block into a ``gettext`` call made at every
render, which costs more than rendering the rest of a mail. Each language here has its own
environment, so its catalog is known at compile time: a block without a plural becomes plain
output, the translated text with its variables in place, and renders as fast as untranslated
text. Plural blocks, and ``gettext()`` or ``_()`` written in an expression, still go through
the translations installed at run time.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import nodes
from jinja2.ext import InternationalizationExtension

__all__ = ["CompiledTrans", "PlaceholderError"]

# What a newstyle translation may hold besides text: %(name)s, and %% for a percent sign.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


class PlaceholderError(ValueError):
    """A translation names a variable its ``{% trans %}`` block does not give."""


class CompiledTrans(InternationalizationExtension):
    """The i18n extension, with singular blocks translated at compile time from the
    environment's ``compile_translations``."""

    def _make_node(
        self,
        singular: str,
        plural: str | None,
        context: str | None,
        variables: dict[str, nodes.Expr],
        plural_expr: nodes.Expr | None,
        vars_referenced: bool,
        num_called_num: bool,
    ) -> nodes.Output:
        translations: Any = getattr(self.environment, "compile_translations", None)
        if plural is not None or translations is None:
            return super()._make_node(
                singular,
                plural,
                context,
                variables,
                plural_expr,
                vars_referenced,
                num_called_num,
            )
        if context is None:
            text = translations.gettext(singular)
        else:
            text = translations.pgettext(context, singular)
        return nodes.Output(_pieces(text, variables))


def _pieces(text: str, variables: dict[str, nodes.Expr]) -> list[nodes.Expr]:
    """``text % variables`` as output nodes: literal runs and the variables' expressions."""
    pieces: list[nodes.Expr] = []
    literal: list[str] = []
    at = 0
    for found in _PLACEHOLDER.finditer(text):
        literal.append(text[at : found.start()])
        at = found.end()
        name = found.group(1)
        if name is None:
            literal.append("%")
            continue
        if name not in variables:
            raise PlaceholderError(
                f"the translation {text!r} uses %({name})s, which its block does not give "
                f"(it gives {', '.join(sorted(variables)) or 'none'})"
            )
        if literal:
            pieces.append(nodes.TemplateData("".join(literal)))
            literal = []
        pieces.append(variables[name])
    literal.append(text[at:])
    if "".join(literal):
        pieces.append(nodes.TemplateData("".join(literal)))
    return pieces
