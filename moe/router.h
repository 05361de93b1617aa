// Router of a Switch-style MoE layer: fp32 logits x·Wr (with optional training noise), softmax,
// top-k, capacity and slot assignment, and the load-balancing and z losses. Forward fills a
// Routing (moe/routing.h) for dispatch plus a RouterState that backward reads; neither step
// synchronises with the host.
//
// Definitions (N local tokens, E experts, k choices per token; "scope" is this rank's tokens
// for local scope, or every dp rank's tokens for global scope, reduced with all_reduce):
// - Noise, in training only. jitter: router input x * u, u uniform in [1-eps, 1+eps], drawn for
//   counter (first_token + n) * d + c. gaussian (Shazeer et al. 2017): logits + z * softplus(x·Wn),
//   z ~ N(0, 1) drawn for counter (first_token + n) * E + e. Counters use the global token index,
//   so a token gets the same noise at every parallel layout.
// - probs = softmax(logits) over the noisy logits; the k choices are the k largest logits (the
//   same order as probs), ties going to the lower expert index. gate = probs of the choice,
//   divided by the sum of the k chosen probs when renormalize is set.
// - Capacity C = ceil(capacity_factor * N * k / E) per rank (eval_capacity_factor outside
//   training); dropless has no limit (Routing::capacity = 0). Each expert keeps its first C
//   choices in the policy's order and drops the rest (slot -1, gate 0):
//     position:    all first choices before all second choices, then by token index (as GShard);
//     probability: higher gate first, equal gates by token index;
//     dropless:    the position order, nothing dropped.
// - aux = aux_loss_coef * E * sum_i f_i * P_i, f_i = (choices routed to expert i before dropping)
//   / (scope tokens * k), P_i = (sum over scope tokens of probs[:, i]) / scope tokens; f is a
//   constant for the gradient, so only P carries one.
// - z = z_loss_coef * sum over scope tokens of logsumexp(logits_n)^2 / scope tokens.
//   With global scope each rank differentiates the global value with respect to its own tokens
//   (d aux / d probs[n, i] = coef * E * f_i / global tokens).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/rng.h"
#include "core/storage.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "moe/routing.h"

namespace sy {

class Communicator;  // parallel/communicator.h; not included because CUDA sources compile as C++17

enum class RouterNoise { none, jitter, gaussian };
enum class DropPolicy { position, probability, dropless };
enum class RouterLossScope { local, global };

const char* router_noise_name(RouterNoise noise);
const char* drop_policy_name(DropPolicy policy);
const char* router_loss_scope_name(RouterLossScope scope);

// The defaults are the Switch Transformer's.
struct RouterSettings {
  int experts = 0;  // E, of the layer (all ranks); at most kMaxExperts
  int top_k = 1;    // k = 1 is Switch routing
  bool renormalize = false;  // divide the k gates by their sum (only meaningful for k > 1)
  RouterNoise noise = RouterNoise::jitter;
  float jitter_eps = 1e-2f;
  DropPolicy drop_policy = DropPolicy::position;
  double capacity_factor = 1.25;  // training
  double eval_capacity_factor = 2.0;
  float aux_loss_coef = 1e-2f;
  float z_loss_coef = 1e-3f;
  RouterLossScope loss_scope = RouterLossScope::local;

  static constexpr int kMaxExperts = 4096;  // the slot sort packs the expert into 12 key bits
};

// Throws naming the setting, e.g. "moe.top_k=3 exceeds moe.experts=2".
void validate(const RouterSettings& settings);
// C for N local tokens; 0 (no limit) for dropless.
std::int64_t router_capacity(const RouterSettings& settings, std::int64_t tokens, bool training);

// What forward saves for backward, and its outputs. Tensors are views into the forward's arena
// and stay valid until the caller resets it, except `x`, which is the caller's. The compute
// dtype is f32, or f64 when x is f64 (CPU reference only, for gradient checks): logits, probs,
// gates and losses use it.
struct RouterState {
  RouterSettings settings;
  bool training = false;
  RngKey key;                    // seed and layer; the purpose is set per noise kind
  std::int64_t first_token = 0;  // global index of local token 0

  Routing routing;  // for dispatch; gate has the compute dtype

  // [N, d] the forward's x itself, not a copy: backward recomputes the router input x * jitter
  // from it (redrawing the jitter), so the caller keeps x alive and unchanged until backward,
  // as the MoE layer does with its input.
  Tensor x;
  Tensor logits;        // [N, E] the logits softmax saw (noise included)
  Tensor noise_logits;  // [N, E] x·Wn, gaussian training only
  Tensor noise;         // [N, E] the N(0, 1) draws, gaussian training only
  Tensor probs;         // [N, E]
  Tensor lse;           // [N] logsumexp of each token's logits

  Tensor aux_loss;           // [1] coefficient applied
  Tensor z_loss;             // [1] coefficient applied
  Tensor tokens_per_expert;  // [E] i64: choices routed to each expert before dropping, summed over dp
  Tensor dropped_fraction;   // [1] f32: dropped choices / all choices, over dp
  Tensor aux_grad;           // [E] d aux / d probs[n, e], the same for every token n
  Tensor z_grad;             // [1] d z / d lse_n divided by lse_n (2 * coef / scope tokens)
};

// x: [N, d] f32/bf16 (f64 on CPU); w_router: [d, E] f32 (f64 with f64 x); w_noise: [d, E] like
// w_router, read only for gaussian noise in training (may be undefined otherwise).
// first_token: global index of x's row 0. Scratch and saved tensors come from `arena` (on x's
// device). dp: the data-parallel group; required for global scope, and when given the logged
// statistics are summed over it (an all_reduce of 2E + 3 doubles on `stream`).
void router_forward(const RouterSettings& settings, const Tensor& x, const Tensor& w_router, const Tensor& w_noise,
                    bool training, RngKey key, std::int64_t first_token, Arena& arena, RouterState& state,
                    StreamRef stream = {}, Communicator* dp = nullptr);

// dgate: [N, k] compute dtype, d loss / d gate from combine (ignored for dropped choices).
// The aux and z losses enter with d total / d loss = 1. x is read from the state (see
// RouterState::x). dx: [N, d] x's dtype, accumulated: dx += d loss / d x through the router.
// This is an exception to activation gradients being overwritten: the MoE layer's input
// gradient is the sum of the dispatch path's and the router's, and adding in place spares it an
// [N, d] buffer and a pass over it. dw_router, dw_noise: [d, E] f32 (f64 with f64 x), written
// or added to by `mode` (zeros when overwritten without tokens). dw_noise may be undefined
// without gaussian training noise; given without it, it gets no terms (zeros when overwritten).
// Scratch from `arena`, released before returning.
void router_backward(const RouterState& state, const Tensor& w_router, const Tensor& w_noise, const Tensor& dgate,
                     const Tensor& dx, const Tensor& dw_router, const Tensor& dw_noise, GradMode mode, Arena& arena,
                     StreamRef stream = {});

// The statistics of one forward on the host, for logging. Synchronises `stream`.
struct RouterStats {
  std::vector<std::int64_t> tokens_per_expert;
  double dropped_fraction = 0;
  double aux_loss = 0;
  double z_loss = 0;
};
RouterStats fetch_router_stats(const RouterState& state, StreamRef stream = {});

}  // namespace sy
