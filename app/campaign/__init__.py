"""Differential campaigns: many seeded random operation sequences, run on the model under
several presets (what each kernel change did) and against real KVM (does the model match this
kernel). In-process by default; `app.campaign.on_ray` spreads them over a Ray cluster."""
