"""The strict weights loader: a file loads exactly, or it is refused with one clear line."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras import layers

from agent.errors import ModelError
from agent.nets.registry import get_line
from agent.nets.weights import load_weights_strictly

LINE = "pilotnet_small"


def build() -> keras.Model:
    return get_line(LINE).build("none")


@pytest.fixture(scope="module")
def donor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A pilotnet_small weights file and the arrays it holds."""
    model = build()
    path = tmp_path_factory.mktemp("donor") / "donor.weights.h5"
    model.save_weights(str(path))
    return path, model.get_weights()


def edited(donor_path: Path, folder: Path, edit: Callable[[h5py.File], None]) -> Path:
    """A copy of the donor file changed by `edit`."""
    path = folder / "edited.weights.h5"
    shutil.copy(donor_path, path)
    with h5py.File(path, "a") as file:
        edit(file)
    return path


def refused(path: Path, model: keras.Model | None = None) -> str:
    """The one-line message loading `path` fails with."""
    with pytest.raises(ModelError) as caught:
        load_weights_strictly(model or build(), path, f"test file {path.name}")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("test file "), message
    return message


def same(model: keras.Model, arrays: list[np.ndarray]) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), arrays, strict=True))


def test_a_matching_file_loads_exactly_even_on_a_thread(donor, tmp_path: Path) -> None:
    path, arrays = donor
    model = build()
    assert not same(model, arrays)  # a fresh start differs, so equality below means it loaded
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_weights_strictly(model, path, "donor")
        except BaseException as error:  # handed to the main thread's assertion
            errors.append(error)

    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    assert errors == []
    assert same(model, arrays)


def test_extra_arrays_are_refused_before_the_model_is_touched(donor, tmp_path: Path) -> None:
    # Keras 3.15 loads this file without a word: the bogus layer is simply never read.
    path = edited(
        donor[0],
        tmp_path,
        lambda f: f.create_dataset("layers/bogus_layer/vars/0", data=np.zeros(3, "float32")),
    )
    model = build()
    before = model.get_weights()
    message = refused(path, model)
    assert "does not fit pilotnet_small: the file holds 1 array the model lacks" in message
    assert "shapes (3,)" in message
    assert same(model, before)


def test_missing_arrays_are_refused_before_the_model_is_touched(donor, tmp_path: Path) -> None:
    path = edited(donor[0], tmp_path, lambda f: f.__delitem__("layers/dense_6"))
    model = build()
    before = model.get_weights()
    message = refused(path, model)
    assert "the file lacks 2 arrays the model has (shapes (10, 1), (1,))" in message
    assert same(model, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_arrays_are_refused(donor, tmp_path: Path, bad: float) -> None:
    def poison(file: h5py.File) -> None:
        file["layers/dense/vars/0"][5, 7] = bad

    message = refused(edited(donor[0], tmp_path, poison))
    assert "holds non-finite values (NaN or inf) in layers/dense/vars/0 (3328, 100)" in message


def test_float64_that_overflows_float32_is_refused(donor, tmp_path: Path) -> None:
    # Finite in the file, inf once Keras casts it into the float32 model.
    def widen(file: h5py.File) -> None:
        values = file["layers/dense_5/vars/1"][()].astype("float64")
        values[0] = 1e300
        del file["layers/dense_5/vars/1"]
        file["layers/dense_5/vars/1"] = values

    assert "non-finite" in refused(edited(donor[0], tmp_path, widen))


def test_weights_of_the_other_line_say_so(donor) -> None:
    flagship = get_line("model_0005_inceptionresnetv2").build("none")
    message = refused(donor[0], flagship)
    assert "does not fit model_0005_inceptionresnetv2: the file holds weights of a different " in (
        message
    )
    assert "18 arrays the model lacks" in message and "lacks 908 arrays the model has" in message
    assert "Keras version" not in message


@pytest.mark.parametrize(
    "content",
    [b"", b"junk" * 100, "truncated"],
    ids=["empty", "junk", "truncated"],
)
def test_unreadable_files_say_so_not_does_not_fit(donor, tmp_path: Path, content) -> None:
    path = tmp_path / "broken.weights.h5"
    if content == "truncated":
        data = donor[0].read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    message = refused(path)
    assert "is not a readable HDF5 weights file (corrupt or truncated?" in message
    assert "does not fit" not in message


def test_files_that_reach_outside_themselves_are_refused(donor, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file["x"] = np.zeros(3, "float32")

    def link(file: h5py.File) -> None:
        file["layers/elsewhere"] = h5py.ExternalLink(str(other), "/x")

    assert "holds a link" in refused(edited(donor[0], tmp_path, link))


def replace_last_bias(file: h5py.File, make: Callable[[h5py.Group, str], object]) -> None:
    """Swap the last layer's (1,) bias for a dataset made by `make(group, name)`."""
    group = file["layers/dense_6/vars"]
    del group["1"]
    make(group, "1")


def test_arrays_stored_outside_the_file_are_refused(donor, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(bytes(4))

    def external(group: h5py.Group, name: str) -> object:
        return group.create_dataset(name, (1,), "float32", external=[(str(outside), 0, 4)])

    path = edited(donor[0], tmp_path, lambda f: replace_last_bias(f, external))
    assert "stores layers/dense_6/vars/1 outside itself" in refused(path)


def test_a_filter_that_would_load_a_plugin_is_refused(donor, tmp_path: Path) -> None:
    def plugin_filtered(group: h5py.Group, name: str) -> object:
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((1,))
        plist.set_filter(307, h5py.h5z.FLAG_OPTIONAL, (1,))  # bzip2's id: not built in
        space = h5py.h5s.create_simple((1,))
        return h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=plist)

    path = edited(donor[0], tmp_path, lambda f: replace_last_bias(f, plugin_filtered))
    assert "with HDF5 filter 307, which would need a plugin" in refused(path)

    def deflated(group: h5py.Group, name: str) -> object:  # built in: fine
        return group.create_dataset(name, data=np.zeros(1, "float32"), compression="gzip")

    path = edited(donor[0], tmp_path, lambda f: replace_last_bias(f, deflated))
    load_weights_strictly(build(), path, "a deflated file")


def test_text_where_an_array_belongs_is_refused(donor, tmp_path: Path) -> None:
    def text(group: h5py.Group, name: str) -> object:
        return group.create_dataset(name, data=np.array([b"import os"]))

    path = edited(donor[0], tmp_path, lambda f: replace_last_bias(f, text))
    assert "holds layers/dense_6/vars/1, which is not a numeric array" in refused(path)


def test_only_hdf5_weight_files_are_opened(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK")
    assert "is not an HDF5 weights file" in refused(path)
    assert "no such file" in refused(tmp_path / "missing.weights.h5")


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_keras_errors_become_model_errors(tmp_path: Path) -> None:
    # The right arrays in Keras 2's layout under a Keras 3 name: Keras raises, we explain.
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path / "legacy.weights.h5"
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, build())
    assert "does not fit pilotnet_small: Keras refused it (" in refused(path)


def test_legacy_h5_backbone_files_still_load(tmp_path: Path) -> None:
    # What keras.applications downloads (`*_notop.h5`) is Keras 2's layout.
    from keras.src.legacy.saving import legacy_h5_format

    source = build()
    path = tmp_path / "backbone_notop.h5"
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, source)
    model = build()
    load_weights_strictly(model, path, "legacy")
    assert same(model, source.get_weights())


class Blocks(layers.Layer):
    """Sublayers kept in nested lists: Keras saves them in `container` groups."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.blocks = [[layers.Dense(4, name="a")], [layers.Dense(4, name="b")]]

    def build(self, shape) -> None:
        for [block] in self.blocks:
            block.build(shape)
            shape = (*shape[:-1], 4)

    def call(self, x):
        for [block] in self.blocks:
            x = block(x)
        return x


def _nested() -> keras.Model:
    frame = keras.Input((4,))
    return keras.Model(frame, Blocks(name="blocks")(frame))


def test_arrays_keras_silently_skips_are_caught_after_loading(tmp_path: Path) -> None:
    # A file laid out like older Keras versions wrote nested containers: Keras only warns
    # ("will retain their freshly-initialized weights") and loads nothing into the blocks.
    # The file's arrays still match the model's shapes, so only the post-load check sees it.
    path = tmp_path / "nested.weights.h5"
    _nested().save_weights(str(path))
    with h5py.File(path, "a") as file:
        group = file["layers/blocks/blocks"]
        for name in list(group):
            group.move(name, f"old_{name}")
    with pytest.warns(UserWarning, match="Skipping nested container"):
        message = refused(path, _nested())
    assert "Keras left 2 of the model's arrays without the file's values" in message


def test_the_in_memory_weights_file_is_keras_own_less_the_optimizer(tmp_path: Path) -> None:
    """Publishing builds the file in memory through Keras's own HDF5 store (a private Keras
    API, so a Keras upgrade that changes it must fail here, not in a user's trainer)."""
    import io

    from agent.nets.weights import _weights_image_through_a_file, weights_image

    model = build()
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    saved = tmp_path / "saved.weights.h5"
    model.save_weights(str(saved))

    def arrays(source: Path | io.BytesIO) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with h5py.File(source, "r") as file:
            file.visititems(
                lambda name, item: found.__setitem__(name, item[()])
                if isinstance(item, h5py.Dataset) else None
            )  # fmt: skip
        return found

    on_disk = {k: v for k, v in arrays(saved).items() if not k.startswith("optimizer/")}
    assert any(k.startswith("optimizer/") for k in arrays(saved))  # Keras did save Adam's state
    # Both ways give the same arrays: Keras's store in memory, and the public API's file.
    for image_of in (weights_image, _weights_image_through_a_file):
        in_memory = arrays(io.BytesIO(image_of(model)))
        assert sorted(in_memory) == sorted(on_disk)
        assert all(np.array_equal(in_memory[k], on_disk[k]) for k in on_disk)
    image = tmp_path / "image.weights.h5"
    image.write_bytes(weights_image(model))
    fresh = build()
    load_weights_strictly(fresh, image, "test file image.weights.h5")
    assert same(fresh, model.get_weights())
