"""Reference state dict <-> our pure param dict, checked tensor by tensor against a config's shapes.

Keys are dotted paths of the pure dict (`vision.blocks.layers.0.ln1.scale`). Scanned
stacks (`model.scan`) hold one array with a leading layers axis at `...blocks.layers.<name>`;
they are unrolled for mapping and stacked again after.

`vocab_offset=1` inserts a padding row at id 0 of the token embedding (and a zero
column in a CoCa vocabulary head): vlmjax tokenizers shift a vocabulary whose id 0 is
not padding up by one (see `vlmjax.data.tokenizers`), and the model must follow. The
padding row is a copy of the reference's row 0, the token open_clip pads with: padded
positions then embed as in the reference, which open_clip CoCa's legacy CLS mask lets the
class token see (an all-zero row changed its text embedding by 2-3e-2).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from vlmjax.errors import ConfigError
from vlmjax.convert import mapping

SCANNED = re.compile(r"\.blocks\.layers\.(?!\d)")
VOCAB_ROWS = {"text.token_embed.embedding": 0, "decoder.head.kernel": 1}  # key -> vocabulary axis


def _key(path) -> str:
  return ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def flatten(tree: Any) -> dict[str, Any]:
  return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_like(abstract: Any, flat: dict[str, Any]) -> Any:
  return jax.tree_util.tree_map_with_path(lambda path, _: flat[_key(path)], abstract)


def unroll(flat: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{our unrolled key: (shape, array or None)}; scanned arrays are split along their first axis."""
  out = {}
  for key, leaf in flat.items():
    shape = tuple(leaf.shape)
    if not SCANNED.search(key):
      out[key] = (shape, leaf if isinstance(leaf, (np.ndarray, jax.Array)) else None)
      continue
    head, tail = key.split(".blocks.layers.", 1)
    for i in range(shape[0]):
      part = None if not isinstance(leaf, (np.ndarray, jax.Array)) else leaf[i]
      out[f"{head}.blocks.layers.{i}.{tail}"] = (shape[1:], part)
  return out


def _restack(abstract_flat: dict[str, Any], unrolled: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, leaf in abstract_flat.items():
    if SCANNED.search(key):
      head, tail = key.split(".blocks.layers.", 1)
      out[key] = np.stack([unrolled[f"{head}.blocks.layers.{i}.{tail}"] for i in range(leaf.shape[0])])
    else:
      out[key] = unrolled[key]
  return out


def _fetch(state: dict, ref_key: str, kind: str, index: int | None, where: str, our_key: str, shape):
  """The reference tensor for one of our tensors; open_clip's poolers with a context width unlike
  their own keep q/k/v as separate `q_proj_weight`/`k_proj_weight`/`v_proj_weight`."""
  if ref_key in state:
    return ref_key, state[ref_key], kind
  if kind == "qkv_w":
    alt = ref_key.replace("in_proj_weight", f"{mapping.QKV[index]}_proj_weight")
    if alt in state:
      return alt, state[alt], "linear"
  raise ConfigError(f"{where} lacks tensor {ref_key!r}, which config parameter {our_key} {shape} needs "
                    "(the config's layout or depth does not match the checkpoint)")


def _shift_vocab(key: str, x: np.ndarray, offset: int) -> np.ndarray:
  if key not in VOCAB_ROWS or not offset:
    return x
  axis = VOCAB_ROWS[key]
  pad = np.take(x, [0] * offset, axis=axis)  # the embedding: what the reference embeds at its padding (id 0)
  if key != "text.token_embed.embedding":
    pad = np.zeros_like(pad)  # a vocabulary head: no logit for padding
  return np.concatenate([pad, x], axis=axis)


def to_ours(state: dict[str, np.ndarray], family: str, model_cfg, abstract_params: Any, *,
            where: str = "checkpoint", vocab_offset: int = 0) -> Any:
  """A reference state dict -> a pure param dict shaped like `abstract_params` (NumPy, param dtype).

  Raises a one-line ConfigError at the first tensor that is missing, left over or of the wrong shape.
  """
  rules = mapping.rules(family, model_cfg.name)
  abstract_flat = flatten(abstract_params)
  used, out = set(), {}
  for key, (shape, _) in unroll(abstract_flat).items():
    try:
      ref_key, kind, index = mapping.match(rules, key)
    except KeyError:
      raise ConfigError(f"config parameter {key} {shape} has no counterpart in {family} checkpoints "
                        "(check the model's layout knobs)") from None
    ref_key, ref, kind = _fetch(state, ref_key, kind, index, where, key, shape)
    if kind in mapping.FUSED and ref.shape[0] % len(mapping.FUSED[kind]):
      raise ConfigError(f"{where} tensor {ref_key} {tuple(ref.shape)} is not a fused "
                        f"{'/'.join(mapping.FUSED[kind])} projection")
    x = _shift_vocab(key, mapping.to_ours(kind, ref, index), vocab_offset)
    if tuple(x.shape) != shape:
      hint = (f"; the tokenizer shifts ids up by {vocab_offset}, so model.text.vocab_size must be "
              f"{ref.shape[VOCAB_ROWS[key] if kind == 'copy' else 0] + vocab_offset}") if key in VOCAB_ROWS and vocab_offset else ""
      raise ConfigError(f"{where} tensor {ref_key} {tuple(ref.shape)} does not fit config parameter {key} "
                        f"{shape} (read as {tuple(x.shape)}){hint}")
    used.add(ref_key)
    out[key] = x
  extra = [k for k in state if k not in used]
  if extra:
    raise ConfigError(f"{where} tensor {extra[0]} {tuple(state[extra[0]].shape)} has no place in the config "
                      f"({len(extra)} unused; the checkpoint is deeper or has parts the config lacks)")
  flat = _restack(abstract_flat, out)
  return unflatten_like(abstract_params, {k: np.asarray(v, abstract_flat[k].dtype) for k, v in flat.items()})


def to_ref(params: Any, family: str, model_cfg, *, vocab_offset: int = 0) -> dict[str, np.ndarray]:
  """Our pure param dict -> the reference state dict (float32 NumPy), in our parameter order."""
  rules = mapping.rules(family, model_cfg.name)
  groups: dict[str, tuple[str, list]] = {}
  for key, (_, x) in unroll(flatten(params)).items():
    x = np.asarray(x, np.float32)
    if key in VOCAB_ROWS and vocab_offset:
      x = np.delete(x, range(vocab_offset), axis=VOCAB_ROWS[key])
    ref_key, kind, index = mapping.match(rules, key)
    parts = groups.setdefault(ref_key, (kind, [None] * len(mapping.FUSED.get(kind, "x"))))[1]
    parts[index or 0] = x
  out = {}
  for ref_key, (kind, parts) in groups.items():
    if kind == "qkv_w" and len({p.shape[0] for p in parts}) > 1:  # torch keeps them apart then
      for letter, p in zip(mapping.QKV, parts):
        out[ref_key.replace("in_proj_weight", f"{letter}_proj_weight")] = p.T
    else:
      out[ref_key] = mapping.to_ref(kind, parts)
  return out
