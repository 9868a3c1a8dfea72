"""Memory for ReNO's backward pass, in plain PyTorch: measure it, plan it, and trade it for time.

A ReNO iteration keeps every activation that backpropagation to the noise needs: the diffusion model's,
the VAE decoder's (the largest at 1024 px) and each reward tower's. This module

* measures them without keeping them (``ActivationProbe``: a forward pass whose saved tensors are
  counted and dropped at once, so it costs what an inference pass costs), per component and per block;
* plans which components recompute their blocks in the backward pass (``plan_checkpointing``): the
  fastest set whose estimated peak fits the free memory;
* recomputes a block in the backward pass (``recompute_in_backward``), also for models that update
  activations in place (ComfyUI's FLUX blocks, the 2024 SD UNet), where ``torch.utils.checkpoint``
  would silently return wrong gradients: saved tensors are version-checked (or copied) on recompute;
* installs such wrappers on a model's blocks for the duration of a run only (``wrap_blocks``).
"""

from __future__ import annotations

import contextlib
import itertools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

INPLACE_MESSAGE = "modified by an inplace operation"
SAFETY = 1.2  # estimated peak x SAFETY (+ RESERVE) must fit: backward's own temporaries, fragmentation
RESERVE = 256 * 2**20


# -- measuring ------------------------------------------------------------------------------------

@dataclass
class ComponentProfile:
    """What one component (diffusion model, VAE decoder, one reward) keeps for the backward pass."""

    name: str
    saved_bytes: int = 0  # activations kept for backward, without recomputation
    outside_bytes: int = 0  # of which outside every block (kept either way)
    boundary_bytes: int = 0  # the blocks' inputs: what recomputing blocks keeps instead of their activations
    max_block_bytes: int = 0  # the largest block's activations: alive while it is recomputed in backward
    blocks: int = 0
    seconds: float = 0.0  # forward time: what recomputation adds to an iteration
    # a second level, for a component whose blocks are themselves made of blocks (a multi-step chain: each model call
    # is a block, and the model's own blocks are inside it), recomputed instead of the blocks: the most inner blocks
    # in one block; what that keeps (per block: saved outside its inner blocks, and their inputs; summed); the
    # largest inner block's activations
    inner_blocks: int = 0
    inner_retained_bytes: int = 0
    inner_max_block_bytes: int = 0
    _block_bytes: list = field(default_factory=list, repr=False)

    @property
    def checkpointable(self) -> bool:
        return self.blocks > 0

    def retained(self, recompute: bool, inner: bool = False) -> int:
        """Kept for backward; ``inner``: the inner blocks recompute instead of the blocks."""
        if inner and self.inner_blocks:
            return self.outside_bytes + self.inner_retained_bytes
        if recompute and self.checkpointable:
            return self.outside_bytes + self.boundary_bytes
        return self.saved_bytes

    def transient(self, recompute: bool, inner: bool = False) -> int:
        """Alive while the largest recomputed block is recomputed in backward."""
        if inner and self.inner_blocks:
            return self.inner_max_block_bytes
        return self.max_block_bytes if recompute and self.checkpointable else 0


def inner(name: str) -> str:
    """The name of the second level of component ``name`` in a plan: its inner blocks recompute instead of its
    blocks (the diffusion model's own blocks in every step, instead of whole steps)."""
    return f"{name}'s blocks"


class ActivationProbe:
    """Counts the bytes autograd saves for backward, per component and block, and keeps none of them.

    Inside ``with probe:`` run the forward pass once, each component inside ``probe.component(name)``
    and each block call inside ``probe.block(args)`` (``wrap_blocks(blocks, probe.block_wrapper)``).
    Saved tensors are replaced by nothing, so the pass's peak memory is an inference pass's and no
    backward is possible through it (code that runs its own backward inside its forward pass, as ComfyUI's DEIS
    sampler does for its coefficients, cannot be measured: ``PROBE_MESSAGE``). A storage saved twice while alive is counted once; weights and
    other leaves are not activations and are not counted.
    """

    def __init__(self, synchronize: Callable[[], None] | None = None):
        self.profiles: dict[str, ComponentProfile] = {}
        self._current: ComponentProfile | None = None
        self._block_depth = 0
        self._block_saved = 0
        self._inner = None  # in an outer block: [saved outside its inner blocks, their inputs, the largest of them]
        self._inner_saved = 0
        self._inner_count = 0
        self._seen: dict[int, weakref.ref] = {}
        self._sync = synchronize or (lambda: None)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _no_unpack)

    def __enter__(self) -> ActivationProbe:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._seen.clear()

    def _pack(self, t: torch.Tensor):
        if t.grad_fn is None or self._current is None:
            return None
        storage = t.untyped_storage()
        key = storage.data_ptr()
        ref = self._seen.get(key)
        if ref is not None and ref() is not None:
            return None
        self._seen[key] = weakref.ref(t)
        nbytes = storage.nbytes()
        self._current.saved_bytes += nbytes
        if self._block_depth:
            self._block_saved += nbytes
            if self._block_depth == 1:
                self._inner[0] += nbytes
            elif self._inner_count:
                self._inner_saved += nbytes
        else:
            self._current.outside_bytes += nbytes
        return None

    @contextlib.contextmanager
    def component(self, name: str) -> Iterator[ComponentProfile]:
        profile = self.profiles.setdefault(name, ComponentProfile(name))
        previous, self._current = self._current, profile
        self._sync()
        start = time.perf_counter()
        try:
            yield profile
        finally:
            self._sync()
            profile.seconds += time.perf_counter() - start
            self._current = previous

    @contextlib.contextmanager
    def block(self, args: Iterable = ()) -> Iterator[None]:
        outer = self._block_depth == 0 and self._current is not None
        if outer:
            self._current.blocks += 1
            self._current.boundary_bytes += sum(_tensor_bytes(a) for a in args)
            self._block_saved = 0
            self._inner, self._inner_count = [0, 0, 0], 0
        self._block_depth += 1
        try:
            yield
        finally:
            self._block_depth -= 1
            if outer:
                profile = self._current
                profile._block_bytes.append(self._block_saved)
                profile.max_block_bytes = max(profile.max_block_bytes, self._block_saved)
                if self._inner_count:
                    profile.inner_blocks = max(profile.inner_blocks, self._inner_count)
                    profile.inner_retained_bytes += self._inner[0] + self._inner[1]
                    profile.inner_max_block_bytes = max(profile.inner_max_block_bytes, self._inner[2])
                self._inner, self._inner_count = None, 0

    @contextlib.contextmanager
    def inner_block(self, args: Iterable = ()) -> Iterator[None]:
        """A block inside an outer block (a model block inside a model call of a multi-step chain): measured for
        the component's second level. Anywhere else it is not a block of its own."""
        counted = self._block_depth == 1 and self._inner is not None
        if counted:
            self._inner_count += 1
            self._inner[1] += sum(_tensor_bytes(a) for a in args)
            self._inner_saved = 0
        self._block_depth += 1
        try:
            yield
        finally:
            self._block_depth -= 1
            if counted:
                self._inner[2] = max(self._inner[2], self._inner_saved)
                self._inner_saved = 0

    def block_wrapper(self, forward: Callable) -> Callable:
        def probed(*args, **kwargs):
            with self.block(list(args) + list(kwargs.values())):
                return forward(*args, **kwargs)
        return probed

    def inner_block_wrapper(self, forward: Callable) -> Callable:
        def probed(*args, **kwargs):
            with self.inner_block(list(args) + list(kwargs.values())):
                return forward(*args, **kwargs)
        return probed


#: the start of what a backward through a measuring pass raises (``ReNORun._plan`` recognises it)
PROBE_MESSAGE = "ActivationProbe: this forward pass only measured its activations"


def _no_unpack(_):
    raise RuntimeError("ActivationProbe: this forward pass only measured its activations; it cannot be backpropagated")


def _tensor_bytes(value) -> int:
    """Bytes of the tensors (that carry gradients) among an argument, a tuple/list of them or a dict."""
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes() if value.requires_grad else 0
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


# -- planning ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryPlan:
    recompute: frozenset[str]  # components whose blocks are recomputed in the backward pass
    estimated_peak: int  # bytes of activations at the peak of an iteration (models excluded)
    fits: bool  # estimated_peak * SAFETY + RESERVE <= the budget
    extra_seconds: float  # forward time added per iteration by the recomputation

    def describe(self, order: Sequence[str] = ()) -> str:
        names = [n for n in order if n in self.recompute] + sorted(self.recompute - set(order))
        what = ", ".join(names) if names else "nothing"
        return f"recompute {what}; activations ~{self.estimated_peak / 2**30:.2f} GiB"


_SCALED_FIELDS = ("saved_bytes", "outside_bytes", "boundary_bytes", "max_block_bytes", "inner_retained_bytes",
                  "inner_max_block_bytes", "seconds")


def _fit_size_law(sizes: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Non-negative ``(c, a, b)`` of ``c + a*size + b*size**2`` that best fits the points (exact through three).

    Activations are a constant (a reward, which resizes every image to 224 px), plus a part linear in the token
    count (convolutions, MLPs), plus a part quadratic in it (materialized attention). Every subset of the three
    terms is tried and the best non-negative fit is kept, as a tiny non-negative least squares.
    """
    import itertools

    basis = [lambda s: 1.0, lambda s: s, lambda s: s * s]
    best = (float("inf"), (0.0, 0.0, max(values) / max(sizes) ** 2 if max(sizes) > 0 else 0.0))
    for k in range(1, 4):
        for terms in itertools.combinations(range(3), k):
            x = torch.tensor([[basis[t](s) for t in terms] for s in sizes], dtype=torch.float64)
            y = torch.tensor(list(values), dtype=torch.float64).unsqueeze(1)
            coef = torch.linalg.lstsq(x, y).solution.squeeze(1)
            if (coef < 0).any():
                continue
            err = float((x @ coef.unsqueeze(1) - y).abs().max())
            full = [0.0, 0.0, 0.0]
            for t, c in zip(terms, coef.tolist()):
                full[t] = c
            if err < best[0] - 1e-9 * max(1.0, max(values)):
                best = (err, tuple(full))
    return best[1]


def extrapolate_profiles(measured: Sequence[tuple[float, Sequence[ComponentProfile]]], target_size: float
                         ) -> list[ComponentProfile]:
    """Profiles at ``target_size`` (e.g. the latent area) from measurements ``[(size, profiles), ...]`` at smaller
    sizes: each figure of each component follows ``c + a*size + b*size**2`` fitted through the measurements
    (``_fit_size_law``), and never less than its largest measurement."""
    import math

    sizes = [size for size, _ in measured]
    largest = measured[sizes.index(max(sizes))][1]
    tables = [{p.name: p for p in profiles} for _, profiles in measured]
    out = []
    for big in largest:
        fields = {}
        for name in _SCALED_FIELDS:
            values = [float(getattr(t.get(big.name, big), name)) for t in tables]
            c, a, b = _fit_size_law(sizes, values)
            value = max(c + a * target_size + b * target_size**2, max(values))
            fields[name] = value if name == "seconds" else int(math.ceil(value))
        out.append(ComponentProfile(big.name, blocks=big.blocks, inner_blocks=big.inner_blocks, **fields))
    return out


def estimate_peak(profiles: Iterable[ComponentProfile], recompute: Iterable[str]) -> int:
    """Activation bytes alive at once: everything kept, plus the largest block being recomputed (``inner(name)`` in
    ``recompute``: component ``name``'s inner blocks instead of its blocks)."""
    recompute = set(recompute)
    profiles = list(profiles)
    kept = sum(p.retained(p.name in recompute, inner(p.name) in recompute) for p in profiles)
    return kept + max((p.transient(p.name in recompute, inner(p.name) in recompute) for p in profiles), default=0)


def fits(peak: int, budget: int) -> bool:
    return peak * SAFETY + RESERVE <= budget


def plan_checkpointing(profiles: Sequence[ComponentProfile], budget: int, forced: Iterable[str] = (),
                       allowed: Iterable[str] | None = None) -> MemoryPlan:
    """The set of components to recompute that fits ``budget`` bytes and adds the least time.

    ``forced`` components always recompute; only ``allowed`` ones (default: all) may be added. When no
    set fits, every allowed component recomputes (the smallest peak) and ``fits`` is False. A component with inner
    blocks has a second level, ``inner(name)``: its inner blocks recompute instead (chosen only with ``name``, at no
    extra time: one forward pass either way; of two choices as fast, the one with the lower peak is taken).
    """
    by_name = {p.name: p for p in profiles}
    levels = {p.name: p for p in profiles if p.checkpointable}
    levels.update({inner(p.name): p for p in profiles if p.checkpointable and p.inner_blocks})
    forced = {n for n in forced if n in levels}
    allowed_set = set(levels) if allowed is None else set(allowed)
    optional = [n for n in levels if n in allowed_set and n not in forced]
    best = None
    for k in range(len(optional) + 1):
        for extra in itertools.combinations(optional, k):
            chosen = forced | set(extra)
            if any(inner(n) in chosen and n not in chosen for n in by_name):
                continue  # the second level only inside the first
            peak = estimate_peak(profiles, chosen)
            cost = sum(levels[n].seconds for n in chosen if n in by_name)
            if fits(peak, budget) and (best is None or (cost, peak) < (best[0], best[1])):
                best = (cost, peak, chosen)
    if best is None:
        every = forced | set(optional)  # everything recomputes; a second level only where it lowers the peak
        chosen = every
        for name in [n for n in every if n not in by_name]:
            if estimate_peak(profiles, chosen - {name}) <= estimate_peak(profiles, chosen) and name not in forced:
                chosen = chosen - {name}
        return MemoryPlan(frozenset(chosen), estimate_peak(profiles, chosen), False,
                          sum(levels[n].seconds for n in chosen if n in by_name))
    cost, peak, chosen = best
    return MemoryPlan(frozenset(chosen), peak, True, cost)


# -- memory layout: measured, not assumed --------------------------------------------------------------

CONTIGUOUS, CHANNELS_LAST = "contiguous", "channels-last"
#: the environment variable that forces the VAE decoder's layout ("1" channels-last, "0" as loaded; unset: measured)
CHANNELS_LAST_ENV = "RENO_CHANNELS_LAST"
LAYOUTS = (CONTIGUOUS, CHANNELS_LAST)
#: channels-last must beat the layout the model was loaded in by this fraction: it costs a copy of the weights, and a
#: smaller gain is within the timing noise of a few rounds
LAYOUT_MARGIN = 0.03
LAYOUT_ROUNDS = 5


@dataclass(frozen=True)
class LayoutChoice:
    """The layout a model's convolutions run in, and why: ``seconds`` holds each layout's measured best time (empty
    when forced); ``where`` says at what shape it was measured."""

    channels_last: bool
    seconds: dict = field(default_factory=dict)
    reason: str = "measured"
    where: str = ""

    @property
    def layout(self) -> str:
        return CHANNELS_LAST if self.channels_last else CONTIGUOUS

    def describe(self) -> str:
        if not self.seconds:
            return f"{self.layout} ({self.reason})"
        times = ", ".join(f"{name} {self.seconds[name]:.4f} s" for name in LAYOUTS if name in self.seconds)
        return f"{self.layout} (measured forward+backward{' ' + self.where if self.where else ''}: {times})"


def choose_layout(seconds: dict, margin: float = LAYOUT_MARGIN) -> bool:
    """Channels-last (True) only when its measured time beats contiguous's by more than ``margin``."""
    return seconds[CHANNELS_LAST] < (1.0 - margin) * seconds[CONTIGUOUS]


def time_layouts(prepare: Callable[[str], contextlib.AbstractContextManager], step: Callable[[], None],
                 rounds: int = LAYOUT_ROUNDS, sync: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Each layout's best time of ``step()`` (a forward+backward pass), measured inside ``prepare(layout)``.

    One warm-up call per layout (kernel choice, caches), then ``rounds`` interleaved rounds (contiguous, channels-last,
    contiguous, ...) so that a change of the machine's load hits both alike; the minimum of each is kept (other work
    on the machine only ever adds time). ``prepare`` is entered outside the timed call (a weight copy is not timed).
    """
    sync = sync or (lambda: None)
    best = {name: float("inf") for name in LAYOUTS}
    for timed in [False] + [True] * rounds:
        for name in LAYOUTS:
            with prepare(name):
                sync()
                start = clock()
                step()
                sync()
                if timed:
                    best[name] = min(best[name], clock() - start)
    return best


# -- recomputing ------------------------------------------------------------------------------------

def recompute_in_backward(fn: Callable, *args, copy_saved: bool = False, copy_constants: bool = False, **kwargs):
    """``fn(*args, **kwargs)`` whose saved activations are dropped and recomputed in the backward pass.

    Like ``torch.utils.checkpoint(use_reentrant=False)`` (works with ``torch.autograd.grad``, any
    argument structure, tuple outputs), with two guarantees it lacks for inference code that updates
    tensors in place: every saved tensor and every input is version-checked when it is used, and a
    modification raises autograd's own "modified by an inplace operation" error instead of giving
    wrong gradients; with ``copy_saved`` the inputs (those without a gradient history too: text features the model
    updates in place later) and the recomputed saved tensors are copies, so such models differentiate correctly. ``fn`` must be deterministic (eval-mode models: no dropout,
    no random draws); a recomputation that saves different tensors raises.

    ``copy_constants``: the recomputed pass also copies every saved tensor that carries no gradient history (the
    weights), at the moment it is saved. For a layer whose weights a host casts into memory it reuses or releases
    after the call (a shared cast buffer, a streamed weight): the copy is taken while the host still holds the
    weight, and the layer's backward reads the copy, never the host's memory. Costs one layer's weights, alive
    from the layer's recomputation to its backward.
    """
    if not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    flat, rebuild = _flatten(args, kwargs)
    # inference tensors (constants made under inference mode) cannot change and carry no version
    stash = [(t.detach().clone() if copy_saved else t.detach(), t._version, t.requires_grad)
             if isinstance(t, torch.Tensor) and not t.is_inference() else (t, None, None) for t in flat]
    device_type = next((t.device.type for t in flat if isinstance(t, torch.Tensor)), "cpu")
    autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
    signature: list[tuple] = []
    recomputed: dict[int, tuple[torch.Tensor, int]] = {}
    state = {"done": False}

    def pack(t: torch.Tensor) -> int:
        signature.append((t.shape, t.dtype))
        return len(signature) - 1

    def recompute() -> None:
        inputs = []
        for value, version, requires_grad in stash:
            if version is None:
                inputs.append(value)
                continue
            if not copy_saved and value._version != version:
                raise RuntimeError(f"recompute_in_backward: an input of a recomputed block was {INPLACE_MESSAGE} "
                                   "after the block ran")
            leaf = value.detach().requires_grad_(requires_grad)
            with torch.enable_grad():  # backward runs without grad mode
                inputs.append(leaf.clone() if requires_grad else leaf)  # a non-leaf: the block may update it in place
        count = [0]

        def rpack(t: torch.Tensor) -> int:
            i = count[0]
            count[0] += 1
            if i >= len(signature) or (t.shape, t.dtype) != signature[i]:
                raise RuntimeError("recompute_in_backward: the recomputed forward pass saved different tensors "
                                   "than the first one (a non-deterministic block?)")
            copy = copy_saved if t.grad_fn is not None else copy_constants and not t.requires_grad
            kept = t.detach().clone() if copy else t.detach()
            recomputed[i] = (kept, kept._version)
            return i

        a, kw = rebuild(inputs)
        with torch.enable_grad(), torch.autocast(device_type, dtype=autocast[1], enabled=autocast[0]), \
                torch.autograd.graph.saved_tensors_hooks(rpack, _no_unpack):
            fn(*a, **kw)
        if count[0] != len(signature):
            raise RuntimeError("recompute_in_backward: the recomputed forward pass saved a different number of "
                               "tensors than the first one (a non-deterministic block?)")
        state["done"] = True

    def unpack(i: int) -> torch.Tensor:
        if not state["done"]:
            recompute()
        entry = recomputed.pop(i, None)
        if entry is None:
            raise RuntimeError("recompute_in_backward: a recomputed block was backpropagated twice "
                               "(retain_graph / double backward is not supported)")
        t, version = entry
        if t._version != version:
            raise RuntimeError(f"recompute_in_backward: a tensor saved for backward was {INPLACE_MESSAGE}")
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return fn(*args, **kwargs)


def _flatten(args: tuple, kwargs: dict):
    """Positional and keyword arguments as one list (tensors found one level inside lists/tuples/dicts)."""
    flat: list = []
    layout: list = []
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            layout.append((type(value), len(value)))
            flat.extend(value)
        elif isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            layout.append((dict, list(value)))
            flat.extend(value.values())
        else:
            layout.append(None)
            flat.append(value)
    keys = list(kwargs)

    def rebuild(values: list):
        out, pos = [], 0
        for entry in layout:
            if entry is None:
                out.append(values[pos])
                pos += 1
            elif entry[0] is dict:
                out.append(dict(zip(entry[1], values[pos:pos + len(entry[1])])))
                pos += len(entry[1])
            else:
                kind, n = entry
                items = values[pos:pos + n]
                out.append(list(items) if kind is list else tuple(items))
                pos += n
        n_args = len(out) - len(keys)
        return tuple(out[:n_args]), dict(zip(keys, out[n_args:]))

    return flat, rebuild


# -- installing wrappers on blocks ---------------------------------------------------------------------

@contextlib.contextmanager
def wrap_blocks(blocks: Iterable[nn.Module], make_forward: Callable[[Callable], Callable]) -> Iterator[None]:
    """Replace each block's ``forward`` with ``make_forward(forward)`` for the duration only."""
    installed = []
    try:
        for block in blocks:
            had = "forward" in block.__dict__
            previous = block.__dict__.get("forward")
            block.forward = make_forward(block.forward)
            installed.append((block, had, previous))
        yield
    finally:
        for block, had, previous in reversed(installed):
            if had:
                block.forward = previous
            else:
                del block.forward


def recompute_wrapper(copy_saved: Callable[[], bool] | bool = False,
                      copy_constants: bool = False) -> Callable[[Callable], Callable]:
    """``make_forward`` for ``wrap_blocks``: the block recomputes in backward (see ``recompute_in_backward``)."""
    def make(forward: Callable) -> Callable:
        def recomputed(*args, **kwargs):
            copy = copy_saved() if callable(copy_saved) else copy_saved
            return recompute_in_backward(forward, *args, copy_saved=copy, copy_constants=copy_constants, **kwargs)
        return recomputed
    return make


def recomputing(*roots: nn.Module, class_names: Iterable[str] = (), copy_saved: bool = False):
    """For the duration, the blocks of each of ``roots`` (``find_blocks``) recompute their activations in the
    backward pass: gradient checkpointing for library use (a reward model, a diffusers UNet...), with the
    same mechanism the ComfyUI run installs."""
    return wrap_blocks([b for root in roots for b in find_blocks(root, class_names)], recompute_wrapper(copy_saved))


def find_blocks(root: nn.Module, class_names: Iterable[str] = ()) -> list[nn.Module]:
    """The outermost submodules of ``root`` whose class is named in ``class_names``; when there are none,
    the elements of the outermost ``nn.ModuleList``s (the blocks of most transformers)."""
    names = set(class_names)
    found: list[nn.Module] = []

    def by_name(module: nn.Module) -> None:
        for child in module.children():
            if type(child).__name__ in names:
                found.append(child)
            else:
                by_name(child)

    def by_list(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                found.extend(child)
            else:
                by_list(child)

    if names:
        by_name(root)
    if not found:
        by_list(root)
    return found
