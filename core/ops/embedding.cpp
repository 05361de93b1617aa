// Token embedding: argument checks, dispatch, and the CPU reference (forward then backward).
// The CPU path checks every token against the vocabulary; the CUDA path cannot without a
// device-to-host sync, so its kernels skip out-of-range tokens instead (core/ops/embedding.cu).
#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

void check_tokens_in_vocabulary(const char* op, const Tensor& tokens, std::int64_t vocab) {
  const std::int32_t* tp = tokens.ptr<std::int32_t>();
  for (std::int64_t n = 0; n < tokens.numel(); ++n) {
    SY_CHECK(tp[n] >= 0 && tp[n] < vocab) << op << ": tokens[" << n << "] = " << tp[n]
                                          << " is outside the vocabulary [0, " << vocab << ")";
  }
}

template <class T>
void embedding_forward_cpu(const Tensor& tokens, const Tensor& weight, const Tensor& out) {
  const std::int64_t rows = tokens.size(0), channels = weight.size(1);
  const std::int32_t* tp = tokens.ptr<std::int32_t>();
  const T* wp = weight.ptr<T>();
  T* op = out.ptr<T>();
  for (std::int64_t n = 0; n < rows; ++n) {
    const T* wr = wp + std::int64_t(tp[n]) * channels;
    std::copy(wr, wr + channels, op + n * channels);
  }
}

// Visits the positions of each token in ascending order and sums their rows in double, then
// adds the sum to dweight once (or stores it, when overwriting): the same rounding as the other
// references' parameter gradients, with scratch of one row rather than [V, C].
template <class T>
void embedding_backward_cpu(const Tensor& tokens, const Tensor& dout, const Tensor& dweight, GradMode mode) {
  const std::int64_t rows = tokens.size(0), channels = dweight.size(1);
  const std::int32_t* tp = tokens.ptr<std::int32_t>();
  const T* dop = dout.ptr<T>();
  float* dwp = dweight.ptr<float>();
  const bool overwrite = mode == GradMode::overwrite;
  if (overwrite) std::fill(dwp, dwp + dweight.numel(), 0.0f);  // rows of tokens the batch lacks
  std::vector<std::int64_t> order(static_cast<std::size_t>(rows));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return tp[a] < tp[b]; });
  std::vector<double> sum(static_cast<std::size_t>(channels));
  for (std::size_t begin = 0; begin < order.size();) {
    const std::int32_t token = tp[order[begin]];
    std::fill(sum.begin(), sum.end(), 0.0);
    std::size_t end = begin;
    for (; end < order.size() && tp[order[end]] == token; ++end) {
      const T* dr = dop + order[end] * channels;
      for (std::int64_t c = 0; c < channels; ++c) sum[std::size_t(c)] += to_double(dr[c]);
    }
    float* dwr = dwp + std::int64_t(token) * channels;
    for (std::int64_t c = 0; c < channels; ++c)
      dwr[c] = overwrite ? float(sum[std::size_t(c)]) : float(dwr[c] + sum[std::size_t(c)]);
    begin = end;
  }
}

void check_tokens_arg(const char* op, const Tensor& tokens) {
  check_contiguous(op, "tokens", tokens);
  check_dtype(op, "tokens", tokens, DType::i32);
  SY_CHECK(tokens.dim() == 1) << op << ": tokens must be [N], got " << tokens.describe();
}

}  // namespace

void embedding_forward(const Tensor& tokens, const Tensor& weight, const Tensor& out, StreamRef stream) {
  const char* op = "embedding_forward";
  check_tokens_arg(op, tokens);
  check_contiguous(op, "weight", weight);
  check_float(op, "weight", weight);
  SY_CHECK(weight.dim() == 2) << op << ": weight must be [V, C], got " << weight.describe();
  check_contiguous(op, "out", out);
  check_shape(op, "out", out, {tokens.size(0), weight.size(1)});
  check_dtype(op, "out", out, weight.dtype());
  check_same_device(op, {&tokens, &weight, &out});
  if (weight.is_cuda()) {
    SY_ON_CUDA(cuda::embedding_forward(tokens, weight, out, stream));
    return;
  }
  check_tokens_in_vocabulary(op, tokens, weight.size(0));
  cpu::dispatch_float(weight, [&](auto* type) {
    embedding_forward_cpu<std::remove_pointer_t<decltype(type)>>(tokens, weight, out);
  });
}

void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dweight, GradMode mode,
                        StreamRef stream) {
  const char* op = "embedding_backward";
  check_tokens_arg(op, tokens);
  check_contiguous(op, "dweight", dweight);
  check_dtype(op, "dweight", dweight, DType::f32);
  SY_CHECK(dweight.dim() == 2) << op << ": dweight must be [V, C], got " << dweight.describe();
  check_contiguous(op, "dout", dout);
  check_float(op, "dout", dout);
  check_shape(op, "dout", dout, {tokens.size(0), dweight.size(1)});
  check_same_device(op, {&tokens, &dout, &dweight});
  if (dout.is_cuda()) {
    SY_ON_CUDA(cuda::embedding_backward(tokens, dout, dweight, mode, stream));
    return;
  }
  check_tokens_in_vocabulary(op, tokens, dweight.size(0));
  cpu::dispatch_float(dout, [&](auto* type) {
    embedding_backward_cpu<std::remove_pointer_t<decltype(type)>>(tokens, dout, dweight, mode);
  });
}

}  // namespace sy
