"""Typed recipe sections: the sizes a model is built from, as frozen dataclasses (openai/whisper `ModelDimensions`).

A recipe size (`registry.resolve_size`, what checkpoints store as their `config`) is a JSON dict. Each model
reads it once, through `Dims.from_recipe(config)`: every key must be a field (an unknown or misspelt key is a
one-line `ModelError` naming it, instead of being silently ignored), a missing key takes the field's default,
and values are converted to the field's type as the models always converted them (`int(...)`, `float(...)`,
`bool(...)`, tuples element by element). A section is a nested dataclass; `field(metadata={PARSE: fn})`
gives a field its own reader (`fn(value, where)`). The dict itself stays the model's `config` (checkpoints
store it as given); the dataclasses are how the modules read it.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self, Union, get_args, get_origin, get_type_hints

from edgeser.errors import ModelError

# field metadata key: a reader `fn(value, where) -> field value` replacing the type's conversion
PARSE = "parse"
Parser = Callable[[Any, str], Any]


def _convert(hint: Any, value: Any, where: str) -> Any:
    """`value` as the annotated type `hint` (the conversions the models applied to their `.get` lookups)."""
    if isinstance(hint, type) and issubclass(hint, RecipeDims):
        return hint.from_recipe(value, where)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None
        return _convert(options[0], value, where) if len(options) == 1 else value
    if origin is Literal:  # checked where the choice is made (its error names the choices)
        return value if value is None else type(get_args(hint)[0])(value)
    if origin is tuple:
        return tuple(_convert(get_args(hint)[0], item, where) for item in value)
    if origin is dict or hint is dict:
        return dict(value)
    if hint in (int, float, bool, str):
        return hint(value)
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecipeDims:
    """Base of a typed recipe section: `from_recipe(dict)` refuses unknown keys; subclasses declare the fields."""

    SECTION: ClassVar[str] = "recipe"  # how errors name the section when no `where` is given

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any] | None, where: str | None = None) -> Self:
        """The section `recipe` (None: all defaults); ModelError on a key that is no field of this section."""
        where = where or cls.SECTION
        recipe = {} if recipe is None else recipe
        if not isinstance(recipe, Mapping):
            raise ModelError(
                f"{where}: expected a section of named values, got {type(recipe).__name__} {recipe!r}"
            )
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in recipe:
            if key not in fields:
                raise ModelError(f"{where}: unknown key {key!r}; it takes {', '.join(fields)}")
        missing = [
            name
            for name, f in fields.items()
            if name not in recipe
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ModelError(f"{where}: missing key {missing[0]!r}")
        hints = get_type_hints(cls)
        values = {}
        for key, value in recipe.items():
            parse: Parser | None = fields[key].metadata.get(PARSE)
            values[key] = (
                parse(value, f"{where}.{key}") if parse else _convert(hints[key], value, f"{where}.{key}")
            )
        return cls(**values)

    @classmethod
    def of(cls, section: RecipeDims | Mapping[str, Any] | None, where: str | None = None) -> Self:
        """`section` itself when it already is one of these, else `from_recipe(section)`."""
        if isinstance(section, cls):
            return section
        if isinstance(section, RecipeDims):
            raise ModelError(f"{where or cls.SECTION}: expected {cls.__name__}, got {type(section).__name__}")
        return cls.from_recipe(section, where)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelDims(RecipeDims):
    """What every model's config carries besides its sections: the size name (`registry.build_model` records it)
    and the build-wide `random_weights` override (backbone architectures without their pretrained weights)."""

    size: str | None = None
    random_weights: bool = False
