// The Switch-style decoder: token embedding -> blocks -> final RMSNorm -> LM head (tied to the
// embedding or not). A block is pre-norm GQA attention with RoPE plus an FFN that is dense or
// MoE (model every moe.every-th block). Forward and backward are written by hand, layer by
// layer in the same file; every parameter is registered with its global name, global shape and
// sharding, which the optimizer, gradient sync and checkpoints read.
//
// Initialisation (documented here, the one place it is decided): every weight matrix draws
// N(0, init_std) by its GLOBAL element index from the Philox stream keyed by (seed, init,
// hash of the parameter name), so the model is the same at every parallel layout; the output
// projections of attention and FFN (attn.out, ffn.down, moe.w_out) are scaled by
// 1/sqrt(2 n_layers) as in GPT-2; RMSNorm weights start at 1.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/storage.h"
#include "moe/moe_layer.h"
#include "parallel/parameter.h"
#include "parallel/process_grid.h"
#include "train/config.h"

namespace sy {

struct ModelSize {
  std::int64_t total_params = 0;   // every parameter of the global model
  std::int64_t expert_params = 0;  // of which expert FFN weights (split over ep)
  std::int64_t active_params = 0;  // matmul parameters one token passes through (top-k experts)
  double flops_per_token = 0;      // 6 x active matmul params + 6 x layers x seq x d_model (causal attention)
};
ModelSize model_size(const Config& config);

class Model {
 public:
  // Registers every parameter in `registry` (before registry.allocate()).
  Model(const Config& config, const ProcessGrid& grid, ParameterRegistry& registry, DType compute_dtype);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Fills every master by its global index (after registry.allocate()) and the compute copies.
  void initialize(std::uint64_t seed, StreamRef stream);

  // One micro-batch. tokens, targets: [B, T] i32 on the model's device. first_token: global
  // index of this rank's first token in the global batch (router noise is keyed by it).
  // Per-token losses go to `losses` ([B*T] f32, written). Activations come from `arena`, which
  // must live until backward. Training also runs the LM head's backward, chunk by chunk with the
  // loss (the [B*T, V] logits never exist whole): `loss_scale` multiplies every token's loss
  // gradient (1 / (tokens x micro-batches)), and `grads` says how this micro-batch writes the
  // parameter gradients: GradMode::overwrite for the first micro-batch of a step (the gradients
  // may hold anything before it, the last step's values or NaN), accumulate for the others. Both
  // are unused when not training.
  void forward(const Tensor& tokens, const Tensor& targets, std::int64_t first_token, bool training, float loss_scale,
               GradMode grads, Arena& arena, const Tensor& losses, StreamRef stream);
  // Backward of the last (training) forward, with that forward's `grads`: every gradient becomes
  // d(mean loss)/d params of this micro-batch (overwrite) or has it added (accumulate); padding
  // between parameters in the registry's buffers is never written. `grad_ready` is called for
  // each parameter when its gradient is complete (last micro-batch only, so gradient sync can
  // start during backward); may be empty.
  void backward(GradMode grads, Arena& arena, StreamRef stream, const std::function<void(const Parameter&)>& grad_ready);

  // Routing statistics of the MoE blocks from the last forward (waits for the stream).
  std::vector<RouterStats> moe_stats(StreamRef stream) const;
  // Sum over MoE blocks of aux and z losses of the last forward, as configured (coefficients
  // applied), for the logged loss.
  int moe_blocks() const;
  // Optional: splits step time into "compute" and the MoE layers' phases (router, permute,
  // all_to_all, experts, combine) by event marks on the stream.
  void set_phase_timer(PhaseTimer* timer);
  // The stream the MoE layers' chunked all-to-alls run on while their experts compute (see
  // moe/moe_layer.h); null (the default): everything on the forward's and backward's stream.
  void set_moe_comm_stream(StreamRef comm);

 private:
  struct Block;
  struct Saved;

  const Tensor& weight(const Parameter* p) const;  // the compute copy, or the fp32 master
  // A block's q, k, v weights (gradients) as one [(Hq + 2 Hkv) D, d] matrix when they are stored
  // back to back, else undefined (then the projections run as three GEMMs).
  Tensor qkv_weight(const Block& b) const;
  Tensor qkv_grad(const Block& b) const;
  Parameter* add(ParameterRegistry& registry, const std::string& name, const Shape& global, int tp_axis,
                 bool expert, bool decay, double init_scale);

  Config config_;
  const ProcessGrid& grid_;
  DType dtype_;
  bool wgmma_attention_ = false;  // model.attention_kernel=wgmma
  std::int64_t d_, heads_, kv_heads_, head_dim_, local_heads_, local_kv_heads_, local_ff_, vocab_;
  Parameter* embed_ = nullptr;
  Parameter* final_norm_ = nullptr;
  Parameter* lm_head_ = nullptr;  // == embed_ when tied
  std::vector<std::unique_ptr<Block>> blocks_;
  std::vector<Parameter*> params_;        // registration order
  std::vector<double> init_scales_;       // per params_ entry: std multiplier, 0 = ones
  std::unique_ptr<Saved> saved_;
  PhaseTimer* timer_ = nullptr;
};

}  // namespace sy
