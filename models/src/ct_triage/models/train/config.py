"""Named training configurations (``--config smoke|cpu|gpu``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ct_triage.models.nets import LesionNetConfig


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that defines a training run (recorded in the manifest)."""

    name: str
    steps: int
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    size: int = 224
    #: Side of the random training patches cut from the (augmented) ``size`` grid at the
    #: same pixel scale; 0: whole grid. The network is fully convolutional, inference and
    #: validation always run on the whole grid.
    patch: int = 0
    crop_margin_mm: float = 10.0
    #: Left-right flip augmentation. Off keeps the anatomy's asymmetry (heart and descending
    #: aorta on the left) that tells paramediastinal consolidation from the mediastinum.
    flip: bool = True
    hu_window: tuple[float, float] = (-1024.0, 150.0)
    #: Extra cross-entropy weight on the soft-tissue pixels of the input (above
    #: :data:`SOFT_TISSUE_HU`): consolidation, heart, mediastinum and chest wall, which have
    #: the same density and are told apart by shape alone. 0: the plain Dice + CE loss.
    soft_tissue_weight: float = 0.0
    #: Expected share of each batch drawn from the MedSeg slices and the real healthy slices;
    #: the rest are phantom slices (or, without phantoms, healthy slices).
    medseg_share: float = 0.45
    healthy_share: float = 0.1
    #: Share of each batch from the unlabelled real COVID-19 slices with Semi-Inf-Net's
    #: pseudo-labels (``data.semiseg_samples``); 0: not loaded.
    semiseg_share: float = 0.0
    #: Real lesion-free chest CT volumes (``.npz``, see ``data.negative_volume_samples``)
    #: whose lung slices join the healthy pool (``--negatives``).
    negatives: tuple[str, ...] = ()
    #: MedSeg split: None = the fixed 40/10 split; 0..4 = cross-validation fold; -1 = all 50
    #: slices train (no MedSeg validation: checkpoint chosen on the phantoms alone).
    fold: int | None = None
    #: Reconstruction-kernel augmentation: a random blur (soft kernel) or sharpening per
    #: sample, so the involvement does not move with the scanner's kernel.
    kernel_aug: bool = False
    #: Keep the batch norms in inference mode while training (weights recovered from an
    #: exported ONNX file by ``train.from_onnx`` have folded, identity batch norms).
    freeze_bn: bool = False
    phantom_volumes: int = 0
    phantom_per_volume: int = 32
    #: Held-out phantoms (seed -> severity) scored during training for checkpoint selection;
    #: disjoint from the training seeds (>= 1000) and from the report seeds of ``measure``.
    selection_phantoms: tuple[tuple[int, str], ...] = ()
    selection_phantom_slices: int = 60
    #: Checkpoint score: MedSeg validation lesion Dice - weight x phantom |POI error| (pp),
    #: the error being the mean or the maximum over the selection phantoms (``poi_metric``).
    poi_weight: float = 0.01
    poi_metric: str = "mean"
    #: Whether the checkpoint and bias score includes the MedSeg validation Dice. Off for the
    #: cross-validated recipe: a fold's held-out slices are only measured, never chosen on
    #: (the score is then the phantom error alone).
    select_on_validation: bool = True
    #: Background-logit biases tried after training on the selection data (same score);
    #: the best is baked into the exported softmax head. Empty: no calibration.
    calibrate_biases: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    eval_every: int = 250
    #: Measure the exported model on held-out phantoms and TotalSegmentator (about a minute).
    measure: bool = True
    seed: int = 0
    #: Weights (``checkpoint.pt`` of an earlier run) to start from instead of a random
    #: initialisation: fine-tuning.
    init: str = ""
    #: A fine-tuning configuration: refuses to start without ``init``.
    needs_init: bool = False
    device: str = "cpu"
    threads: int = 2
    net: LesionNetConfig = field(default_factory=LesionNetConfig)

    def describe(self) -> str:
        """One-line record of the run for the manifest."""
        d = asdict(self)
        return ", ".join(f"{k}={v}" for k, v in d.items())


SELECTION_PHANTOMS = ((21, "mild"), (22, "moderate"), (23, "severe"), (24, "moderate"))
#: More selection phantoms for fine-tuning, where the checkpoint is chosen on the worst one.
FINETUNE_SELECTION_PHANTOMS = (
    *SELECTION_PHANTOMS,
    (25, "mild"),
    (26, "moderate"),
    (27, "severe"),
    (28, "moderate"),
)

_FINETUNE = TrainConfig(
    name="finetune",
    steps=2500,
    batch_size=8,
    lr=5e-4,
    warmup_steps=50,
    patch=160,
    medseg_share=0.3,
    phantom_volumes=96,
    selection_phantoms=FINETUNE_SELECTION_PHANTOMS,
    poi_weight=0.05,
    poi_metric="max",
    eval_every=250,
    needs_init=True,
)

_FINETUNE_CONTEXT = replace(
    _FINETUNE, name="finetune-context", patch=0, flip=False, phantom_volumes=128
)

#: Semi-supervised recipe of 0.5.0 (issue 15): real pseudo-labelled slices, real
#: lesion-free chests as hard negatives, kernel and noise augmentation, 160 px patches; the
#: fine-tunes without left-right flips. ``semi-pretrain`` sees no MedSeg slice (so that each
#: cross-validation fold starts from weights that never saw its held-out slices); ``semi``
#: fine-tunes it per fold.
_SEMI_PRETRAIN = TrainConfig(
    name="semi-pretrain",
    steps=1500,
    batch_size=8,
    patch=160,
    medseg_share=0.0,
    healthy_share=0.2,
    semiseg_share=0.4,
    phantom_volumes=48,
    selection_phantoms=SELECTION_PHANTOMS,
    eval_every=500,
    kernel_aug=True,
    calibrate_biases=(),
    measure=False,
    select_on_validation=False,
)
_SEMI = replace(
    _FINETUNE_CONTEXT,
    name="semi",
    steps=600,
    patch=160,
    medseg_share=0.3,
    healthy_share=0.2,
    semiseg_share=0.25,
    phantom_volumes=48,
    kernel_aug=True,
    eval_every=200,
    select_on_validation=False,
)

#: The semi-supervised ingredients as a fine-tune of a shipped model (its weights recovered
#: with ``python -m ct_triage.models.train.from_onnx``), derived from ``semi``: the fixed
#: MedSeg split of 0.4.0 (chosen on it, as 0.4.0 was), a larger phantom share so the phantom
#: accuracy of the parent is kept, frozen batch norms, a lower learning rate.
_SEMI_FT = replace(
    _SEMI,
    name="semi-ft",
    steps=1000,
    lr=3e-4,
    healthy_share=0.15,
    semiseg_share=0.15,
    freeze_bn=True,
    eval_every=250,
    select_on_validation=True,
)

#: Pixels denser than this (HU of the augmented input) get ``soft_tissue_weight``.
SOFT_TISSUE_HU: float = -300.0

CONFIGS: dict[str, TrainConfig] = {
    "smoke": TrainConfig(
        name="smoke",
        steps=2,
        batch_size=2,
        eval_every=2,
        warmup_steps=1,
        measure=False,
        calibrate_biases=(),
    ),
    "cpu": TrainConfig(
        name="cpu",
        steps=3500,
        batch_size=8,
        patch=160,
        phantom_volumes=32,
        selection_phantoms=SELECTION_PHANTOMS,
        eval_every=500,
    ),
    # Continue a trained model (``--init DIR/checkpoint.pt``) on more phantom slices at a low
    # learning rate, choosing the checkpoint and the background bias on the worst of eight
    # selection phantoms.
    "finetune": _FINETUNE,
    # A second fine-tune for anatomical context: whole 224 x 224 inputs (no patches) and no
    # left-right flips, so the network sees the mediastinum the way CT shows it.
    "finetune-context": _FINETUNE_CONTEXT,
    # A third fine-tune against the false lesion along the mediastinum and chest wall next to
    # consolidation (same density, told apart by shape): the context fine-tune plus a
    # cross-entropy term averaged over the soft-tissue pixels, at a lower learning rate.
    # Measured and not adopted (MODEL_CARD, "two candidates not adopted").
    "finetune-soft-tissue": replace(
        _FINETUNE_CONTEXT, name="finetune-soft-tissue", soft_tissue_weight=1.0, lr=3e-4, steps=2000
    ),
    "semi-pretrain": _SEMI_PRETRAIN,
    "semi": _SEMI,
    "semi-ft": _SEMI_FT,
    "gpu": TrainConfig(
        name="gpu",
        steps=20000,
        batch_size=32,
        lr=3e-3,
        phantom_volumes=96,
        selection_phantoms=SELECTION_PHANTOMS,
        eval_every=1000,
        device="cuda",
        threads=8,
    ),
}


def get_config(name: str, **overrides: object) -> TrainConfig:
    """A named configuration, with optional field overrides (``None`` values ignored)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown training config {name!r}; choose one of {sorted(CONFIGS)}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    cfg = replace(CONFIGS[name], **clean)  # type: ignore[arg-type]
    if cfg.poi_metric not in ("mean", "max"):
        raise ValueError(f"poi_metric must be 'mean' or 'max', got {cfg.poi_metric!r}")
    return cfg
