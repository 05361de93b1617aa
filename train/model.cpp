// The decoder's parameters, initialisation, forward and backward.
#include "train/model.h"

#include <cmath>

#include "core/ops.h"
#include "parallel/tp_linear.h"

namespace sy {
namespace {

std::uint32_t name_hash(const std::string& name) {
  std::uint32_t h = 2166136261u;  // FNV-1a: a stable RNG stream id per parameter name
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return h;
}

ExpertActivation activation_of(const std::string& name) {
  return name == "swiglu" ? ExpertActivation::swiglu : name == "relu" ? ExpertActivation::relu : ExpertActivation::gelu;
}

RouterSettings router_settings(const Config& c, int dp_size) {
  RouterSettings s;
  s.experts = c.moe.experts;
  s.top_k = c.moe.top_k;
  s.renormalize = c.moe.renormalize;
  s.noise = c.moe.noise == "jitter" ? RouterNoise::jitter : c.moe.noise == "gaussian" ? RouterNoise::gaussian : RouterNoise::none;
  s.jitter_eps = float(c.moe.jitter_eps);
  s.drop_policy = c.moe.dropless ? DropPolicy::dropless
                                 : c.moe.drop_policy == "probability" ? DropPolicy::probability : DropPolicy::position;
  s.capacity_factor = c.moe.capacity_factor;
  s.eval_capacity_factor = c.moe.eval_capacity_factor;
  s.loss_scope = c.moe.loss_scope == "global" ? RouterLossScope::global : RouterLossScope::local;
  // The router adds its losses with gradient 1 per micro-batch. Micro-batches are averaged, so
  // the coefficient is divided by their number; a global-scope loss is the same on every dp
  // rank and its gradient is then averaged over dp, so it is multiplied back by dp.
  const double scale = (s.loss_scope == RouterLossScope::global ? dp_size : 1) / double(c.train.grad_accum);
  s.aux_loss_coef = float(c.moe.aux_loss_coef * scale);
  s.z_loss_coef = float(c.moe.z_loss_coef * scale);
  return s;
}

// Rows of logits computed at a time: chunks of at most 256 MiB (four at the benchmark shape;
// eight of 128 MiB cost the head's GEMMs 0.5 ms), and at least four chunks when there are four
// rows, so small models take the same chunked path as large vocabularies.
std::int64_t logit_chunk_rows(std::int64_t rows, std::int64_t vocab, DType dtype) {
  const std::int64_t chunk_bytes = std::int64_t(256) << 20;
  const std::int64_t per_row = vocab * std::int64_t(dtype_size(dtype));
  return std::max<std::int64_t>(1, std::min((rows + 3) / 4, chunk_bytes / per_row));
}

bool is_moe_block(const Config& c, int layer) { return c.moe.every > 0 && (layer + 1) % c.moe.every == 0; }

// Copies the local shard of a global host tensor: `offsets` is where the shard starts along
// each axis (the local shape gives its extent).
void extract_shard(const std::vector<float>& global, const Shape& global_shape, const Shape& local_shape,
                   const std::vector<std::int64_t>& offsets, std::vector<float>& local) {
  const std::size_t dims = global_shape.size();
  std::vector<std::int64_t> index(dims, 0);
  local.resize(std::size_t(Tensor(nullptr, local_shape, DType::f32, Device::cpu).numel()));
  for (std::size_t i = 0; i < local.size(); ++i) {
    std::int64_t g = 0;
    for (std::size_t a = 0; a < dims; ++a) g = g * global_shape[a] + offsets[a] + index[a];
    local[i] = global[std::size_t(g)];
    for (std::size_t a = dims; a-- > 0;) {
      if (++index[a] < local_shape[a]) break;
      index[a] = 0;
    }
  }
}

}  // namespace

ModelSize model_size(const Config& c) {
  const ModelConfig& m = c.model;
  const std::int64_t d = m.d_model, head_dim = m.d_model / m.n_heads;
  const std::int64_t attn = d * head_dim * (m.n_heads + 2 * m.n_kv_heads) + m.n_heads * head_dim * d;
  const std::int64_t ff_in = m.activation == "swiglu" ? 2 : 1;
  const std::int64_t dense_ffn = d * m.d_ff * ff_in + m.d_ff * d;
  const std::int64_t expert_ff = c.moe.d_ff > 0 ? c.moe.d_ff : m.d_ff;
  const std::int64_t expert = d * expert_ff * ff_in + expert_ff * d;
  const std::int64_t router = d * c.moe.experts * (c.moe.noise == "gaussian" ? 2 : 1);
  ModelSize s;
  const std::int64_t embed = std::int64_t(m.vocab_size) * d;
  s.total_params = embed + (m.tied_embeddings ? 0 : embed) + d;
  s.active_params = embed;  // the LM head's matmul, tied or not
  for (int layer = 0; layer < m.n_layers; ++layer) {
    s.total_params += attn + 2 * d;
    s.active_params += attn;
    if (is_moe_block(c, layer)) {
      s.total_params += router + c.moe.experts * expert;
      s.expert_params += c.moe.experts * expert;
      s.active_params += router + c.moe.top_k * expert;
    } else {
      s.total_params += dense_ffn;
      s.active_params += dense_ffn;
    }
  }
  s.flops_per_token = 6.0 * double(s.active_params) + 6.0 * m.n_layers * double(c.train.seq_len) * double(d);
  return s;
}

// One block's parameters and, for MoE blocks, its layer.
struct Model::Block {
  int index = 0;
  Parameter* attn_norm = nullptr;
  Parameter* q = nullptr;
  Parameter* k = nullptr;
  Parameter* v = nullptr;
  Parameter* out = nullptr;
  Parameter* ffn_norm = nullptr;
  Parameter* up = nullptr;    // dense: [F (2F for swiglu), d]
  Parameter* down = nullptr;  // dense: [d, F]
  Parameter* router = nullptr;
  Parameter* noise = nullptr;
  Parameter* w_in = nullptr;   // experts [E, d, F_in]
  Parameter* w_out = nullptr;  // experts [E, F, d]
  std::unique_ptr<MoeLayer> moe;

  // Activations of the last forward.
  Tensor x_in, rstd1, h1, qkv, q_heads, k_heads, v_heads, probs, lse, attn_heads, attn_rows, x_mid, rstd2, h2, u, a, x_out;
};

struct Model::Saved {
  Tensor tokens, targets, x0, x_last, final_rstd, xf, dxf, lse, losses;
  std::int64_t batch = 0, seq = 0;
  GradMode grads = GradMode::overwrite;  // of the last training forward
};

Model::Model(const Config& config, const ProcessGrid& grid, ParameterRegistry& registry, DType compute_dtype)
    : config_(config), grid_(grid), dtype_(compute_dtype), saved_(std::make_unique<Saved>()) {
  const ModelConfig& m = config.model;
  const int tp = grid.layout().tp_size();
  validate_config(config);
  validate_layout(config, grid.layout().world_size());
  SY_INPUT_CHECK(ErrorKind::config, tp == 1 || m.activation != "swiglu")
      << "model.activation=swiglu with parallel.tensor=" << tp
      << " is not supported (the [gate | up] weight does not split into plain tensor-parallel slices)";
  d_ = m.d_model;
  heads_ = m.n_heads;
  kv_heads_ = m.n_kv_heads;
  head_dim_ = d_ / heads_;
  const bool wgmma_fits =
      flash_attention_wgmma_supported(Tensor(nullptr, {1, 1, 1, head_dim_}, compute_dtype, registry.options().device));
  // auto: the Hopper kernels where they exist (bf16, head dim 64, sm_90), mma.sync elsewhere.
  wgmma_attention_ = m.attention_kernel == "wgmma" || (m.attention_kernel == "auto" && wgmma_fits);
  SY_INPUT_CHECK(ErrorKind::config, m.attention_kernel != "wgmma" || wgmma_fits)
      << "model.attention_kernel=wgmma needs bf16 with head dim 64 on an sm_90 GPU; this run has "
      << dtype_name(compute_dtype) << " on " << device_name(registry.options().device) << " with head dim "
      << head_dim_;
  local_heads_ = heads_ / tp;
  local_kv_heads_ = kv_heads_ / tp;
  local_ff_ = m.d_ff / tp;
  vocab_ = m.vocab_size;
  const double out_scale = 1.0 / std::sqrt(2.0 * m.n_layers);
  const std::int64_t ff_in = m.activation == "swiglu" ? 2 * std::int64_t(m.d_ff) : m.d_ff;
  const std::int64_t expert_ff = config.moe.d_ff > 0 ? config.moe.d_ff : m.d_ff;
  const std::int64_t expert_in = m.activation == "swiglu" ? 2 * expert_ff : expert_ff;

  embed_ = add(registry, "embed.weight", {vocab_, d_}, -1, false, true, 1.0);
  for (int i = 0; i < m.n_layers; ++i) {
    auto b = std::make_unique<Block>();
    b->index = i;
    const std::string p = "blocks." + std::to_string(i) + ".";
    b->attn_norm = add(registry, p + "attn_norm.weight", {d_}, -1, false, false, 0.0);
    // Registered v, k, q: the registry lays a gradient bucket out in reverse registration order,
    // so q, k, v usually end up as one [(Hq + 2 Hkv) D, d] matrix and take one GEMM (qkv_weight).
    b->v = add(registry, p + "attn.v.weight", {kv_heads_ * head_dim_, d_}, 0, false, true, 1.0);
    b->k = add(registry, p + "attn.k.weight", {kv_heads_ * head_dim_, d_}, 0, false, true, 1.0);
    b->q = add(registry, p + "attn.q.weight", {heads_ * head_dim_, d_}, 0, false, true, 1.0);
    b->out = add(registry, p + "attn.out.weight", {d_, heads_ * head_dim_}, 1, false, true, out_scale);
    b->ffn_norm = add(registry, p + "ffn_norm.weight", {d_}, -1, false, false, 0.0);
    if (is_moe_block(config, i)) {
      const int experts = config.moe.experts;
      // The router is replicated and kept in fp32 (its master is read directly).
      b->router = add(registry, p + "moe.router.weight", {d_, experts}, -1, false, true, 1.0);
      if (config.moe.noise == "gaussian")
        b->noise = add(registry, p + "moe.noise.weight", {d_, experts}, -1, false, true, 1.0);
      b->w_in = add(registry, p + "moe.w_in", {experts, d_, expert_in}, 2, true, true, 1.0);
      b->w_out = add(registry, p + "moe.w_out", {experts, expert_ff, d_}, 1, true, true, out_scale);
      MoeLayerConfig mc;
      mc.router = router_settings(config, grid.layout().dp_size());
      mc.d_model = d_;
      mc.d_ff = expert_ff;
      mc.activation = activation_of(m.activation);
      mc.recompute_activation = config.moe.recompute_activation;
      mc.dispatch_chunks = config.moe.dispatch_chunks;
      b->moe = std::make_unique<MoeLayer>(mc, MoeGroups{&grid.ep(), &grid.tp(), &grid.dp()});
    } else {
      b->up = add(registry, p + "ffn.up.weight", {ff_in, d_}, 0, false, true, 1.0);
      b->down = add(registry, p + "ffn.down.weight", {d_, m.d_ff}, 1, false, true, out_scale);
    }
    blocks_.push_back(std::move(b));
  }
  final_norm_ = add(registry, "final_norm.weight", {d_}, -1, false, false, 0.0);
  lm_head_ = m.tied_embeddings ? embed_ : add(registry, "lm_head.weight", {vocab_, d_}, -1, false, true, 1.0);
}

Model::~Model() = default;

Parameter* Model::add(ParameterRegistry& registry, const std::string& name, const Shape& global, int tp_axis,
                      bool expert, bool decay, double init_scale) {
  const GridLayout& layout = grid_.layout();
  const GridCoords& at = grid_.coords();
  ParameterSpec spec;
  spec.name = name;
  spec.global_shape = global;
  // Replicated parameters (axis -1) still carry the tp size and rank: the norm counts them once.
  spec.tp = AxisSplit{tp_axis, layout.tp_size(), at.tp};
  if (expert) {
    spec.ep = AxisSplit{0, layout.ep_size(), at.ep};
    spec.reduce = ReduceGroup::edp;
  }
  spec.weight_decay = decay;
  Parameter& p = registry.add(spec);
  params_.push_back(&p);
  init_scales_.push_back(init_scale);
  return &p;
}

const Tensor& Model::weight(const Parameter* p) const { return p->compute().defined() ? p->compute() : p->master(); }

namespace {

// [rows_a + rows_b + rows_c, cols] over three matrices that sit back to back in memory (each
// contiguous, same columns and dtype), or an undefined tensor when they do not.
Tensor stacked_rows(const Tensor& a, const Tensor& b, const Tensor& c) {
  const auto end_of = [](const Tensor& t) { return static_cast<char*>(t.data()) + t.bytes(); };
  if (!a.defined() || end_of(a) != b.data() || end_of(b) != c.data()) return Tensor();
  return Tensor(a.data(), {a.size(0) + b.size(0) + c.size(0), a.size(1)}, a.dtype(), a.device());
}

// Heads [B, H, T, D] viewed in place inside token-major rows [B*T, cols], starting at column col0.
Tensor heads_view(const Tensor& rows, std::int64_t batch, std::int64_t heads, std::int64_t seq, std::int64_t dim,
                  std::int64_t col0) {
  const std::int64_t cols = rows.size(1);
  return rows.as_strided({batch, heads, seq, dim}, {seq * cols, dim, cols, 1}, col0);
}

}  // namespace

// q, k, v projections in one GEMM when their weights (and gradients) are one stacked matrix.
Tensor Model::qkv_weight(const Block& b) const { return stacked_rows(weight(b.q), weight(b.k), weight(b.v)); }
Tensor Model::qkv_grad(const Block& b) const { return stacked_rows(b.q->grad(), b.k->grad(), b.v->grad()); }

int Model::moe_blocks() const {
  int n = 0;
  for (const auto& b : blocks_) n += b->moe ? 1 : 0;
  return n;
}

void Model::initialize(std::uint64_t seed, StreamRef stream) {
  const Device device = params_.front()->master().device();
  for (std::size_t i = 0; i < params_.size(); ++i) {
    Parameter& p = *params_[i];
    const Tensor& master = p.master();
    if (init_scales_[i] == 0.0) {
      fill_uniform(master, RngKey{seed, std::uint32_t(RngPurpose::init), 0}, 1.0f, 1.0f, 0, stream);
      continue;
    }
    // Draw the global tensor on the parameter's device, then keep this rank's shard.
    const float std_dev = float(config_.model.init_std * init_scales_[i]);
    OwnedTensor global(p.global_shape(), DType::f32, device);
    fill_normal(global, RngKey{seed, std::uint32_t(RngPurpose::init), name_hash(p.name())}, 0.0f, std_dev, 0, stream);
    std::vector<float> host(std::size_t(global.view().numel())), local;
    copy(Tensor(host.data(), p.global_shape(), DType::f32, Device::cpu), global, stream);
    std::vector<std::int64_t> offsets(p.global_shape().size(), 0);
    const ParameterSpec& spec = p.spec();
    if (spec.tp.split()) offsets[std::size_t(spec.tp.axis)] = p.local_shape()[std::size_t(spec.tp.axis)] * spec.tp.index;
    if (spec.ep.split()) offsets[std::size_t(spec.ep.axis)] = p.local_shape()[std::size_t(spec.ep.axis)] * spec.ep.index;
    extract_shard(host, p.global_shape(), p.local_shape(), offsets, local);
    copy(master, Tensor(local.data(), p.local_shape(), DType::f32, Device::cpu), stream);
  }
}

void Model::forward(const Tensor& tokens, const Tensor& targets, std::int64_t first_token, bool training,
                    float loss_scale, GradMode grads, Arena& arena, const Tensor& losses, StreamRef stream) {
  Saved& s = *saved_;
  s.grads = grads;
  s.batch = tokens.size(0);
  s.seq = tokens.size(1);
  const std::int64_t n = s.batch * s.seq, qkv_cols = (local_heads_ + 2 * local_kv_heads_) * head_dim_;
  const float eps = float(config_.model.norm_eps), theta = float(config_.model.rope_theta);
  s.tokens = tokens.reshape({n});
  s.targets = targets.reshape({n});
  s.losses = losses;
  Communicator& tp = grid_.tp();

  s.x0 = arena.alloc({n, d_}, dtype_);
  embedding_forward(s.tokens, weight(embed_), s.x0, stream);
  // The residual stream is `x` plus, after an FFN, `pending` (its output not yet added): the add
  // is fused into the norm that reads the sum next (add_rmsnorm_forward), and the sum takes the
  // branch output's buffer, which nothing else reads.
  Tensor x = s.x0, pending;
  Block* previous = nullptr;
  auto norm = [&](const Tensor& w, const Tensor& y, const Tensor& rstd) {
    if (pending.defined()) {
      add_rmsnorm_forward(x, pending, pending, w, y, rstd, eps, stream);
      x = pending;
      pending = Tensor();
      previous->x_out = x;
    } else {
      rmsnorm_forward(x, w, y, rstd, eps, stream);
    }
  };
  const std::int64_t q_cols = local_heads_ * head_dim_, kv_cols = local_kv_heads_ * head_dim_;
  for (auto& bp : blocks_) {
    Block& b = *bp;
    // Attention: x_mid = x + out(attention(rope(q), rope(k), v)) of rmsnorm(x).
    b.rstd1 = arena.alloc({n}, DType::f32);
    b.h1 = arena.alloc({n, d_}, dtype_);
    norm(weight(b.attn_norm), b.h1, b.rstd1);
    b.x_in = x;
    // qkv columns: [q heads | k heads | v heads].
    b.qkv = arena.alloc({n, qkv_cols}, dtype_);
    if (const Tensor w = qkv_weight(b); w.defined()) {
      gemm(b.h1, w, b.qkv, false, true, 1.0f, 0.0f, stream);
    } else {
      gemm(b.h1, weight(b.q), b.qkv.as_strided({n, q_cols}, {qkv_cols, 1}, 0), false, true, 1.0f, 0.0f, stream);
      gemm(b.h1, weight(b.k), b.qkv.as_strided({n, kv_cols}, {qkv_cols, 1}, q_cols), false, true, 1.0f, 0.0f, stream);
      gemm(b.h1, weight(b.v), b.qkv.as_strided({n, kv_cols}, {qkv_cols, 1}, q_cols + kv_cols), false, true, 1.0f,
           0.0f, stream);
    }
    b.attn_rows = arena.alloc({n, q_cols}, dtype_);
    if (flash_attention_supported(heads_view(b.qkv, s.batch, local_heads_, s.seq, head_dim_, 0))) {
      // Flash attention reads q, k, v in place and writes token-major rows; RoPE rotates the q
      // and k heads (adjacent columns) in place. Only a log-sum-exp per row is saved.
      rope_forward(heads_view(b.qkv, s.batch, local_heads_ + local_kv_heads_, s.seq, head_dim_, 0),
                   heads_view(b.qkv, s.batch, local_heads_ + local_kv_heads_, s.seq, head_dim_, 0), theta, stream);
      b.probs = Tensor();
      b.lse = arena.alloc({s.batch, local_heads_, s.seq}, DType::f32);
      const auto forward = wgmma_attention_ ? flash_attention_forward_wgmma : flash_attention_forward;
      forward(heads_view(b.qkv, s.batch, local_heads_, s.seq, head_dim_, 0),
              heads_view(b.qkv, s.batch, local_kv_heads_, s.seq, head_dim_, q_cols),
              heads_view(b.qkv, s.batch, local_kv_heads_, s.seq, head_dim_, q_cols + kv_cols),
              heads_view(b.attn_rows, s.batch, local_heads_, s.seq, head_dim_, 0), b.lse, stream);
    } else {
      // Without flash kernels the [T, T] probabilities are saved, on head-major copies.
      b.q_heads = arena.alloc({s.batch, local_heads_, s.seq, head_dim_}, dtype_);
      b.k_heads = arena.alloc({s.batch, local_kv_heads_, s.seq, head_dim_}, dtype_);
      b.v_heads = arena.alloc({s.batch, local_kv_heads_, s.seq, head_dim_}, dtype_);
      split_qkv_heads(b.qkv, b.q_heads, b.k_heads, b.v_heads, stream);
      rope_forward(b.q_heads, b.q_heads, theta, stream);
      rope_forward(b.k_heads, b.k_heads, theta, stream);
      b.attn_heads = arena.alloc(b.q_heads.shape(), dtype_);
      b.probs = arena.alloc({s.batch, local_heads_, s.seq, s.seq}, dtype_);
      attention_forward(b.q_heads, b.k_heads, b.v_heads, b.attn_heads, b.probs, stream);
      merge_heads(b.attn_heads, b.attn_rows, stream);
    }
    Tensor y = arena.alloc({n, d_}, dtype_);
    row_parallel_forward(tp, b.attn_rows, weight(b.out), y, stream);

    // FFN: x_out = x_mid + ffn(rmsnorm(x_mid)), dense or MoE; x_mid's add is fused into the norm
    // and x_mid takes the buffer of the attention output y.
    b.rstd2 = arena.alloc({n}, DType::f32);
    b.h2 = arena.alloc({n, d_}, dtype_);
    b.x_mid = y;
    add_rmsnorm_forward(x, y, b.x_mid, weight(b.ffn_norm), b.h2, b.rstd2, eps, stream);
    Tensor y2 = arena.alloc({n, d_}, dtype_);
    if (b.moe) {
      MoeWeights w{b.router->master(), b.noise ? b.noise->master() : Tensor(), {weight(b.w_in), weight(b.w_out)}};
      const RngKey key{config_.run.seed, 0, std::uint32_t(b.index)};
      mark_phase(timer_, "compute");
      b.moe->forward(b.h2, w, training, key, first_token, arena, y2, stream);
    } else {
      const std::int64_t ff_in = weight(b.up).size(0);
      b.u = arena.alloc({n, ff_in}, dtype_);
      column_parallel_forward(tp, b.h2, weight(b.up), b.u, stream);
      b.a = arena.alloc({n, local_ff_}, dtype_);
      if (config_.model.activation == "swiglu") {
        swiglu_forward(b.u, b.a, stream);
      } else if (config_.model.activation == "relu") {
        relu_forward(b.u, b.a, stream);
      } else {
        gelu_forward(b.u, b.a, stream);
      }
      row_parallel_forward(tp, b.a, weight(b.down), y2, stream);
    }
    x = b.x_mid;
    pending = y2;
    previous = &b;
  }
  s.final_rstd = arena.alloc({n}, DType::f32);
  s.xf = arena.alloc({n, d_}, dtype_);
  norm(weight(final_norm_), s.xf, s.final_rstd);
  s.x_last = x;
  // LM head and loss over row chunks, so the [N, V] logits never exist whole (1 GiB at the
  // benchmark shape). Training runs the head's backward here too, while a chunk's logits are
  // at hand: dlogits overwrite them (cross_entropy_forward_backward allows it), the first chunk
  // writes dW in this micro-batch's mode and the others add to it, and the chunk's rows of dxf
  // are kept for backward. This is the step's first gradient write (see train/trainer.cpp on
  // why it needs no wait).
  s.lse = arena.alloc({n}, DType::f32);
  s.dxf = training ? arena.alloc({n, d_}, dtype_) : Tensor();
  const std::size_t logits_mark = arena.mark();
  const std::int64_t chunk = logit_chunk_rows(n, vocab_, dtype_);
  const Tensor logits_buffer = arena.alloc({chunk, vocab_}, dtype_);
  const Tensor& w_head = weight(lm_head_);
  for (std::int64_t r0 = 0; r0 < n; r0 += chunk) {
    const std::int64_t rows = std::min(chunk, n - r0);
    const Tensor logits = logits_buffer.slice_rows(0, rows), xf = s.xf.slice_rows(r0, rows);
    const Tensor targets_c = s.targets.slice_rows(r0, rows), lse = s.lse.slice_rows(r0, rows);
    gemm(xf, w_head, logits, false, true, 1.0f, 0.0f, stream);
    if (!training) {
      cross_entropy_forward(logits, targets_c, losses.slice_rows(r0, rows), lse, -100, stream);
      continue;
    }
    cross_entropy_forward_backward(logits, targets_c, losses.slice_rows(r0, rows), lse, logits, loss_scale, -100,
                                   stream);
    gemm(logits, xf, lm_head_->grad(), true, false, 1.0f, r0 == 0 ? grad_beta(grads) : 1.0f, stream);
    gemm(logits, w_head, s.dxf.slice_rows(r0, rows), false, false, 1.0f, 0.0f, stream);
  }
  arena.release_to(logits_mark);
  mark_phase(timer_, "compute");
}

void Model::backward(GradMode grads, Arena& arena, StreamRef stream,
                     const std::function<void(const Parameter&)>& grad_ready) {
  Saved& s = *saved_;
  const std::int64_t n = s.batch * s.seq, qkv_cols = (local_heads_ + 2 * local_kv_heads_) * head_dim_;
  const float theta = float(config_.model.rope_theta);
  Communicator& tp = grid_.tp();
  auto ready = [&](const Parameter* p) {
    if (p && grad_ready) grad_ready(*p);
  };

  SY_CHECK(s.dxf.defined()) << "Model::backward: the last forward was not a training forward";
  SY_CHECK(grads == s.grads) << "Model::backward: the forward wrote the LM head's gradient in "
                             << (s.grads == GradMode::overwrite ? "overwrite" : "accumulate")
                             << " mode, backward was asked for the other (both take the micro-batch's mode)";
  const float beta = grad_beta(grads);
  // The LM head's backward ran in forward (its gradient is complete); dxf is its input gradient.
  if (lm_head_ != embed_) ready(lm_head_);
  // dx: the residual stream's gradient; each norm's input gradient is added into it.
  Tensor dx = arena.alloc({n, d_}, dtype_);
  rmsnorm_backward(s.x_last, weight(final_norm_), s.final_rstd, s.dxf, dx, final_norm_->grad(), grads, stream);
  ready(final_norm_);

  const std::int64_t q_cols = local_heads_ * head_dim_, kv_cols = local_kv_heads_ * head_dim_;
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& b = **it;
    // Everything a block's backward allocates is dead once dx has passed through it (all on
    // this stream), so the next block reuses the memory.
    const std::size_t block_mark = arena.mark();
    // FFN (dx is d x_out, which is also d x_mid through the residual).
    Tensor dh2 = arena.alloc({n, d_}, dtype_);
    if (b.moe) {
      MoeWeights w{b.router->master(), b.noise ? b.noise->master() : Tensor(), {weight(b.w_in), weight(b.w_out)}};
      MoeGrads g{b.router->grad(), b.noise ? b.noise->grad() : Tensor(), {b.w_in->grad(), b.w_out->grad()}};
      mark_phase(timer_, "compute");
      b.moe->backward(dx, w, arena, dh2, g, grads, stream);
      ready(b.w_out);
      ready(b.w_in);
      ready(b.noise);
      ready(b.router);
    } else {
      Tensor da = arena.alloc(b.a.shape(), dtype_);
      row_parallel_backward(tp, b.a, weight(b.down), dx, da, b.down->grad(), grads, stream);
      ready(b.down);
      Tensor du = arena.alloc(b.u.shape(), dtype_);
      if (config_.model.activation == "swiglu") {
        swiglu_backward(b.u, da, du, stream);
      } else if (config_.model.activation == "relu") {
        relu_backward(b.u, da, du, stream);
      } else {
        gelu_backward(b.u, da, du, stream);
      }
      column_parallel_backward(tp, b.h2, weight(b.up), du, dh2, b.up->grad(), grads, stream);
      ready(b.up);
    }
    rmsnorm_backward_residual(b.x_mid, weight(b.ffn_norm), b.rstd2, dh2, dx, b.ffn_norm->grad(), grads, stream);
    ready(b.ffn_norm);  // dx is now d x_mid

    // Attention.
    Tensor d_rows = arena.alloc({n, q_cols}, dtype_);
    row_parallel_backward(tp, b.attn_rows, weight(b.out), dx, d_rows, b.out->grad(), grads, stream);
    ready(b.out);
    Tensor dqkv = arena.alloc({n, qkv_cols}, dtype_);
    if (!b.probs.defined()) {
      // dq, dk, dv land in place in dqkv's columns; RoPE's transpose then rotates dq and dk back.
      const Tensor q = heads_view(b.qkv, s.batch, local_heads_, s.seq, head_dim_, 0);
      Tensor scratch = arena.alloc(flash_attention_scratch_shape(q), DType::f32);
      const auto backward = wgmma_attention_ ? flash_attention_backward_wgmma : flash_attention_backward;
      backward(q,
               heads_view(b.qkv, s.batch, local_kv_heads_, s.seq, head_dim_, q_cols),
               heads_view(b.qkv, s.batch, local_kv_heads_, s.seq, head_dim_, q_cols + kv_cols),
               heads_view(b.attn_rows, s.batch, local_heads_, s.seq, head_dim_, 0), b.lse,
               heads_view(d_rows, s.batch, local_heads_, s.seq, head_dim_, 0),
               heads_view(dqkv, s.batch, local_heads_, s.seq, head_dim_, 0),
               heads_view(dqkv, s.batch, local_kv_heads_, s.seq, head_dim_, q_cols),
               heads_view(dqkv, s.batch, local_kv_heads_, s.seq, head_dim_, q_cols + kv_cols),
               scratch, stream);
      const Tensor dqk = heads_view(dqkv, s.batch, local_heads_ + local_kv_heads_, s.seq, head_dim_, 0);
      rope_backward(dqk, dqk, theta, stream);
    } else {
      Tensor d_heads = arena.alloc(b.attn_heads.shape(), dtype_);
      split_heads(d_rows, d_heads, stream);
      Tensor dq = arena.alloc(b.q_heads.shape(), dtype_), dk = arena.alloc(b.k_heads.shape(), dtype_);
      Tensor dv = arena.alloc(b.v_heads.shape(), dtype_);
      Tensor dprobs = arena.alloc(b.probs.shape(), dtype_);
      attention_backward(b.q_heads, b.k_heads, b.v_heads, b.probs, d_heads, dq, dk, dv, dprobs, stream);
      rope_backward(dq, dq, theta, stream);
      rope_backward(dk, dk, theta, stream);
      merge_qkv_heads(dq, dk, dv, dqkv, stream);
    }
    // Column-parallel q, k, v: weight gradients locally, the input gradient summed over tp.
    Tensor dh1 = arena.alloc({n, d_}, dtype_);
    const Tensor w_qkv = qkv_weight(b), dw_qkv = qkv_grad(b);
    if (w_qkv.defined() && dw_qkv.defined()) {
      gemm(dqkv, b.h1, dw_qkv, true, false, 1.0f, beta, stream);
      ready(b.v);
      ready(b.k);
      ready(b.q);
      gemm(dqkv, w_qkv, dh1, false, false, 1.0f, 0.0f, stream);
    } else {
      const Tensor dq_rows = dqkv.as_strided({n, q_cols}, {qkv_cols, 1}, 0);
      const Tensor dk_rows = dqkv.as_strided({n, kv_cols}, {qkv_cols, 1}, q_cols);
      const Tensor dv_rows = dqkv.as_strided({n, kv_cols}, {qkv_cols, 1}, q_cols + kv_cols);
      gemm(dv_rows, b.h1, b.v->grad(), true, false, 1.0f, beta, stream);
      ready(b.v);
      gemm(dk_rows, b.h1, b.k->grad(), true, false, 1.0f, beta, stream);
      ready(b.k);
      gemm(dq_rows, b.h1, b.q->grad(), true, false, 1.0f, beta, stream);
      ready(b.q);
      gemm(dq_rows, weight(b.q), dh1, false, false, 1.0f, 0.0f, stream);
      gemm(dk_rows, weight(b.k), dh1, false, false, 1.0f, 1.0f, stream);
      gemm(dv_rows, weight(b.v), dh1, false, false, 1.0f, 1.0f, stream);
    }
    if (tp.size() > 1) tp.all_reduce(dh1, ReduceOp::sum, stream);
    rmsnorm_backward_residual(b.x_in, weight(b.attn_norm), b.rstd1, dh1, dx, b.attn_norm->grad(), grads, stream);
    ready(b.attn_norm);  // dx is now d x_in
    arena.release_to(block_mark);
  }
  // Tied: the LM head (the same tensor) wrote this micro-batch's gradient first, in forward.
  embedding_backward(s.tokens, dx, embed_->grad(), lm_head_ == embed_ ? GradMode::accumulate : grads, stream);
  ready(embed_);
  mark_phase(timer_, "compute");
}

void Model::set_moe_comm_stream(StreamRef comm) {
  for (auto& b : blocks_)
    if (b->moe) b->moe->set_comm_stream(comm);
}

void Model::set_phase_timer(PhaseTimer* timer) {
  timer_ = timer;
  for (auto& b : blocks_)
    if (b->moe) b->moe->set_phase_timer(timer);
}

std::vector<RouterStats> Model::moe_stats(StreamRef stream) const {
  std::vector<RouterStats> stats;
  for (const auto& b : blocks_)
    if (b->moe) stats.push_back(b->moe->stats(stream));
  return stats;
}

}  // namespace sy
