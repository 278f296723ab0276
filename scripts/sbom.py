#!/usr/bin/env python3
"""A CycloneDX 1.5 SBOM (JSON) of an image's contents, from what is installed, standard library
only: the Python distributions of a virtualenv (importlib.metadata) and the Debian packages of
the root filesystem (dpkg's status file). The Dockerfile runs it in the runtime stage to write
/usr/share/doc/irqlab/sbom.cdx.json; no serial number or timestamp, so the same contents give
the same file.

    python3 scripts/sbom.py SITE_PACKAGES [--dpkg-status FILE] [--name irqlab] > sbom.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib.metadata import distributions
from pathlib import Path
from typing import Any
from urllib.parse import quote


def _pypi_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # the purl spec's PyPI normalisation


def python_components(site: str) -> list[dict[str, Any]]:
    out = {}
    for dist in distributions(path=[site]):
        name, version = dist.metadata["Name"], dist.version
        if not name:
            continue
        purl = f"pkg:pypi/{_pypi_name(name)}@{quote(version)}"
        comp: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": name,
                                "version": version, "purl": purl}
        lic = dist.metadata.get("License-Expression") or dist.metadata.get("License")
        if lic and len(lic) < 100 and "\n" not in lic:
            comp["licenses"] = [{"license": {"name": lic}}]
        out[purl] = comp
    return [out[k] for k in sorted(out)]


def debian_components(status: Path) -> list[dict[str, Any]]:
    if not status.is_file():
        return []
    out = {}
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.MULTILINE))
        if "install ok installed" not in fields.get("Status", ""):
            continue
        name, version, arch = fields.get("Package"), fields.get("Version"), \
            fields.get("Architecture", "all")
        if not name or not version:
            continue
        purl = f"pkg:deb/debian/{name}@{quote(version)}?arch={arch}"
        out[purl] = {"type": "library", "bom-ref": purl, "name": name, "version": version,
                     "purl": purl}
    return [out[k] for k in sorted(out)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site_packages")
    ap.add_argument("--dpkg-status", default="/var/lib/dpkg/status")
    ap.add_argument("--name", default="irqlab")
    args = ap.parse_args()
    py = python_components(args.site_packages)
    version = next((c["version"] for c in py if c["name"] == args.name), "")
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {"type": "container", "name": args.name, "version": version},
            "tools": {"components": [{"type": "application", "name": "scripts/sbom.py"}]},
        },
        "components": py + debian_components(Path(args.dpkg_status)),
    }
    json.dump(bom, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
