"""The serve split that fits: when a trial's sampled (cache_ratio, memory_ratio) breaks
the memory budget but its weights leave room for some split, the trial is served with the
fitting split nearest the sampled one, so the search never drops a good compression config
because of a serving knob it sampled at random. A config that fits no split is infeasible.

Pure arithmetic on byte counts the replay measured: the budget S_total, the packed
weights, and the least S_cache and S_mem that serve at all (a causal LM: the KV blocks of
one longest sequence and one token's activations; a classifier: no response cache and one
sample's activations). The replay sizes S_cache = round(S_total x cache_ratio) and
S_mem = round(S_total x memory_ratio); `split_fits` checks exactly that rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from spaces import ServeConfig

__all__ = ["SplitNeed", "fit_split", "fitting_split", "no_split_reason", "split_fits"]


@dataclass(frozen=True)
class SplitNeed:
    """What a split must give: bytes of the budget, the weights and the least cache and
    workspace that serve."""

    budget_bytes: int
    weight_bytes: int
    cache_bytes: int  # least S_cache (one longest sequence's KV blocks; 0: no cache needed)
    mem_bytes: int  # least S_mem (one token's, or one sample's, activations)

    @property
    def overage_bytes(self) -> int:
        """Bytes over the budget of the smallest split that serves (> 0: no split fits)."""
        return self.weight_bytes + self.cache_bytes + self.mem_bytes - self.budget_bytes


def split_fits(cache_ratio: float, memory_ratio: float, need: SplitNeed) -> bool:
    """Whether the split serves within the budget, with the replay's own rounding."""
    b = need.budget_bytes
    s_cache, s_mem = round(b * cache_ratio), round(b * memory_ratio)
    return (cache_ratio >= 0 and memory_ratio >= 0 and s_cache >= need.cache_bytes
            and s_mem >= need.mem_bytes and need.weight_bytes + s_cache + s_mem <= b)


def fitting_split(cache_ratio: float, memory_ratio: float, need: SplitNeed
                  ) -> tuple[float, float] | None:
    """The sampled split if it fits; else the fitting split nearest it; None if none fits.

    Nearest keeps what the sampled split says where it can: a split too large for the room
    the weights leave is scaled down into it (the KV : workspace proportion the sampler
    chose stays), and a part below its minimum is raised to it, taken from the other part.
    Moving straight to the closest point instead would pin one part at its minimum for
    almost every oversized sample (a pool of one sequence, or one token per step)."""
    if split_fits(cache_ratio, memory_ratio, need):
        return cache_ratio, memory_ratio
    b = need.budget_bytes
    if b <= 0:
        return None
    # One byte of slack per part for rounding: round(b * r) is within 0.5 of b * r.
    room = (b - need.weight_bytes - 2) / b
    lo_c, lo_m = (need.cache_bytes + 1) / b, (need.mem_bytes + 1) / b
    if lo_c + lo_m > room:
        return None
    c, m = max(cache_ratio, 0.0), max(memory_ratio, 0.0)
    if c + m > room:
        scale = room / (c + m)
        c, m = c * scale, m * scale
    if c < lo_c:
        c, m = lo_c, max(lo_m, min(m, room - lo_c))
    if m < lo_m:
        c, m = max(lo_c, min(c, room - lo_m)), lo_m
    return (c, m) if split_fits(c, m, need) else None


def fit_split(cfg: ServeConfig, need: SplitNeed
              ) -> tuple[ServeConfig, tuple[float, float] | None]:
    """`cfg` served with the fitting split nearest its sampled one, and that split, when
    the sampled split breaks the budget and another fits; else `cfg` as it is and None
    (it fits, or nothing does)."""
    if split_fits(cfg.cache_ratio, cfg.memory_ratio, need):
        return cfg, None
    split = fitting_split(cfg.cache_ratio, cfg.memory_ratio, need)
    if split is None:
        return cfg, None
    return replace(cfg, cache_ratio=split[0], memory_ratio=split[1]), split


def no_split_reason(need: SplitNeed) -> str:
    """Why no split fits, in MB, for the trial's record."""
    mb = 1e6
    return (f"no serve split fits: packed weights {need.weight_bytes / mb:.3f} MB + the least "
            f"cache {need.cache_bytes / mb:.3f} MB + the least workspace "
            f"{need.mem_bytes / mb:.3f} MB exceed the budget {need.budget_bytes / mb:.3f} MB "
            f"by {need.overage_bytes / mb:.3f} MB")
