"""Typed request parameters: every detector declares its parameters once; requests, the CLI and
the server's /info all read that declaration, and bad values fail with a message naming the
parameter, what was expected and what was received."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InputError


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    type: type
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[Any] | None = None
    nullable: bool = False

    def coerce(self, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise InputError(f"parameter '{self.name}': expected {self._expect()}, received null")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise InputError(f"parameter '{self.name}': expected true or false, received {value!r}")
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise InputError(f"parameter '{self.name}': expected {self._expect()}, received {value!r}")
            try:
                number = float(value)
            except ValueError:
                raise InputError(f"parameter '{self.name}': expected {self._expect()}, received {value!r}") from None
            if not math.isfinite(number):
                raise InputError(f"parameter '{self.name}': expected a finite number, received {value!r}")
            if self.type is int:
                if number != int(number):
                    raise InputError(f"parameter '{self.name}': expected an integer, received {value!r}")
                number = int(number)
            if self.minimum is not None and number < self.minimum:
                raise InputError(f"parameter '{self.name}': expected {self._expect()}, received {value!r}")
            if self.maximum is not None and number > self.maximum:
                raise InputError(f"parameter '{self.name}': expected {self._expect()}, received {value!r}")
            value = number
        elif self.type is str:
            if not isinstance(value, str):
                raise InputError(f"parameter '{self.name}': expected a string, received {value!r}")
        if self.choices is not None and value not in self.choices:
            raise InputError(f"parameter '{self.name}': expected one of {list(self.choices)}, received {value!r}")
        return value

    def _expect(self) -> str:
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[self.type]
        if self.minimum is not None and self.maximum is not None:
            kind += f" in [{self.minimum}, {self.maximum}]"
        elif self.minimum is not None:
            kind += f" >= {self.minimum}"
        elif self.maximum is not None:
            kind += f" <= {self.maximum}"
        return kind + (" or null" if self.nullable else "")

    def describe(self) -> dict:
        d = {"default": self.default, "type": self.type.__name__, "help": self.help}
        for key in ("minimum", "maximum", "choices"):
            if getattr(self, key) is not None:
                d[key] = list(getattr(self, key)) if key == "choices" else getattr(self, key)
        if self.nullable:
            d["nullable"] = True
        return d


# parameters every detector accepts
COMMON_PARAMS: tuple[Param, ...] = (
    Param("threshold", None, float, "threshold on the anomaly map; null = the detector's default", nullable=True),
    Param("min_component_mm3", 20.0, float,
          "components of at most this volume are removed (20 mm^3 = the published 20 voxels at 1 mm)", minimum=0),
    Param("connectivity", 26, int, "voxel connectivity of components", choices=(6, 18, 26)),
    Param("preprocessed", False, bool,
          "input already bias-corrected, brain-extracted and in template space (the published protocol): "
          "skip N4, registration and extraction; brain = voxels > 0"),
    Param("bias_correction", True, bool, "N4 bias-field correction (ignored when preprocessed)"),
    Param("check_contrast", True, bool,
          "refuse an image whose tissue contrast in template space (grey matter / white matter and CSF / "
          "white matter medians) clearly belongs to another modality, e.g. a T1 sent as FLAIR"),
)


class ValidatedParams(dict):
    """Parameters one detector has validated (defaults filled, values coerced). Passed on as they are:
    a request's parameters are validated once, where they enter (server route, CLI, batch), and the
    detector does not check them again."""

    def __init__(self, detector: str, values: dict):
        super().__init__(values)
        self.detector = detector


def validate(declared: Sequence[Param], given: dict | None, ignore: Sequence[str] = ()) -> dict:
    """Defaults filled in, values coerced; unknown names are an error (a typo must not pass
    silently), except keys in `ignore` (MONAI Label adds its own request keys)."""
    given = dict(given or {})
    by_name = {p.name: p for p in declared}
    unknown = sorted(k for k in given if k not in by_name and k not in ignore)
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}: expected some of {sorted(by_name)}")
    return {name: p.coerce(given[name]) if name in given else p.default for name, p in by_name.items()}
