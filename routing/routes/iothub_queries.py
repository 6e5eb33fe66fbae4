"""IoT Hub message routing queries: an endpoint's filter written as IoT Hub writes a route's condition.

An endpoint with `filterLanguage: iothub` has its filter read with IoT Hub's grammar, against the
IoT Hub message an event arrived as (its system properties, application properties and body), so a
query copied from an IoT Hub route selects here what it selects there:

- `$connectionDeviceId`, `$contentType`, `$enqueuedTime`, ...: system properties, by IoT Hub's query
  keyword (mapped to the name the message carries on the Event Hubs side, `SYSTEM_PROPERTIES`), or by
  that name itself (`$iothub-enqueuedtime`); a `$name` no system property has is the application
  property `$name`, as IoT Hub looks;
- `processingPath`: an application property, by its bare name (ignoring case);
- `$body.Weather.Temperature`: the body, only when the message says it is JSON in UTF-8, -16 or -32
  (`EventBody.iot_hub`), else undefined;
- IoT Hub's operators (arithmetic too) and its routing functions: type checks and `AS_NUMBER`, string
  and math functions.

Undefined works as IoT Hub's docs say: an undefined operand (a property or body path the message does
not have, a body IoT Hub would not read, a type mismatch) makes a comparison or function undefined,
`NOT` of undefined is undefined, `AND`/`OR` are three-valued (`false AND undefined` is false, `true OR
undefined` true), and a query that is not `true` at the end routes nothing. Parsed once when the table
loads, into closures over `routing.routes.filters`' scope; top-level conjuncts are indexed as Digital
Twins filters are. Pure logic: no I/O. The grammar and its differences are in docs/FILTERS.md.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

from routing.routes.filters import (
    FLIPPED,
    INDEX_PREFERENCE,
    MISSING,
    Filter,
    FilterLanguage,
    FilterSyntaxError,
    IndexKey,
    Operand,
    Scope,
    Value,
    is_number,
    member,
)

UNDEFINED: Final = MISSING

# IoT Hub's query keyword (lower-cased) -> the system property's name as an Event Hubs consumer reads
# it (IoT Hub's "System Property Names" table, Event Hubs column). Looked up ignoring case; the keyword
# itself is tried next (Storage's spelling, `connectionDeviceId`).
SYSTEM_PROPERTIES: Final = {
    "messageid": "message-id",
    "correlationid": "correlation-id",
    "userid": "user-id",
    "to": "to",
    "expirytimeutc": "absolute-expiry-time",
    "enqueuedtime": "iothub-enqueuedtime",
    "connectiondeviceid": "iothub-connection-device-id",
    "connectionmoduleid": "iothub-connection-module-id",
    "connectiondevicegenerationid": "iothub-connection-auth-generation-id",
    "connectionauthmethod": "iothub-connection-auth-method",
    "contenttype": "content-type",
    "contentencoding": "content-encoding",
    "dt-dataschema": "dt-dataschema",
    "dt-subject": "dt-subject",
}
# System properties that hold a time: compared with a string as times (`$enqueuedTime > '2022-06-06T22:56:06Z'`).
_TIMES = frozenset({"iothub-enqueuedtime", "absolute-expiry-time", "iothub-creation-time-utc"})


# --- tokens --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "str", "num", "name", "op", "punct", "end"
    text: str
    pos: int
    value: Any = None


# Names may hold `-` (IoT Hub's own: `$dt-dataschema`, `iothub-creation-time-utc`), so a subtraction
# needs spaces around its `-`.
_LEXEME = re.compile(
    r"""(?P<ws>\s+)
    |(?P<hex>0[xX][0-9A-Fa-f]+)
    |(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*)
    |(?P<op><=|>=|<>|!=|=|<|>)
    |(?P<punct>[()\[\],.+\-*/%])""",
    re.VERBOSE,
)
_ESCAPES = {"'": "'", '"': '"', "\\": "\\"}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in "'\"":
            tokens.append(_string(text, pos))
            pos += len(tokens[-1].text)
            continue
        match = _LEXEME.match(text, pos)
        if match is None:
            raise FilterSyntaxError(f"unexpected {char!r} at position {pos + 1}", pos + 1)
        kind, lexeme = match.lastgroup or "", match.group()
        if kind == "hex":
            tokens.append(_Token("num", lexeme, pos, int(lexeme, 16)))
        elif kind == "num":
            number = float(lexeme) if any(c in lexeme for c in ".eE") else int(lexeme)
            tokens.append(_Token("num", lexeme, pos, number))
        elif kind != "ws":
            tokens.append(_Token(kind, lexeme, pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _string(text: str, start: int) -> _Token:
    """A string literal in either quote, with IoT Hub's escapes: \\' \\" \\\\ and \\uXXXX."""
    quote, at = text[start], start + 1
    parts: list[str] = []
    while at < len(text):
        char = text[at]
        if char == quote:
            return _Token("str", text[start : at + 1], start, "".join(parts))
        if char == "\\":
            escaped = text[at + 1 : at + 2]
            if escaped in _ESCAPES:
                parts.append(_ESCAPES[escaped])
                at += 2
                continue
            digits = text[at + 2 : at + 6]
            if escaped == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                parts.append(chr(int(digits, 16)))
                at += 6
                continue
            raise FilterSyntaxError(
                f"unknown escape '\\{escaped}' at position {at + 1}: IoT Hub allows \\' \\\" \\\\ and \\uXXXX", at + 1
            )
        parts.append(char)
        at += 1
    raise FilterSyntaxError(f"unterminated string starting at position {start + 1}", start + 1)


# --- values ----------------------------------------------------------------------------------------------


def _truth(value: Any) -> bool | None:
    """A condition's value: True, False, or None for undefined (anything but a boolean)."""
    return value if isinstance(value, bool) else None


def _and(tests: list[Value]) -> Value:
    def conjunction(s: Scope) -> Any:
        undefined = False
        for test in tests:
            truth = _truth(test(s))
            if truth is False:
                return False
            undefined = undefined or truth is None
        return UNDEFINED if undefined else True

    return conjunction


def _or(tests: list[Value]) -> Value:
    def disjunction(s: Scope) -> Any:
        undefined = False
        for test in tests:
            truth = _truth(test(s))
            if truth is True:
                return True
            undefined = undefined or truth is None
        return UNDEFINED if undefined else False

    return disjunction


def _not(test: Value) -> Value:
    def negation(s: Scope) -> Any:
        truth = _truth(test(s))
        return UNDEFINED if truth is None else not truth

    return negation


def as_time(value: Any) -> datetime | None:
    """A time as the router may hold one: RFC 3339 text (no offset: UTC), a datetime, or AMQP's
    milliseconds since the epoch (how IoT Hub annotates `iothub-enqueuedtime`)."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        return _parsed_time(value)
    if is_number(value):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


@lru_cache(maxsize=1024)
def _parsed_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _compare(op: str, left: Any, right: Any, times: bool = False) -> Any:
    """IoT Hub's comparison: undefined when either side is undefined or the two are of different JSON
    types (`'1' = 1`, `5 != null`); numbers as numbers, strings by code point, booleans and null by
    equality only; objects and arrays undefined. With `times`, both sides are compared as times."""
    if left is UNDEFINED or right is UNDEFINED:
        return UNDEFINED
    if times:
        left, right = as_time(left), as_time(right)
        if left is None or right is None:
            return UNDEFINED
    elif is_number(left) and is_number(right):
        pass
    elif type(left) is not type(right):
        return UNDEFINED
    elif isinstance(left, bool) or left is None:
        if op not in ("=", "!="):
            return UNDEFINED
    elif not isinstance(left, str):
        return UNDEFINED  # objects and arrays
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _arithmetic(op: str, left: Any, right: Any) -> Any:
    if not (is_number(left) and is_number(right)):
        return UNDEFINED
    try:
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if op == "/":
            return left / right
        return math.fmod(left, right)  # the sign of the dividend, as SQL's %
    except (ZeroDivisionError, ValueError, OverflowError):
        return UNDEFINED


def _number_function(compute: Callable[..., Any]) -> Callable[..., Any]:
    def function(*args: Any) -> Any:
        if not all(is_number(arg) for arg in args):
            return UNDEFINED
        try:
            result = compute(*args)
        except (ValueError, OverflowError, ZeroDivisionError):
            return UNDEFINED
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            return UNDEFINED
        return result

    return function


def _string_function(compute: Callable[..., Any]) -> Callable[..., Any]:
    def function(*args: Any) -> Any:
        return compute(*args) if all(isinstance(arg, str) for arg in args) else UNDEFINED

    return function


_NUMBER_TEXT = re.compile(r"\s*-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\s*")


def _as_number(value: Any) -> Any:
    if is_number(value):
        return value
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        text = value.strip()
        return float(text) if any(c in text for c in ".eE") else int(text)
    return UNDEFINED


def _substring(text: Any, start: Any, length: Any = None) -> Any:
    if not isinstance(text, str) or not _whole(start) or (length is not None and not _whole(length)):
        return UNDEFINED
    begin = max(int(start), 0)
    return text[begin:] if length is None else text[begin : begin + max(int(length), 0)]


def _whole(value: Any) -> bool:
    return is_number(value) and float(value).is_integer()


def _sign(x: Any) -> int:
    return int(x > 0) - int(x < 0)


# name -> (fewest arguments, most (None: any), the function of the argument values)
_FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., Any]]] = {
    # Math
    "abs": (1, 1, _number_function(abs)),
    "exp": (1, 1, _number_function(math.exp)),
    "power": (2, 2, _number_function(math.pow)),
    "square": (1, 1, _number_function(lambda x: x * x)),
    "ceiling": (1, 1, _number_function(math.ceil)),
    "floor": (1, 1, _number_function(math.floor)),
    "sign": (1, 1, _number_function(_sign)),
    "sqrt": (1, 1, _number_function(math.sqrt)),
    # Type checking and casting: a type check is true or false, never undefined
    "as_number": (1, 1, _as_number),
    "is_array": (1, 1, lambda x: isinstance(x, list)),
    "is_bool": (1, 1, lambda x: isinstance(x, bool)),
    "is_defined": (1, 1, lambda x: x is not UNDEFINED),
    "is_null": (1, 1, lambda x: x is None),
    "is_number": (1, 1, is_number),
    "is_object": (1, 1, lambda x: isinstance(x, Mapping)),
    "is_primitive": (1, 1, lambda x: x is None or isinstance(x, str | bool | int | float)),
    "is_string": (1, 1, lambda x: isinstance(x, str)),
    # Strings
    "concat": (2, None, _string_function(lambda *parts: "".join(parts))),
    "length": (1, 1, _string_function(len)),
    "lower": (1, 1, _string_function(str.lower)),
    "upper": (1, 1, _string_function(str.upper)),
    "substring": (2, 3, _substring),
    "index_of": (2, 2, _string_function(str.find)),
    "starts_with": (2, 2, _string_function(str.startswith)),
    "ends_with": (2, 2, _string_function(str.endswith)),
    "contains": (2, 2, _string_function(str.__contains__)),
}
_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "null", "undefined"})
_OPERATORS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


# --- the parser ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    pos: int
    text: str
    value: Value
    path: bool = False  # a property or body path (what an index can look up)
    time: bool = False  # a system property holding a time
    literal: bool = False
    constant: Any = None
    prefix: IndexKey | None = None  # STARTS_WITH(path, 'literal')


def compile_iot_hub_query(text: str) -> Filter:
    """Parse and compile an IoT Hub routing query; raises `FilterSyntaxError` with the position."""
    parser = _Parser(text)
    try:
        value = parser.parse()
    except RecursionError:
        raise FilterSyntaxError("is nested too deeply (parentheses, NOT, functions)", 1) from None
    index = None
    if parser.conjuncts and not parser.top_level_or:
        index = min(parser.conjuncts, key=lambda k: INDEX_PREFERENCE[k.op])
    return Filter(
        text=text,
        needs_body=False,
        _test=lambda s: value(s) is True,
        index=index,
        language=FilterLanguage.IOT_HUB,
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.at = 0
        self.nesting = 0  # inside parentheses, NOT or a function: says nothing about the whole query
        self.top_level_or = False
        self.conjuncts: list[IndexKey] = []

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        if token.kind != "end":
            self.at += 1
        return token

    def is_word(self, token: _Token, word: str) -> bool:
        return token.kind == "name" and token.text.lower() == word

    def is_punct(self, token: _Token, text: str) -> bool:
        return token.kind == "punct" and token.text == text

    def unexpected(self, token: _Token, expected: str) -> FilterSyntaxError:
        what = "end of query" if token.kind == "end" else repr(token.text)
        return FilterSyntaxError(f"unexpected {what} at position {token.pos + 1}: {expected}", token.pos + 1)

    def expect(self, text: str, expected: str) -> None:
        token = self.take()
        if token.text != text or token.kind not in ("punct", "op"):
            raise self.unexpected(token, expected)

    def nested(self, parse: Callable[[], Any]) -> Any:
        self.nesting += 1
        try:
            return parse()
        finally:
            self.nesting -= 1

    # -- grammar: or > and > not > comparison > + - > * / % > unary - > primary

    def parse(self) -> Value:
        if self.peek().kind == "end":
            raise FilterSyntaxError("is empty: leave the filter out to route every event of the types", 1)
        node = self.disjunction()
        token = self.peek()
        if token.kind != "end":
            raise self.unexpected(token, "expected AND, OR, an operator or the end of the query")
        return node.value

    def disjunction(self) -> _Node:
        nodes = [self.conjunction()]
        while self.is_word(self.peek(), "or"):
            self.take()
            nodes.append(self.conjunction())
        if len(nodes) == 1:
            return nodes[0]
        if self.nesting == 0:
            self.top_level_or = True
        return _Node(nodes[0].pos, "OR", _or([n.value for n in nodes]))

    def conjunction(self) -> _Node:
        nodes = [self.negation()]
        while self.is_word(self.peek(), "and"):
            self.take()
            nodes.append(self.negation())
        return nodes[0] if len(nodes) == 1 else _Node(nodes[0].pos, "AND", _and([n.value for n in nodes]))

    def negation(self) -> _Node:
        token = self.peek()
        if self.is_word(token, "not"):
            self.take()
            inner: _Node = self.nested(self.negation)
            return _Node(token.pos, "NOT", _not(inner.value))
        return self.comparison()

    def comparison(self) -> _Node:
        left = self.additive()
        token = self.peek()
        if token.kind != "op":
            if left.prefix is not None and self.nesting == 0:
                self.conjuncts.append(left.prefix)
            return left
        self.take()
        op = _OPERATORS[token.text]
        right = self.additive()
        if self.nesting == 0:
            self.note_comparison(op, left, right)
        lv, rv, times = left.value, right.value, left.time or right.time
        return _Node(left.pos, token.text, lambda s: _compare(op, lv(s), rv(s), times))

    def note_comparison(self, op: str, left: _Node, right: _Node) -> None:
        if op not in FLIPPED:
            return
        if not left.path:
            left, right, op = right, left, FLIPPED[op]
        key = _index_key(op, left, right)
        if key is not None:
            self.conjuncts.append(key)

    def additive(self) -> _Node:
        node = self.multiplicative()
        while self.peek().kind == "punct" and self.peek().text in "+-":
            node = self.arithmetic(node, self.take().text, self.multiplicative())
        return node

    def multiplicative(self) -> _Node:
        node = self.unary()
        while self.peek().kind == "punct" and self.peek().text in "*/%":
            node = self.arithmetic(node, self.take().text, self.unary())
        return node

    def arithmetic(self, left: _Node, op: str, right: _Node) -> _Node:
        lv, rv = left.value, right.value
        return _Node(left.pos, f"{left.text} {op} {right.text}", lambda s: _arithmetic(op, lv(s), rv(s)))

    def unary(self) -> _Node:
        token = self.peek()
        if self.is_punct(token, "-"):
            self.take()
            if self.peek().kind == "num":
                number = -self.take().value
                return _Node(token.pos, f"-{number}", lambda _s: number, literal=True, constant=number)
            inner = self.unary().value
            return _Node(token.pos, "-(...)", lambda s: _arithmetic("-", 0, inner(s)))
        return self.primary()

    def primary(self) -> _Node:
        token = self.take()
        if self.is_punct(token, "("):
            inner: _Node = self.nested(self.disjunction)
            self.expect(")", f"expected ')' to close the '(' at position {token.pos + 1}")
            return _Node(token.pos, "(...)", inner.value)
        if token.kind in ("str", "num"):
            constant = token.value
            return _Node(token.pos, token.text, lambda _s: constant, literal=True, constant=constant)
        if token.kind != "name":
            raise self.unexpected(token, "expected a value, a property, $body or a function")
        word = token.text.lower()
        if word in ("true", "false"):
            truth = word == "true"
            return _Node(token.pos, word, lambda _s: truth)
        if word == "null":
            return _Node(token.pos, word, lambda _s: None, literal=True)
        if word == "undefined":
            return _Node(token.pos, word, lambda _s: UNDEFINED)
        if word in ("and", "or", "not"):
            raise self.unexpected(token, "expected a value, a property, $body or a function")
        if self.is_punct(self.peek(), "("):
            node: _Node = self.nested(lambda: self.function(token))
            return node
        return self.path(token)

    def function(self, name: _Token) -> _Node:
        word = name.text.lower()
        self.take()  # (
        spec = _FUNCTIONS.get(word)
        if spec is None:
            close = difflib.get_close_matches(word.upper(), [f.upper() for f in _FUNCTIONS], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise FilterSyntaxError(
                f"unknown function {name.text!r} at position {name.pos + 1}{hint}; IoT Hub's routing functions are "
                + ", ".join(f.upper() for f in _FUNCTIONS),
                name.pos + 1,
            )
        fewest, most, compute = spec
        args: list[_Node] = []
        if not self.is_punct(self.peek(), ")"):
            args.append(self.argument())
            while self.is_punct(self.peek(), ","):
                self.take()
                args.append(self.argument())
        close_token = self.peek()
        self.expect(")", "expected ',' or ')'")
        if len(args) < fewest or (most is not None and len(args) > most):
            takes = f"{fewest}" if fewest == most else f"{fewest} to {most}" if most else f"at least {fewest}"
            raise FilterSyntaxError(
                f"{name.text.upper()} takes {takes} argument{'s' if most != 1 else ''}, got {len(args)}, "
                f"at position {close_token.pos + 1}",
                close_token.pos + 1,
            )
        values = [arg.value for arg in args]
        if len(values) == 1:
            [only] = values
            node_value: Value = lambda s: compute(only(s))  # noqa: E731
        elif len(values) == 2:
            first, second = values
            node_value = lambda s: compute(first(s), second(s))  # noqa: E731
        else:
            node_value = lambda s: compute(*(v(s) for v in values))  # noqa: E731
        prefix = _index_key("starts_with", args[0], args[1]) if word == "starts_with" else None
        return _Node(name.pos, name.text.upper(), node_value, prefix=prefix)

    def argument(self) -> _Node:
        """A function argument: any expression (`IS_DEFINED($body.x)`, `LENGTH(x) = 2`)."""
        node: _Node = self.disjunction()
        return node

    def path(self, root: _Token) -> _Node:
        word = root.text.lower()
        if word == "$body":
            return self.body_path(root)
        if word == "$twin" or word.startswith("$twin."):
            raise FilterSyntaxError(
                f"device and module twin queries ($twin) are not supported, at position {root.pos + 1}: the router "
                "keeps no copy of twins; route on the message's properties and body (or enrich it in IoT Hub)",
                root.pos + 1,
            )
        if self.is_punct(self.peek(), ".") or self.is_punct(self.peek(), "["):
            token = self.peek()
            raise FilterSyntaxError(
                f"unexpected {token.text!r} at position {token.pos + 1}: {root.text} is a message property, a "
                "string; only $body has members",
                token.pos + 1,
            )
        if root.text.startswith("$"):
            name = root.text[1:]
            system = SYSTEM_PROPERTIES.get(name.lower(), name)
            candidates = (system, name) if system.lower() != name.lower() else (system,)
            own = root.text

            def system_property(s: Scope) -> Any:
                found = s.event.ingress.system_properties
                for candidate in candidates:
                    value = found.get(candidate)
                    if value is None:
                        value = member(found, candidate, True)
                    if value is not UNDEFINED and value is not None:
                        return value
                # IoT Hub: a `$name` it finds in no system property is looked for among application properties.
                return member(s.event.ingress.properties, own, True)

            return _Node(root.pos, root.text, system_property, path=True, time=system.lower() in _TIMES)
        name = root.text

        def application_property(s: Scope) -> Any:
            properties = s.event.ingress.properties
            value = properties.get(name)
            return member(properties, name, True) if value is None else value

        return _Node(root.pos, root.text, application_property, path=True, time=name.lower() in _TIMES)

    def body_path(self, root: _Token) -> _Node:
        if not self.is_punct(self.peek(), "."):
            token = self.peek()
            raise FilterSyntaxError(
                f"$body at position {root.pos + 1} needs a property ($body.Weather.Temperature): IoT Hub runs no "
                "query on the whole body or an index of it (`$body[0]` is undefined there)",
                root.pos + 1 if token.kind == "end" or not self.is_punct(token, "[") else token.pos + 1,
            )
        value: Value = lambda s: s.body.iot_hub()  # noqa: E731
        while True:
            token = self.peek()
            if self.is_punct(token, "."):
                self.take()
                key = self.take()
                if key.kind != "name":
                    raise self.unexpected(key, "expected a name after '.'")
                value = _member_step(value, key.text)
            elif self.is_punct(token, "["):
                self.take()
                index = self.take()
                if index.kind != "num" or not isinstance(index.value, int):
                    raise self.unexpected(index, "expected an array index (0, 1, ...)")
                self.expect("]", "expected ']'")
                value = _index_step(value, index.value)
            else:
                break
        end = self.tokens[self.at - 1]
        return _Node(root.pos, self.text[root.pos : end.pos + len(end.text)], value, path=True)


def _member_step(parent: Value, key: str) -> Value:
    return lambda s: member(parent(s), key, False)


def _index_step(parent: Value, index: int) -> Value:
    def step(s: Scope) -> Any:
        items = parent(s)
        return items[index] if isinstance(items, list) and index < len(items) else UNDEFINED

    return step


def _index_key(op: str, path: _Node, literal: _Node) -> IndexKey | None:
    """`path <op> literal` as an index key: a (non-time) path against a string or number."""
    constant = literal.constant
    if not (path.path and not path.time and literal.literal) or isinstance(constant, bool):
        return None
    if not isinstance(constant, str | int | float) or (op == "starts_with" and not isinstance(constant, str)):
        return None
    return IndexKey(Operand(path.text, False, path.value), op, constant)
