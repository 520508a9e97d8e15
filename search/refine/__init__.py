"""`refine`: local refinement around the feasible front, mixed with a global sampler.

A study starts from strong seeds (the sensitivity-guided config, Deep Compression's
recipe). TPE in 20-30 conditional dimensions does not find their simple neighbours ("one
bit fewer", "a few points more sparsity", "this group to int8") within a small budget,
so the seeds stayed the best trials. `RefineSampler` spends a share of the trials on
those neighbours: it picks a member of the feasible Pareto front (binary tournament on
crowding distance, as NSGA-II does, so the front's ends are refined most) and either
takes a directed step towards a smaller model (`compress_step`: a few points more
sparsity, one bit fewer, a stronger quantizer for one group, mostly in the group that
holds the bytes, sometimes with a recovery step) or changes one to three of its
parameters by one random step each; neither touches a parameter whose value changes
nothing (`inert`). A parent that was itself a refinement may instead repeat the numeric
step that led to it (Hooke and Jeeves' pattern move), so "a few points more sparsity"
that worked is tried again. The other trials go to the base sampler (csearch's windowed
TPE), which keeps exploring globally, so a poor seed does not trap the study. With
`adaptive`, the share of refinements follows which of the two kinds of trial lands on
the front more often, between 25 % and 75 %.

Constraints: only feasible COMPLETE trials (every stored constraint value <= 0, Optuna's
rule) are parents, except that a share of the refinements gives a near miss (infeasible
only on accuracy or perplexity, dominated by no feasible trial) more recovery.
Conditional parameters: a child is built in the space's declaration order, so a changed
choice drops the parameters it switches off and samples the ones it switches on. Ranges
come from the parent trial's own distributions where it has them (a group the
sensitivity pass pinned to fp32 stays pinned). Many workers: the planned child is stored
on its trial before sampling (system attr `csearch:refine`), and no plan equals the
parameters of any other trial, finished, running or planned; after storing, a plan that
a lower-numbered open trial also chose is given up and planned again.

Modules: `steps` (neighbours of a parameter set: random, pattern, directed, repair),
`neighbours` (the compression space's directions), `front` (the feasible front, near
misses and what a sampler has folded in of a study), `sampler` (`RefineSampler`).
"""

from .front import PLAN_ATTR, feasible_front
from .neighbours import compress_step, inert, recovery_step
from .sampler import REFINE_SHARE, RefineSampler
from .steps import directed, mutate, param_key, pattern_move, repair

__all__ = ["PLAN_ATTR", "REFINE_SHARE", "RefineSampler", "compress_step", "directed",
           "feasible_front", "inert", "mutate", "param_key", "pattern_move",
           "recovery_step", "repair"]
