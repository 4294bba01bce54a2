"""Model configuration and the one table of parameter names, shapes and logical axes.

Both models (``model/torch_model.py``, ``model/jax_model.py``), checkpoints and the
sharding rules read ``param_specs``: the names are Hugging Face Gemma's, so a Gemma-format
safetensors file is our checkpoint format; matrices are stored (out_features, in_features)
as ``torch.nn.Linear`` keeps them (JAX computes ``x @ w.T``). Logical axis names
("vocab", "embed", "heads", "kv_heads", "mlp") are what ``sharding/`` maps to mesh axes.

Presets (``conf/model/*.yaml`` mirror them): ``tiny`` (tests), ``nano1`` (~1.8B) and
``nano2`` (~3.25B) — shapes chosen here, the Gemini report gives only the sizes —
``gemma_2b`` (Gemma 1 2B), and ``pro_*`` shapes for scaling profiles (illustrative).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"
    vocab_size: int = 512
    width: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 1  # 1 = multi-query attention (Gemini, Gemma 2B)
    head_dim: int = 32
    mlp_dim: int = 512
    max_seq_len: int = 32768
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    attn_softcap: float | None = None  # Gemma 2: 50.0
    final_softcap: float | None = None  # Gemma 2: 30.0
    local_window: int | None = None  # sliding window of the local layers
    local_every: int = 0  # > 0: layers with i % local_every != local_every - 1 are local
    query_scale: float | None = None  # None: head_dim ** -0.5
    # Image-token head: 0 = off. > 0: ids [vocab_size, vocab_size + image_vocab) are discrete
    # image tokens with their own tied table ``model.image_embed_tokens.weight`` [image_vocab,
    # width] (embedded like text, x sqrt(width)); logits are [..., vocab_size + image_vocab] =
    # concat(text head, image head), and the loss runs over that combined vocabulary.
    image_vocab: int = 0
    # True: forward takes ``media_ids`` [B, S] and attention within each block of equal ids >= 0
    # is bidirectional (kernels' ``bidirectional_ids``); text stays causal. model/multimodal.py's
    # ``lm_kwargs`` gives the image and video blocks' ids (audio stays causal, a stream as text).
    bidirectional_media: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "width", "layers", "heads", "kv_heads", "head_dim", "mlp_dim",
                     "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads % kv_heads must be 0 (heads {self.heads}, kv_heads {self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.local_every and self.local_window is None:
            raise ValueError("local_every > 0 needs local_window")
        if isinstance(self.image_vocab, bool) or not isinstance(self.image_vocab, int) or self.image_vocab < 0:
            raise ValueError(f"image_vocab must be an int >= 0 (0 = no image-token head), got {self.image_vocab!r}")
        if not isinstance(self.bidirectional_media, bool):
            raise ValueError(f"bidirectional_media must be a bool, got {self.bidirectional_media!r}")

    @property
    def total_vocab(self) -> int:
        """Size of the logits' last axis: text vocab_size plus the image-token block."""
        return self.vocab_size + self.image_vocab

    @property
    def image_token_ids(self) -> range:
        """The image-token id block [vocab_size, vocab_size + image_vocab) (empty when off)."""
        return range(self.vocab_size, self.vocab_size + self.image_vocab)

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` uses the sliding window (Gemma 2 alternates local and global)."""
        return bool(self.local_every) and layer % self.local_every != self.local_every - 1

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "tiny": ModelConfig(),
    # ~1.80B: Gemma-2B-like MQA body with a narrower MLP.
    "nano1": ModelConfig(name="nano1", vocab_size=256000, width=2048, layers=18, heads=8, kv_heads=1,
                         head_dim=256, mlp_dim=9984),
    # ~3.26B: wider and deeper, still MQA.
    "nano2": ModelConfig(name="nano2", vocab_size=256000, width=2560, layers=28, heads=10, kv_heads=1,
                         head_dim=256, mlp_dim=10240),
    "gemma_2b": ModelConfig(name="gemma_2b", vocab_size=256000, width=2048, layers=18, heads=8,
                            kv_heads=1, head_dim=256, mlp_dim=16384, max_seq_len=8192),
    # Illustrative larger shapes for scaling profiles (not the report's, which are unpublished).
    "pro_27b": ModelConfig(name="pro_27b", vocab_size=256000, width=6144, layers=48, heads=48,
                           kv_heads=1, head_dim=128, mlp_dim=24576),
    "pro_120b": ModelConfig(name="pro_120b", vocab_size=256000, width=10240, layers=80, heads=80,
                            kv_heads=1, head_dim=128, mlp_dim=40960),
}
NANO_TARGETS = {"nano1": 1.8e9, "nano2": 3.25e9}  # parameter counts from the Gemini 1.0 report


def init_std(shape: tuple[int, ...]) -> float:
    """Standard deviation of a matrix's normal init: LeCun, 1 / sqrt(fan_in), fan_in being the
    last axis (Hugging Face layouts: Linear [out, in]; embedding [vocab, width], whose rows are
    scaled by sqrt(width) on lookup, so embedded tokens start with unit variance). This is
    JAX/Flax's default ``lecun_normal``. A fixed 0.02 (GPT-2's choice for width 768+) is ~4x
    too small at the tiny width 128: measured on the retrieval task (4 key-first pairs, batch 16),
    a 2-layer model with 0.02 init sat at ~0.35 answer accuracy (answering from the context's
    values, not the key) after 2.5k steps; with this init it reached 0.98-1.0 within 1k steps."""
    return float(shape[-1]) ** -0.5


def param_specs(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """name -> (shape, logical axes), in Hugging Face Gemma naming. The output head is tied
    to ``model.embed_tokens.weight`` (no separate parameter). ``image_vocab > 0`` adds
    ``model.image_embed_tokens.weight`` [image_vocab, width] (its own tied image-token head; not
    a Gemma name), right after the text table; its "image_vocab" axis has no sharding rule, so
    it is replicated (a small table, and any image_vocab works with any tensor-parallel size)."""
    w, q, kv, m = cfg.width, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.mlp_dim
    specs = {"model.embed_tokens.weight": ((cfg.vocab_size, w), ("vocab", "embed"))}
    if cfg.image_vocab:
        specs["model.image_embed_tokens.weight"] = ((cfg.image_vocab, w), ("image_vocab", "embed"))
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        specs.update({
            p + "input_layernorm.weight": ((w,), ("embed",)),
            p + "self_attn.q_proj.weight": ((q, w), ("heads", "embed")),
            p + "self_attn.k_proj.weight": ((kv, w), ("kv_heads", "embed")),
            p + "self_attn.v_proj.weight": ((kv, w), ("kv_heads", "embed")),
            p + "self_attn.o_proj.weight": ((w, q), ("embed", "heads")),
            p + "post_attention_layernorm.weight": ((w,), ("embed",)),
            p + "mlp.gate_proj.weight": ((m, w), ("mlp", "embed")),
            p + "mlp.up_proj.weight": ((m, w), ("mlp", "embed")),
            p + "mlp.down_proj.weight": ((w, m), ("embed", "mlp")),
        })
    specs["model.norm.weight"] = ((w,), ("embed",))
    return specs


def param_count(cfg: ModelConfig) -> int:
    total = 0
    for shape, _ in param_specs(cfg).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def matmul_params(cfg: ModelConfig) -> int:
    """The 2-D weights' element count: every matmul, the tied embedding head once."""
    return sum(math.prod(shape) for shape, _ in param_specs(cfg).values() if len(shape) == 2)


def flops_per_token(cfg: ModelConfig, seq_len: int, *, train: bool = True) -> float:
    """Model FLOPs per token, the one convention of every MFU this project prints (the train
    log, ``make bench``'s model rows, ``sharding.profile``): PaLM's and torchtitan's
    6 N + 12 L H D S for a train step (2 N + 4 L H D S forward), N the matmul parameters (the
    tied head counts, the embedding lookup and the norms do not), attention counted in full
    even under a causal mask, so the MFU compares with torchtitan's published figures."""
    n = matmul_params(cfg)
    attn = cfg.layers * cfg.heads * cfg.head_dim * seq_len
    return 6 * n + 12 * attn if train else 2 * n + 4 * attn


# Each framework's presets and per-op impls (kernels/torch_ops.py, kernels/jax_ops.py *_IMPLS;
# "ring": sharding/ring_attention_jax.py). KernelConfig accepts their union (a typo fails when
# the config is built, not at the first kernel call); KernelConfig.validate(framework) then
# refuses the other framework's names (train, generate and sharding/launch call it).
FRAMEWORK_PRESETS = {"torch": ("reference", "sdpa", "triton"), "jax": ("pallas", "reference", "xla")}
_TORCH_ELEMENTWISE = ("compiled", "reference", "triton")
_JAX_ELEMENTWISE = ("pallas", "reference", "xla")
FRAMEWORK_IMPLS = {
    "torch": {"attention": ("reference", "sdpa", "triton"), "decode": ("reference", "sdpa", "triton"),
              "norm": _TORCH_ELEMENTWISE, "rope": _TORCH_ELEMENTWISE, "mlp": _TORCH_ELEMENTWISE,
              "loss": ("reference", "triton")},
    "jax": {"attention": ("pallas", "pallas_mgpu", "pallas_tpu", "reference", "ring", "xla"),
            "decode": ("pallas", "pallas_tpu", "reference", "xla"),
            "norm": _JAX_ELEMENTWISE, "rope": _JAX_ELEMENTWISE, "mlp": _JAX_ELEMENTWISE,
            "loss": ("pallas", "reference", "xla")},
}
KERNEL_PRESETS = tuple(sorted(set(FRAMEWORK_PRESETS["torch"]) | set(FRAMEWORK_PRESETS["jax"])))
OP_IMPLS = {op: set(FRAMEWORK_IMPLS["torch"][op]) | set(FRAMEWORK_IMPLS["jax"][op]) for op in FRAMEWORK_IMPLS["torch"]}
_FRAMEWORK_NAMES = {"torch": "PyTorch", "jax": "JAX"}


@dataclass
class KernelConfig:
    """Which implementation each op uses; ``preset`` fills every op not overridden.

    PyTorch impls: triton | reference | sdpa (attention only); JAX: pallas | reference | xla,
    and attention="ring" for context-parallel sharded steps (``sharding/``).
    """

    preset: str = "reference"
    attention: str | None = None
    decode: str | None = None
    norm: str | None = None
    rope: str | None = None
    mlp: str | None = None
    # the model's loss: fused linear cross-entropy, chunked (torch: triton; JAX: pallas | xla), or
    # reference (full logits)
    loss: str | None = None
    # torch's Triton attention tiles: None = the per-device defaults; "autotune" = the fastest
    # candidates of the forward and backward passes, timed on the first call of each shape
    attention_blocks: str | None = None

    def __post_init__(self):
        if self.preset not in KERNEL_PRESETS:
            raise ValueError(f"kernels preset: expected one of {sorted(KERNEL_PRESETS)}, got {self.preset!r}")
        for op, known in OP_IMPLS.items():
            chosen = getattr(self, op)
            if chosen is not None and chosen not in known:
                raise ValueError(f"kernels.{op}: expected one of {sorted(known)} (PyTorch and JAX impls) "
                                 f"or None (the preset), got {chosen!r}")
        if self.attention_blocks not in (None, "autotune"):
            raise ValueError(f"attention_blocks: expected None or 'autotune', got {self.attention_blocks!r}")

    def validate(self, framework: str) -> "KernelConfig":
        """Refuse a preset or per-op impl that ``framework`` lacks (``FRAMEWORK_IMPLS``), naming the
        key, at config time (not at the op's first call); returns self."""
        if framework not in FRAMEWORK_IMPLS:
            raise ValueError(f"framework must be one of {sorted(FRAMEWORK_IMPLS)}, got {framework!r}")
        other = "jax" if framework == "torch" else "torch"
        presets = FRAMEWORK_PRESETS[framework]
        if self.preset not in presets:
            owner = f"a {_FRAMEWORK_NAMES[other]} preset" if self.preset in FRAMEWORK_PRESETS[other] else "no preset"
            raise ValueError(f"kernels={self.preset!r} is {owner}; framework={framework} takes the presets "
                             f"{list(presets)}")
        for op, known in FRAMEWORK_IMPLS[framework].items():
            chosen = getattr(self, op)
            if chosen is not None and chosen not in known:
                owner = (f"a {_FRAMEWORK_NAMES[other]} impl" if chosen in FRAMEWORK_IMPLS[other][op]
                         else f"no {_FRAMEWORK_NAMES[framework]} impl")
                raise ValueError(f"kernels.{op}={chosen!r} is {owner}; framework={framework} takes "
                                 f"{list(known)} (or null: the preset)")
        return self

    def impl(self, op: str) -> str:
        chosen = getattr(self, op)
        if chosen is not None:
            return chosen
        if self.preset == "sdpa":  # the SDPA peer exists for attention and decode only
            return "sdpa" if op in ("attention", "decode") else "reference"
        return self.preset


def check_media_ids(media_ids, cfg: ModelConfig, b: int, s: int, *, decode: bool, is_int) -> None:
    """media_ids: None, or an integer [B, S] array / tensor (``is_int(dtype)``) on a non-decode
    call of a model with ``bidirectional_media`` (both frameworks' forward)."""
    if media_ids is None:
        return
    if not cfg.bidirectional_media:
        raise ValueError("media_ids is only used with ModelConfig.bidirectional_media=True (the flag is off)")
    if decode:
        raise ValueError("media_ids: a decode step (tokens [B, 1] with a cache) is causal; pass none")
    if tuple(media_ids.shape) != (b, s) or not is_int(media_ids.dtype):
        raise ValueError(f"media_ids must be an integer array [B, S] = {(b, s)}, got {media_ids.dtype} "
                         f"{tuple(media_ids.shape)}")
