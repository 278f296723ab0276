"""irqlab: deterministic KVM x86 irqchips (IOAPIC + local APICs) behind a REST API."""

from importlib.metadata import PackageNotFoundError, version

# The one version source is pyproject.toml's [project] version, as installed (`irqlab
# --version`, GET /readyz and the container image's label all report it).
try:
    __version__ = version("irqlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
