"""irqlab: deterministic KVM x86 irqchips (IOAPIC + local APICs) behind a REST API."""

__version__ = "0.1.0"
