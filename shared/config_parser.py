"""Reading a run configuration: a YAML file, then `--section.key value` CLI overrides, into `seal.shared.config`.

One parser serves `python recipes/seal.py --config X.yaml --inner.lr 3e-4`, `accelerate launch`,
and a wandb sweep agent's `${args}` (which arrive as `--inner.lr=0.0003`). Unknown keys are errors
that name the key; values are checked against the field's type; `--help` prints every key of the schema.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import math
import os
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml

from seal.shared.config import ALGORITHM_KEYS, ConfigError, OuterConfig, SealConfig

# ---------------------------------------------------------------- building dataclasses from data


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


@dataclasses.dataclass(frozen=True)
class _CliScalar:
    """A command-line value YAML read as a number or boolean, with the text it was typed as: a string field
    takes the text (`--teacher.revision 0123456` is that commit, not the octal number 42798; `--wandb.group
    off` is "off"), any other field the value."""

    value: Any
    text: str


def _plain(value: Any) -> Any:
    """A value with its command-line scalars as YAML read them (a mapping field, e.g. `domain` or
    `sampling.vllm`, is typed later or never: its numbers stay numbers)."""
    if isinstance(value, _CliScalar):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _leaf_type(tp: Any) -> Any:
    """The type a scalar ends up as: through Optional and Annotated, and a list's items (one value given
    for a list field becomes its only item)."""
    inner, _ = _optional_inner(tp)
    if typing.get_origin(inner) is Annotated:
        return _leaf_type(typing.get_args(inner)[0])
    if typing.get_origin(inner) is list:
        return _leaf_type((typing.get_args(inner) or (Any,))[0])
    return inner


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if isinstance(value, _CliScalar):
        value = value.text if _leaf_type(tp) is str else value.value
    inner, nullable = _optional_inner(tp)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{key}: null is not allowed here")
    if typing.get_origin(inner) is Annotated:  # a type with value constraints (Bound, NonEmpty, ...)
        base, *checks = typing.get_args(inner)
        value = _coerce(value, base, key)
        for check in checks:
            check.check(key, value)
        return value
    if _is_dataclass_type(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return build(inner, value, prefix=key)
    origin = typing.get_origin(inner)
    if origin is list:
        (item_tp,) = typing.get_args(inner) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _plain(value)
    if inner is Any:
        return _plain(value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if inner is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if inner is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):  # bool included: YAML's reading of an unquoted yes/off
            raise ConfigError(f"{key}: expected a string, got {value!r}: YAML reads unquoted digits and yes/no/on/off "
                              "as numbers and booleans (0123 is octal 83); quote it (on the command line inside "
                              "the shell's quotes, e.g. \"'0123'\")")
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {inner!r}")  # pragma: no cover - config authors only


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''}{where}: "
                          f"{', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # from __post_init__: name the section when the message does not
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(f"{prefix}.{err}") from err
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def _check_algorithm_keys(tree: dict[str, Any], cfg: Any) -> None:
    """Refuse `outer` keys the user gave that the chosen outer.algorithm does not read (defaults never count)."""
    outer, given = getattr(cfg, "outer", None), tree.get("outer")
    if not isinstance(outer, OuterConfig) or not isinstance(given, dict):
        return
    for algorithm, keys in ALGORITHM_KEYS.items():
        stray = [f"outer.{k}" for k in keys if k in given]
        if algorithm != outer.algorithm and stray:
            one = len(stray) == 1
            raise ConfigError(f"{', '.join(stray)} appl{'ies' if one else 'y'} to outer.algorithm {algorithm} only; "
                              f"remove {'it' if one else 'them'} (outer.algorithm is {outer.algorithm})")


# ---------------------------------------------------------------- YAML + CLI


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--{dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """Split argv into the --config path and (dotted key, YAML-parsed value) overrides."""
    config_path = None
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: use --config FILE and --section.key VALUE")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):  # `--inner.lr --seed 3`: lr has no value
                raise ConfigError(f"--{key} needs a value")
            raw = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            if not raw.strip():
                raise ConfigError("--config: empty path")
            config_path = raw
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--{key}: cannot parse value {raw!r}: {err}") from err
        overrides.append((key, _CliScalar(value, raw) if isinstance(value, (int, float)) else value))
    return config_path, overrides


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                  f"(YAML would keep only the last value)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.load(p.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {p} is not UTF-8 text: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}") from err
    except ConfigError as err:
        raise ConfigError(f"config file {p}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


HELP_FLAGS = ("-h", "--help")


def parse_config(argv: list[str], cls: type = SealConfig) -> Any:
    """`--config FILE` (optional) then `--a.b VALUE` / `--a.b=VALUE` overrides, applied in order.

    `-h` / `--help` anywhere in argv prints `format_help(cls)` to stdout and raises SystemExit(0)."""
    if any(arg in HELP_FLAGS for arg in argv):
        print(format_help(cls))
        raise SystemExit(0)
    config_path, overrides = parse_overrides(argv)
    tree = load_yaml(config_path) if config_path else {}
    for key, value in overrides:
        _set_dotted(tree, key, value)
    cfg = build(cls, tree)
    _check_algorithm_keys(tree, cfg)
    return cfg


_SECRET_KEY = re.compile(r"(^|_)(api_key|key|token|secret|password)$", re.IGNORECASE)


# secrets in a URL: its whole userinfo (user:password@, or a token as the user name; a password may hold
# "@", so up to the last "@" before the path), and a query parameter named like a key (api_key, api-key,
# x-api-key, access_token, ...)
_URL_USERINFO = re.compile(r"(://)[^/?#\s]*@")
_URL_PARAM = re.compile(r"(?i)([?&](?:[\w-]*[_-])?(?:api[_-]?key|key|token|secret|password|sig|signature|"
                        r"access[_-]token)=)[^&#\s]+")


def _mask_url(text: str) -> str:
    return _URL_PARAM.sub(r"\1<redacted>", _URL_USERINFO.sub(r"\1<redacted>@", text))


def redacted(data: Any) -> Any:
    """A copy with every value under a secret-looking key replaced, and secrets inside URLs (query
    parameters, userinfo) masked, for dumps and trackers."""
    if isinstance(data, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) and v else redacted(v))
                for k, v in data.items()}
    if isinstance(data, list):
        return [redacted(v) for v in data]
    if isinstance(data, str) and "://" in data:
        return _mask_url(data)
    return data


def redacted_argv(argv: list[str]) -> list[str]:
    """A command line with the same secrets masked: URLs anywhere, and the value of an option named like a
    secret (`--x.api_key V` or `--x.api_key=V`). What trackers may record as the program's arguments."""
    out: list[str] = []
    secret_next = False
    for arg in argv:
        if secret_next:
            out.append("<redacted>")
            secret_next = False
            continue
        name, eq, value = arg.partition("=")
        secret = arg.startswith("--") and bool(_SECRET_KEY.search(name.rsplit(".", 1)[-1]))
        if secret and eq:
            out.append(f"{name}=<redacted>")
            continue
        secret_next = secret and not eq
        out.append(_mask_url(arg) if "://" in arg else arg)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- --help

WIDTH = 100
USAGE = "usage: python recipes/seal.py --config FILE.yaml [--section.key VALUE ...]"
INTRO = (
    "Every key below can be set in the YAML file (sections are nested mappings: `inner: {lr: 3e-4}`) or on "
    "the command line as `--inner.lr 3e-4` or `--inner.lr=3e-4`; overrides are applied after the file, in "
    "order. Values are read as YAML: `true`, `null` (None below), `[1, 2]`, `{a: 1}`. Unknown keys and values of the "
    "wrong type are errors. (`accelerate launch recipes/seal.py ...` and recipes/evaluate.py take the same "
    "arguments.)"
)
BUILTIN_DOMAINS = ("knowledge", "arc")


@functools.lru_cache(maxsize=None)
def _class_field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} from the string literal right under each annotated field in `cls`'s own source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (a frozen or generated class): no docstrings
        return {}
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    docs: dict[str, str] = {}
    body = node.body if node is not None else []
    for stmt, after in itertools.pairwise(body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _class_doc(cls: type) -> str:
    """The class's own docstring on one line; '' for none (or the signature that dataclasses put there)."""
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(inspect.cleandoc(doc).split())


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of dataclass `cls`, its bases' included (the subclass's own win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if _is_dataclass_type(klass):
            docs.update(_class_field_docs(klass))
    return docs


def type_name(tp: Any) -> str:
    """A field type as a user reads it: `int`, `float | None`, `list[str]`, `dict`."""
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if typing.get_origin(tp) is Annotated:
        base, *checks = typing.get_args(tp)
        return f"{type_name(base)} ({', '.join(map(str, checks))})"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        names = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(names + (["None"] if type(None) in args else []))
    if origin is list:
        args = typing.get_args(tp)
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict or tp is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _yaml_text(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[:-3].strip() if text.endswith("\n...") else text


def _default_of(f: dataclasses.Field, parent: Any) -> tuple[bool, Any]:
    """(has a default, the default), read from the parent's default instance when there is one."""
    if parent is not None:
        return True, getattr(parent, f.name)
    if f.default is not dataclasses.MISSING:
        return True, f.default
    if f.default_factory is not dataclasses.MISSING:
        return True, f.default_factory()
    return False, None


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_on_hyphens=False) if text else []


def _key_lines(key: str, tp: Any, has_default: bool, default: Any, doc: str, indent: int) -> list[str]:
    head = f"{key}: {type_name(tp)}" + (f" = {_yaml_text(default)}" if has_default else " (required)")
    return _wrap(head, indent) + _wrap(doc, indent + 4)


def _fields_help(cls: type, prefix: str, parent: Any, indent: int, title_indent: int | None = None) -> list[str]:
    """Lines for every key of dataclass `cls` under `prefix` (its leaf keys first, then each nested dataclass
    as a titled section expanded to its keys)."""
    title_indent = indent if title_indent is None else title_indent
    hints, docs = typing.get_type_hints(cls, include_extras=True), field_docs(cls)
    leaves: list[str] = []
    sections: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp, doc = f"{prefix}{f.name}", hints[f.name], docs.get(f.name, "")
        has_default, default = _default_of(f, parent)
        inner, nullable = _optional_inner(tp)
        if _is_dataclass_type(inner):
            doc = doc or _class_doc(inner)
            sections.append("")
            title = f"{key}: {'optional section' if nullable else 'section'}"
            if nullable and has_default and default is None:
                title += " (default: null; keys below apply once it is given)"
            sections += _wrap(f"{title}. {doc}".rstrip(". ") + ".", title_indent)
            child = default if _is_dataclass_type(type(default)) else None
            sections += _fields_help(inner, f"{key}.", child, title_indent + 2)
        elif prefix == "" and f.name == "domain" and typing.get_origin(inner) is dict:
            sections.append("")
            sections += _domain_help(key, tp, has_default, default, doc, title_indent)
        else:
            leaves += _key_lines(key, tp, has_default, default, doc, indent)
    return leaves + sections


def _domain_help(key: str, tp: Any, has_default: bool, default: Any, doc: str, indent: int) -> list[str]:
    lines = _key_lines(key, tp, has_default, default, doc, indent)
    lines += _wrap(f"A free mapping: `{key}.name` is a registered domain ({', '.join(BUILTIN_DOMAINS)}) or "
                   "`package.module:Class`; this parser does not check the other keys, the domain does when the "
                   "run starts.", indent + 4)
    try:
        from seal.shared.domain import domain_class
    except Exception:  # pragma: no cover - the help still lists the schema
        return lines
    for name in BUILTIN_DOMAINS:
        try:
            options = domain_class(name).Options
        except Exception as err:  # a domain whose module cannot be imported here
            lines += [""] + _wrap(f"{key}.name: {name}: options not available ({err})", indent + 2)
            continue
        lines += [""] + _wrap(f"Options of {key}.name: {name}", indent + 2)
        lines += _fields_help(options, f"{key}.", None, indent + 4)
    return lines


def format_help(cls: type = SealConfig) -> str:
    """The `--help` text: usage, how to give values, then every key of `cls` by section with type,
    default and docstring."""
    lines = [USAGE, ""] + _wrap(INTRO, 0) + [""]
    doc = _class_doc(cls)
    lines += _wrap(f"{cls.__name__}: {doc}" if doc else cls.__name__, 0)
    lines += ["", "Top-level keys:"] + _fields_help(cls, "", None, 2, title_indent=0)
    return "\n".join(lines)
