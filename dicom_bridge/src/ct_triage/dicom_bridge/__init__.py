"""chest-ct-triage dicom_bridge."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
