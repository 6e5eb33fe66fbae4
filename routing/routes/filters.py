"""Route filters: an endpoint's optional condition on an event, in the spirit of Digital Twins routes.

A filter is parsed once, when the route table loads, by a small recursive-descent parser into Python
closures; routing an event only calls them (user text is never `eval`ed, and never re-parsed per
event). A malformed filter is a `FilterSyntaxError` naming the character position, which the route
validator reports with every other problem. A compiled filter says whether it reads the body: a
telemetry body is parsed only then, at most once per event (`EventBody`), however many endpoints ask.
The grammar is documented in docs/FILTERS.md. Pure logic: nothing here does I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Final

import orjson

from routing.errors import RoutingError
from routing.model import DIGITAL_TWINS_EVENT_TYPES, RAW_TYPES, TELEMETRY_TYPES, Event


class _Missing(Enum):
    """An operand the event does not have: every comparison with it is false (as in Digital Twins)."""

    MISSING = 0


MISSING: Final = _Missing.MISSING
# Telemetry bodies are arbitrary bytes; the loader is a module attribute so tests can count its calls.
load_json: Callable[[bytes], Any] = orjson.loads


class FilterSyntaxError(RoutingError):
    """A filter that cannot be parsed; `position` is the 1-based character where the problem starts."""

    def __init__(self, message: str, position: int) -> None:
        self.position = position
        super().__init__(message)


class _NotJson(Enum):
    NOT_JSON = 0


NOT_JSON: Final = _NotJson.NOT_JSON
_UNSET: Final = object()


class EventBody:
    """An event's JSON body, read on first use and at most once per event.

    Digital Twins events already carry their parsed `data`, and so does telemetry that came inside a
    JSON envelope (a structured CloudEvent, an Event Grid event); other telemetry, and IoT Hub's other
    sources, are raw bytes, parsed here only when a filter asks for `$body` (and `NOT_JSON` when it is
    not JSON). IoT Hub routing queries see the message body only as IoT Hub does (`iot_hub`), sharing the
    one parse of UTF-8.
    """

    __slots__ = ("_event", "_iot_hub", "_raw", "_value")

    def __init__(self, event: Event) -> None:
        self._event = event
        self._value: Any = _UNSET
        self._raw: Any = _UNSET
        self._iot_hub: Any = _UNSET

    def get(self) -> Any:
        if self._value is _UNSET:
            event = self._event
            if event.event_type not in RAW_TYPES or event.data is not None:
                self._value = event.data
            else:
                self._value = self._raw_json()
        return self._value

    def iot_hub(self) -> Any:
        """The message body as an IoT Hub routing query sees it: JSON only when the message says it is
        (content type `application/json`, content encoding UTF-8, -16 or -32); `MISSING` otherwise."""
        if self._iot_hub is _UNSET:
            encoding = iot_hub_body_encoding(self._event.ingress.system_properties)
            if encoding is None:
                value: Any = MISSING
            elif encoding == "utf-8":
                value = self._raw_json()
            else:
                try:
                    value = load_json(self._event.ingress.body.decode(encoding).encode())
                except ValueError:  # UnicodeDecodeError is one
                    value = NOT_JSON
            self._iot_hub = MISSING if value is NOT_JSON else value
        return self._iot_hub

    def _raw_json(self) -> Any:
        if self._raw is _UNSET:
            try:
                self._raw = load_json(self._event.ingress.body)
            except ValueError:  # orjson.JSONDecodeError is one; so are bad UTF-8 bytes
                self._raw = NOT_JSON
        return self._raw


# IoT Hub evaluates a query on the body only for these encodings (Python's codec names).
_IOT_HUB_ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "utf-16": "utf-16", "utf-32": "utf-32"}


def iot_hub_body_encoding(system_properties: Mapping[str, Any]) -> str | None:
    """The encoding of a message body IoT Hub would query, or None when it would not query it.

    IoT Hub's routing query docs: the `contentType` system property must be `application/JSON` and
    `contentEncoding` UTF-8, UTF-16 or UTF-32; its message-format page names
    `application/json;charset=utf-8` too, so a charset parameter counts as the encoding when
    `content-encoding` is absent. Names and values are compared ignoring case.
    """
    content_type = _system(system_properties, "content-type")
    if not isinstance(content_type, str):
        return None
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        return None
    encoding = _system(system_properties, "content-encoding")
    if not isinstance(encoding, str):
        charset = [p.partition("=") for p in parameters.split(";")]
        encoding = next((value for key, _, value in charset if key.strip().lower() == "charset"), None)
    if not isinstance(encoding, str):
        return None
    return _IOT_HUB_ENCODINGS.get(encoding.strip().strip('"').lower())


def _system(system_properties: Mapping[str, Any], name: str) -> Any:
    value = system_properties.get(name)
    return member(system_properties, name, True) if value is None else value


class FilterLanguage(StrEnum):
    """How an endpoint's filter is written: a Digital Twins route filter (the default) or an IoT Hub
    message routing query."""

    DIGITAL_TWINS = "digitaltwins"
    IOT_HUB = "iothub"

    @classmethod
    def parse(cls, name: str) -> FilterLanguage | None:
        """`DigitalTwins`, `IoTHub`, `iot-hub`, ...: case, spaces, `-` and `_` aside."""
        return _LANGUAGES.get(re.sub(r"[\s_\-]", "", name).lower())


_LANGUAGES = {language.value: language for language in FilterLanguage}


@dataclass(frozen=True, slots=True)
class Scope:
    event: Event
    body: EventBody
    names: Mapping[str, Any]  # ANY/ALL element variables in scope


Test = Callable[[Scope], bool]
Value = Callable[[Scope], Any]


@dataclass(frozen=True, slots=True)
class IndexKey:
    """A filter's top-level conjunct `path <op> literal` (op one of = < <= > >=, or STARTS_WITH(path,
    'literal')): the filter can only pass for an event whose `path` value satisfies it, so a route table
    can find the endpoints an event could reach by the path's value (a dictionary, a sorted list, its
    prefixes) instead of testing every filter: 1,000 per-device routes cost one look-up, not 1,000 tests.
    """

    operand: Operand  # the path
    op: str  # "=", "<", "<=", ">", ">=" (path on the left), or "starts_with"
    key: str | int | float

    @property
    def path(self) -> str:
        return self.operand.text


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter. Two filters are equal when their text and language are: what round-trips."""

    text: str
    # A Digital Twins filter reading `$body` is false for a body that is not JSON; an IoT Hub query
    # decides that per condition (an undefined `$body` path), so it never sets this.
    needs_body: bool = field(compare=False)
    _test: Test = field(compare=False, repr=False)
    # Set when the filter is `path = literal AND ...` (no OR at the top): what an index can use.
    index: IndexKey | None = field(default=None, compare=False)
    language: FilterLanguage = FilterLanguage.DIGITAL_TWINS

    def matches(self, event: Event, body: EventBody | None = None) -> bool:
        """Whether `event` passes; pass one `EventBody` per event to every filter so it is parsed once."""
        if body is None:
            body = EventBody(event)
        if self.needs_body and body.get() is NOT_JSON:
            return False
        return self._test(Scope(event, body, {}))


def compile_filter(text: str) -> Filter:
    """Parse and compile a filter; raises `FilterSyntaxError` with the position of the first problem."""
    parser = _Parser(text)
    try:
        test = parser.parse()
    except RecursionError:  # thousands of nested parentheses: refuse it here, not per event
        raise FilterSyntaxError("is nested too deeply (parentheses, NOT, ANY/ALL)", 1) from None
    index = None
    if parser.conjuncts and not parser.top_level_or:
        # The most selective kind first: an equality, then a prefix, then a range.
        index = min(parser.conjuncts, key=lambda k: INDEX_PREFERENCE[k.op])
    return Filter(text=text, needs_body=parser.needs_body, _test=test, index=index)


@dataclass(frozen=True, slots=True)
class Operand:
    """A compiled path on an event (`$body.DeviceId`, `subject`, `$properties.site`): where an order
    key template or an enrichment takes its value. `MISSING` when the event does not have it."""

    text: str
    needs_body: bool = field(compare=False)
    _value: Value = field(compare=False, repr=False)

    def value(self, event: Event, body: EventBody | None = None) -> Any:
        if body is None:
            body = EventBody(event)
        if self.needs_body and body.get() is NOT_JSON:
            return MISSING
        return self._value(Scope(event, body, {}))


def compile_operand(text: str, start: int = 0, stop: int | None = None) -> Operand:
    """Parse one path (of `text[start:stop]`); raises `FilterSyntaxError` positioned in `text`."""
    parser = _Parser(text, start, stop)
    token = parser.take()
    if token.kind == "end":
        raise FilterSyntaxError(f"expected a path at position {token.pos + 1}; {_ROOT_HELP}", token.pos + 1)
    if token.kind != "name" or token.text.lower() in _KEYWORDS or parser.peek().text == "(":
        raise parser.unexpected(token, f"expected a path; {_ROOT_HELP}")
    try:
        node = parser.path(token)
    except RecursionError:
        raise FilterSyntaxError("is nested too deeply", token.pos + 1) from None
    end = parser.peek()
    if end.kind != "end":
        raise parser.unexpected(end, "expected the end of the path")
    assert node.value is not None
    return Operand(text=node.text, needs_body=parser.needs_body, _value=node.value)


# --- tokens --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "str", "num", "name", "op", "punct", "end"
    text: str
    pos: int  # 0-based offset into the filter
    value: Any = None


_LEXEME = re.compile(
    r"""(?P<ws>\s+)
    |(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op><=|>=|<>|!=|=|<|>)
    |(?P<punct>[()\[\],.\-])""",
    re.VERBOSE,
)


def _tokenize(text: str, start: int = 0, stop: int | None = None) -> list[_Token]:
    """The tokens of `text[start:stop]`, positioned in the whole of `text` (a template's placeholder
    is tokenized in place, so its errors name positions in the template)."""
    tokens: list[_Token] = []
    pos = start
    end_at = len(text) if stop is None else stop
    text = text[:end_at]
    while pos < end_at:
        char = text[pos]
        if char in "'\"":
            # SQL-style quoting: the quote character doubled stands for itself.
            end, parts = pos + 1, []
            while True:
                close = text.find(char, end)
                if close < 0:
                    raise FilterSyntaxError(f"unterminated string starting at position {pos + 1}", pos + 1)
                parts.append(text[end:close])
                if text.startswith(char, close + 1):
                    parts.append(char)
                    end = close + 2
                    continue
                tokens.append(_Token("str", text[pos : close + 1], pos, "".join(parts)))
                pos = close + 1
                break
            continue
        match = _LEXEME.match(text, pos)
        if match is None:
            raise FilterSyntaxError(f"unexpected {char!r} at position {pos + 1}", pos + 1)
        kind = match.lastgroup or ""
        lexeme = match.group()
        if kind == "num":
            number = float(lexeme) if any(c in lexeme for c in ".eE") else int(lexeme)
            tokens.append(_Token(kind, lexeme, pos, number))
        elif kind != "ws":
            tokens.append(_Token(kind, lexeme, pos))
        pos = match.end()
    tokens.append(_Token("end", "", end_at))
    return tokens


# --- evaluation helpers -------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(op: str, left: Any, right: Any) -> bool:
    """Digital Twins-like comparison: missing operands and different types never compare (all false),
    except that null equals only null; numbers compare as numbers, strings by code point."""
    if left is MISSING or right is MISSING:
        return False
    if left is None or right is None:
        if op == "=":
            return left is None and right is None
        if op == "!=":
            return (left is None) != (right is None)
        return False
    if is_number(left) and is_number(right):
        pass
    elif type(left) is not type(right):
        return False
    elif not isinstance(left, str) and op not in ("=", "!="):
        return False  # bools, objects and arrays have equality, not order
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


def member(value: Any, key: str, fold_case: bool) -> Any:
    """`value[key]` when `value` is an object that has it (the name matched ignoring case if asked), else `MISSING`."""
    if not isinstance(value, Mapping):
        return MISSING
    if key in value:
        return value[key]
    if fold_case:
        # Producers vary the case of property names (as classification allows).
        lowered = key.lower()
        for name, item in value.items():
            if isinstance(name, str) and name.lower() == lowered:
                return item
    return MISSING


def _index(value: Any, index: int) -> Any:
    return value[index] if isinstance(value, list) and index < len(value) else MISSING


def _text_of(value: Any) -> Any:
    return value if value else MISSING


# --- the parser ---------------------------------------------------------------------------------------

CLOUD_EVENTS_VERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"


def _content_type(scope: Scope) -> Any:
    """A Digital Twins notification's data is JSON (Digital Twins documents `application/json`); other
    events have the content type they came with: the CloudEvents attribute, else the message's."""
    event = scope.event
    if event.datacontenttype:
        return event.datacontenttype
    if event.event_type in DIGITAL_TWINS_EVENT_TYPES and event.event_type not in TELEMETRY_TYPES:
        return JSON_CONTENT_TYPE
    content_type = event.ingress.system_properties.get("content-type")
    return content_type if isinstance(content_type, str) and content_type else MISSING


_ROOTS: dict[str, Value] = {
    "type": lambda s: s.event.event_type.value,
    "subject": lambda s: _text_of(s.event.subject),
    "source": lambda s: _text_of(s.event.source),
    "id": lambda s: s.event.event_id or s.event.message_id,
    "dataschema": lambda s: _text_of(s.event.dataschema),
    "datacontenttype": _content_type,
    # Every Digital Twins event is a CloudEvent 1.0 (classification refuses other versions); IoT Hub's
    # messages are no CloudEvents.
    "specversion": lambda s: CLOUD_EVENTS_VERSION if s.event.event_type in DIGITAL_TWINS_EVENT_TYPES else MISSING,
}
# `$subject` and friends too: order keys and enrichments write paths with a `$`, as IoT Hub's do.
_ROOTS.update({"$" + name: value for name, value in list(_ROOTS.items())})
_ROOT_HELP = (
    "expected type, subject, source, id, dataschema, datacontenttype, specversion, $body, $properties or $system"
)
_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "null"})
_STRING_FUNCTIONS: dict[str, Callable[[str, str], bool]] = {
    "starts_with": str.startswith,
    "ends_with": str.endswith,
    "contains": str.__contains__,
}
_FUNCTIONS = (*_STRING_FUNCTIONS, "is_defined", "any", "all")
_OPERATORS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass(frozen=True, slots=True)
class _Node:
    """A parsed operand: a condition (`test` set) or a value (`value` set; `path` when it names one)."""

    pos: int
    text: str
    value: Value | None = None
    test: Test | None = None
    path: bool = False
    literal: bool = False
    needs_body: bool = False
    constant: Any = None  # a string or number literal's value
    prefix: IndexKey | None = None  # STARTS_WITH(path, 'literal'), which an index can use


FLIPPED = {"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
INDEX_PREFERENCE = {"=": 0, "starts_with": 1, "<": 2, "<=": 2, ">": 2, ">=": 2}


def _index_key(op: str, path: _Node, literal: _Node) -> IndexKey | None:
    """`path <op> literal` as an index key, when it is one: a path against a string or number."""
    constant = literal.constant
    if not (path.path and literal.literal and isinstance(constant, str | int | float)) or isinstance(constant, bool):
        return None
    if op == "starts_with" and not isinstance(constant, str):
        return None
    assert path.value is not None
    return IndexKey(Operand(path.text, path.needs_body, path.value), op, constant)


def _as_value(node: _Node) -> Value:
    if node.value is not None:
        return node.value
    test = node.test
    assert test is not None
    return test


class _Parser:
    def __init__(self, text: str, start: int = 0, stop: int | None = None) -> None:
        self.text = text
        self.tokens = _tokenize(text, start, stop)
        self.at = 0
        self.needs_body = False
        self.names: list[str] = []  # ANY/ALL variables, innermost last
        # Inside parentheses, NOT or a function, a comparison says nothing about the whole filter.
        self.nesting = 0
        self.top_level_or = False
        self.conjuncts: list[IndexKey] = []

    # -- token helpers

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        if token.kind != "end":
            self.at += 1
        return token

    def is_word(self, token: _Token, word: str) -> bool:
        return token.kind == "name" and token.text.lower() == word

    def unexpected(self, token: _Token, expected: str) -> FilterSyntaxError:
        what = "end of filter" if token.kind == "end" else repr(token.text)
        return FilterSyntaxError(f"unexpected {what} at position {token.pos + 1}: {expected}", token.pos + 1)

    def expect(self, text: str, expected: str) -> _Token:
        token = self.take()
        if token.text != text or token.kind not in ("punct", "op"):
            raise self.unexpected(token, expected)
        return token

    # -- grammar

    def parse(self) -> Test:
        if self.peek().kind == "end":
            raise FilterSyntaxError("is empty: leave the filter out to route every event of the types", 1)
        test = self.condition()
        token = self.peek()
        if token.kind != "end":
            raise self.unexpected(token, "expected AND, OR or the end of the filter")
        return test

    def condition(self) -> Test:
        """or := and ('OR' and)*"""
        tests = [self.conjunction()]
        while self.is_word(self.peek(), "or"):
            self.take()
            tests.append(self.conjunction())
        if len(tests) == 1:
            return tests[0]
        if self.nesting == 0:
            self.top_level_or = True
        return lambda s: any(t(s) for t in tests)

    def conjunction(self) -> Test:
        """and := not ('AND' not)*"""
        tests = [self.negation()]
        while self.is_word(self.peek(), "and"):
            self.take()
            tests.append(self.negation())
        if len(tests) == 1:
            return tests[0]
        return lambda s: all(t(s) for t in tests)

    def negation(self) -> Test:
        """not := 'NOT' not | comparison"""
        if self.is_word(self.peek(), "not"):
            self.take()
            self.nesting += 1
            try:
                inner = self.negation()
            finally:
                self.nesting -= 1
            return lambda s: not inner(s)
        return self.comparison()

    def comparison(self) -> Test:
        """comparison := operand (op operand)?  — an operand alone must be a condition."""
        left = self.operand()
        token = self.peek()
        if token.kind == "op":
            self.take()
            op = _OPERATORS[token.text]
            right = self.operand()
            lv, rv = _as_value(left), _as_value(right)
            if self.nesting == 0:
                self._note_comparison(op, left, right)
            return lambda s: _compare(op, lv(s), rv(s))
        if left.test is not None:
            if left.prefix is not None and self.nesting == 0:
                self.conjuncts.append(left.prefix)
            return left.test
        if left.path:
            value = left.value
            assert value is not None
            # A bare path is a condition when it holds JSON true (`$body.alarm`).
            return lambda s: value(s) is True
        raise FilterSyntaxError(
            f"expected a condition at position {left.pos + 1}, got {left.text}: compare it with = != < <= > >=",
            left.pos + 1,
        )

    def _note_comparison(self, op: str, left: _Node, right: _Node) -> None:
        if op not in FLIPPED:
            return  # != says too little to index by
        if not left.path:
            left, right, op = right, left, FLIPPED[op]  # 3 < $body.x is $body.x > 3
        key = _index_key(op, left, right)
        if key is not None:
            self.conjuncts.append(key)

    def operand(self) -> _Node:
        token = self.take()
        if token.kind == "punct" and token.text == "(":
            self.nesting += 1
            try:
                test = self.condition()
            finally:
                self.nesting -= 1
            self.expect(")", "expected ')' to close the '(' at position " + str(token.pos + 1))
            return _Node(token.pos, "(...)", test=test)
        if token.kind == "str":
            constant = token.value
            return _Node(
                token.pos, f"the string {token.text}", value=lambda _s: constant, literal=True, constant=constant
            )
        if token.kind == "num":
            number = token.value
            return _Node(token.pos, f"the number {token.text}", value=lambda _s: number, literal=True, constant=number)
        if token.kind == "punct" and token.text == "-" and self.peek().kind == "num":
            negative = -self.take().value
            return _Node(
                token.pos, f"the number -{negative}", value=lambda _s: negative, literal=True, constant=negative
            )
        if token.kind != "name":
            raise self.unexpected(token, "expected a value, a path or a condition")
        word = token.text.lower()
        if word in ("true", "false"):
            truth = word == "true"
            return _Node(token.pos, word, test=lambda _s: truth)
        if word == "null":
            return _Node(token.pos, "null", value=lambda _s: None, literal=True)
        if word in ("and", "or", "not"):
            raise self.unexpected(token, "expected a value, a path or a condition")
        if self.peek().kind == "punct" and self.peek().text == "(":
            self.nesting += 1
            try:
                return self.function(token)
            finally:
                self.nesting -= 1
        return self.path(token)

    def function(self, name: _Token) -> _Node:
        word = name.text.lower()
        pos = name.pos
        self.take()  # (
        if word in _STRING_FUNCTIONS:
            first = self.operand()
            self.expect(",", f"{name.text.upper()} takes 2 arguments: expected ','")
            second = self.operand()
            self.expect(")", f"{name.text.upper()} takes 2 arguments: expected ')'")
            check = _STRING_FUNCTIONS[word]
            a, b = _as_value(first), _as_value(second)

            def string_test(s: Scope) -> bool:
                x, y = a(s), b(s)
                return isinstance(x, str) and isinstance(y, str) and check(x, y)

            prefix = _index_key("starts_with", first, second) if word == "starts_with" else None
            return _Node(pos, name.text, test=string_test, prefix=prefix)
        if word == "is_defined":
            target = self.operand()
            if not target.path:
                raise FilterSyntaxError(
                    f"IS_DEFINED needs a path (like $body.Value) at position {target.pos + 1}", target.pos + 1
                )
            self.expect(")", "IS_DEFINED takes 1 argument: expected ')'")
            value = _as_value(target)
            return _Node(pos, name.text, test=lambda s: value(s) is not MISSING)
        if word in ("any", "all"):
            return self.quantifier(name)
        close = difflib.get_close_matches(word.upper(), [f.upper() for f in _FUNCTIONS], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise FilterSyntaxError(
            f"unknown function {name.text!r} at position {pos + 1}{hint}; expected one of "
            + ", ".join(f.upper() for f in _FUNCTIONS),
            pos + 1,
        )

    def quantifier(self, name: _Token) -> _Node:
        """ANY(<array path>, <name>, <condition on name>) and ALL(...)."""
        label = name.text.upper()
        array = self.operand()
        if not array.path:
            raise FilterSyntaxError(
                f"{label} needs an array path (like $body.Readings) at position {array.pos + 1}", array.pos + 1
            )
        self.expect(",", f"{label} takes 3 arguments: expected ','")
        variable = self.take()
        word = variable.text.lower()
        if variable.kind != "name" or variable.text.startswith("$") or word in _KEYWORDS or word in _ROOTS:
            raise self.unexpected(variable, f"{label} needs a name for the element, like r")
        if variable.text in self.names:
            raise FilterSyntaxError(
                f"{variable.text!r} is already the element of an outer ANY/ALL at position {variable.pos + 1}",
                variable.pos + 1,
            )
        self.expect(",", f"{label} takes 3 arguments: expected ','")
        self.names.append(variable.text)
        try:
            test = self.condition()
        finally:
            self.names.pop()
        self.expect(")", f"{label} takes 3 arguments: expected ')'")
        items, bound, every = _as_value(array), variable.text, label == "ALL"

        def quantified(s: Scope) -> bool:
            values = items(s)
            if not isinstance(values, list):
                return False  # missing or not an array: false for ANY and ALL alike
            scopes = (Scope(s.event, s.body, {**s.names, bound: item}) for item in values)
            return all(test(x) for x in scopes) if every else any(test(x) for x in scopes)

        return _Node(name.pos, label, test=quantified)

    def path(self, root: _Token) -> _Node:
        word = root.text.lower()
        reads_body = False
        value: Value
        fold_case = False
        needs_segment = False
        if root.text in self.names:
            bound = root.text
            value = lambda s: s.names.get(bound, MISSING)  # noqa: E731
        elif word in _ROOTS:
            value = _ROOTS[word]
        elif word == "$body":
            self.needs_body = reads_body = True
            value = lambda s: s.body.get()  # noqa: E731
        elif word in ("$properties", "$system"):
            fold_case = needs_segment = True
            if word == "$properties":
                value = lambda s: s.event.ingress.properties  # noqa: E731
            else:
                value = lambda s: s.event.ingress.system_properties  # noqa: E731
        elif word in ("properties", "system"):
            raise FilterSyntaxError(
                f"unknown operand {root.text!r} at position {root.pos + 1}: write ${word}.<name> or ${word}['<name>']",
                root.pos + 1,
            )
        else:
            raise FilterSyntaxError(
                f"unknown operand {root.text!r} at position {root.pos + 1}; {_ROOT_HELP}", root.pos + 1
            )
        segments = 0
        while True:
            token = self.peek()
            if token.kind != "punct" or token.text not in ".[":
                break
            self.take()
            if token.text == ".":
                key = self.take()
                if key.kind != "name":  # `$metadata` too: `$body.$metadata.$model`, as Digital Twins writes it
                    raise self.unexpected(key, "expected a name after '.'")
                value = _key_step(value, key.text, fold_case)
            else:
                key = self.take()
                if key.kind == "str":
                    value = _key_step(value, key.value, fold_case)
                elif key.kind == "num" and isinstance(key.value, int):
                    value = _index_step(value, key.value)
                else:
                    raise self.unexpected(key, "expected a quoted name or an array index (0, 1, ...)")
                self.expect("]", "expected ']'")
            fold_case = False  # only the property name itself is case-insensitive
            segments += 1
        if needs_segment and not segments:
            raise FilterSyntaxError(
                f"{root.text} needs a name at position {root.pos + 1}: {root.text}.Name or {root.text}['odd-name']",
                root.pos + 1,
            )
        end = self.tokens[self.at - 1]
        text = self.text[root.pos : end.pos + len(end.text)]
        return _Node(root.pos, text, value=value, path=True, needs_body=reads_body)


def _key_step(parent: Value, key: str, fold_case: bool) -> Value:
    return lambda s: member(parent(s), key, fold_case)


def _index_step(parent: Value, index: int) -> Value:
    return lambda s: _index(parent(s), index)
