"""The model factory: every model builds offline, frozen layers never travel, weights errors are clear."""

import numpy as np
import pytest
import keras

from hemafed.models import (COMPACT, MODELS, ModelError, build_model, count_params, get_exchanged, load_model,
                            save_model, set_exchanged)


def test_same_seed_same_initial_weights_and_round_trip():
    a, b = build_model("cnn", 8, 32, seed=5), build_model("cnn", 8, 32, seed=5)
    wa, wb = get_exchanged(a), get_exchanged(b)
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    c = build_model("cnn", 8, 32, seed=6)
    assert not all(np.array_equal(x, y) for x, y in zip(wa, get_exchanged(c)))
    set_exchanged(c, wa)
    assert all(np.array_equal(x, y) for x, y in zip(wa, get_exchanged(c)))
    p = count_params(a)
    assert p["trainable"] == p["total"] == p["exchanged"] > 10_000
    assert a.output_shape == (None, 8)


def test_unknown_model_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'alexnet'"):
        build_model("alexnet", 8, 32)
    with pytest.raises(ModelError, match="never downloads weights"):
        build_model("mobilenetv2", 8, 32, weights=str(tmp_path / "absent.h5"))
    with pytest.raises(ModelError, match="no pretrained weights"):
        build_model("cnn", 8, 32, weights=str(tmp_path / "x.h5"))
    with pytest.raises(ModelError, match="at least 2 classes"):
        build_model("cnn", 1, 32)


def test_mobilenetv2_frozen_backbone_does_not_travel():
    m = build_model("mobilenetv2", 8, 32)
    p = count_params(m)
    assert p["total"] > 2_000_000  # the backbone is there
    # only the head travels: GAP has no weights; BatchNorm(1280) 4 x 1280 + Dense 1280 x 8 + 8
    assert p["exchanged"] == 4 * 1280 + 1280 * 8 + 8
    assert sum(w.size for w in get_exchanged(m)) == p["exchanged"]


def test_local_norm_keeps_normalisation_layers_home():
    m = build_model("cnn-bn", 8, 32)
    all_w, no_norm = get_exchanged(m), get_exchanged(m, local_norm=True)
    assert len(no_norm) < len(all_w)
    assert sum(w.size for w in all_w) - sum(w.size for w in no_norm) == 4 * 2 * (16 + 32 + 64)


@pytest.mark.parametrize("name", [n for n in MODELS if n not in (*COMPACT, "mobilenetv2")])
def test_applications_build_offline(name):
    m = build_model(name, 3, 32)
    assert m.output_shape == (None, 3)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.float32)
    probs = m(x, training=False).numpy()
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)


def test_keras_file_round_trip(tmp_path):
    m = build_model("cnn", 4, 32, seed=1)
    save_model(m, tmp_path / "m.keras")
    back = load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(back(x, training=False).numpy(), m(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_cnn_wide_doubles_every_block_and_keeps_groupnorm():
    narrow, wide = build_model("cnn", 8, 32), build_model("cnn-wide", 8, 32)
    kernels = {m.name: [lw.shape[-1] for lw in (layer.kernel for layer in m.layers if layer.name.endswith("conv1"))]
               for m in (narrow, wide)}
    assert kernels == {narrow.name: [16, 32, 64], wide.name: [32, 64, 128]}
    assert not any("bn" in layer.name for layer in wide.layers)
    assert sum(isinstance(layer, keras.layers.GroupNormalization) for layer in wide.layers) == 6
    assert wide.output_shape == (None, 8)


def test_cnn_small_halves_every_block_for_a_quarter_of_the_parameters():
    """cnn-small: 8/16/32 filters; the 3x3 convolutions' weights scale with filters squared, so the
    exchanged update (and DP-FedAvg's noise norm, which grows with its square root) shrinks."""
    small, cnn = build_model("cnn-small", 8, 28), build_model("cnn", 8, 28)
    assert [layer.kernel.shape[-1] for layer in small.layers if layer.name.endswith("conv1")] == [8, 16, 32]
    assert sum(isinstance(layer, keras.layers.GroupNormalization) for layer in small.layers) == 6
    convs = 9 * (3 * 8 + 8 * 8 + 8 * 16 + 16 * 16 + 16 * 32 + 32 * 32)  # no biases: GroupNorm follows
    group_norms = 2 * 2 * (8 + 16 + 32)  # gamma and beta, two per block
    classifier = 32 * 8 + 8
    n = convs + group_norms + classifier
    assert n == 18560 and count_params(small) == {"trainable": n, "total": n, "exchanged": n}
    assert 3.9 < count_params(cnn)["total"] / count_params(small)["total"] < 4.0
    assert small.name == "hemafed_cnn_group_8" and small.output_shape == (None, 8)


def test_cnn_deep_adds_a_fourth_block_after_a_third_pooling():
    wide, deep = build_model("cnn-wide", 8, 64), build_model("cnn-deep", 8, 64)
    assert [layer.kernel.shape[-1] for layer in deep.layers if layer.name.endswith("conv1")] == [32, 64, 128, 256]
    assert [layer.name for layer in deep.layers if isinstance(layer, keras.layers.MaxPooling2D)] == ["pool1", "pool2", "pool3"]
    assert deep.get_layer("block4_conv2").output.shape == (None, 8, 8, 256)  # 64 px / 2^3
    assert sum(isinstance(layer, keras.layers.GroupNormalization) for layer in deep.layers) == 8
    # the wide model's blocks are unchanged; block 4 adds 3x3 convs 128->256 and 256->256 and their GroupNorm
    block4 = 9 * 128 * 256 + 9 * 256 * 256 + 2 * 2 * 256
    classifier_growth = (256 - 128) * 8
    assert count_params(deep)["total"] == count_params(wide)["total"] + block4 + classifier_growth
    assert (wide.name, deep.name) == ("hemafed_cnn_group_32", "hemafed_cnn_group_32x4")
    assert deep.output_shape == (None, 8)
