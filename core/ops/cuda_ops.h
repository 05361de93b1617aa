// CUDA implementations behind core/ops.h, one per op, same signatures. Only the dispatchers in
// core/ops/*.cpp call these, after checking shapes, dtypes and devices; the kernels in
// core/ops/*.cu may therefore assume valid, contiguous arguments.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ops.h"

// SY_ON_CUDA(call): run the CUDA implementation, or fail clearly in a CPU-only build.
#ifdef SY_WITH_CUDA
#define SY_ON_CUDA(call) call
#else
#define SY_ON_CUDA(call) SY_FAIL() << "this build has no CUDA backend, so " #call " cannot run"
#endif

namespace sy::cuda {

void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha, float beta,
          StreamRef stream);
void gemm_batched(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha,
                  float beta, StreamRef stream);
void gemm_gelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& act, bool trans_b, StreamRef stream);
void gemm_dgelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& dpre, bool trans_b,
                StreamRef stream);
bool gemm_gelu_fused(GeluEpilogue epilogue, const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& out,
                     bool trans_b);
// group_rows: `groups` host counts (a pointer and a count: std::span is C++20, these sources C++17).
void gemm_grouped(const Tensor& a, const Tensor& b, const Tensor& c, const std::int64_t* group_rows, std::size_t groups,
                  bool trans_b, float alpha, float beta, StreamRef stream);
void gemm_grouped_trans_a(const Tensor& a, const Tensor& b, const Tensor& c, const std::int64_t* group_rows,
                          std::size_t groups, float alpha, float beta, StreamRef stream);

void embedding_forward(const Tensor& tokens, const Tensor& weight, const Tensor& out, StreamRef stream);
void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dweight, GradMode mode,
                        StreamRef stream);

void rmsnorm_forward(const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& rstd, float eps,
                     StreamRef stream);
void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                      const Tensor& dweight, GradMode mode, StreamRef stream);
void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& sum, const Tensor& weight, const Tensor& y,
                         const Tensor& rstd, float eps, StreamRef stream);
void rmsnorm_backward_residual(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                               const Tensor& dresidual, const Tensor& dweight, GradMode mode, StreamRef stream);

void rope_forward(const Tensor& x, const Tensor& y, float theta, StreamRef stream);
void rope_backward(const Tensor& dy, const Tensor& dx, float theta, StreamRef stream);

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& probs,
                       StreamRef stream);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, const Tensor& dout,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dprobs, StreamRef stream);

bool flash_attention_head_dim_supported(std::int64_t head_dim);
std::int64_t flash_attention_scratch_floats(std::int64_t batch, std::int64_t heads, std::int64_t seq);
bool flash_attention_wgmma_supported(std::int64_t head_dim);
void flash_attention_forward_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                   const Tensor& lse, StreamRef stream);
void flash_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                             StreamRef stream);
void flash_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                              const Tensor& dv, const Tensor& scratch, bool wgmma, StreamRef stream);

void split_qkv_heads(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, StreamRef stream);
void merge_qkv_heads(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dqkv, StreamRef stream);
void merge_heads(const Tensor& x, const Tensor& y, StreamRef stream);
void split_heads(const Tensor& dy, const Tensor& dx, StreamRef stream);

void gelu_forward(const Tensor& x, const Tensor& y, StreamRef stream);
void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream);
void gelu_backward_recompute(const Tensor& x, const Tensor& dy, const Tensor& dx, const Tensor& y, StreamRef stream);
void relu_forward(const Tensor& x, const Tensor& y, StreamRef stream);
void relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream);
void swiglu_forward(const Tensor& x, const Tensor& y, StreamRef stream);
void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream);

void add(const Tensor& a, const Tensor& b, const Tensor& out, StreamRef stream);
void scale(const Tensor& x, float factor, const Tensor& out, StreamRef stream);
void cast(const Tensor& src, const Tensor& dst, StreamRef stream);

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor& lse,
                           int ignore_index, StreamRef stream);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dlogits,
                            float grad_scale, int ignore_index, StreamRef stream);
void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                    const Tensor& lse, const Tensor& dlogits, float grad_scale, int ignore_index,
                                    StreamRef stream);

void adamw_update_ranges(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                         const Tensor& param_copy, const AdamWRange* ranges, std::size_t count,
                         const AdamWParams& hp, StreamRef stream);

void sum_squares(const Tensor* parts, std::size_t count, const Tensor& out, StreamRef stream);

void fill_uniform(const Tensor& t, RngKey key, float low, float high, std::uint64_t index_offset, StreamRef stream);
void fill_normal(const Tensor& t, RngKey key, float mean, float std, std::uint64_t index_offset, StreamRef stream);

}  // namespace sy::cuda
