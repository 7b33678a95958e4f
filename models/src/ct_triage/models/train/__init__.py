"""Training, validation and ONNX export of the lesion network (needs the ``train`` extra).

Run ``python -m ct_triage.models.train --config cpu --out DIR``.
"""
