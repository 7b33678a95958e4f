"""Pure compute for chest-ct-triage: volumes, preprocessing, runtimes, postprocessing,
quantification and training. Nothing here imports pydicom, pynetdicom or an HTTP framework.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
