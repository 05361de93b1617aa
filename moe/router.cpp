// Router: settings checks, allocation of the saved tensors, dispatch to CUDA, and the CPU
// reference (forward then backward), which computes in double and stores in the compute dtype.
#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "moe/router_kernels.h"
#include "parallel/communicator.h"

namespace sy {

const char* router_noise_name(RouterNoise noise) {
  switch (noise) {
    case RouterNoise::none: return "none";
    case RouterNoise::jitter: return "jitter";
    case RouterNoise::gaussian: return "gaussian";
  }
  return "?";
}

const char* drop_policy_name(DropPolicy policy) {
  switch (policy) {
    case DropPolicy::position: return "position";
    case DropPolicy::probability: return "probability";
    case DropPolicy::dropless: return "dropless";
  }
  return "?";
}

const char* router_loss_scope_name(RouterLossScope scope) {
  return scope == RouterLossScope::local ? "local" : "global";
}

void validate(const RouterSettings& s) {
  SY_CHECK_AS(ErrorKind::config, s.experts >= 1 && s.experts <= RouterSettings::kMaxExperts)
      << "moe.experts=" << s.experts << " must be in [1, " << RouterSettings::kMaxExperts << "]";
  SY_CHECK_AS(ErrorKind::config, s.top_k >= 1) << "moe.top_k=" << s.top_k << " must be at least 1";
  SY_CHECK_AS(ErrorKind::config, s.top_k <= s.experts)
      << "moe.top_k=" << s.top_k << " exceeds moe.experts=" << s.experts;
  if (s.drop_policy != DropPolicy::dropless) {
    SY_CHECK_AS(ErrorKind::config, s.capacity_factor > 0 && std::isfinite(s.capacity_factor))
        << "moe.capacity_factor=" << s.capacity_factor << " must be positive";
    SY_CHECK_AS(ErrorKind::config, s.eval_capacity_factor > 0 && std::isfinite(s.eval_capacity_factor))
        << "moe.eval_capacity_factor=" << s.eval_capacity_factor << " must be positive";
  }
  SY_CHECK_AS(ErrorKind::config, s.jitter_eps >= 0 && s.jitter_eps < 1)
      << "moe.router_jitter_eps=" << s.jitter_eps << " must be in [0, 1)";
  SY_CHECK_AS(ErrorKind::config, s.aux_loss_coef >= 0)
      << "moe.aux_loss_coef=" << s.aux_loss_coef << " must not be negative";
  SY_CHECK_AS(ErrorKind::config, s.z_loss_coef >= 0) << "moe.z_loss_coef=" << s.z_loss_coef << " must not be negative";
}

std::int64_t router_capacity(const RouterSettings& s, std::int64_t tokens, bool training) {
  if (s.drop_policy == DropPolicy::dropless) return 0;
  const double factor = training ? s.capacity_factor : s.eval_capacity_factor;
  const double exact = factor * double(tokens) * double(s.top_k) / double(s.experts);
  // 1e-9 relative slack: 1.1 * 100 / 10 is 11.000000000000002 in double, and should give 11.
  return std::int64_t(std::ceil(exact * (1.0 - 1e-9)));
}

namespace {

// The reference reads and writes any float tensor element as double.
double get(const Tensor& t, std::int64_t i) {
  switch (t.dtype()) {
    case DType::f32: return t.ptr<float>()[i];
    case DType::f64: return t.ptr<double>()[i];
    case DType::bf16: return to_double(t.ptr<bfloat16>()[i]);
    case DType::i32: return t.ptr<std::int32_t>()[i];
    case DType::i64: return double(t.ptr<std::int64_t>()[i]);
  }
  return 0;
}

void put(const Tensor& t, std::int64_t i, double v) {
  switch (t.dtype()) {
    case DType::f32: t.ptr<float>()[i] = float(v); return;
    case DType::f64: t.ptr<double>()[i] = v; return;
    case DType::bf16: t.ptr<bfloat16>()[i] = bfloat16(float(v)); return;
    case DType::i32: t.ptr<std::int32_t>()[i] = std::int32_t(v); return;
    case DType::i64: t.ptr<std::int64_t>()[i] = std::int64_t(v); return;
  }
}

double softplus(double h) { return h > 20 ? h : std::log1p(std::exp(h)); }
double sigmoid(double h) { return 1.0 / (1.0 + std::exp(-h)); }

// The order in which each expert fills its queue: choice indices q = n * k + j.
std::vector<std::int64_t> queue_order(const RouterSettings& s, const Tensor& gate, std::int64_t tokens) {
  const int k = s.top_k;
  std::vector<std::int64_t> order;
  order.reserve(std::size_t(tokens * k));
  if (s.drop_policy == DropPolicy::probability) {
    order.resize(std::size_t(tokens * k));
    std::iota(order.begin(), order.end(), std::int64_t(0));
    // Within an expert every token appears once, so (gate, token) is a total order there.
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
      const double ga = get(gate, a), gb = get(gate, b);
      return ga != gb ? ga > gb : a / k < b / k;
    });
  } else {
    for (int j = 0; j < k; ++j)
      for (std::int64_t n = 0; n < tokens; ++n) order.push_back(n * k + j);
  }
  return order;
}

// aux, z, their gradients and the logged statistics from the local and the dp-summed buffers.
void router_losses_cpu(const RouterSettings& s, const Tensor& local_sums, const Tensor& global_sums, RouterState& state) {
  const int E = s.experts, k = s.top_k;
  const std::vector<double> local(local_sums.ptr<double>(), local_sums.ptr<double>() + local_sums.numel());
  const std::vector<double> global(global_sums.ptr<double>(), global_sums.ptr<double>() + global_sums.numel());
  const std::vector<double>& scope = s.loss_scope == RouterLossScope::global ? global : local;
  const double tokens = scope[std::size_t(2 * E)];
  double aux = 0;
  for (int e = 0; e < E; ++e) {
    const double f = tokens > 0 ? scope[std::size_t(e)] / (tokens * k) : 0.0;
    const double p = tokens > 0 ? scope[std::size_t(E + e)] / tokens : 0.0;
    aux += f * p;
    put(state.aux_grad, e, tokens > 0 ? double(s.aux_loss_coef) * E * f / tokens : 0.0);
    put(state.tokens_per_expert, e, global[std::size_t(e)]);
  }
  put(state.aux_loss, 0, double(s.aux_loss_coef) * E * aux);
  put(state.z_loss, 0, tokens > 0 ? double(s.z_loss_coef) * scope[std::size_t(2 * E + 2)] / tokens : 0.0);
  put(state.z_grad, 0, tokens > 0 ? 2.0 * double(s.z_loss_coef) / tokens : 0.0);
  const double choices = global[std::size_t(2 * E)] * k;
  put(state.dropped_fraction, 0, choices > 0 ? global[std::size_t(2 * E + 1)] / choices : 0.0);
}

// Row n of the router input: factor = its jitter factors (1 without jitter), input = x[n, :] *
// factor. Forward and backward both compute it from x, so nothing [N, d] is saved.
void router_input_row(const RouterState& state, bool jitter, std::int64_t n, std::vector<double>& factor,
                      std::vector<double>& input) {
  const std::int64_t d = state.x.size(1);
  const std::uint64_t counter = (std::uint64_t(state.first_token) + std::uint64_t(n)) * std::uint64_t(d);
  for (std::int64_t c = 0; c < d; ++c) {
    factor[std::size_t(c)] =
        jitter ? router_jitter_factor(state.key, counter + std::uint64_t(c), state.settings.jitter_eps) : 1.0;
    input[std::size_t(c)] = get(state.x, n * d + c) * factor[std::size_t(c)];
  }
}

void router_forward_cpu(const RouterSettings& s, const Tensor& x, const Tensor& w_router, const Tensor& w_noise,
                        bool gaussian, bool jitter, std::int64_t capacity, RouterState& state, const Tensor& local) {
  const std::int64_t N = x.size(0), d = x.size(1);
  const int E = s.experts, k = s.top_k;
  Routing& r = state.routing;
  const std::uint64_t first = std::uint64_t(state.first_token);

  std::vector<double> sums(std::size_t(router_stats_size(E)), 0.0);
  std::vector<double> logits(static_cast<std::size_t>(E));
  std::vector<double> factor(static_cast<std::size_t>(d)), input(static_cast<std::size_t>(d));
  for (std::int64_t n = 0; n < N; ++n) {
    router_input_row(state, jitter, n, factor, input);
    for (int e = 0; e < E; ++e) {
      double acc = 0, noise_acc = 0;
      for (std::int64_t c = 0; c < d; ++c) {
        acc += input[std::size_t(c)] * get(w_router, c * E + e);
        if (gaussian) noise_acc += input[std::size_t(c)] * get(w_noise, c * E + e);
      }
      if (gaussian) {
        const double z = router_noise_draw(state.key, (first + std::uint64_t(n)) * std::uint64_t(E) + std::uint64_t(e));
        put(state.noise_logits, n * E + e, noise_acc);
        put(state.noise, n * E + e, z);
        acc += z * softplus(noise_acc);
      }
      logits[std::size_t(e)] = acc;
      put(state.logits, n * E + e, acc);
    }
    const double m = *std::max_element(logits.begin(), logits.end());
    double total = 0;
    for (double l : logits) total += std::exp(l - m);
    const double lse = m + std::log(total);
    put(state.lse, n, lse);
    sums[std::size_t(2 * E + 2)] += lse * lse;
    for (int e = 0; e < E; ++e) {
      const double p = std::exp(logits[std::size_t(e)] - lse);
      put(state.probs, n * E + e, p);
      sums[std::size_t(E + e)] += p;
    }
    // Top-k by repeated arg-max; strict ">" in ascending e keeps the lower index on ties.
    std::vector<bool> taken(std::size_t(E), false);
    double gate_sum = 0;
    for (int j = 0; j < k; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e)
        if (!taken[std::size_t(e)] && (best < 0 || logits[std::size_t(e)] > logits[std::size_t(best)])) best = e;
      taken[std::size_t(best)] = true;
      put(r.expert, n * k + j, best);
      gate_sum += get(state.probs, n * E + best);
    }
    for (int j = 0; j < k; ++j) {
      const double p = get(state.probs, n * E + std::int64_t(get(r.expert, n * k + j)));
      put(r.gate, n * k + j, s.renormalize ? p / gate_sum : p);
    }
  }

  std::vector<std::int64_t> queued(std::size_t(E), 0);
  for (std::int64_t q : queue_order(s, r.gate, N)) {
    const int e = int(get(r.expert, q));
    const std::int64_t position = queued[std::size_t(e)]++;
    const bool kept = capacity == 0 || position < capacity;
    put(r.slot, q, kept ? double(position) : -1.0);
    if (!kept) put(r.gate, q, 0.0);
  }
  for (int e = 0; e < E; ++e) {
    const std::int64_t count = queued[std::size_t(e)];
    const std::int64_t kept = capacity == 0 ? count : std::min(count, capacity);
    put(r.expert_counts, e, double(kept));
    sums[std::size_t(e)] = double(count);
    sums[std::size_t(2 * E + 1)] += double(count - kept);
  }
  sums[std::size_t(2 * E)] = double(N);
  for (std::size_t i = 0; i < sums.size(); ++i) put(local, std::int64_t(i), sums[i]);
}

void router_backward_cpu(const RouterState& state, const Tensor& w_router, const Tensor& w_noise, const Tensor& dgate,
                         const Tensor& dx, const Tensor& dw_router, const Tensor& dw_noise, GradMode mode) {
  const RouterSettings& s = state.settings;
  const Routing& r = state.routing;
  const std::int64_t N = r.tokens, d = state.x.size(1);
  const int E = s.experts, k = s.top_k;
  const bool gaussian = state.noise.defined();
  const bool jitter = state.training && s.noise == RouterNoise::jitter;
  const double z_grad = get(state.z_grad, 0);
  std::vector<double> dlogits(std::size_t(N * E)), dnoise(gaussian ? std::size_t(N * E) : 0);
  for (std::int64_t n = 0; n < N; ++n) {
    std::vector<double> dprobs(static_cast<std::size_t>(E));
    for (int e = 0; e < E; ++e) dprobs[std::size_t(e)] = get(state.aux_grad, e);
    // gate_j = g_j / S with S = sum_m g_m: d gate_j / d g_m = [j == m] / S - g_j / S^2. A
    // dropped choice's gate is the constant 0, but its g still enters S.
    double gate_sum = 0, weighted = 0;
    for (int j = 0; j < k; ++j) {
      const double g = get(state.probs, n * E + std::int64_t(get(r.expert, n * k + j)));
      gate_sum += g;
      if (get(r.slot, n * k + j) >= 0) weighted += get(dgate, n * k + j) * g;
    }
    for (int j = 0; j < k; ++j) {
      const int e = int(get(r.expert, n * k + j));
      const double dg = get(r.slot, n * k + j) >= 0 ? get(dgate, n * k + j) : 0.0;
      dprobs[std::size_t(e)] += s.renormalize ? dg / gate_sum - weighted / (gate_sum * gate_sum) : dg;
    }
    double dot = 0;
    for (int e = 0; e < E; ++e) dot += get(state.probs, n * E + e) * dprobs[std::size_t(e)];
    const double lse = get(state.lse, n);
    for (int e = 0; e < E; ++e) {
      const double p = get(state.probs, n * E + e);
      const double dl = p * (dprobs[std::size_t(e)] - dot) + z_grad * lse * p;
      dlogits[std::size_t(n * E + e)] = dl;
      if (gaussian) dnoise[std::size_t(n * E + e)] = dl * get(state.noise, n * E + e) * sigmoid(get(state.noise_logits, n * E + e));
    }
  }
  // dW (+)= input^T dlogits (summed in double, stored or added once); dx += factor * (dlogits W^T +
  // dnoise Wn^T).
  std::vector<double> dw_sum(std::size_t(d * E), 0.0), dwn_sum(gaussian ? std::size_t(d * E) : 0, 0.0);
  std::vector<double> factor(static_cast<std::size_t>(d)), input(static_cast<std::size_t>(d));
  for (std::int64_t n = 0; n < N; ++n) {
    router_input_row(state, jitter, n, factor, input);
    for (std::int64_t c = 0; c < d; ++c) {
      double acc = 0;
      for (int e = 0; e < E; ++e) {
        const std::size_t ne = std::size_t(n * E + e), ce = std::size_t(c * E + e);
        dw_sum[ce] += input[std::size_t(c)] * dlogits[ne];
        acc += dlogits[ne] * get(w_router, c * E + e);
        if (gaussian) {
          dwn_sum[ce] += input[std::size_t(c)] * dnoise[ne];
          acc += dnoise[ne] * get(w_noise, c * E + e);
        }
      }
      put(dx, n * d + c, get(dx, n * d + c) + acc * factor[std::size_t(c)]);
    }
  }
  const bool accumulate = mode == GradMode::accumulate;
  for (std::int64_t i = 0; i < d * E; ++i) {
    put(dw_router, i, accumulate ? get(dw_router, i) + dw_sum[std::size_t(i)] : dw_sum[std::size_t(i)]);
    if (gaussian) put(dw_noise, i, accumulate ? get(dw_noise, i) + dwn_sum[std::size_t(i)] : dwn_sum[std::size_t(i)]);
  }
}

void check_weight(const char* op, const char* arg, const Tensor& w, std::int64_t d, int experts, DType dtype) {
  check_contiguous(op, arg, w);
  check_shape(op, arg, w, {d, experts});
  check_dtype(op, arg, w, dtype);
}

}  // namespace

void router_forward(const RouterSettings& settings, const Tensor& x, const Tensor& w_router, const Tensor& w_noise,
                    bool training, RngKey key, std::int64_t first_token, Arena& arena, RouterState& state,
                    StreamRef stream, Communicator* dp) {
  const char* op = "router_forward";
  validate(settings);
  check_contiguous(op, "x", x);
  check_float(op, "x", x);
  SY_CHECK(x.dim() == 2) << op << ": x must be [N, d], got " << x.describe();
  const std::int64_t N = x.size(0), d = x.size(1);
  const int E = settings.experts, k = settings.top_k;
  const DType cdt = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  check_weight(op, "w_router", w_router, d, E, cdt);
  const bool gaussian = training && settings.noise == RouterNoise::gaussian;
  const bool jitter = training && settings.noise == RouterNoise::jitter && settings.jitter_eps > 0;
  if (gaussian) {
    SY_CHECK(w_noise.defined()) << op << ": moe.router_noise=gaussian needs the noise projection w_noise";
    check_weight(op, "w_noise", w_noise, d, E, cdt);
    check_same_device(op, {&x, &w_router, &w_noise});
  } else {
    check_same_device(op, {&x, &w_router});
  }
  SY_CHECK(first_token >= 0) << op << ": first_token=" << first_token << " must not be negative";
  SY_CHECK(N * k < (std::int64_t(1) << 31)) << op << ": " << N << " tokens x top_k " << k
                                            << " choices exceed the 2^31 that slot indices address";
  SY_CHECK(settings.loss_scope == RouterLossScope::local || dp != nullptr)
      << op << ": moe.router_loss_scope=global needs the dp communicator";
  SY_CHECK(dp == nullptr || dp->device() == x.device())
      << op << ": the dp communicator moves " << device_name(dp->device()) << " tensors, x is on "
      << device_name(x.device());

  state = RouterState{};
  state.settings = settings;
  state.training = training;
  state.key = key;
  state.first_token = first_token;
  state.x = x;
  const std::int64_t capacity = router_capacity(settings, N, training);
  Routing& r = state.routing;
  r.tokens = N;
  r.top_k = k;
  r.experts = E;
  r.capacity = capacity;
  r.expert = arena.alloc({N, k}, DType::i32);
  r.gate = arena.alloc({N, k}, cdt);
  r.slot = arena.alloc({N, k}, DType::i32);
  r.expert_counts = arena.alloc({E}, DType::i32);
  state.logits = arena.alloc({N, E}, cdt);
  if (gaussian) {
    state.noise_logits = arena.alloc({N, E}, cdt);
    state.noise = arena.alloc({N, E}, cdt);
  }
  state.probs = arena.alloc({N, E}, cdt);
  state.lse = arena.alloc({N}, cdt);
  state.aux_loss = arena.alloc({1}, cdt);
  state.z_loss = arena.alloc({1}, cdt);
  state.tokens_per_expert = arena.alloc({E}, DType::i64);
  state.dropped_fraction = arena.alloc({1}, DType::f32);
  state.aux_grad = arena.alloc({E}, cdt);
  state.z_grad = arena.alloc({1}, cdt);

  // Temporaries are released at the end: later allocations are used in stream order.
  const std::size_t mark = arena.mark();
  const Tensor local = arena.alloc({router_stats_size(E)}, DType::f64);
  const Tensor global = arena.alloc({router_stats_size(E)}, DType::f64);
  if (x.is_cuda()) {
    SY_ROUTER_ON_CUDA(cuda::router_forward(settings, x, w_router, w_noise, gaussian, jitter, capacity, arena, state,
                                           local, stream));
  } else {
    router_forward_cpu(settings, x, w_router, w_noise, gaussian, jitter, capacity, state, local);
  }
  copy(global, local, stream);
  if (dp != nullptr) dp->all_reduce(global, ReduceOp::sum, stream);
  if (x.is_cuda()) {
    SY_ROUTER_ON_CUDA(cuda::router_losses(settings, local, global, state, stream));
  } else {
    router_losses_cpu(settings, local, global, state);
  }
  arena.release_to(mark);
}

void router_backward(const RouterState& state, const Tensor& w_router, const Tensor& w_noise, const Tensor& dgate,
                     const Tensor& dx, const Tensor& dw_router, const Tensor& dw_noise, GradMode mode, Arena& arena,
                     StreamRef stream) {
  const char* op = "router_backward";
  const Routing& r = state.routing;
  SY_CHECK(state.probs.defined()) << op << ": the state holds no forward";
  const DType cdt = state.probs.dtype();
  const std::int64_t N = r.tokens, d = state.x.size(1);
  const int E = r.experts;
  check_weight(op, "w_router", w_router, d, E, cdt);
  check_contiguous(op, "dgate", dgate);
  check_shape(op, "dgate", dgate, {N, r.top_k});
  check_dtype(op, "dgate", dgate, cdt);
  check_contiguous(op, "dx", dx);
  check_shape(op, "dx", dx, {N, d});
  check_dtype(op, "dx", dx, state.x.dtype());
  check_weight(op, "dw_router", dw_router, d, E, cdt);
  if (state.noise.defined()) {
    check_weight(op, "w_noise", w_noise, d, E, cdt);
    check_weight(op, "dw_noise", dw_noise, d, E, cdt);
    check_same_device(op, {&state.probs, &state.x, &w_router, &dgate, &dx, &dw_router, &w_noise, &dw_noise});
  } else {
    check_same_device(op, {&state.probs, &state.x, &w_router, &dgate, &dx, &dw_router});
    if (dw_noise.defined()) {
      // A noise projection without Gaussian noise in this forward (none at evaluation) gets no
      // terms; overwriting still writes it.
      check_weight(op, "dw_noise", dw_noise, d, E, cdt);
      check_same_device(op, {&dx, &dw_noise});
      if (mode == GradMode::overwrite) fill_bytes(dw_noise, 0, stream);
    }
  }
  if (dx.is_cuda()) {
    const std::size_t mark = arena.mark();
    SY_ROUTER_ON_CUDA(
        cuda::router_backward(state, w_router, w_noise, dgate, dx, dw_router, dw_noise, mode, arena, stream));
    arena.release_to(mark);
    return;
  }
  router_backward_cpu(state, w_router, w_noise, dgate, dx, dw_router, dw_noise, mode);
}

RouterStats fetch_router_stats(const RouterState& state, StreamRef stream) {
  SY_CHECK(state.tokens_per_expert.defined()) << "fetch_router_stats: the state holds no forward";
  synchronize(stream);
  auto host = [&](const Tensor& t) {
    OwnedTensor h(t.shape(), t.dtype(), Device::cpu);
    copy(h, t, stream);
    return h;
  };
  OwnedTensor counts = host(state.tokens_per_expert), dropped = host(state.dropped_fraction);
  OwnedTensor aux = host(state.aux_loss), z = host(state.z_loss);
  RouterStats stats;
  const std::int64_t* c = counts.view().ptr<std::int64_t>();
  stats.tokens_per_expert.assign(c, c + counts.view().numel());
  stats.dropped_fraction = get(dropped, 0);
  stats.aux_loss = get(aux, 0);
  stats.z_loss = get(z, 0);
  return stats;
}

}  // namespace sy
