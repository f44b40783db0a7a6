"""Classify a policy predicate as printed by pg_get_expr: the canonical owner check, or not."""

import re
from enum import Enum

from todo_rls.owner_rls import FORGEABLE_OWNER_MATCHES, OWNER_MATCHES, OWNER_MATCHES_BARE

# Tokens of pg_get_expr's output: string literals, quoted identifiers, words, casts, symbols.
_TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'          # string literal ('' escapes a quote)
    | "(?:[^"]|"")*"          # quoted identifier
    | [A-Za-z_][A-Za-z0-9_$]*  # word: keyword, identifier, function name
    | \d+(?:\.\d+)?           # number
    | ::                      # cast
    | \S                      # any other symbol: ( ) , = . [ ] ...
    """,
    re.VERBOSE,
)
# The one cast the canonical check may carry (pg_get_expr prints it on every literal): text to
# text changes nothing. Any other type ("char", name, varchar(1), bpchar...) can compare a
# prefix, a case-folded or trimmed id, so it is kept as a token and never matches.
_TEXT_CASTS = (["text"], ["pg_catalog", ".", "text"])

# The owner check every policy should use, as SQL for the fixes the rules print.
CANONICAL_SQL = OWNER_MATCHES


class Shape(Enum):
    """What a predicate is, as far as the canonical form goes."""

    CANONICAL = "canonical"
    BARE = "canonical but without the sub-select"
    FORGEABLE = "keyed on the app.user_id setting itself, which any SQL the app runs can set"
    OTHER = "not the canonical form"


def tokens(expression: str) -> list[str]:
    """The tokens of expression; words lower-cased, literals and quoted names kept as written."""
    return [t if t[0] in "'\"" else t.lower() for t in _TOKEN.findall(expression)]


def _text_cast_end(tokens: list[str], i: int) -> int | None:
    """Index just past `text` or `pg_catalog.text` at tokens[i] (after a `::`), else None.

    A following `(` (a type modifier) or `[` (an array) makes it another type: None.
    """
    for cast in _TEXT_CASTS:
        end = i + len(cast)
        if tokens[i:end] == cast and tokens[end : end + 1] not in (["("], ["["]):
            return end
    return None


def normalize(expression: str) -> tuple[str, ...]:
    """Tokens without parentheses, `::text` casts, pg_catalog qualifiers or a sub-select's alias.

    Dropping parentheses cannot make two different predicates equal here: the canonical tokens
    admit only one parse. Every other cast keeps its tokens, and a function from another schema
    its qualifier (public.current_setting is not pg_catalog's), so neither ever matches.
    """
    raw = tokens(expression)
    out: list[str] = []
    i = 0
    while i < len(raw):
        part = raw[i]
        if part == "::" and (end := _text_cast_end(raw, i + 1)) is not None:
            i = end
            continue
        if part == "pg_catalog" and raw[i + 1 : i + 2] == ["."]:
            i += 2
            continue
        if part == "as" and i + 1 < len(raw):  # ( SELECT ... AS "nullif")
            i += 2
            continue
        if part not in ("(", ")"):
            out.append(part)
        i += 1
    return tuple(out)


# The predicates, normalized (derived from owner_rls's SQL, never written twice).
CANONICAL = normalize(OWNER_MATCHES)
CANONICAL_BARE = normalize(OWNER_MATCHES_BARE)
FORGEABLE = normalize(FORGEABLE_OWNER_MATCHES)
FORGEABLE_BARE = tuple(part for part in FORGEABLE if part != "select")
# Calls a policy should make once per statement, in a sub-select.
PER_STATEMENT_CALLS = ("current_setting", "current_user_id")


def shape(expression: str) -> Shape:
    """Whether expression is the canonical owner check, the same without sub-select, the
    forgeable check of before the verified identity, or other."""
    normalized = normalize(expression)
    if normalized == CANONICAL:
        return Shape.CANONICAL
    if normalized == CANONICAL_BARE:
        return Shape.BARE
    if normalized in (FORGEABLE, FORGEABLE_BARE):
        return Shape.FORGEABLE
    return Shape.OTHER


def has_bare_call(expression: str) -> bool:
    """Whether a current_setting or current_user_id call sits outside every `(select ...)`.

    Such a call is evaluated once per row instead of once per statement (an InitPlan).
    """
    raw = tokens(expression)
    subselect_depths: list[bool] = []  # per open parenthesis: does it start a sub-select?
    for i, part in enumerate(raw):
        if part == "(":
            subselect_depths.append(raw[i + 1 : i + 2] == ["select"])
        elif part == ")" and subselect_depths:
            subselect_depths.pop()
        elif part in PER_STATEMENT_CALLS and not any(subselect_depths):
            return True
    return False
