"""The upstream rig: stock Debian kernels booted under QEMU TCG (software emulation of AMD SVM),
with their own kvm + kvm_amd modules loaded, running irqlab's KVM backend inside against that
kernel. Host side: archive discovery and download (archive.py), boot kits (kit.py), booting and
collecting (boot.py, rig.py); guest side: guest.py, run inside the VM."""
