"""Start Debian's Orthanc configured from ORTHANC__* environment variables.

The official orthancteam/orthanc image maps ``ORTHANC__SECTION__KEY=value`` to the
configuration entry ``Section.Key`` (each ``_``-separated word capitalised: ``DICOM_AET`` ->
``DicomAet``; a value that parses as JSON is used as JSON, anything else as a string). This
does the same over a base configuration with the DICOMweb plugin, then runs Orthanc.
"""

import json
import os
import sys
from typing import Any

CONFIG = "/tmp/orthanc.json"
BASE: dict[str, Any] = {
    "Name": "orthanc",
    "StorageDirectory": "/var/lib/orthanc/db",
    "IndexDirectory": "/var/lib/orthanc/db",
    "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
    "RemoteAccessAllowed": True,
    "AuthenticationEnabled": True,
    "HttpPort": 8042,
    "DicomPort": 4242,
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    "StableAge": 2,
}


def _key(word: str) -> str:
    return "".join(part.capitalize() for part in word.lower().split("_"))


def configure(env: dict[str, str]) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE))
    for name, raw in sorted(env.items()):
        if not name.startswith("ORTHANC__"):
            continue
        path = [_key(p) for p in name[len("ORTHANC__") :].split("__")]
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = cfg
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return cfg


if __name__ == "__main__":
    with open(CONFIG, "w") as f:
        json.dump(configure(dict(os.environ)), f, indent=2)
    os.execv("/usr/sbin/Orthanc", ["Orthanc", *sys.argv[1:], CONFIG])
