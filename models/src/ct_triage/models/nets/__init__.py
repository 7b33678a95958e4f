"""Network definitions (torch; training and export only, never imported at inference)."""

from ct_triage.models.nets.unet2d import LesionNetConfig, SoftmaxHead, build_lesion_net

__all__ = ["LesionNetConfig", "SoftmaxHead", "build_lesion_net"]
