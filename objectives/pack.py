"""The packed artifact: a safetensors file whose byte count is the model's `size_mb`.

Each tensor of the state dict is stored one of four ways:
  * `f`: plain tensor (biases, norms, unpruned fp32 weights);
  * `s`: sparse fp32 weight: the non-zero values plus their positions;
  * `q`: quantized weight: group scales (fp16, or bf16 for the weight-only kernels),
    int4's bf16 group zeros, and the non-zero codes bit-packed at `bits` bits each plus
    their positions;
  * `a`: alias of an earlier entry whose tensor it shares (a tied output layer is the
    input embedding's tensor): stored, and counted in `size_mb`, once.
Positions are a bitmask or a list of indices, whichever is smaller, and every byte stream
is zlib-compressed when that makes it smaller. The layout is JSON in the safetensors
metadata, so loading needs no pickle.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .quantize import QuantizedWeight, dequantize

__all__ = ["pack_bits", "unpack_bits", "pack_state", "unpack_state", "unpack_quantized",
           "tensor_bytes", "effective_bits", "shared_tensors", "dense_bound", "FORMAT"]

FORMAT = "csearch-packed-1"


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers < 2**bits into bytes, little-endian bit order."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.copy()
    if bits == 4:
        c = codes if len(codes) % 2 == 0 else np.append(codes, np.uint8(0))
        return (c[0::2] | (c[1::2] << 4)).astype(np.uint8)
    planes = (codes[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    data = np.asarray(data, dtype=np.uint8)
    if bits == 8:
        return data[:n].copy()
    if bits == 4:
        out = np.empty(len(data) * 2, dtype=np.uint8)
        out[0::2] = data & 0x0F
        out[1::2] = data >> 4
        return out[:n]
    planes = np.unpackbits(data, bitorder="little")[: n * bits].reshape(n, bits)
    return (planes.astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(axis=1).astype(np.uint8)


def _stream(raw: bytes) -> tuple[bytes, bool]:
    """Return the smaller of raw and zlib(raw), and whether it is compressed."""
    z = zlib.compress(raw, 9)
    return (z, True) if len(z) < len(raw) else (raw, False)


def _positions(keep: np.ndarray) -> tuple[str, bytes, bool]:
    """Cheapest encoding of a flat boolean keep-mask: bitmask or indices (maybe zlib)."""
    n = keep.size
    bitmask = _stream(np.packbits(keep, bitorder="little").tobytes())
    idx = np.flatnonzero(keep)
    dtype = np.uint16 if n <= 1 << 16 else np.uint32
    index = _stream(idx.astype(dtype).tobytes())
    if len(index[0]) < len(bitmask[0]):
        return "index", *index
    return "bitmask", *bitmask


def _decode_positions(kind: str, data: bytes, n: int, count: int) -> np.ndarray:
    if kind == "index":
        dtype = np.uint16 if n <= 1 << 16 else np.uint32
        keep = np.zeros(n, dtype=bool)
        keep[np.frombuffer(data, dtype=dtype)[:count].astype(np.int64)] = True
        return keep
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:n].astype(bool)


def _u8(data: bytes) -> torch.Tensor:
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _encode_values(
    name: str, values_raw: bytes, keep: np.ndarray | None, entry: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> None:
    """Store a value stream and, when cheaper than dense, its positions."""
    z = []
    if keep is not None:
        kind, pos, pz = _positions(keep)
        entry["pos"] = kind
        entry["count"] = int(keep.sum())
        tensors[f"{name}.pos"] = _u8(pos)
        if pz:
            z.append("pos")
    vals, vz = _stream(values_raw)
    tensors[f"{name}.val"] = _u8(vals)
    if vz:
        z.append("val")
    entry["z"] = z


def _dense_or_sparse(n: int, nonzero: int, value_bytes_each: float) -> bool:
    """Sparse pays off when the saved values outweigh a bitmask of n bits."""
    return (n - nonzero) * value_bytes_each > n / 8


def shared_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{name: earlier name} for the entries of a state dict that are views of the same
    memory as an earlier one (tied weights: `state_dict` lists a shared tensor under
    every name it has)."""
    seen: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               t.stride(), t.dtype)
        if key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    return out


def dense_bound(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes `pack_state` needs at most for `state` as it is: every tensor's bytes (a
    shared one, as tied embeddings, once) plus a header allowance. Packing never stores
    a tensor in more than its dense bytes, so this bounds a model's size without
    serializing it (a 500 MB model is not packed to size a budget)."""
    tied = shared_tensors(state)
    return (sum(t.numel() * t.element_size() for n, t in state.items() if n not in tied)
            + 4096 + 512 * len(state))


def pack_state(
    state: Mapping[str, torch.Tensor],
    quantized: Mapping[str, QuantizedWeight],
    sparse_weights: set[str] | frozenset[str] = frozenset(),
) -> bytes:
    """Pack a state dict. `quantized` maps layer names to their codes (`{layer}.weight` is
    then stored quantized); `sparse_weights` names fp32 weights to store sparsely. A
    tensor shared under several names is stored under the first (see `shared_tensors`)."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    qnames = {f"{layer}.weight": qw for layer, qw in quantized.items()}
    aliases = shared_tensors(state)
    for name, t in state.items():
        t = t.detach().cpu()
        if name in aliases:
            layout[name] = {"k": "a", "of": aliases[name]}
        elif name in qnames:
            qw = qnames[name]
            codes = qw.q.flatten().numpy().astype(np.int16)
            keep = codes != 0
            entry: dict[str, Any] = {"k": "q", "shape": list(t.shape), "bits": qw.bits,
                                     "gs": qw.group_size}
            tensors[f"{name}.scales"] = qw.scales.contiguous()
            if qw.zeros is not None:
                tensors[f"{name}.zeros"] = qw.zeros.contiguous()
            sparse = _dense_or_sparse(codes.size, int(keep.sum()), qw.bits / 8)
            kept = codes[keep] if sparse else codes
            offset = 2 ** (qw.bits - 1)
            packed = pack_bits((kept + offset).astype(np.uint8), qw.bits)
            _encode_values(name, packed.tobytes(), keep if sparse else None, entry, tensors)
            layout[name] = entry
        elif name in sparse_weights and t.is_floating_point():
            flat = t.flatten().float().numpy()
            keep = flat != 0
            entry = {"k": "s", "shape": list(t.shape), "dtype": "float32"}
            sparse = _dense_or_sparse(flat.size, int(keep.sum()), 4)
            vals = flat[keep] if sparse else flat
            _encode_values(name, vals.astype(np.float32).tobytes(), keep if sparse else None,
                           entry, tensors)
            layout[name] = entry
        else:
            tensors[name] = t.contiguous()
            layout[name] = {"k": "f"}
    meta = {"format": FORMAT, "layout": json.dumps(layout, separators=(",", ":"))}
    return st_save(tensors, metadata=meta)


def _parse(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = header.get("__metadata__", {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a csearch packed artifact (format {meta.get('format')!r})")
    return st_load(data), json.loads(meta["layout"])


def unpack_state(data: bytes) -> dict[str, torch.Tensor]:
    """Rebuild the float state dict from packed bytes (bit-exact for the stored codes)."""
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}  # an alias stays the same tensor
    for name, t in _unpack(data).items():
        if isinstance(t, QuantizedWeight):
            if id(t) not in done:
                done[id(t)] = dequantize(t)
            t = done[id(t)]
        out[name] = t
    return out


def unpack_quantized(data: bytes) -> dict[str, QuantizedWeight]:
    """The stored codes by layer name (`{layer}.weight` -> layer), what `apply_runtime`
    builds weight-only kernels from."""
    return {name[: -len(".weight")]: t for name, t in _unpack(data).items()
            if isinstance(t, QuantizedWeight) and name.endswith(".weight")}


def _unpack(data: bytes) -> dict[str, torch.Tensor | QuantizedWeight]:
    tensors, layout = _parse(data)
    out: dict[str, torch.Tensor | QuantizedWeight] = {}
    for name, entry in layout.items():
        kind = entry["k"]
        if kind == "f":
            out[name] = tensors[name]
            continue
        if kind == "a":  # the same tensor, so a model loading it stays tied
            out[name] = out[entry["of"]]
            continue
        shape = tuple(entry["shape"])
        n = int(np.prod(shape)) if shape else 1

        def stream(part: str, name: str = name, entry: dict = entry) -> bytes:
            raw = tensors[f"{name}.{part}"].numpy().tobytes()
            return zlib.decompress(raw) if part in entry["z"] else raw

        keep = None
        if "pos" in entry:
            keep = _decode_positions(entry["pos"], stream("pos"), n, entry["count"])
        count = int(keep.sum()) if keep is not None else n
        if kind == "q":
            bits = entry["bits"]
            codes = unpack_bits(np.frombuffer(stream("val"), dtype=np.uint8), bits, count)
            signed = codes.astype(np.int16) - 2 ** (bits - 1)
            full = np.zeros(n, dtype=np.int16)
            if keep is not None:
                full[keep] = signed
            else:
                full[:] = signed
            out[name] = QuantizedWeight(
                torch.from_numpy(full.astype(np.int8)).reshape(shape),
                tensors[f"{name}.scales"], bits, entry["gs"], tensors.get(f"{name}.zeros"),
            )
        else:
            vals = np.frombuffer(stream("val"), dtype=np.float32)
            full_f = np.zeros(n, dtype=np.float32)
            if keep is not None:
                full_f[keep] = vals
            else:
                full_f[:] = vals
            out[name] = torch.from_numpy(full_f).reshape(shape)
    return out


def tensor_bytes(data: bytes) -> dict[str, int]:
    """Bytes each stored tensor takes in a safetensors file (from its header)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return {k: v["data_offsets"][1] - v["data_offsets"][0]
            for k, v in header.items() if k != "__metadata__"}


def effective_bits(data: bytes, weight_names: list[str], n_weights: int) -> float:
    """Bits stored per weight of the base model, averaged over all weight matrices:
    values, positions and scales of each weight count; pruned weights cost only their
    share of the positions (ModelOpt's effective-bits budget)."""
    if n_weights <= 0:
        return 0.0
    sizes = tensor_bytes(data)
    total = sum(n for key, n in sizes.items()
                for w in weight_names if key == w or key.startswith(w + "."))
    return 8.0 * total / n_weights
