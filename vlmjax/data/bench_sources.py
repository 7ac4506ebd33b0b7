"""The layouts benchmark sets come in: CLIP_benchmark's webdataset shards and ImageNet-style class folders.

  wds:ROOT[:SPLIT]   CLIP_benchmark's webdataset layout (clip-benchmark/wds_* on the Hugging Face Hub,
                     downloaded): ROOT/SPLIT/*.tar (SPLIT defaults to `test`; ROOT/SPLIT/nshards.txt,
                     when present, says there are shards 0.tar .. N-1.tar), each sample an image
                     (webp, png, jpg, jpeg) with `cls` (its integer label, as text) in classification
                     sets or `txt` (its captions, one per line) in retrieval sets (ROOT/dataset_type.txt
                     says `retrieval`). ROOT/classnames.txt names the classes, one per line in label
                     order; ROOT/zeroshot_classification_templates.txt holds prompt templates, one per
                     line, with `{c}` where the class name goes.
  folder:ROOT        ImageNet-style folders ROOT/<class>/**/*.{jpg,jpeg,png,webp,bmp,ppm,pgm,tif,tiff}:
                     a class's label is its folder's index in sorted order (folders starting with `.`
                     are not classes); the class names are the folder names, or ROOT/classnames.txt's
                     lines when it exists (one per folder, in that order).

Records are {"key", "image" (encoded bytes), "caption", "label"} (caption None for classification
sets) or, for retrieval sets, {"key", "image", "caption"} plus "captions" (all of them; "caption"
is the first) when an image has several. Both are random access; reading needs local files.
"""

from __future__ import annotations

import glob
import os

from vlmjax.data.shards import captions_of
from vlmjax.data.tar_source import TarSource
from vlmjax.errors import DataError

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
DATASET_TYPE = "dataset_type.txt"
FOLDER_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")


def read_lines(path: str) -> list[str] | None:
  """The stripped lines of a text file up to its last non-blank one; None when it does not exist;
  a one-line DataError for a blank line among them (it would shift every later line's index)."""
  try:
    with open(path, encoding="utf-8-sig") as f:  # tolerates a byte-order mark
      lines = [line.strip() for line in f.read().rstrip().splitlines()]
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path} is unreadable ({type(e).__name__}); expected UTF-8 text, one entry per line") from None
  blank = next((n for n, line in enumerate(lines, 1) if not line), None)
  if blank is not None or not lines:
    raise DataError(f"{path}: line {blank or 1} is blank; expected one non-blank entry per line")
  return lines


# --- wds:ROOT[:SPLIT] ---------------------------------------------------------------------------

def wds_root(rest: str) -> tuple[str, str]:
  """`ROOT[:SPLIT]` -> (ROOT, SPLIT); a one-line DataError for a missing, remote or absent ROOT."""
  root, sep, split = rest.rpartition(":")
  if not sep or not root or "/" in split:
    root, split = rest, ""
  if not root:
    raise DataError("data spec 'wds:' names no directory; expected wds:ROOT[:SPLIT]")
  if "://" in root:
    raise DataError(f"wds:{rest}: reads a local copy; download it first (e.g. `hf download "
                    f"clip-benchmark/wds_cifar10 --repo-type dataset --local-dir DIR`), then wds:DIR")
  if not os.path.isdir(root):
    raise DataError(f"wds:{rest}: {root!r} is not a directory; expected ROOT/SPLIT/*.tar and ROOT/{CLASSNAMES}")
  return root, split or "test"


def dataset_type(root: str) -> str:
  """`classification` (ROOT/dataset_type.txt absent, or saying so) or `retrieval`."""
  lines = read_lines(os.path.join(root, DATASET_TYPE))
  kind = lines[0].lower() if lines else "classification"
  if kind not in ("classification", "retrieval"):
    raise DataError(f"{os.path.join(root, DATASET_TYPE)} says {kind!r}; wds sets of type classification "
                    f"(labels in `cls`) or retrieval (captions in `txt`) can be read")
  return kind


def wds_shards(root: str, split: str) -> list[str]:
  """ROOT/SPLIT's shards in order: 0.tar .. N-1.tar of nshards.txt, else every *.tar (numbered ones by number)."""
  where = os.path.join(root, split)
  if not os.path.isdir(where):
    splits = sorted(d for d in os.listdir(root) if glob.glob(os.path.join(root, d, "*.tar")))
    raise DataError(f"wds:{root}:{split}: no split {split!r} ({where} is not a directory); "
                    f"valid: {', '.join(splits) or f'none: {root} holds no SPLIT/*.tar'}")
  nshards = read_lines(os.path.join(where, "nshards.txt"))
  if nshards is not None:
    if not nshards[0].isdigit() or int(nshards[0]) < 1:
      raise DataError(f"{os.path.join(where, 'nshards.txt')} says {nshards[0]!r}; expected the number of shards")
    paths = [os.path.join(where, f"{i}.tar") for i in range(int(nshards[0]))]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise DataError(f"wds:{root}:{split}: {missing[0]} is missing ({len(missing)} of the {len(paths)} shards "
                      f"nshards.txt names); download the whole split")
    return paths
  paths = glob.glob(os.path.join(where, "*.tar"))
  if not paths:
    raise DataError(f"wds:{root}:{split}: no shards in {where}; expected {where}/0.tar, 1.tar, ...")
  stem = lambda p: os.path.basename(p)[:-len(".tar")]
  return sorted(paths, key=lambda p: (0, int(stem(p)), "") if stem(p).isdigit() else (1, 0, stem(p)))


class WdsSource(TarSource):
  """Random access over a CLIP_benchmark webdataset split (see the module docstring), indexed once.

  A sample without an image, or without the `cls` (classification) or a usable `txt` (retrieval)
  its set needs, is skipped and counted as `TarSource` does; a `cls` that is not an integer, or
  a label that ROOT/classnames.txt has no name for, is a one-line DataError."""

  NAMED = "wds split"
  WANTED = "usable samples"
  READ = ("cls", "txt")

  def __init__(self, root: str, split: str):
    self.retrieval = dataset_type(root) == "retrieval"
    self.WANTED = "samples with an image and captions (txt)" if self.retrieval else \
        "samples with an image and a label (cls)"
    super().__init__(os.path.join(root, split), wds_shards(root, split))
    names = None if self.retrieval else read_lines(os.path.join(root, CLASSNAMES))
    top = max((e[4]["label"] for e in self.index if "label" in e[4]), default=-1)
    if names is not None and top >= len(names):
      raise DataError(f"wds:{root}:{split}: label {top} in the shards, but {os.path.join(root, CLASSNAMES)} "
                      f"names {len(names)} classes; labels must be 0..{len(names) - 1}")

  def _fields(self, p: int, key: str, group: dict) -> dict | str:
    fields: dict = {"caption": None}
    if "cls" in group:
      text = group["cls"].decode("utf-8", "replace").strip()
      if not (text.isascii() and text.isdigit()):
        raise DataError(f"{self.paths[p]}: sample {key!r} has cls {text[:40]!r}; expected its class index, "
                        f"an integer 0..K-1 written as text")
      fields["label"] = int(text)
    elif not self.retrieval:
      return "no_label"
    caption, captions, reason = captions_of({"txt": group["txt"]} if "txt" in group else {})
    if reason and self.retrieval:
      return reason
    if not reason:
      fields.update(caption=caption, **({"captions": captions} if captions else {}))
    return fields


def open_wds(rest: str) -> WdsSource:
  return WdsSource(*wds_root(rest))


def wds_class_names(rest: str) -> tuple[str, ...] | None:
  """ROOT/classnames.txt's names (None for a retrieval set); a one-line DataError when a labelled set has none."""
  root, _ = wds_root(rest)
  if dataset_type(root) == "retrieval":
    return None
  names = read_lines(os.path.join(root, CLASSNAMES))
  if names is None:
    raise DataError(f"wds:{rest}: {os.path.join(root, CLASSNAMES)} is missing; a classification set needs its "
                    f"class names there, one per line in label order (or name such a file in the evaluator's "
                    f"class_names)")
  return tuple(names)


def wds_templates(rest: str) -> tuple[str, ...] | None:
  """ROOT/zeroshot_classification_templates.txt with `{c}` turned into vlmjax's `{}`; None when absent."""
  root, _ = wds_root(rest)
  path = os.path.join(root, TEMPLATES)
  lines = read_lines(path)
  if lines is None:
    return None
  out = []
  for n, line in enumerate(lines, 1):
    template = line.replace("{c}", "{}")
    try:
      ok = line.count("{c}") == 1 and template.format("x") is not None
    except (ValueError, IndexError, KeyError):
      ok = False
    if not ok:
      raise DataError(f"{path}: line {n} ({line[:60]!r}) is not a template; expected one '{{c}}' where the "
                      f"class name goes (other braces doubled)")
    out.append(template)
  return tuple(out)


# --- folder:ROOT --------------------------------------------------------------------------------

class FolderSource:
  """Random access over ImageNet-style class folders (see the module docstring), listed once."""

  def __init__(self, root: str):
    self.root, self.classes = root, class_folders(root)
    self.files: list[tuple[str, int]] = []  # path relative to root, label
    for label, name in enumerate(self.classes):
      found = []
      for here, dirs, files in os.walk(os.path.join(root, name), followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += sorted(os.path.relpath(os.path.join(here, f), root) for f in files
                        if f.lower().endswith(FOLDER_IMAGE_EXTS) and not f.startswith("."))
      if not found:
        raise DataError(f"folder:{root}: class folder {os.path.join(root, name)!r} holds no image; valid "
                        f"extensions: {', '.join(FOLDER_IMAGE_EXTS)} (remove the folder or add its images)")
      self.files += [(f.replace(os.sep, "/"), label) for f in found]

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict:
    key, label = self.files[int(i)]
    path = os.path.join(self.root, key)
    try:
      with open(path, "rb") as f:
        image = f.read()
    except OSError:
      return {"key": key, "_skips": [("missing_file", path)]}
    return {"key": key, "image": image, "caption": None, "label": label, "_shard": path}

  def __repr__(self) -> str:
    return f"FolderSource({self.root!r}: {len(self.classes)} classes, {len(self.files)} images)"


def class_folders(root: str) -> list[str]:
  """The class folders of ROOT in label (sorted) order; a one-line DataError when there are none."""
  if not os.path.isdir(root):
    raise DataError(f"folder:{root}: not a directory; expected ROOT/<class>/<image files>")
  names = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
  if not names:
    raise DataError(f"folder:{root}: no class folders; expected ROOT/<class>/<image files>, one folder per class")
  return names


def folder_root(rest: str) -> str:
  if not rest:
    raise DataError("data spec 'folder:' names no directory; expected folder:ROOT")
  return rest


def open_folder(rest: str) -> FolderSource:
  return FolderSource(folder_root(rest))


def folder_class_names(rest: str) -> tuple[str, ...]:
  """ROOT/classnames.txt's lines (one per class folder) when it exists, else the folder names."""
  folders = class_folders(folder_root(rest))
  names = read_lines(os.path.join(rest, CLASSNAMES))
  if names is not None and len(names) != len(folders):
    raise DataError(f"{os.path.join(rest, CLASSNAMES)} names {len(names)} classes but {rest} has {len(folders)} "
                    f"class folders; write one name per folder, in the folders' sorted order")
  return tuple(names or folders)
