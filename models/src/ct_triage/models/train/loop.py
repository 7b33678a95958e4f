"""The training loop: augmentation, Dice + cross-entropy loss, validation Dice."""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as nnf
from monai.losses.dice import DiceCELoss
from torch import nn

from ct_triage.models.lesions import PredictFn, segment_volume
from ct_triage.models.manifest import InputSpec
from ct_triage.models.nets import SoftmaxHead, build_lesion_net
from ct_triage.models.train.config import SOFT_TISSUE_HU, TrainConfig
from ct_triage.models.train.data import (
    MedsegSlice,
    PhantomCase,
    Sample,
    healthy_samples,
    load_medseg,
    medseg_samples,
    medseg_split,
    negative_volume_samples,
    phantom_cases,
    phantom_samples,
    semiseg_samples,
)
from ct_triage.models.train.measure import evaluate_slices

logger = logging.getLogger(__name__)


def input_spec(cfg: TrainConfig) -> InputSpec:
    """The manifest input description for a configuration."""
    return InputSpec(
        channels=cfg.net.in_channels,
        height=cfg.size,
        width=cfg.size,
        hu_window=cfg.hu_window,
        crop_margin_mm=cfg.crop_margin_mm,
    )


@dataclass
class TrainResult:
    """The trained network and what was measured on the way."""

    net: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[MedsegSlice] = field(default_factory=list)
    best_step: int = 0
    background_bias: float = 0.0
    calibration: list[dict[str, float]] = field(default_factory=list)


def augment(
    hu: torch.Tensor,
    onehot: torch.Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
    approx_hu: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CT augmentations on a batch: HU scale/shift, rotation, zoom, shift, left-right flip
    (``cfg.flip``), noise.

    ``hu`` is ``(B, 1, S, S)`` HU, ``onehot`` ``(B, K, S, S)``; ``approx_hu`` (``(B,)`` bool)
    marks samples whose HU are only approximate (MedSeg): they get a wide calibration jitter
    (x0.9-1.1, +-50 HU), true-HU samples a scanner-like one (x0.97-1.03, +-15 HU) that keeps
    the faint lesion edges of the phantoms meaningful. Returns the windowed input in
    ``[0, 1]`` and integer labels ``(B, 1, S, S)``.
    """
    b = hu.shape[0]
    onehot = onehot.float()

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    # HU calibration jitter around healthy lung (-850 HU).
    wide = torch.ones(b, dtype=torch.bool) if approx_hu is None else approx_hu
    a = torch.where(wide, u(0.9, 1.1), u(0.97, 1.03))
    sh = torch.where(wide, u(-50.0, 50.0), u(-15.0, 15.0))
    hu = (hu + 850.0) * a.view(b, 1, 1, 1) - 850.0 + sh.view(b, 1, 1, 1)
    lo, hi = cfg.hu_window
    x = (hu.clamp(lo, hi) - lo) / (hi - lo)
    theta_r = u(-15.0, 15.0) * math.pi / 180.0
    zoom = torch.exp(u(math.log(0.8), math.log(1.25)))
    # drawn with or without flips, so both settings give the other augmentations the same draws
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    if not cfg.flip:
        flip = torch.ones_like(flip)
    cos, sin = torch.cos(theta_r) / zoom, torch.sin(theta_r) / zoom
    mat = torch.zeros(b, 2, 3)
    mat[:, 0, 0], mat[:, 0, 1], mat[:, 0, 2] = cos * flip, -sin, u(-0.1, 0.1)
    mat[:, 1, 0], mat[:, 1, 1], mat[:, 1, 2] = sin * flip, cos, u(-0.1, 0.1)
    patch = cfg.patch or x.shape[-1]
    if patch < x.shape[-1]:  # a random patch at the same pixel scale (training speed)
        f = patch / x.shape[-1]
        mat[:, :, :2] *= f
        mat[:, 0, 2] += u(f - 1.0, 1.0 - f)
        mat[:, 1, 2] += u(f - 1.0, 1.0 - f)
    grid = nnf.affine_grid(mat, [b, 1, patch, patch], align_corners=False)
    x = nnf.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    oh = nnf.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = oh.argmax(dim=1, keepdim=True)
    if cfg.kernel_aug:
        x = _kernel(x, u(-1.0, 1.0))
    sigma = u(0.0, 0.03).view(b, 1, 1, 1)
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.float(), y


def _kernel(x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Per-sample reconstruction-kernel change: ``strength`` < 0 blurs (a Gaussian of sigma up
    to 1.2 px, a soft kernel), > 0 sharpens (unsharp masking, up to 1.0 x the detail);
    ``|strength| < 0.3`` leaves the sample as it is."""
    b = x.shape[0]
    r = torch.arange(-2, 3, dtype=x.dtype)
    sigma = (1.2 * strength.abs()).clamp(min=0.3)
    g1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    g1 = g1 / g1.sum(dim=1, keepdim=True)
    g2 = g1[:, :, None] * g1[:, None, :]  # (B, 5, 5)
    blurred = nnf.conv2d(
        nnf.pad(x.transpose(0, 1), (2, 2, 2, 2), mode="replicate"), g2[:, None], groups=b
    ).transpose(0, 1)
    blur = (strength < -0.3).view(b, 1, 1, 1)
    sharpen = (strength > 0.3).view(b, 1, 1, 1)
    amount = strength.clamp(min=0.0).view(b, 1, 1, 1)
    out = torch.where(blur, blurred, x)
    return torch.where(sharpen, x + amount * (x - blurred), out)


def soft_tissue_ce(
    logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose windowed input is soft tissue.

    ``x`` is the windowed input in ``[0, 1]`` (channel 0 is the slice itself), ``y`` the
    integer labels ``(B, 1, S, S)``; 0 when no pixel is soft tissue.
    """
    lo, hi = cfg.hu_window
    dense = x[:, 0] > (SOFT_TISSUE_HU - lo) / (hi - lo)
    if not bool(dense.any()):
        return logits.sum() * 0.0
    ce = nnf.cross_entropy(logits, y[:, 0].long(), reduction="none")
    return ce[dense].mean()


def torch_predictor(
    net: nn.Module, device: torch.device, background_bias: float = 0.0
) -> PredictFn:
    """A ``predict(batch) -> probabilities`` function around a torch network (eval mode).

    ``background_bias`` is subtracted from the background logit, as
    :class:`~ct_triage.models.nets.SoftmaxHead` does in the exported graph.
    """
    head = SoftmaxHead(net, background_bias)

    def predict(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            out: npt.NDArray[np.float32] = head(t).cpu().numpy().astype(np.float32)
        return out

    return predict


def healthy_false_positive(predict: PredictFn, samples: list[Sample], spec: InputSpec) -> float:
    """Fraction of pixels called lesion on lesion-free samples (network grid)."""
    if not samples:
        return float("nan")
    lo, hi = spec.hu_window
    x = np.stack([(np.clip(s.hu, lo, hi) - lo) / (hi - lo) for s in samples])[:, None]
    probs = predict(x.astype(np.float32))
    return float((probs.argmax(axis=1) > 0).mean())


def phantom_poi_errors(
    predict: PredictFn, cases: list[PhantomCase], spec: InputSpec
) -> list[float]:
    """Signed total percent-involvement error (pp) of each phantom through the ``analyze`` path.

    Lesion network (:func:`~ct_triage.models.lesions.segment_volume`), then
    :func:`~ct_triage.models.postprocess.combine` and
    :func:`~ct_triage.models.quantify.quantify`, exactly as
    :func:`ct_triage.models.analysis.segment` does (the classical lungs are computed once per
    case, they do not depend on the network).
    """
    from ct_triage.models.postprocess import combine
    from ct_triage.models.quantify import quantify

    errors = []
    for c in cases:
        labels, _ = segment_volume(c.volume, c.lungs, predict, spec)
        q = quantify(combine(c.volume, c.lungs, labels))
        errors.append(q.percent_involvement.total - c.true_percent)
    return errors


def evaluate_phantoms(
    predict: PredictFn, cases: list[PhantomCase], spec: InputSpec
) -> dict[str, float]:
    """Mean and maximum absolute :func:`phantom_poi_errors` (``phantom_poi_abs_error_pp``,
    ``phantom_poi_max_abs_error_pp``); empty without cases."""
    if not cases:
        return {}
    errors = np.abs(phantom_poi_errors(predict, cases, spec))
    return {
        "phantom_poi_abs_error_pp": float(np.mean(errors)),
        "phantom_poi_max_abs_error_pp": float(np.max(errors)),
    }


def _scored(
    predict: PredictFn,
    val: list[MedsegSlice],
    selection: list[PhantomCase],
    spec: InputSpec,
    cfg: TrainConfig,
) -> tuple[dict[str, float], float]:
    """Validation and selection-phantom metrics with the checkpoint/bias ``score``; and the
    phantom error that entered it.

    The score is the MedSeg validation lesion Dice (0 when every slice trains, ``fold=-1``,
    or when ``cfg.select_on_validation`` is off) minus ``poi_weight`` x the phantom error.
    """
    if val:
        metrics = evaluate_slices(predict, val, spec)
    else:
        metrics = {"lesion_dice": 0.0, "ggo_dice": 0.0, "consolidation_dice": 0.0}
    metrics.update(evaluate_phantoms(predict, selection, spec))
    poi = _selection_error(metrics, cfg)
    dice_part = metrics["lesion_dice"] if cfg.select_on_validation else 0.0
    metrics["score"] = dice_part - cfg.poi_weight * poi
    return metrics, poi


def _selection_error(metrics: dict[str, float], cfg: TrainConfig) -> float:
    """The phantom percent-involvement error (pp) the checkpoint score weighs."""
    key = "phantom_poi_max_abs_error_pp" if cfg.poi_metric == "max" else "phantom_poi_abs_error_pp"
    return metrics.get(key, 0.0)


def train(
    cfg: TrainConfig,
    data_dir: Path,
    *,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Train the lesion network with ``cfg`` on the data under ``data_dir``.

    Every ``eval_every`` steps the network is scored on the MedSeg validation slices and the
    selection phantoms; the returned network holds the weights of the best score
    (``lesion_dice - poi_weight x`` the mean or maximum phantom POI error, see
    ``cfg.poi_metric``). ``cache_dir`` keeps the cached
    phantom slices between runs.
    """
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    spec = input_spec(cfg)
    train_files, val_files = medseg_split(data_dir, cfg.fold)
    t0 = time.perf_counter()
    medseg = medseg_samples(train_files, cfg.size) if cfg.medseg_share > 0 else []
    healthy = healthy_samples(data_dir, cfg.size, cfg.crop_margin_mm)
    healthy += negative_volume_samples(
        [Path(p) for p in cfg.negatives], cfg.size, cfg.crop_margin_mm
    )
    semiseg = semiseg_samples(data_dir, cfg.size) if cfg.semiseg_share > 0 else []
    phantoms = phantom_samples(
        cfg.phantom_volumes,
        cfg.size,
        cfg.crop_margin_mm,
        per_volume=cfg.phantom_per_volume,
        cache_dir=cache_dir,
    )
    val = [load_medseg(f) for f in val_files]
    selection = phantom_cases(dict(cfg.selection_phantoms), cfg.selection_phantom_slices)
    logger.info(
        "data: %d MedSeg train, %d validation, %d healthy, %d phantom slices, "
        "%d selection phantoms (%.1f s)",
        len(medseg),
        len(val),
        len(healthy),
        len(phantoms),
        len(selection),
        time.perf_counter() - t0,
    )
    pools = [p for p in (medseg, healthy, phantoms, semiseg) if p]
    shares = np.array(
        [
            cfg.medseg_share,
            cfg.healthy_share if phantoms else 1.0 - cfg.medseg_share - cfg.semiseg_share,
            1.0 - cfg.medseg_share - cfg.healthy_share - cfg.semiseg_share,
            cfg.semiseg_share,
        ]
    )[[bool(medseg), bool(healthy), bool(phantoms), bool(semiseg)]]
    shares = shares / shares.sum()
    pool_hu = [torch.from_numpy(np.stack([s.hu for s in p]))[:, None] for p in pools]
    pool_oh = [torch.from_numpy(np.stack([s.onehot for s in p])) for p in pools]
    pool_approx = [p[0].kind in ("medseg", "semiseg") for p in pools]

    net = build_lesion_net(cfg.net)
    if cfg.init:
        net.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True))
        logger.info("starting from the weights in %s", cfg.init)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    result = TrainResult(net=net, validation=val)
    best_score, best_state = -math.inf, copy.deepcopy(net.state_dict())
    run_loss, t_start = 0.0, time.perf_counter()
    for step in range(cfg.steps):
        net.train()
        if cfg.freeze_bn:
            for module in net.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        counts = rng.multinomial(cfg.batch_size, shares)
        his, ohs, approx = [], [], []
        for k, n in enumerate(counts):
            if n:
                idx = torch.from_numpy(rng.integers(0, pool_hu[k].shape[0], int(n)))
                his.append(pool_hu[k][idx])
                ohs.append(pool_oh[k][idx].float())
                approx += [pool_approx[k]] * int(n)
        x, y = augment(torch.cat(his), torch.cat(ohs), cfg, gen, torch.tensor(approx))
        x, y = x.to(device), y.to(device)
        logits = net(x)
        loss = loss_fn(logits, y)
        if cfg.soft_tissue_weight > 0:
            loss = loss + cfg.soft_tissue_weight * soft_tissue_ce(logits, x, y, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += float(loss.detach())
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or last:
            net.eval()
            predict = torch_predictor(net, device)
            metrics, poi = _scored(predict, val, selection, spec, cfg)
            metrics["healthy_fp_fraction"] = healthy_false_positive(predict, healthy, spec)
            if metrics["score"] > best_score:
                best_score, best_state = metrics["score"], copy.deepcopy(net.state_dict())
            n = (step % cfg.eval_every) + 1
            metrics.update(step=float(step + 1), loss=run_loss / n)
            result.history.append(metrics)
            run_loss = 0.0
            elapsed = time.perf_counter() - t_start
            msg = (
                f"step {step + 1}/{cfg.steps} loss {metrics['loss']:.4f} "
                f"val lesion Dice {metrics['lesion_dice']:.4f} GGO {metrics['ggo_dice']:.4f} "
                f"consolidation {metrics['consolidation_dice']:.4f} "
                f"healthy FP {metrics['healthy_fp_fraction']:.5f} "
                f"phantom POI err {poi:.2f} pp score {metrics['score']:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} [{elapsed:.0f} s]"
            )
            logger.info("%s", msg)
            if progress:
                print(msg, file=sys.stderr, flush=True)
        elif progress and (step + 1) % 25 == 0:
            elapsed = time.perf_counter() - t_start
            print(
                f"\rstep {step + 1}/{cfg.steps} loss {run_loss / ((step % cfg.eval_every) + 1):.4f}"
                f" [{elapsed:.0f} s, eta {elapsed / (step + 1) * (cfg.steps - step - 1):.0f} s]",
                end="",
                file=sys.stderr,
                flush=True,
            )
    net.load_state_dict(best_state)
    result.best_step = int(max(result.history, key=lambda m: m["score"])["step"])
    logger.info("selected the weights of step %d (score %.4f)", result.best_step, best_score)
    net.eval()
    if cfg.calibrate_biases:
        for bias in cfg.calibrate_biases:
            predict = torch_predictor(net, device, bias)
            m, poi = _scored(predict, val, selection, spec, cfg)
            m["background_bias"] = bias
            result.calibration.append(m)
            logger.info(
                "background bias %.2f: val lesion Dice %.4f, phantom POI err %.2f pp, score %.4f",
                bias,
                m["lesion_dice"],
                poi,
                m["score"],
            )
        best = max(result.calibration, key=lambda m: m["score"])
        result.background_bias = best["background_bias"]
        logger.info("background logit bias %.2f", result.background_bias)
    return result
