"""Loading a weights file into a model, all or nothing.

Keras fits a weights file to a model by topology order, not by name, and says little when they
disagree: a file with extra layers loads without a word, and some mismatches only warn (through
`warnings`, which cannot be caught safely off the main thread). A half-loaded network drives like
a random one, so this loader does not trust Keras to complain. It reads the file itself with
h5py, the same way whatever Keras version is installed:

1. the file must be a readable, self-contained HDF5 file of numeric arrays (no links to other
   files, no filters that would make HDF5 load a plugin);
2. the shapes of its arrays must be exactly the shapes of the model's weights (as multisets,
   because Keras names groups by class and traversal order, not by the model's layer names);
3. every array must be finite (as float32, what the model will hold);
4. after Keras has loaded it, the model's weights must hold exactly the file's arrays (compared
   by content digest), so a variable Keras silently left fresh, or an array it silently skipped,
   is caught whether or not Keras warned.

Loading runs on any thread: nothing here touches process-wide state such as warning filters.
Nothing in the file is ever executed or unpickled: HDF5 holds arrays and attributes only.

Saving (`weights_image`) builds the file in memory and hands back its bytes: HDF5 never writes
to a disk here. The HDF5 library does not survive a write that fails (a full disk): the file it
could not close stays half-open inside the library, and at interpreter exit the library's own
clean-up crashes on it (SIGSEGV in H5_term_library). Plain `os.write` of the finished bytes
fails with a clean `OSError` instead.
"""

from __future__ import annotations

import hashlib
import io
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np

from agent.errors import ModelError, one_line

if TYPE_CHECKING:
    import h5py
    import keras

Shape = tuple[int, ...]
_T = TypeVar("_T")

# Filters built into every HDF5 library (deflate, shuffle, fletcher32, szip, nbit, scaleoffset)
# plus h5py's own LZF. Any other filter ID makes HDF5 search its plugin path and load a shared
# library, which a weights file must never be able to trigger.
_BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
_EXAMPLES = 3
"""How many shapes a mismatch message names."""


@dataclass(frozen=True)
class FileArray:
    """One dataset of a weights file, read and checked."""

    path: str
    shape: Shape
    digest: str
    """SHA-256 of the values in canonical form (see `_digest`)."""


def load_weights_strictly(model: keras.Model, path: Path, what: str) -> None:
    """Load the HDF5 weights file `path` into `model`, exactly, or raise `ModelError`.

    `what` names the file for the user and starts every message (e.g. "checkpoint
    /m/v0001/model.weights.h5"). The model is touched only after the file passed every check
    that can be made before loading (readable, self-contained, the model's shapes, finite); a
    failure after that (Keras refusing, or the post-load comparison) leaves the model partly
    overwritten, so on `ModelError` the caller must discard the model, never use it.
    """
    path = Path(path)
    if not path.name.endswith(".h5"):
        raise ModelError(
            f"{what} is not an HDF5 weights file (.weights.h5 or .h5); only weight files are "
            "loaded, never saved models that could carry code"
        )
    _require_regular_file(path, what)
    arrays = read_arrays(path, what, lambda found: _check_shapes(model, found, what))
    try:
        model.load_weights(str(path))
    except (ValueError, KeyError, OSError, TypeError) as error:
        detail = one_line(error) or type(error).__name__
        raise ModelError(f"{what} does not fit {model.name}: Keras refused it ({detail})") from None
    _check_loaded(model, arrays, what)


def _require_regular_file(path: Path, what: str) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelError(f"{what}: no such file") from None
    except OSError as error:
        raise ModelError(f"{what} cannot be read ({one_line(error.strerror)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelError(f"{what} is not a regular file; give the path of a weights file")


def read_arrays(
    path: Path, what: str, check_shapes: Callable[[list[Shape]], None] | None = None
) -> list[FileArray]:
    """Every dataset of the HDF5 file `path`, checked to be numeric, finite and self-contained.

    `check_shapes` sees the shape of every array before any array is read, so a file of the wrong
    network (or one claiming a gigantic array) is refused without reading its data. Raises
    `ModelError` for a file h5py cannot read, or one holding anything but plain arrays.
    """
    return _each_array(path, what, check_shapes, _read)


def finite_array_shapes(source: BinaryIO, what: str) -> list[Shape]:
    """The shapes of the arrays of the HDF5 file open as `source`, after checking, as
    `read_arrays` does, that it is readable, self-contained and all finite (no digests).

    For a look at a checkpoint before anything is built to load it into
    (`agent.checkpoints.resolve.latest`).
    """
    return _each_array(source, what, None, _finite_shape)


def _each_array(
    source: Path | BinaryIO,
    what: str,
    check_shapes: Callable[[list[Shape]], None] | None,
    read: Callable[[h5py.Dataset, str], _T],
) -> list[_T]:
    import h5py

    try:
        with h5py.File(source, "r") as file:
            datasets = _datasets(file, what)
            for dataset in datasets:
                _check_dataset(dataset, what)
            if check_shapes is not None:
                check_shapes([tuple(int(n) for n in d.shape) for d in datasets])
            return [read(dataset, what) for dataset in datasets]
    except OSError as error:
        raise ModelError(
            f"{what} is not a readable HDF5 weights file (corrupt or truncated? "
            f"h5py: {one_line(error, 80)}); replace it"
        ) from None


def _datasets(file: h5py.File, what: str) -> list[h5py.Dataset]:
    """All datasets of `file` (each object once, so hard-link cycles end), refusing links."""
    import h5py

    found: list[h5py.Dataset] = []

    def refuse_links(group: h5py.Group) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                raise ModelError(
                    f"{what} holds a link ({one_line(group.name, 60)}/{one_line(name, 40)}); "
                    "only self-contained weights files are loaded"
                )

    def visit(_name: str, item: h5py.Group | h5py.Dataset) -> None:
        if isinstance(item, h5py.Group):
            refuse_links(item)
        elif isinstance(item, h5py.Dataset):
            found.append(item)

    refuse_links(file)
    file.visititems(visit)
    return found


def _name(dataset: h5py.Dataset) -> str:
    return one_line(dataset.name.lstrip("/"), 60)


def _check_dataset(dataset: h5py.Dataset, what: str) -> None:
    """Refuse anything but a plain numeric array stored inside the file itself."""
    name = _name(dataset)
    if dataset.shape is None or dataset.dtype.kind not in "fiub":
        raise ModelError(f"{what} holds {name}, which is not a numeric array; not a weights file")
    if dataset.is_virtual or getattr(dataset, "external", None):
        raise ModelError(
            f"{what} stores {name} outside itself; only self-contained weights files are loaded"
        )
    plist = dataset.id.get_create_plist()
    for index in range(plist.get_nfilters()):
        code = plist.get_filter(index)[0]
        if code not in _BUILTIN_FILTERS:
            raise ModelError(
                f"{what} compresses {name} with HDF5 filter {code}, which would need a plugin; "
                "save the weights with Keras (uncompressed)"
            )


def _read(dataset: h5py.Dataset, what: str) -> FileArray:
    values = _finite_values(dataset, what)
    return FileArray(_name(dataset), tuple(int(d) for d in values.shape), _digest(values))


def _finite_shape(dataset: h5py.Dataset, what: str) -> Shape:
    return tuple(int(d) for d in _finite_values(dataset, what).shape)


def _finite_values(dataset: h5py.Dataset, what: str) -> np.ndarray:
    values = _canonical(np.asarray(dataset[()]))
    # Checked after the cast: a float64 1e300 is finite in the file but inf in the model.
    if not np.isfinite(values).all():
        raise ModelError(
            f"{what} holds non-finite values (NaN or inf) in {_name(dataset)} {values.shape}; "
            "weights like these cannot drive: use another file or retrain"
        )
    return values


def _canonical(values: np.ndarray) -> np.ndarray:
    """`values` as C-contiguous float32: the form digests and the finiteness check use.

    float32 is what Keras casts a file's numbers to when it loads them into this project's
    float32 variables, so a float64 file and the model it filled compare equal.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # too big becomes inf: refused later
        return np.ascontiguousarray(values, dtype=np.float32)


def _digest(values: np.ndarray) -> str:
    """SHA-256 of the bytes of `values` (canonical form); callers pair it with the shape."""
    return hashlib.sha256(values.data).hexdigest()


def _check_shapes(model: keras.Model, found: list[Shape], what: str) -> None:
    """Refuse a file whose arrays are not, as shapes, exactly the model's weights."""
    check_shapes(weight_shapes(model), found, what, model.name)


def weight_shapes(model: keras.Model) -> Counter[Shape]:
    """The shapes of `model`'s weights, as a multiset."""
    return Counter(tuple(int(d) for d in w.shape) for w in model.weights)


def check_shapes(expected: Counter[Shape], found: list[Shape], what: str, network: str) -> None:
    """Refuse arrays of shapes `found` unless they are, as a multiset, exactly `expected` (the
    weights of the network called `network`)."""
    in_file = Counter(found)
    extra = in_file - expected
    missing = expected - in_file
    if not extra and not missing:
        return
    extra_text = f"{_arrays(extra.total())} the model lacks ({_shapes(extra)})"
    missing_text = f"lacks {_arrays(missing.total())} the model has ({_shapes(missing)})"
    if extra and missing:
        detail = f"the file holds weights of a different network: {extra_text}, and {missing_text}"
    elif extra:
        detail = f"the file holds {extra_text}"
    else:
        detail = f"the file {missing_text}"
    raise ModelError(f"{what} does not fit {network}: {detail}")


def _arrays(count: int) -> str:
    return f"{count} array" if count == 1 else f"{count} arrays"


def _shapes(counts: Counter[Shape]) -> str:
    """A few shapes of `counts`, e.g. "shapes (3, 3, 32, 64) x2, (64,), ..."."""
    named = [f"{shape}" + (f" x{n}" if n > 1 else "") for shape, n in counts.most_common()]
    more = ", ..." if len(named) > _EXAMPLES else ""
    return "shapes " + ", ".join(named[:_EXAMPLES]) + more


def _check_loaded(model: keras.Model, arrays: list[FileArray], what: str) -> None:
    """Refuse unless the model now holds exactly the file's arrays (shape and content)."""
    expected = Counter((a.shape, a.digest) for a in arrays)
    loaded = Counter(
        (tuple(int(d) for d in w.shape), _digest(_canonical(np.asarray(w.numpy()))))
        for w in model.weights
    )
    if loaded == expected:
        return
    skipped = (expected - loaded).total()
    raise ModelError(
        f"{what} does not fit {model.name}: Keras left {skipped} of the model's arrays "
        "without the file's values (it matched the file to another layer layout); "
        "use weights saved from this network"
    )


def weights_image(model: keras.Model) -> bytes:
    """`model`'s weights as the bytes of a Keras `.weights.h5` file, built in memory.

    The same file `model.save_weights` writes, less the optimizer's state (a compiled model's
    Adam moments would triple it, and the strict loader refuses arrays the network lacks). It
    goes through Keras's own HDF5 store, so Keras lays the file out as its loader expects,
    but into a `BytesIO`: HDF5 never meets a full disk (see the module's docstring). A Keras
    without that store (its internals may move) takes the slower public way instead.
    """
    try:
        from keras.src.saving.saving_lib import H5IOStore, _save_state
    except ImportError:
        return _weights_image_through_a_file(model)
    buffer = io.BytesIO()
    store = H5IOStore(buffer, mode="w")
    try:
        optimizer = getattr(model, "optimizer", None)
        skip = {id(optimizer)} if optimizer is not None else set()
        # Positional: the parameters' names changed between Keras 3 releases.
        _save_state(model, store, None, "", skip)
    finally:
        store.close()
    return buffer.getvalue()


def _weights_image_through_a_file(model: keras.Model) -> bytes:
    """`weights_image` by the public API: `save_weights` into a private temporary folder (not
    the store), then the file copied into memory without the optimizer's group."""
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory(prefix="charles-weights-") as folder:
        saved = Path(folder) / "model.weights.h5"
        model.save_weights(str(saved))
        buffer = io.BytesIO()
        with h5py.File(saved, "r") as source, h5py.File(buffer, "w") as target:
            for key, value in source.attrs.items():
                target.attrs[key] = value
            for name in source:
                if name != "optimizer":
                    source.copy(source[name], target, name=name)
    return buffer.getvalue()
