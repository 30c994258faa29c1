"""One UNet in memory, two networks: the prior's pretrained UNet, and VSD's score model (LoRA
adapters plus a camera embedding installed as the UNet's `class_embedding`) on top of it.

`SharedUNet` owns the module and the score model's additions to it. Every caller asks it for the
network it needs, on every call: the prior for `pretrained()` (adapters off, no class embedding,
for the duration of a `with`), the score model for `adapted()`. So no call depends on what the
previous one left behind. A request for the state the UNet is already in changes nothing, which
is what lets the score model's forward run inside a torch.func transform (L2-VSD's jvp): peft's
switch calls `requires_grad_`, which a transform forbids, so the caller asks once before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class SharedUNet:
    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.adapter_name: str | None = None  # the score model's LoRA adapter, once attached
        self.camera_embedding: nn.Module | None = None

    def attach_score_model(self, lora_config, adapter_name: str, camera_embedding: nn.Module | None) -> None:
        """Add the score model's LoRA adapter (its parameters in float32) and camera embedding.
        A UNet carries one score model: a second is an error, not a silent share of the first's."""
        if self.adapter_name is not None or adapter_name in (getattr(self.unet, "peft_config", None) or {}):
            raise ValueError("this UNet already carries a score model: build one ScoreModel per prior "
                             "(or give the second its own score_model.base)")
        self.unet.add_adapter(lora_config, adapter_name=adapter_name)
        for name, param in self.unet.named_parameters():
            if "lora_" in name:
                # the optimiser's small steps would be lost to fp16 rounding (score_model.py)
                param.data = param.data.to(torch.float32)
        self.adapter_name = adapter_name
        self.camera_embedding = camera_embedding
        self.unet.class_embedding = camera_embedding

    def detach_score_model(self) -> None:
        """Remove the score model's adapter and camera embedding, so that the UNet is the prior's
        alone again and a new score model may attach (a batch reuses one prior across prompts)."""
        if self.adapter_name is None:
            return
        self.unet.delete_adapters(self.adapter_name)
        self.unet.class_embedding = None
        self.adapter_name, self.camera_embedding = None, None

    def adapted(self) -> nn.Module:
        """The UNet as the score model: its adapters on and its camera embedding in."""
        if self.adapter_name is None:
            raise ValueError("no score model is attached to this UNet")
        if not adapters_enabled(self.unet):
            self.unet.enable_adapters()
        if self.unet.class_embedding is not self.camera_embedding:
            self.unet.class_embedding = self.camera_embedding
        return self.unet

    @contextlib.contextmanager
    def pretrained(self) -> Iterator[nn.Module]:
        """The pretrained UNet for the duration: any LoRA adapters off and no class (camera)
        embedding. The state is put back afterwards, also on exceptions, including which
        parameters require grad (peft's enable_adapters would otherwise turn them all on)."""
        unet = self.unet
        class_embedding = unet.class_embedding
        adapters_on = getattr(unet, "_hf_peft_config_loaded", False) and adapters_enabled(unet)
        trainable = {id(p) for p in unet.parameters() if p.requires_grad}
        if adapters_on:
            unet.disable_adapters()
        unet.class_embedding = None
        try:
            yield unet
        finally:
            unet.class_embedding = class_embedding
            if adapters_on:
                unet.enable_adapters()
                for parameter in unet.parameters():
                    parameter.requires_grad_(id(parameter) in trainable)


def adapters_enabled(unet: nn.Module) -> bool:
    if not getattr(unet, "_hf_peft_config_loaded", False):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(not m.disable_adapters for m in unet.modules() if isinstance(m, BaseTunerLayer))
