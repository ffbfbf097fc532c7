import json

import numpy as np
import pytest
import torch

from lakescore import bundle as B
from lakescore.features import numeric_feature_set
from lakescore.manifest import Architecture, FeatureSetSpec, Manifest, PreprocessingRecord, ScoreDefinition, ThresholdRecord
from lakescore.models import _CPU_FORWARD_ROWS, AUTOENCODER, MLP, build_model, explain_batch, model_from_bundle, score_batch
from lakescore.preprocess import Preprocessing


def _manifest(kind="mlp", n=3):
    features = ["a", "b", "c"][:n]
    return Manifest(
        name="m",
        version=1,
        kind=kind,
        architecture=Architecture(kind, n, (4, 2)),
        feature_set=FeatureSetSpec.of(numeric_feature_set(features)),
        preprocessing=PreprocessingRecord(Preprocessing.from_statistics(features, *[np.zeros(n)] * 4, np.ones(n))),
        score=ScoreDefinition.for_kind(kind),
        threshold=ThresholdRecord("fixed", 0.5, 0.5),
    )


def _write(tmp_path, kind="mlp"):
    torch.manual_seed(0)
    model = build_model(_manifest(kind).architecture.to_json())
    return B.write_bundle(tmp_path / "b", _manifest(kind), model.state_dict(), {"h": [1, 2]}, {"plot.png": b"png"})


def test_a_written_bundle_loads_back_verified_with_every_file_hashed(tmp_path):
    bundle = _write(tmp_path)
    loaded = B.load_bundle(tmp_path / "b")
    assert loaded.sha256 == bundle.sha256
    assert set(loaded.manifest.files) == {"weights.safetensors", "reference.json", "plot.png"}
    assert loaded.manifest.format_version == B.FORMAT_VERSION
    assert (loaded.label, loaded.kind, loaded.threshold) == ("m@1", MLP, 0.5)
    assert loaded.reference == {"h": [1, 2]}
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["b"]  # no staging folder left


def test_an_altered_file_is_refused_with_its_name(tmp_path):
    _write(tmp_path)
    weights = tmp_path / "b" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(B.BundleError, match="weights.safetensors has sha256"):
        B.load_bundle(tmp_path / "b")


def test_another_format_version_is_refused(tmp_path):
    _write(tmp_path)
    path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(B.BundleError, match="format version 99"):
        B.load_bundle(tmp_path / "b")


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path):
    _write(tmp_path)
    (tmp_path / "b" / "model.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(B.BundleError, match="model.pkl"):
        B.load_bundle(tmp_path / "b")


def test_a_bundle_is_never_overwritten(tmp_path):
    _write(tmp_path)
    with pytest.raises(B.BundleError, match="immutable"):
        _write(tmp_path)


def test_preprocessing_imputes_clips_centres_and_scales_and_counts_invalid_values():
    p = Preprocessing(
        ("a", "b"),
        impute=np.array([1.0, 2.0]),
        clip_low=np.array([0.0, -10.0]),
        clip_high=np.array([5.0, 10.0]),
        center=np.array([1.0, 0.0]),
        scale=np.array([2.0, 5.0]),
    )
    x = np.array([[np.nan, 20.0], [np.inf, -np.inf], [-3.0, 5.0]])
    out, invalid = p.apply(x)
    np.testing.assert_allclose(out, [[0.0, 2.0], [0.0, 0.4], [-0.5, 1.0]])
    assert invalid.tolist() == [2, 1]
    assert Preprocessing.from_manifest(p.to_manifest()).apply(x)[0].tolist() == out.tolist()


def test_statistics_of_a_constant_or_empty_feature_give_a_usable_scale():
    p = Preprocessing.from_statistics(
        ["a", "b"], np.array([3.0, np.nan]), np.array([3.0, np.nan]), np.array([3.0, np.nan]),
        np.array([3.0, np.nan]), np.array([0.0, np.nan]),
    )
    assert p.scale.tolist() == [1.0, 1.0]
    assert p.impute.tolist() == [3.0, 0.0]


def test_the_clip_margin_widens_the_bounds_by_the_quantile_range_and_must_not_be_negative():
    stats = [np.array([1.0]), np.array([0.0]), np.array([2.0]), np.array([1.0]), np.array([0.5])]
    p = Preprocessing.from_statistics(["a"], *stats, clip_margin=1.5)
    assert (p.clip_low.tolist(), p.clip_high.tolist()) == ([-3.0], [5.0])
    assert Preprocessing.from_statistics(["a"], *stats).clip_high.tolist() == [2.0]
    with pytest.raises(ValueError, match="clip_margin=-1"):
        Preprocessing.from_statistics(["a"], *stats, clip_margin=-1)


@pytest.mark.parametrize("kind", [MLP, AUTOENCODER])
def test_scores_are_deterministic_and_explanations_rank_features(tmp_path, kind):
    bundle = _write(tmp_path, kind)
    model = model_from_bundle(bundle)
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    first, second = score_batch(model, kind, x), score_batch(model, kind, x)
    assert first.shape == (50,) and np.array_equal(first, second)
    assert np.array_equal(score_batch(model, kind, x[:7]), first[:7])
    # Column-major rows (the features' layout) are read in place, a strided view is copied first:
    # the same scores either way, up to the summation order of another matrix layout.
    fortran = np.asfortranarray(x)
    assert np.array_equal(score_batch(model, kind, fortran), score_batch(model, kind, fortran))
    np.testing.assert_allclose(score_batch(model, kind, fortran), first, rtol=1e-6)
    assert np.array_equal(score_batch(model, kind, x[::2]), score_batch(model, kind, np.ascontiguousarray(x[::2])))
    # More rows than one CPU slice (lakescore.models._CPU_FORWARD_ROWS), with a short last one:
    # every row scored, as one pass over the whole batch scores it.
    many = np.random.default_rng(1).normal(size=(2 * _CPU_FORWARD_ROWS + 37, 3)).astype(np.float32)
    with torch.inference_mode():
        whole = model(torch.from_numpy(many))
        whole = torch.sigmoid(whole) if kind == MLP else ((whole - torch.from_numpy(many)) ** 2).mean(dim=1)
    sliced = score_batch(model, kind, many)
    np.testing.assert_allclose(sliced, whole.double().numpy(), rtol=1e-6, atol=1e-12)
    assert np.array_equal(sliced, score_batch(model, kind, many))
    order, contrib = explain_batch(model, kind, x, top_k=2)
    assert order.shape == (50, 2) and contrib.shape == (50, 2)
    assert np.all(contrib[:, 0] >= contrib[:, 1])
    if kind == AUTOENCODER:
        # The reconstruction-error contributions add up to the score.
        _, all_contrib = explain_batch(model, kind, x, top_k=3)
        np.testing.assert_allclose(all_contrib.sum(axis=1), first, rtol=1e-5)


def test_the_mlp_explanation_is_autograd_gradient_times_input_bit_for_bit():
    torch.manual_seed(3)
    model = build_model({"kind": MLP, "n_features": 6, "hidden": [16, 8], "dropout": 0.3}).eval()
    x = torch.randn(40, 6)
    with torch.enable_grad():
        leaf = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model(leaf).sum(), leaf)
    with torch.inference_mode():
        assert torch.equal(model.logit_gradient(x), gradient)
    order, contributions = explain_batch(model, MLP, x.numpy(), top_k=6)
    expected = (gradient * x).double().numpy()
    np.testing.assert_array_equal(contributions, np.take_along_axis(expected, order, axis=1))
    assert np.all(np.diff(contributions, axis=1) <= 0)  # largest first
    with pytest.raises(RuntimeError, match="eval"):
        model.train().logit_gradient(x)


def test_tied_contributions_rank_in_feature_order_so_reasons_match_on_every_device():
    # A row that switches every ReLU off has a zero gradient: all its contributions tie at 0 or
    # -0. Torch's unstable sort orders 17 or more ties differently on the CPU (10, 20, 19 for 21
    # features) and on CUDA (seen on an H200: 641 of 10,000 flagged rows had other reasons,
    # benchmarks/gpu.py); ties keep the features' order on both.
    n = 21  # as many features as the transactions feature set
    model = build_model({"kind": MLP, "n_features": n, "hidden": [4], "dropout": 0.0}).eval()
    with torch.no_grad():
        first, last = model.net[0], model.net[-1]
        first.weight.copy_(torch.ones(4, n))
        first.bias.zero_()
        last.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5]]))
    off = -np.ones(n, np.float32)
    mixed = np.where(np.arange(n) % 2 == 0, -1.0, 0.5).astype(np.float32)  # sums below 0: ReLUs off
    on = np.ones(n, np.float32)
    on[[4, 9]] = 2.0
    order, contributions = explain_batch(model, MLP, np.stack([off, mixed, on]), top_k=3)
    assert order[:2].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert np.all(contributions[:2] == 0.0)
    # Every ReLU on: the gradient is 2.5 for every feature; features 4 and 9 lead, then the ties.
    assert order[2].tolist() == [4, 9, 0] and contributions[2].tolist() == [5.0, 5.0, 2.5]


def test_scoring_no_rows_returns_empty_arrays(tmp_path):
    model = model_from_bundle(_write(tmp_path))
    assert score_batch(model, MLP, np.empty((0, 3), np.float32)).shape == (0,)
    assert explain_batch(model, MLP, np.empty((0, 3), np.float32), 3)[0].shape == (0, 3)
