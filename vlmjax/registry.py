"""`Registry`: the one shape every table of named parts has (models, encoders, loss terms, data
sources, evaluators). A part is added with one line, in its registry's home module or from
user code (a test, a research script) before the config that names it is loaded:

    encoders.VISION.register("toy", ToyEncoder)

Looking up an unknown name is a one-line ConfigError naming the config key and the valid names.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from vlmjax.errors import ConfigError

T = TypeVar("T")


class Registry(dict, Generic[T]):
  """A dict of name -> part; `key` is the config key that picks a part (for error messages)."""

  def __init__(self, key: str, parts: dict[str, T] | None = None):
    super().__init__(parts or {})
    self.key = key

  def register(self, name: str, part: T) -> T:
    """Adds `part` under `name`; registering another part under a taken name is an error."""
    if not isinstance(name, str) or not name or ":" in name:
      raise ValueError(f"{self.key}: a part's name must be a non-empty string without ':', got {name!r}")
    if name in self and self[name] is not part:
      raise ValueError(f"{self.key}={name!r} is registered already ({self[name]!r})")
    self[name] = part
    return part

  def lookup(self, name: str, where: str | None = None) -> T:
    """The part called `name`, or a one-line ConfigError listing the valid names."""
    if name not in self:
      raise ConfigError(f"{where or self.key}={name!r} is unknown; valid: {', '.join(self)}")
    return self[name]
