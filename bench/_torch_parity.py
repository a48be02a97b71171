"""The two networks bench/torch_speed.py compares, and the check that they are one network: torchvision's
model and resgraph's module with the same weights (imported by structure), and their logits, loss and
gradients on the same batch."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import resgraph
from _weights import import_torchvision, renamed, torchvision_model


def build_models(name: str, spec: Path, prog: str):
    """(torchvision model, resgraph module, report) with torchvision's weights imported into resgraph's by
    structure (resgraph's importer, bench/_weights.py)."""
    tv = torchvision_model(name, prog, seed=0)
    rg = resgraph.to_torch(str(spec), init=False)
    report = import_torchvision(rg, tv, prog)
    moved = renamed(report["keys"])
    return tv, rg, {"tensors": report["tensors"], "renamed": len(moved), "renamed_examples": moved[:3],
                    "params": sum(p.numel() for p in tv.parameters()), "keys": report["keys"]}


def autocast_ctx(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def parity(tv, rg, x, y, device, amp, channels_last, keys: dict[str, str]) -> dict:
    """Logits (eval), loss and gradients (train) of the two networks on the same batch; keys: rg's state-dict
    key -> tv's, pairing the gradients."""
    res: dict = {}
    x32 = x.contiguous()
    tv.eval(), rg.eval()
    with torch.inference_mode():
        a, b = tv(x32).float(), rg(x32).float()
        res["eval_fp32"] = {"max_abs_diff": _max_abs(a, b), "max_abs_logit": a.abs().max().item()}
        if amp or channels_last:
            with autocast_ctx(device, amp)():
                a2, b2 = tv(x), rg(x)
            res["eval_as_benchmarked"] = {"max_abs_diff": _max_abs(a2, b2), "max_abs_logit": a2.float().abs().max().item()}
    # train mode: one forward + backward each (bn running stats move alike in both; grads cleared after)
    tv.train(), rg.train()
    losses = []
    for m in (tv, rg):
        m.zero_grad(set_to_none=True)
        with autocast_ctx(device, amp)():
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.item())
    gdiff, gmax = 0.0, 0.0
    tv_params = dict(tv.named_parameters())
    for a, q in rg.named_parameters():
        p = tv_params[keys[a]]
        if p.grad is not None and q.grad is not None:
            gdiff = max(gdiff, _max_abs(p.grad.reshape(q.grad.shape), q.grad))
            gmax = max(gmax, p.grad.abs().max().item())
        elif (p.grad is None) != (q.grad is None):
            gdiff = math.inf
    tv.zero_grad(set_to_none=True), rg.zero_grad(set_to_none=True)
    res["train"] = {"loss_tv": losses[0], "loss_rg": losses[1], "loss_abs_diff": abs(losses[0] - losses[1]),
                    "grad_max_abs_diff": gdiff, "grad_max_abs": gmax}
    # same network, same kernels: bit-identical is usual; allow rounding (reduced precision: much more)
    tol = 5e-2 if amp else 1e-4
    ok = [res["eval_fp32"]["max_abs_diff"] <= 1e-4 * max(1.0, res["eval_fp32"]["max_abs_logit"])]
    if "eval_as_benchmarked" in res:
        e = res["eval_as_benchmarked"]
        ok.append(e["max_abs_diff"] <= tol * max(1.0, e["max_abs_logit"]))
    t = res["train"]
    ok.append(t["loss_abs_diff"] <= tol * max(1.0, abs(t["loss_tv"])))
    ok.append(t["grad_max_abs_diff"] <= tol * max(1e-3, t["grad_max_abs"]) * (10 if amp else 1))
    res["ok"] = all(ok)
    return res
