"""Typed, frozen, self-validating config dataclasses; YAML is only their serialisation.

Every config class subclasses :class:`Config`, documents each field once (in its docstring), and
validates itself in ``__post_init__`` through :func:`require`. ``from_dict`` rejects unknown keys
with the list of known ones and names a bad value by its full dotted path (``forget.train.lr``);
``with_overrides`` applies ``a.b=value`` strings from the command line. :func:`load_yaml` reads every
config and scenario file: any Python float literal (``1e-3``) is a number and a duplicate key is refused.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config or scenario value is wrong; the message names the field and the fix."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# -- YAML ----------------------------------------------------------------------------------------
# PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent: "1e-3" and "1.0e9" would
# be strings. Every Python float literal (and YAML's .inf / .nan) is a float here.
_D = r"[0-9](?:_?[0-9])*"
_FLOAT = re.compile(rf"^[-+]?(?:{_D}\.(?:{_D})?(?:[eE][-+]?{_D})?|\.{_D}(?:[eE][-+]?{_D})?|{_D}[eE][-+]?{_D}"
                    r"|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with Python float literals and duplicate keys refused."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _float(loader: _Loader, node: yaml.Node) -> float:
    text = loader.construct_scalar(node).replace("_", "")
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered == ".nan":
        return float("nan")
    return float(text)


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, typing.Hashable):
            continue  # the base constructor refuses it with its own message
        if key in seen:
            raise ConfigError(f"{loader.name}, line {line}: duplicate key {key!r} (first given on line {seen[key]}); "
                              "keep one of them")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:float", _float)
_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)


def load_yaml(text: str, name: str = "<string>") -> Any:
    """Parse YAML ``text`` (from the file or flag ``name``): Python float literals are floats and a
    duplicate key raises :class:`ConfigError` naming it and its line."""
    loader = _Loader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        context = getattr(e, "context", None)
        raise ConfigError(f"{name}: not valid YAML{where}: {problem}" + (f" ({context})" if context else "")) from e
    finally:
        loader.dispose()


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return tp.from_dict(value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (ConfigError, TypeError, ValueError) as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against a bool, int, float or str field (an int where a float goes becomes one)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value

def _onto_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial mapping given for a nested section, completed from that field's own default: a YAML
    ``forget: {overshoot: 1}`` changes one field of the method's forget section, not the section's
    class defaults."""
    if not isinstance(value, Mapping):
        return value
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return _fill(default, value) if isinstance(default, Config) else value


def _fill(default: Config, value: Mapping[str, Any]) -> dict[str, Any]:
    out = default.to_dict()
    for k, v in value.items():
        sub = getattr(default, k, None) if k in out else None
        out[k] = _fill(sub, v) if isinstance(sub, Config) and isinstance(v, Mapping) else v
    return out


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: ``from_dict`` / ``to_dict`` / YAML / overrides for frozen dataclasses."""

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where or cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(fields)}"
            )
        kwargs = {k: _convert(hints[k], _onto_default(fields[k], v), f"{where + '.' if where else ''}{k}")
                  for k, v in data.items()}
        missing = sorted(name for name, f in fields.items() if name not in data
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ConfigError(f"{where or cls.__name__}: required field(s) {missing} are missing; add them "
                              f"(the fields are {sorted(fields)})")
        try:
            return cls(**kwargs)
        except TypeError as e:  # a wrong argument the checks above did not name
            raise ConfigError(f"{where or cls.__name__}: {e}") from e
        except ConfigError as e:  # a range check of __post_init__: name the field by its full path
            message = str(e)
            if not where:
                raise
            first = message.split(" ", 1)[0]
            raise ConfigError(f"{where}.{message}" if first in fields else f"{where}: {message}") from e

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, Config):
                return v.to_dict()
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of fields")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self: C, overrides: Sequence[str]) -> C:
        """Apply ``section.field=value`` overrides (values parsed by :func:`load_yaml`: scalars, lists)."""
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r} is not of the form section.field=value")
            node = data
            parts = key.split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"override {item!r}: {p!r} is not a config section")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"override {item!r}: unknown field {parts[-1]!r}; known: {sorted(node)}")
            node[parts[-1]] = load_yaml(raw, f"override {item!r}")
        return type(self).from_dict(data)
