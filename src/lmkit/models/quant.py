"""Quantized Linears: int8 or int4 weights with float scales, float activations (fbgemm's int8 kernel
excepted, see below).

A weight row w is cut into groups of `group_size` inputs (int8 may use the whole row, group_size None),
and each group stores q = round(w / s) with one scale s:

    bits 8  s = max|w_group| / 127; q in -127..127, one int8 each           `…weight_int8`  (out, in)      int8
    bits 4  s = m / -8, m the group's weight of largest magnitude (so m is  `…weight_int4`  (out, in / 2)  uint8
            stored as -8 and all 16 levels -8..7 serve, llama.cpp q4_0's choice; s may be negative);
            q + 8 stored two per byte, the even input column in the low nibble, the odd one in the high
    both    the scales, float32                                             `…weight_scale` (out,) or (out, in / group_size)

These are the names `QuantLinear` gives its buffers, so a quantized model's state dict is what
`lmkit quantize` writes and `lmkit.load` reads. The float model stays the reference: `dequantize` gives the
float weights back (w ≈ q · s), and the "float" kernel computes exactly F.linear with them.

Kernels (`QuantLinear.kernel`), chosen by measurement on the 2-core CPU lmkit is developed on
(benchmarks/quant_perplexity.py: 8 Qwen2.5-0.5B MLP matrices 4864×896, one thread, ms at batch 1 / 8;
fp32 F.linear takes 9.4 / 26.0):
    "fbgemm"   int8 with one scale per row: PyTorch's fbgemm int8 matmul, 6.7 / 5.1. It quantizes the
               activations per call as well (to 7 bits, as torch.ao's quantize_dynamic did), which costs some
               accuracy (held-out perplexity +0.65% against +0.04% for the weights alone on TinyStories).
               Used where PyTorch has the kernel (x86 builds).
    "int4pack" int4, any group size: PyTorch's CPU int4 kernel (torch._weight_int4pack_mm_for_cpu, bf16
               activations and scales), 2.5 / 7.5, up to PREFILL_ROWS rows a call. Above that (a prompt) the
               kernel falls behind a float matmul (512 rows: 24.9 ms a matrix against fp32's 10.8), so the
               weights are restored for the call, in bf16 where the CPU multiplies bf16 natively (4.3 ms
               with the restoring), else fp32. On a 373M Llama-style model at 2 threads this decodes 40.9
               tokens/s where fp32 gave 16.2 (benchmarks/decode_vs_llamacpp.py, 2026-12-03).
    "float"    every other case (int8 with groups, other devices, or `prepare("float")`, the reference): the
               weights are restored in float once, when the module is first used, and F.linear runs on
               them: fp32 speed and memory (the file stays 4x / 6x smaller). torchao's weight-only kernels
               were slower than fp32 here (int8 41.4 / 26.4, int4 g32 73.6 / 53.6).
On a model as small as examples/shakespeare_char.toml (128 wide) every kernel is bound by per-call overheads
and the float one is as fast or faster; the quantized kernels pay from a few hundred wide.
`quantize_linears` does the same job through torchao's `quantize_`, for machines where its kernels serve.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LmkitError
from .precision import fast_bf16

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
QMAX = {8: 127, 4: 7}  # the largest stored value (int4 also stores -8)
PREFILL_ROWS = 64  # int4: above this many rows a call, restored weights and a bf16 matmul beat the kernel


def describe(bits: int, group_size: int | None) -> str:
    """The method name quantization.json records: int8-per-channel, int8-g64, int4-g32, ..."""
    return f"int{bits}-" + ("per-channel" if group_size is None else f"g{group_size}")


def check_settings(bits, group_size) -> int | None:
    """The group size to use (int4 defaults to 32); LmkitError for bits other than 4 / 8 or a group size
    that is not 32, 64 or 128."""
    if bits not in BITS:
        raise LmkitError(f"--bits {bits}: must be 4 or 8")
    if group_size is None:
        return 32 if bits == 4 else None
    if group_size not in GROUP_SIZES:
        raise LmkitError(f"--group-size {group_size}: must be 32, 64 or 128")
    return group_size


def check_widths(linears: dict[str, nn.Linear], group_size: int | None) -> None:
    """LmkitError naming the first layer whose input width `group_size` does not divide."""
    for name, lin in linears.items():
        if group_size is not None and lin.in_features % group_size:
            raise LmkitError(f"--group-size {group_size}: does not divide the width {lin.in_features} of layer {name}")


# ---- the numbers --------------------------------------------------------------------------------------
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(out, in) int values in -8..7 -> (out, in / 2) uint8: column 2j in the low nibble, 2j+1 in the high."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: (out, in / 2) uint8 -> (out, in) int8."""
    lo, hi = (p & 15).to(torch.int8) - 8, (p >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(p.size(0), -1)


def quantize_weight(w: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, in) -> (stored values, scales) as laid out in the module docstring."""
    w = w.detach().float()
    out, width = w.shape
    groups = w.view(out, 1, width) if group_size is None else w.view(out, width // group_size, group_size)
    if bits == 8:
        scale = (groups.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-12)
    else:  # the group's value of largest magnitude becomes -8, so all 16 levels are used (as llama.cpp's q4_0)
        peak = groups.gather(-1, groups.abs().argmax(dim=-1, keepdim=True))
        scale = peak / -8
        scale = torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale)
    q = torch.round(groups / scale).clamp(-QMAX[bits] - (bits == 4), QMAX[bits]).to(torch.int8).view(out, width)
    scale = scale.squeeze(-1)
    if group_size is None:
        scale = scale.squeeze(-1)
    return (q if bits == 8 else pack_int4(q)), scale


def dequantize(stored: torch.Tensor, scale: torch.Tensor, bits: int, dtype=torch.float32) -> torch.Tensor:
    """The float weight q · s (out, in) of `quantize_weight`'s output, in `dtype`; the group size follows
    from the scales' shape."""
    q = stored if bits == 8 else unpack_int4(stored)
    out, width = q.shape
    s = scale.to(dtype).reshape(out, -1)
    return (q.to(dtype).view(out, s.size(1), -1) * s[..., None]).view(out, width)


# ---- the module ---------------------------------------------------------------------------------------
class QuantLinear(nn.Module):
    """A Linear whose weight is stored quantized (buffers `weight_int8` or `weight_int4`, and
    `weight_scale`); `bias` stays a float parameter. Build one with `from_linear`, or empty (zeros) to be
    filled by load_state_dict."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None,
                 bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self.values = f"weight_int{bits}"
        shape = (out_features, in_features) if bits == 8 else (out_features, in_features // 2)
        self.register_buffer(self.values, torch.zeros(shape, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features) if group_size is None else
                             torch.ones(out_features, in_features // group_size))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._float = None   # the restored weight ("float" kernel), built on first use
        self._packed = None  # fbgemm's packed weight ("fbgemm" kernel)
        self.kernel = None   # chosen on first use (see the module docstring)

    @classmethod
    def from_linear(cls, lin: nn.Linear, bits: int, group_size: int | None) -> "QuantLinear":
        m = cls(lin.in_features, lin.out_features, bits, group_size, bias=lin.bias is not None)
        stored, scale = quantize_weight(lin.weight, bits, group_size)
        getattr(m, m.values).copy_(stored)
        m.weight_scale.copy_(scale)
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias.detach().float())
        return m.to(lin.weight.device)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(getattr(self, self.values), self.weight_scale, self.bits, dtype)

    def _load_from_state_dict(self, *args, **kwargs):
        self._float = self._packed = self.kernel = None  # new numbers: kernels are prepared again
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(another device) etc.: prepared kernels are built again
        before = getattr(self, self.values), self.weight_scale
        out = super()._apply(fn, *args, **kwargs)
        if getattr(self, self.values) is not before[0] or self.weight_scale is not before[1]:
            self._float = self._packed = self.kernel = None
        return out

    def prepare(self, kernel: str | None = None) -> "QuantLinear":
        """Choose the kernel (or take `kernel`="float", the reference) and build what it needs (called on first
        use; the loaders call it at once)."""
        self.kernel, self._packed, self._float = "float", None, None
        on_cpu = self.weight_scale.device.type == "cpu" and kernel != "float"
        if self.bits == 8 and self.group_size is None and on_cpu:
            self._packed, self.kernel = _fbgemm_pack(self.weight_int8, self.weight_scale, self.bias), "fbgemm"
        elif self.bits == 4 and on_cpu:
            self._packed, self.kernel = _int4_pack(self.weight_int4, self.weight_scale), "int4pack"
        if self._packed is None:
            self.kernel, self._float = "float", self.dequantize()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            self.prepare()
        if self.kernel == "fbgemm" and x.dtype == torch.float32 and x.device.type == "cpu":
            return torch.ops.quantized.linear_dynamic(x, self._packed, True)
        if self.kernel == "int4pack" and x.device.type == "cpu":
            rows = x.numel() // self.in_features
            if rows > PREFILL_ROWS:  # a prompt: restore the weights for this call and multiply in bulk
                dtype = torch.bfloat16 if fast_bf16() else torch.float32
                w, b = self.dequantize(dtype), None if self.bias is None else self.bias.to(dtype)
                return F.linear(x.to(dtype), w, b).to(x.dtype)
            packed, scales_and_zeros = self._packed
            y = torch._weight_int4pack_mm_for_cpu(x.reshape(rows, self.in_features).to(torch.bfloat16), packed,
                                                  self.group_size, scales_and_zeros)
            y = y[:, :self.out_features].to(x.dtype).view(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        w = self._float if self._float is not None else self.dequantize()
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{describe(self.bits, self.group_size)}, bias={self.bias is not None}, kernel={self.kernel}")


def _fbgemm_pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """Our int8 rows and scales as fbgemm's packed weight (the integers are kept exactly), or None where
    this PyTorch has no such kernel (quantized tensors are deprecated in PyTorch and may go)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "quantized tensor creation functions ... are deprecated"
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


def _int4_pack(stored: torch.Tensor, scale: torch.Tensor):
    """Our int4 nibbles and group scales in the layout of PyTorch's CPU int4 kernel
    (torch._weight_int4pack_mm_for_cpu: w = (u − 8) · s + z per group, u the stored 0..15, here z = 0,
    bf16 activations and scales), the rows padded with zero weights to a multiple of 16 as it requires;
    None where this PyTorch has no such kernel."""
    if not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        return None
    u = unpack_int4(stored).to(torch.int32) + 8  # (out, in), 0..15
    s = scale.float()
    pad = -u.size(0) % 16
    if pad:
        u = torch.cat([u, torch.full((pad, u.size(1)), 8, dtype=torch.int32)])
        s = torch.cat([s, torch.zeros(pad, s.size(1))])
    try:
        packed = torch._convert_weight_to_int4pack_for_cpu(u, 2)
    except (RuntimeError, NotImplementedError):
        return None
    scales_and_zeros = torch.stack([s, torch.zeros_like(s)], dim=-1).transpose(0, 1).contiguous()  # (groups, out, 2)
    return packed, scales_and_zeros.to(torch.bfloat16)


# ---- models -------------------------------------------------------------------------------------------
def quantizable(model: nn.Module, head: bool = True) -> dict[str, nn.Linear]:
    """The Linears `lmkit quantize` makes int8 / int4: those of the Transformer blocks and (`head`) the output
    head. A head tied to the token embedding gets a quantized copy of that matrix, and the embedding (a
    lookup, one row a token) stays float: on Qwen2.5-0.5B that head is 27% of the weights, all of them
    read for every generated token."""
    out = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("h.")}
    if head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        out["lm_head"] = model.lm_head
    return out


def replace_linears(model: nn.Module, modules: list[str], bits: int, group_size: int | None,
                    empty: bool = False) -> nn.Module:
    """Swap the named Linears of `model` for QuantLinears, in place; returns `model`. `empty`: zero-filled
    ones for load_state_dict to fill (a loader), otherwise quantized from the Linears' weights."""
    for name in modules:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child, None)
        if not isinstance(lin, nn.Linear):
            raise LmkitError(f"{name}: not a Linear layer of this model")
        q = QuantLinear(lin.in_features, lin.out_features, bits, group_size, lin.bias is not None) if empty \
            else QuantLinear.from_linear(lin, bits, group_size)
        setattr(parent, child, q)
    return model


def prepare(model: nn.Module) -> nn.Module:
    """Build every QuantLinear's kernel now (not during a first request)."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.prepare()
    return model


def quantize_linears(model: nn.Module, bits: int, group_size: int | None = None,
                     modules: list[str] | None = None) -> nn.Module:
    """Make the named Linears of `model` (None: every nn.Linear) weight-only int8/int4 through torchao's
    `quantize_`, in place; returns `model`. bits 8 with group_size None: one scale per output row;
    bits 4 needs a group size (default 32). Bad bits or a group size that does not divide a layer's
    input width: LmkitError naming it. (On lmkit's development CPU these kernels were slower than fp32,
    so `lmkit quantize` uses QuantLinear; see the module docstring.)"""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    if bits not in BITS:
        raise LmkitError(f"--bits {bits}: must be 4 or 8")
    if bits == 4 and group_size is None:
        group_size = 32
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = list(linears) if modules is None else list(modules)
    for n in names:
        if n not in linears:
            raise LmkitError(f"{n}: not a Linear layer of this model")
        width = linears[n].in_features
        if group_size is not None and (group_size <= 0 or width % group_size):
            raise LmkitError(f"--group-size {group_size}: does not divide the width {width} of layer {n}")
    if bits == 8:
        cfg = Int8WeightOnlyConfig() if group_size is None else Int8WeightOnlyConfig(granularity=PerGroup(group_size))
    else:
        cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    chosen = set(names)
    quantize_(model, cfg, filter_fn=lambda m, fqn: fqn in chosen)
    return model
