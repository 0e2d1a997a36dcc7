"""Built-in reward functions and the resolver that turns a ``reward.functions[i]`` entry into a callable.

Every reward function, built-in or user-written, has the signature::

    fn(data_source, solution_str, ground_truth, extra_info, **kwargs) -> float

``kwargs`` are the entry's ``kwargs`` from the config. A function may also declare, by name, any of the
*context parameters* in ``CONTEXT_PARAMETERS`` (``response_length`` in tokens, ``max_response_length``,
``finish_reason``, ``prompt`` = the rendered prompt text); the scorer fills those it finds in the signature
and passes nothing else, so a plain four-argument function keeps working and a function that needs the
token length (the overlong penalty) does not have to re-tokenize the text.

This module is imported inside the scorer's child process, so it stays light: standard library only.
Built-ins are named in ``BUILTINS`` by import path and imported when ``resolve`` selects one, so that
importing this module does not load the ``code_exec`` sandbox.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from grpo_dist.reward.trajectory_rewards import check_env_reward

__all__ = [
    "BUILTINS",
    "CONTEXT_PARAMETERS",
    "EXTRACT_MODES",
    "FunctionSpec",
    "RewardFunctionLike",
    "context_parameters",
    "exact_match",
    "extract_answer",
    "format_reward",
    "overlong",
    "parse_number",
    "resolve",
]

CONTEXT_PARAMETERS: tuple[str, ...] = (
    "response_length",
    "max_response_length",
    "finish_reason",
    "prompt",
    "trajectory",
)
"""Names a reward function may declare to receive per-sample context from the scorer."""

EXTRACT_MODES: tuple[str, ...] = ("auto", "boxed", "hash", "last_number", "full")
"""Values of ``exact_match``'s ``extract`` kwarg."""

_POSITIONAL = ("data_source", "solution_str", "ground_truth", "extra_info")


class RewardFunctionLike(Protocol):
    """What ``resolve`` reads from a function entry: ``RewardFunctionConfig`` or a ``FunctionSpec``."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str | None: ...

    @property
    def kwargs(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class FunctionSpec:
    """A plain-Python copy of a ``RewardFunctionConfig``.

    The scorer sends these (not the pydantic models) to its child process so the child never has to
    import the config machinery just to look up a function.
    """

    name: str
    path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    batched: bool = False


# --------------------------------------------------------------------------------------------------------
# Answer extraction
# --------------------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# An integer part with optional thousands separators, an optional decimal part; or a bare decimal part.
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(rf"[+-]?(?:{_NUM})")
_FRACTION_RE = re.compile(r"([+-]?)(\d+)\s*/\s*(\d+)")
_CURRENCY_RE = re.compile(r"([+-]?)\$\s*(.+)")
_LATEX_FRAC_RE = re.compile(r"([+-]?)\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
# A number inside running text: not glued to a preceding word, digit or dot ("x2", "3-5" -> "5").
_NUMBER_IN_TEXT_RE = re.compile(rf"(?<![\w.])[+-]?(?:{_NUM})(?:\s*/\s*\d+)?")


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (braces matched, so ``\\boxed{\\frac{1}{2}}`` works).

    A regex cannot match nested braces, hence the scan. A truncated box (generation cut off before its
    closing brace) is skipped in favour of an earlier complete one.
    """
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            return text[match.end() : i - 1].strip()
    return None


def _after_hash(text: str) -> str | None:
    """The first non-empty line after the last ``####`` (GSM8K's answer marker), or None without one.

    Only the first line: a model often keeps talking after its ``#### 42``.
    """
    if "####" not in text:
        return None
    rest = text.rsplit("####", 1)[1].strip()
    return rest.splitlines()[0].strip() if rest else ""


def _last_number(text: str) -> str | None:
    matches = _NUMBER_IN_TEXT_RE.findall(text)
    return matches[-1] if matches else None


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """The answer part of ``text`` per ``mode`` (see ``EXTRACT_MODES``); None when there is none.

    ``auto``: the last ``\\boxed{}``, else what follows the last ``####``, else the whole stripped text.
    ``boxed`` / ``hash`` / ``last_number`` use only that rule (None when absent); ``full`` is the stripped text.
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extract_answer: mode = {mode!r}; expected one of {list(EXTRACT_MODES)}")
    if mode == "full":
        return text.strip()
    if mode == "last_number":
        return _last_number(text)
    boxed = _last_boxed(text) if mode in ("auto", "boxed") else None
    if boxed is not None or mode == "boxed":
        return boxed
    hashed = _after_hash(text)
    if hashed is not None or mode == "hash":
        return hashed
    return text.strip()


def _clean(answer: str) -> str:
    """Drop decoration that does not change an answer: math-mode ``$...$`` and a sentence's final period."""
    s = answer.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s.removesuffix(".").strip()


def parse_number(text: str) -> Fraction | None:
    """``text`` as an exact number, or None when it is not one.

    Accepts a leading sign, thousands commas (``1,234.5``), decimals, ``a/b`` and ``\\frac{a}{b}``, and a
    leading ``$`` (GSM8K answers are often amounts). Fractions keep the value exact so ``0.5 == 1/2`` and
    large integers compare without float rounding.
    """
    s = _clean(text)
    currency = _CURRENCY_RE.fullmatch(s)
    if currency:
        s = currency.group(1) + currency.group(2)
    if _NUMBER_RE.fullmatch(s):
        return Fraction(s.replace(",", ""))
    for pattern in (_FRACTION_RE, _LATEX_FRAC_RE):
        m = pattern.fullmatch(s)
        if m and int(m.group(3)) != 0:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) == "-" else value
    return None


def _numbers_equal(a: Fraction, b: Fraction, tolerance: float) -> bool:
    """Integers compare exactly (a relative tolerance would equate 1000000 and 1000001); other values
    within ``tolerance`` relative to the larger magnitude (at least 1)."""
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return abs(float(a - b)) <= tolerance * max(1.0, abs(float(a)), abs(float(b)))


def _normalise_text(text: str, case_sensitive: bool) -> str:
    s = " ".join(_clean(text).split())
    return s if case_sensitive else s.casefold()


# --------------------------------------------------------------------------------------------------------
# Built-in reward functions
# --------------------------------------------------------------------------------------------------------


def exact_match(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | None,
    extra_info: Mapping[str, Any] | None,
    *,
    extract: str = "auto",
    case_sensitive: bool = False,
    tolerance: float = 1e-6,
) -> float:
    """1.0 when the answer extracted from ``solution_str`` equals the ground truth, else 0.0.

    The answer is extracted per ``extract`` (see ``extract_answer``); the ground truth always with ``auto``,
    so a GSM8K-style ``"... #### 42"`` or a MATH-style ``\\boxed{..}`` reference works as well as ``"42"``.
    When both sides parse as numbers (``parse_number``) they are compared numerically, otherwise as text
    with whitespace collapsed (and case folded unless ``case_sensitive``). No answer found scores 0.0.
    """
    del data_source, extra_info  # part of the common signature; not needed here
    if ground_truth is None:
        raise ValueError("exact_match: ground_truth is None; the dataset row needs a 'ground_truth' value")
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        ground_truth = str(ground_truth)  # a parquet column of numbers
    if not isinstance(ground_truth, str):
        raise ValueError(f"exact_match: ground_truth must be a string, got {type(ground_truth).__name__}")
    if not isinstance(solution_str, str):
        raise ValueError(f"exact_match: solution_str must be a string, got {type(solution_str).__name__}")
    reference = extract_answer(ground_truth, "auto")
    assert reference is not None  # "auto" always falls back to the whole text
    if not _clean(reference):
        raise ValueError(f"exact_match: ground_truth {ground_truth!r} holds no answer")
    answer = extract_answer(solution_str, extract)
    if answer is None or not _clean(answer):
        return 0.0
    a, b = parse_number(answer), parse_number(reference)
    if a is not None and b is not None:
        return 1.0 if _numbers_equal(a, b, tolerance) else 0.0
    return 1.0 if _normalise_text(answer, case_sensitive) == _normalise_text(reference, case_sensitive) else 0.0


def format_reward(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | None,
    extra_info: Mapping[str, Any] | None,
    *,
    pattern: str,
    fullmatch: bool = False,
) -> float:
    """1.0 when ``solution_str`` matches the regex ``pattern`` (anywhere, or whole with ``fullmatch``).

    Registered as the built-in ``format``. Regex flags go inline, e.g. ``(?s)<think>.*</think>``.
    """
    del data_source, ground_truth, extra_info
    matcher = re.fullmatch if fullmatch else re.search
    return 1.0 if matcher(pattern, solution_str) else 0.0


def overlong(
    data_source: str | None,
    solution_str: str,
    ground_truth: str | None,
    extra_info: Mapping[str, Any] | None,
    *,
    response_length: int,
    max_response_length: int,
    buffer_len: int,
    penalty: float = 1.0,
) -> float:
    """DAPO's soft overlong punishment: a penalty that ramps up over the last ``buffer_len`` tokens.

    With L = ``max_response_length`` and B = ``buffer_len``: 0 while ``response_length <= L - B``, then
    ``(L - B - response_length) / B * penalty`` (linear from 0 to ``-penalty``) up to L, ``-penalty`` beyond.
    A graded penalty instead of a cliff at L gives the policy a signal before its answers get truncated.
    ``response_length`` and ``max_response_length`` are context parameters the scorer fills.
    """
    del data_source, solution_str, ground_truth, extra_info
    if isinstance(buffer_len, bool) or not isinstance(buffer_len, int) or not 1 <= buffer_len <= max_response_length:
        raise ValueError(
            f"overlong: buffer_len = {buffer_len!r} must be an integer in 1..max_response_length "
            f"({max_response_length})"
        )
    if isinstance(response_length, bool) or not isinstance(response_length, int) or response_length < 0:
        raise ValueError(f"overlong: response_length = {response_length!r} must be a non-negative integer")
    expected = max_response_length - buffer_len
    if response_length <= expected:
        return 0.0
    if response_length <= max_response_length:
        return (expected - response_length) / buffer_len * float(penalty)
    return -float(penalty)


BUILTINS: dict[str, str] = {
    "code_exec": "grpo_dist.reward.code_exec:code_exec",
    "env_reward": "grpo_dist.reward.trajectory_rewards:env_reward",
    "exact_match": "grpo_dist.reward.builtins:exact_match",
    "format": "grpo_dist.reward.builtins:format_reward",
    "overlong": "grpo_dist.reward.builtins:overlong",
}
"""Built-in reward functions: the ``name`` that selects one when ``path`` is unset -> its ``module:function``.

Import paths, not the functions, so that importing this module does not import ``code_exec`` and the
sandbox behind it: ``resolve`` imports a built-in's module when an entry selects it."""

_BUILTIN_BY_PATH: dict[str, str] = {path: name for name, path in BUILTINS.items()}
"""``module:function`` -> built-in name, to find a built-in's kwargs check also when a ``path`` names it."""


# --------------------------------------------------------------------------------------------------------
# kwargs checks: a typo in a built-in's kwargs should stop the run at start-up, not mask every sample.
# --------------------------------------------------------------------------------------------------------


def _check_bool(kwargs: Mapping[str, Any], key: str, where: str) -> None:
    if key in kwargs and not isinstance(kwargs[key], bool):
        raise ValueError(f"{where}.kwargs.{key} = {kwargs[key]!r}: expected true or false")


def _check_number(kwargs: Mapping[str, Any], key: str, where: str) -> None:
    value = kwargs.get(key)
    if key in kwargs and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
    ):
        raise ValueError(f"{where}.kwargs.{key} = {value!r}: expected a finite number >= 0")


def _check_exact_match(kwargs: Mapping[str, Any], where: str, max_response_length: int | None) -> None:
    if "extract" in kwargs and kwargs["extract"] not in EXTRACT_MODES:
        raise ValueError(f"{where}.kwargs.extract = {kwargs['extract']!r}: expected one of {list(EXTRACT_MODES)}")
    _check_bool(kwargs, "case_sensitive", where)
    _check_number(kwargs, "tolerance", where)


def _check_format(kwargs: Mapping[str, Any], where: str, max_response_length: int | None) -> None:
    if "pattern" not in kwargs:
        raise ValueError(f"{where}.kwargs.pattern is required by the built-in 'format' (a regular expression)")
    pattern = kwargs["pattern"]
    if not isinstance(pattern, str):
        raise ValueError(f"{where}.kwargs.pattern = {pattern!r}: expected a string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}.kwargs.pattern = {pattern!r} is not a valid regular expression: {exc}") from None
    _check_bool(kwargs, "fullmatch", where)


def _check_overlong(kwargs: Mapping[str, Any], where: str, max_response_length: int | None) -> None:
    if "buffer_len" not in kwargs:
        raise ValueError(f"{where}.kwargs.buffer_len is required by the built-in 'overlong' (tokens)")
    buffer_len = kwargs["buffer_len"]
    upper = max_response_length if max_response_length is not None else math.inf
    if isinstance(buffer_len, bool) or not isinstance(buffer_len, int) or not 1 <= buffer_len <= upper:
        bound = f"data.max_response_length = {max_response_length}" if max_response_length is not None else "..."
        raise ValueError(f"{where}.kwargs.buffer_len = {buffer_len!r}: expected an integer in 1..{bound}")
    _check_number(kwargs, "penalty", where)


def _check_code_exec(kwargs: Mapping[str, Any], where: str, max_response_length: int | None) -> None:
    timeout_s = kwargs.get("timeout_s", 1.0)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ValueError(f"{where}.kwargs.timeout_s = {timeout_s!r}: expected a positive, finite number of seconds")
    memory_mb = kwargs.get("memory_mb", 16)
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 16:
        raise ValueError(f"{where}.kwargs.memory_mb = {memory_mb!r}: expected an integer >= 16 (MiB)")
    if kwargs.get("language", "python") != "python":
        raise ValueError(f"{where}.kwargs.language = {kwargs['language']!r}: only 'python' is supported")


_KWARG_CHECKS: dict[str, Callable[[Mapping[str, Any], str, int | None], None]] = {
    "code_exec": _check_code_exec,
    "env_reward": check_env_reward,
    "exact_match": _check_exact_match,
    "format": _check_format,
    "overlong": _check_overlong,
}
"""kwargs checks by built-in name (the keys of ``BUILTINS``)."""


# --------------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------------


def context_parameters(fn: Callable[..., Any]) -> frozenset[str]:
    """The context parameters (``CONTEXT_PARAMETERS``) that ``fn`` declares by name.

    A ``**kwargs`` catch-all does not count: context is passed only to functions that ask for it, so an
    existing function that forwards ``**kwargs`` somewhere is not handed arguments it never expected.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some C callables have no signature
        return frozenset()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(name for name in CONTEXT_PARAMETERS if name in params and params[name].kind in kinds)


def _check_signature(fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """Fail at start-up when the config's kwargs cannot be passed to ``fn`` (typo, missing required one)."""
    clash = sorted(set(kwargs) & (set(CONTEXT_PARAMETERS) | set(_POSITIONAL)))
    if clash:
        raise ValueError(
            f"{where}.kwargs sets {clash}: these names are filled by the scorer for every sample, not by kwargs"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # cannot introspect (e.g. a C function): the first call will tell
    context = {name: None for name in context_parameters(fn)}
    try:
        signature.bind(None, None, None, None, **kwargs, **context)
    except TypeError as exc:
        allowed = [
            p.name
            for p in signature.parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in CONTEXT_PARAMETERS
        ]
        raise ValueError(
            f"{where}: cannot call {getattr(fn, '__qualname__', fn)!r} as "
            f"fn(data_source, solution_str, ground_truth, extra_info, **kwargs) with kwargs {sorted(kwargs)}: "
            f"{exc} (its keyword options: {allowed})"
        ) from None


def _load_builtin(name: str) -> Callable[..., float]:
    """The built-in ``name`` (a key of ``BUILTINS``), its module imported now if it was not yet."""
    module_name, _, attr = BUILTINS[name].partition(":")
    fn: Callable[..., float] = getattr(importlib.import_module(module_name), attr)
    return fn


def _builtin_name(fn: Callable[..., Any]) -> str | None:
    """Which built-in ``fn`` is (also when a ``path`` named it), by its ``module:function``; None for others."""
    return _BUILTIN_BY_PATH.get(f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}")


def _import_path(path: str, where: str) -> Callable[..., Any]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{where}.path = {path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"{where}.path = {path!r}: module {module_name!r} not found ({exc}); is its directory on sys.path "
            "(the driver's working directory is added for you)?"
        ) from exc
    except Exception as exc:  # any error raised by the user's module while importing: report it with its origin
        raise ValueError(
            f"{where}.path = {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(module, attr):
        raise ValueError(f"{where}.path = {path!r}: module {module_name!r} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ValueError(f"{where}.path = {path!r}: {attr!r} is a {type(fn).__name__}, not a callable")
    return fn


def resolve(
    function_config: RewardFunctionLike,
    *,
    index: int | None = None,
    max_response_length: int | None = None,
) -> Callable[..., Any]:
    """The callable a ``reward.functions[index]`` entry names, with its ``kwargs`` checked against it.

    ``path`` (``package.module:function``) is imported; without one, ``name`` selects a built-in. Raises
    ValueError naming the config field for a missing module or attribute, a non-callable, an unknown
    built-in, or kwargs the function cannot take. ``max_response_length`` (when known) lets the
    ``overlong`` built-in check its ``buffer_len`` up front.
    """
    where = f"reward.functions[{index}]" if index is not None else f"reward function {function_config.name!r}"
    kwargs = dict(function_config.kwargs)
    if function_config.path is not None:
        fn = _import_path(function_config.path, where)
    else:
        if function_config.name not in BUILTINS:
            raise ValueError(
                f"{where}.name = {function_config.name!r} is not a built-in reward function and no path is "
                f"set; built-ins: {sorted(BUILTINS)} (or set {where}.path = 'package.module:function')"
            )
        fn = _load_builtin(function_config.name)
    builtin = _builtin_name(fn)
    check = _KWARG_CHECKS.get(builtin) if builtin is not None else None
    if check is not None:
        check(kwargs, where, max_response_length)
    _check_signature(fn, kwargs, where)
    return fn
