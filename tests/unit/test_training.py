"""Training smoke tests: ``--config smoke`` end to end into ``tmp_path``, and its guard rails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from ct_triage.models.lesions import load_lesion_segmenter
from ct_triage.models.manifest import WEIGHTS_DIR, load_manifest, verify_file
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.models.train.__main__ import main
from ct_triage.models.train.config import CONFIGS, get_config
from ct_triage.models.train.data import phantom_samples
from ct_triage.models.volume import Volume


def test_configs() -> None:
    assert {"smoke", "cpu", "gpu"} <= set(CONFIGS)
    assert get_config("cpu", steps=7, eval_every=None).steps == 7
    assert not CONFIGS["smoke"].measure
    # the selection phantoms never overlap the training seeds (>= 1000)
    # and are held out from the report phantoms of ``measure``
    from ct_triage.models.train.calibrate import CALIBRATION_PHANTOMS
    from ct_triage.models.train.measure import DEV_PHANTOMS, REPORT_PHANTOMS, SECOND_PHANTOMS

    report = {seed for seed, _, _ in REPORT_PHANTOMS}
    second = {seed for seed, _, _ in SECOND_PHANTOMS}
    dev = {seed for seed, _, _ in DEV_PHANTOMS}
    assert len(dev) == 12
    assert not report & second
    assert not dev & (report | second)
    assert not (report | second | dev) & {seed for seed, _, _ in CALIBRATION_PHANTOMS}
    held = report | second | dev
    for name in ("cpu", "gpu", "finetune", "finetune-context", "finetune-soft-tissue"):
        assert all(seed < 1000 for seed, _ in CONFIGS[name].selection_phantoms)
        assert not held & {seed for seed, _ in CONFIGS[name].selection_phantoms}
    with pytest.raises(KeyError):
        get_config("nope")
    with pytest.raises(ValueError, match="poi_metric"):
        get_config("cpu", poi_metric="median")


@pytest.mark.parametrize("name", ["finetune", "finetune-context", "finetune-soft-tissue"])
def test_finetune_needs_init(tmp_path: Path, name: str) -> None:
    assert CONFIGS[name].needs_init
    with pytest.raises(SystemExit):
        main(["--config", name, "--out", str(tmp_path / "m"), "--quiet"])


@pytest.mark.slow
def test_training_starts_from_init_weights(tmp_path: Path, shared_data: Path) -> None:
    """``init`` loads the given weights: with a zero learning rate they come back unchanged."""
    import torch

    from ct_triage.models.nets import build_lesion_net
    from ct_triage.models.train.loop import train

    torch.manual_seed(123)
    start = build_lesion_net(get_config("smoke").net).state_dict()
    torch.save(start, tmp_path / "checkpoint.pt")
    cfg = get_config("smoke", init=str(tmp_path / "checkpoint.pt"), lr=0.0)
    result = train(cfg, shared_data, progress=False)
    end = result.net.state_dict()
    weights = [k for k in start if k.endswith(".weight")]
    assert weights
    for k in weights:
        torch.testing.assert_close(end[k], start[k], rtol=0, atol=0)


def test_refuses_to_overwrite_shipped_weights() -> None:
    with pytest.raises(SystemExit):
        main(["--config", "smoke", "--out", str(WEIGHTS_DIR), "--quiet"])


@pytest.mark.slow
def test_smoke_training(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "model"
    argv = ["--config", "smoke", "--out", str(out), "--data", str(shared_data), "--quiet"]
    assert main(argv) == 0
    manifest = load_manifest(out)
    verify_file(manifest, out)
    assert (out / "lesion_seg.onnx").is_file()
    assert (out / "history.json").is_file()
    assert 0.0 <= manifest.metrics["lesion_dice"] <= 1.0
    assert manifest.metrics["onnx_parity_max_abs_diff"] < 1e-4
    segmenter = load_lesion_segmenter(RuntimeConfig(model_dir=out, z_step_mm=0.0))
    assert segmenter.identity.sha256 == manifest.sha256


@pytest.mark.slow
def test_phantom_slices_are_cached(tmp_path: Path) -> None:
    first = phantom_samples(1, 64, 10.0, per_volume=2, cache_dir=tmp_path)
    assert len(first) == 2
    assert len(list(tmp_path.glob("phantom_*.npz"))) == 1
    again = phantom_samples(1, 64, 10.0, per_volume=2, cache_dir=tmp_path)
    for a, b in zip(first, again, strict=True):
        assert a.source == b.source
        np.testing.assert_array_equal(a.hu, b.hu)
        np.testing.assert_array_equal(a.onehot, b.onehot)
        assert a.onehot.shape == (3, 64, 64)


def test_softmax_head_background_bias() -> None:
    import torch

    from ct_triage.models.nets import SoftmaxHead

    class Fixed(torch.nn.Module):
        out_channels = 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 3, *x.shape[2:])

    x = torch.zeros(1, 1, 4, 4)
    plain = SoftmaxHead(Fixed())(x)
    biased = SoftmaxHead(Fixed(), 1.0)(x)
    torch.testing.assert_close(plain, torch.full_like(plain, 1 / 3))
    torch.testing.assert_close(biased.sum(dim=1), torch.ones(1, 4, 4))
    assert bool((biased[:, 0] < plain[:, 0]).all())
    assert bool((biased[:, 1] > plain[:, 1]).all())

    class Unknown(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ValueError, match="out_channels"):
        SoftmaxHead(Unknown(), 1.0)


def test_biased_predictor_equals_the_exported_head() -> None:
    """Re-weighting the bias-0 probabilities gives what SoftmaxHead(net, bias) gives."""
    import torch

    from ct_triage.models.nets import build_lesion_net
    from ct_triage.models.train.calibrate import BiasedPredictor
    from ct_triage.models.train.loop import torch_predictor

    torch.manual_seed(1)
    net = build_lesion_net(get_config("smoke").net).eval()
    x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    biased = BiasedPredictor(torch_predictor(net, torch.device("cpu")))
    for bias in (0.0, 0.75, 2.0):
        biased.bias = bias
        want = torch_predictor(net, torch.device("cpu"), bias)(x)
        np.testing.assert_allclose(biased(x), want, atol=2e-6)
    assert len(biased._cache) == 1  # the network ran once


def test_manifest_records_the_background_bias(tmp_path: Path) -> None:
    """The bias baked into the exported head is a manifest field, not only prose."""
    import torch

    from ct_triage.models.manifest import TrainingInfo
    from ct_triage.models.nets import build_lesion_net
    from ct_triage.models.train.export import write_model_dir
    from ct_triage.models.train.loop import input_spec

    torch.manual_seed(2)
    cfg = get_config("smoke")
    net = build_lesion_net(cfg.net).eval()
    training = TrainingInfo(data="test", licence="test")
    write_model_dir(
        net, input_spec(cfg), tmp_path, version="t", training=training, metrics={},
        background_bias=0.75,
    )  # fmt: skip
    assert load_manifest(tmp_path).training.background_bias == 0.75
    # manifests written before the field existed still load, the bias unknown
    assert TrainingInfo(data="old", licence="old").background_bias is None


def test_calibration_choice() -> None:
    from ct_triage.models.train.calibrate import choose

    rows = [
        {
            "background_bias": 0.0,
            "lesion_dice": 0.80,
            "max_abs_error_pp": 1.9,
            "mean_abs_error_pp": 0.9,
        },
        {
            "background_bias": 0.5,
            "lesion_dice": 0.79,
            "max_abs_error_pp": 1.2,
            "mean_abs_error_pp": 0.7,
        },
        {
            "background_bias": 1.0,
            "lesion_dice": 0.76,
            "max_abs_error_pp": 0.8,
            "mean_abs_error_pp": 0.5,
        },
        {
            "background_bias": 1.5,
            "lesion_dice": 0.79,
            "max_abs_error_pp": 1.2,
            "mean_abs_error_pp": 0.6,
        },
    ]
    assert choose(rows, 0.78)["background_bias"] == 1.5  # 1.0 is below the floor; tie on max
    assert choose(rows, 0.70)["background_bias"] == 1.0
    assert choose(rows, 0.99)["background_bias"] == 1.0  # nothing reaches the floor: best error


def test_measure_phantom_sets() -> None:
    from ct_triage.models.train.measure import (
        DEV_PHANTOMS,
        REPORT_PHANTOMS,
        SECOND_PHANTOMS,
        parse_phantoms,
    )

    assert parse_phantoms("second") == SECOND_PHANTOMS
    assert parse_phantoms("dev") == DEV_PHANTOMS
    assert len(SECOND_PHANTOMS) == 12
    assert parse_phantoms("71:mild:60, 77:severe:all") == ((71, "mild", 60), (77, "severe", None))
    assert parse_phantoms(",".join(f"{s}:{v}:{n or 'all'}" for s, v, n in REPORT_PHANTOMS)) == (
        REPORT_PHANTOMS
    )
    for bad in ("71:mild", "x:mild:60", "71:awful:60", "71:mild:4", "71:mild:sixty", ""):
        with pytest.raises(ValueError, match="phantom"):
            parse_phantoms(bad)


def test_measure_phantoms_without_a_lesion_free_phantom_writes_plain_json() -> None:
    """A set without a lesion-free phantom has no healthy metric (it was NaN, not JSON)."""
    import json

    from ct_triage.models.train.measure import measure_phantoms

    def nothing(volume: Volume, lungs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        return np.zeros(volume.shape, dtype=np.uint8)

    metrics, cases = measure_phantoms(nothing, ((71, "moderate", 12),))
    assert "phantom_healthy_max_poi_pp" not in metrics
    assert cases[0]["pred_poi"] == 0.0
    assert float(cases[0]["true_poi"]) > 5.0  # type: ignore[arg-type]
    assert metrics["phantom_poi_max_abs_error_pp"] == pytest.approx(cases[0]["true_poi"])
    json.dumps(metrics, allow_nan=False)
    metrics, _ = measure_phantoms(nothing, ((11, "none", 12), (71, "moderate", 12)))
    assert metrics["phantom_healthy_max_poi_pp"] == 0.0


def test_decompose_splits_a_known_error() -> None:
    """A hand-made truth and prediction give the volumes and the split of the error."""
    from ct_triage.models.train.diagnose import decompose

    shape = (2, 10, 10)
    true_lungs = np.zeros(shape, dtype=bool)
    true_lungs[:, :, :5] = True  # 100 voxels
    true_les = np.zeros(shape, dtype=bool)
    true_les[:, :4, :5] = True  # 40 voxels: 40 %
    pred_lungs = true_lungs.copy()
    pred_lungs[:, :2, 5] = True  # 4 voxels of false lung (chest wall)
    pred_les = np.zeros(shape, dtype=bool)
    pred_les[:, :3, :5] = True  # 30 of the 40 found, 10 missed
    pred_les[:, :2, 5] = True  # 4 false outside the true lungs
    pred_les[:, 5, 0] = True  # 2 false inside the lungs, on a vessel
    hu = np.full(shape, -800.0)
    hu[:, 5, 0] = 40.0
    d = decompose(true_lungs, true_les, pred_lungs, pred_les, hu, voxel_ml=0.5)
    assert d["true_poi"] == pytest.approx(40.0)
    assert d["lesion_true_ml"] == pytest.approx(20.0)
    assert d["lesion_pred_ml"] == pytest.approx(18.0)  # 36 voxels
    assert d["lesion_missed_ml"] == pytest.approx(5.0)
    assert d["lesion_missed_outside_pred_lungs_ml"] == 0.0
    assert d["lesion_false_ml"] == pytest.approx(3.0)
    assert d["lesion_false_outside_true_lungs_ml"] == pytest.approx(2.0)
    assert d["lesion_false_dense_in_lungs_ml"] == pytest.approx(1.0)
    assert d["lung_false_ml"] == pytest.approx(2.0)
    assert d["lung_missed_ml"] == 0.0
    assert d["poi_error_pp"] == pytest.approx(100 * 36 / 104 - 40.0)
    assert d["numerator_pp"] == pytest.approx(-4.0)
    assert d["numerator_pp"] + d["denominator_pp"] == pytest.approx(d["poi_error_pp"])
    with pytest.raises(ValueError, match="same shape"):
        decompose(true_lungs, true_les[0], pred_lungs, pred_les, hu, 0.5)
    with pytest.raises(ValueError, match="empty"):
        decompose(true_lungs, true_les, np.zeros(shape, bool), pred_les, hu, 0.5)


def test_diagnose_command_agrees_with_quantify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command runs the shipped model on a phantom and its split adds up to the error."""
    import json

    from ct_triage.models.train.diagnose import main as diagnose

    out = tmp_path / "d.json"
    assert diagnose(["--phantoms", "13:moderate:16", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["seed"] == 13
    assert row["slices"] == 16
    assert row["numerator_pp"] + row["denominator_pp"] == pytest.approx(row["poi_error_pp"])
    assert row["lesion_true_ml"] > 0
    assert abs(row["poi_error_pp"]) < 5.0  # the shipped model, not an empty prediction
    assert "worst" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        diagnose(["--phantoms", "13:awful:16"])


def test_soft_tissue_ce_weighs_only_dense_pixels() -> None:
    """The extra loss of ``soft_tissue_weight`` counts the soft-tissue pixels only."""
    import torch
    import torch.nn.functional as nnf

    from ct_triage.models.train.loop import soft_tissue_ce

    cfg = get_config("smoke")
    x = torch.zeros(1, 1, 4, 4)  # -1024 HU everywhere
    x[..., :2] = (40.0 - cfg.hu_window[0]) / (cfg.hu_window[1] - cfg.hu_window[0])  # 40 HU
    y = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 2, :, 2:] = 9.0  # confidently wrong on the air half only
    ce = soft_tissue_ce(logits, x, y, cfg)
    assert float(ce) == pytest.approx(float(nnf.cross_entropy(logits[..., :2], y[:, 0, :, :2])))
    logits[:, 2, :, :2] = 9.0  # now wrong on the soft tissue too: the loss grows
    assert float(soft_tissue_ce(logits, x, y, cfg)) > 5.0
    assert float(soft_tissue_ce(logits, torch.zeros_like(x), y, cfg)) == 0.0


@pytest.mark.parametrize("flip", [True, False])
def test_augment_flips_only_when_asked(flip: bool) -> None:
    """``flip=False`` keeps the left-right anatomy (the mass stays on its side)."""
    import torch

    from ct_triage.models.train.loop import augment

    cfg = get_config("smoke", flip=flip, patch=0)
    hu = torch.full((64, 1, 64, 64), -1000.0)
    hu[..., :16] = 40.0  # soft tissue in the left quarter of the image
    onehot = torch.zeros(64, 3, 64, 64)
    onehot[:, 0] = 1.0
    x, _ = augment(hu, onehot, cfg, torch.Generator().manual_seed(0))
    cols = torch.arange(64, dtype=torch.float32)
    bright = (x[:, 0] > 0.5).float()
    centre = (bright.sum(dim=1) * cols).sum(dim=1) / bright.sum(dim=(1, 2))
    on_right = int((centre > 32).sum())
    assert (on_right > 10) if flip else (on_right == 0)


def test_crossvalidation_folds_partition_the_medseg_slices(shared_data: Path) -> None:
    from ct_triage.models.train.data import N_FOLDS, medseg_split

    held: list[str] = []
    for fold in range(N_FOLDS):
        train, val = medseg_split(shared_data, fold)
        assert len(val) == 10
        assert not {f.name for f in train} & {f.name for f in val}
        held += [f.name for f in val]
    everything, none = medseg_split(shared_data, -1)
    assert sorted(held) == sorted(f.name for f in everything)  # each slice held out once
    assert none == []
    with pytest.raises(ValueError, match="fold"):
        medseg_split(shared_data, 5)


def test_semiseg_slices_are_turned_to_the_radiological_convention() -> None:
    from ct_triage.models.train.data import _oriented

    img = np.zeros((4, 6))
    img[3, 0] = 1  # coronacases: stored with the spine (here the mark) on the left
    assert np.argwhere(_oriented(img, "Data-1_coronacases_org_001"))[0].tolist() == [5, 3]
    img = np.zeros((4, 6))
    img[3, 0] = 1  # radiopaedia: transposed
    assert np.argwhere(_oriented(img, "x_radiopaedia_org_y"))[0].tolist() == [0, 3]
    with pytest.raises(ValueError, match="no orientation"):
        _oriented(img, "unknown_source")


def test_semiseg_samples_have_calibrated_hu_and_lesion_labels(shared_data: Path) -> None:
    from ct_triage.models.train.data import semiseg_samples

    samples = semiseg_samples(shared_data, 64, every=200)
    assert len(samples) >= 10
    lesion = 0.0
    for s in samples:
        assert s.kind == "semiseg"
        assert s.onehot.shape == (3, 64, 64)
        lesion += float(s.onehot[1:].astype(np.float32).sum())
    assert lesion > 0
    # dark lung near -850 HU and soft tissue near +90 HU after the two-point calibration
    hu = np.concatenate([s.hu.ravel() for s in samples])
    inside = hu[hu > -1020]
    assert -950 < float(np.percentile(inside, 25)) < -600
    assert -200 < float(np.percentile(inside, 90)) < 400


@pytest.mark.parametrize("strength", [-1.0, 1.0])
def test_kernel_augmentation_blurs_or_sharpens(strength: float) -> None:
    import torch

    from ct_triage.models.train.loop import _kernel

    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 1, 32, 32), generator=gen)
    out = _kernel(x, torch.tensor([strength, 0.0]))
    detail = float((out[0] - out[0].mean()).std())
    before = float((x[0] - x[0].mean()).std())
    assert (detail < before) if strength < 0 else (detail > before)
    assert torch.equal(out[1], x[1])  # |strength| < 0.3: unchanged


def test_weights_recovered_from_the_shipped_onnx_give_its_output(tmp_path: Path) -> None:
    """from_onnx: folded batch norms become the identity; logits + bias = the ONNX output."""
    import torch

    from ct_triage.models.nets import LesionNetConfig, build_lesion_net
    from ct_triage.models.train.from_onnx import main as from_onnx

    out = tmp_path / "checkpoint.pt"
    assert from_onnx([str(out)]) == 0
    net = build_lesion_net(LesionNetConfig())
    net.load_state_dict(torch.load(out, weights_only=True))
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn  # the architecture has batch norms, most of them folded in the export
    seg = load_lesion_segmenter(RuntimeConfig(z_step_mm=0.0))
    x = np.random.default_rng(1).random((1, 1, 224, 224), dtype=np.float32)
    expected = seg.predictor.predict(x)
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    logits[:, 0] -= float(load_manifest(WEIGHTS_DIR).training.background_bias or 0.0)
    got = torch.softmax(logits, dim=1).numpy()
    assert np.abs(got - expected).max() < 1e-3


def test_a_phantom_generator_failure_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training set is never silently shortened by a failing phantom (issue 20)."""
    from ct_triage.models import phantom

    def broken(spec: phantom.PhantomSpec) -> phantom.Phantom:
        raise phantom.PhantomError(f"cannot build seed {spec.seed}")

    monkeypatch.setattr(phantom, "generate", broken)
    with pytest.raises(phantom.PhantomError, match="seed 1000"):
        phantom_samples(2, 64, 10.0, per_volume=2, cache_dir=tmp_path)
    assert not list(tmp_path.glob("phantom_*.npz"))
