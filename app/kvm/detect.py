"""Is a usable /dev/kvm here, and which KVM vendor module backs it?"""

from __future__ import annotations

import os

from . import ioctl as K

# Vendor modules in the order we report them; the first loaded one names the implementation.
VENDOR_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


def kvm_available(device: str = "/dev/kvm") -> tuple[bool, str]:
    """(True, description) if `device` opens read/write, speaks API version 12 and offers the
    in-kernel irqchip (KVM_CAP_IRQCHIP); otherwise (False, why not)."""
    if not os.path.exists(device):
        return False, f"{device} does not exist"
    try:
        kvm = K.Kvm(device)
    except OSError as e:
        return False, f"cannot open {device}: {e.strerror or e}"
    with kvm:
        try:
            version = kvm.api_version()
        except OSError as e:
            return False, f"KVM_GET_API_VERSION failed: {e.strerror or e}"
        if version != K.KVM_API_VERSION:
            return False, f"KVM API version {version}, need {K.KVM_API_VERSION}"
        try:
            irqchip = kvm.check_extension(K.KVM_CAP_IRQCHIP)
        except OSError as e:
            return False, f"KVM_CHECK_EXTENSION failed: {e.strerror or e}"
        if irqchip <= 0:
            return False, "KVM_CAP_IRQCHIP is not offered (no in-kernel irqchip)"
    return True, f"{device}: API {version}, KVM_CAP_IRQCHIP, vendor module {vendor_module()}"


def vendor_module(sys_module: str = "/sys/module") -> str | None:
    """The loaded KVM vendor module (kvm_intel, kvm_amd, kvm_pvm), or None if unknown."""
    for name in VENDOR_MODULES:
        if os.path.isdir(os.path.join(sys_module, name)):
            return name
    return None
