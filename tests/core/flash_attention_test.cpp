// Flash attention CPU reference: the forward equals the probs-based attention op and its lse is
// each row's log-sum-exp; the backward matches finite differences and the probs-based
// backward, for MHA, GQA and MQA; and the argument checks.
#include <cmath>

#include "tests/testing.h"

namespace sy::test {
namespace {

struct HeadConfig {
  std::int64_t heads, kv_heads;
};

void PrintTo(const HeadConfig& h, std::ostream* os) { *os << "Hq " << h.heads << ", Hkv " << h.kv_heads; }

std::string head_config_name(const ::testing::TestParamInfo<HeadConfig>& param_info) {
  const HeadConfig h = param_info.param;
  const char* kind = h.kv_heads == h.heads ? "Mha" : h.kv_heads == 1 ? "Mqa" : "Gqa";
  return std::string(kind) + std::to_string(h.heads) + "x" + std::to_string(h.kv_heads);
}

class FlashAttentionHeads : public ::testing::TestWithParam<HeadConfig> {};

TEST_P(FlashAttentionHeads, ForwardMatchesProbsAttentionAndLseIsLogSumExp) {
  const HeadConfig h = GetParam();
  const std::int64_t batch = 2, seq = 7, dim = 5;
  const Shape q_shape{batch, h.heads, seq, dim}, kv_shape{batch, h.kv_heads, seq, dim};
  OwnedTensor q = random_tensor(q_shape, DType::f64, Device::cpu, 131, 2.0f);
  OwnedTensor k = random_tensor(kv_shape, DType::f64, Device::cpu, 132, 2.0f);
  OwnedTensor v = random_tensor(kv_shape, DType::f64, Device::cpu, 133);
  OwnedTensor out(q_shape, DType::f64, Device::cpu), lse({batch, h.heads, seq}, DType::f32, Device::cpu);
  OwnedTensor ref_out(q_shape, DType::f64, Device::cpu), probs({batch, h.heads, seq, seq}, DType::f64, Device::cpu);
  poison(out);
  poison(lse);
  flash_attention_forward(q, k, v, out, lse);
  attention_forward(q, k, v, ref_out, probs);
  EXPECT_LT(relative_error(out, ref_out), 1e-13);
  // Column 0 is visible from every row: exp(score(t, 0) - lse(t)) is its probability.
  const std::vector<double> qv = to_vector(q), kv = to_vector(k), l = to_vector(lse), p = to_vector(probs);
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t head = 0; head < h.heads; ++head) {
      const std::int64_t kv_head = head / (h.heads / h.kv_heads), row0 = (b * h.heads + head) * seq;
      for (std::int64_t t = 0; t < seq; ++t) {
        double score = 0;
        for (std::int64_t c = 0; c < dim; ++c)
          score += qv[std::size_t((row0 + t) * dim + c)] * kv[std::size_t((b * h.kv_heads + kv_head) * seq * dim + c)];
        score /= std::sqrt(double(dim));
        EXPECT_NEAR(std::exp(score - l[std::size_t(row0 + t)]), p[std::size_t((row0 + t) * seq)], 1e-6)
            << "row " << row0 + t;
      }
    }
  }
}

TEST_P(FlashAttentionHeads, BackwardMatchesFiniteDifferencesAndProbsAttention) {
  const HeadConfig h = GetParam();
  const std::int64_t batch = 2, seq = 5, dim = 3;
  const Shape q_shape{batch, h.heads, seq, dim}, kv_shape{batch, h.kv_heads, seq, dim};
  OwnedTensor q = random_tensor(q_shape, DType::f64, Device::cpu, 134);
  OwnedTensor k = random_tensor(kv_shape, DType::f64, Device::cpu, 135);
  OwnedTensor v = random_tensor(kv_shape, DType::f64, Device::cpu, 136);
  OwnedTensor dout = random_tensor(q_shape, DType::f64, Device::cpu, 137);
  OwnedTensor out(q_shape, DType::f64, Device::cpu), lse({batch, h.heads, seq}, DType::f32, Device::cpu);
  OwnedTensor delta(flash_attention_scratch_shape(q), DType::f32, Device::cpu);
  auto loss = [&] {
    flash_attention_forward(q, k, v, out, lse);
    return weighted_sum(out, dout);
  };
  loss();
  OwnedTensor dq(q_shape, DType::f64, Device::cpu), dk(kv_shape, DType::f64, Device::cpu);
  OwnedTensor dv(kv_shape, DType::f64, Device::cpu);
  poison(dq);
  poison(dk);
  poison(dv);
  flash_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, delta);
  // lse is saved in f32, so the recomputed probabilities carry its ~6e-8 relative rounding.
  EXPECT_LT(relative_error(to_vector(dq), numeric_gradient(q, loss)), 1e-6);
  EXPECT_LT(relative_error(to_vector(dk), numeric_gradient(k, loss)), 1e-6);
  EXPECT_LT(relative_error(to_vector(dv), numeric_gradient(v, loss)), 1e-6);

  OwnedTensor probs({batch, h.heads, seq, seq}, DType::f64, Device::cpu), dprobs(probs.view().shape(), DType::f64, Device::cpu);
  OwnedTensor ref_out(q_shape, DType::f64, Device::cpu), ref_dq(q_shape, DType::f64, Device::cpu);
  OwnedTensor ref_dk(kv_shape, DType::f64, Device::cpu), ref_dv(kv_shape, DType::f64, Device::cpu);
  attention_forward(q, k, v, ref_out, probs);
  attention_backward(q, k, v, probs, dout, ref_dq, ref_dk, ref_dv, dprobs);
  EXPECT_LT(relative_error(dq, ref_dq), 1e-6);
  EXPECT_LT(relative_error(dk, ref_dk), 1e-6);
  EXPECT_LT(relative_error(dv, ref_dv), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(HeadLayouts, FlashAttentionHeads,
                         ::testing::Values(HeadConfig{4, 4}, HeadConfig{6, 2}, HeadConfig{3, 1}), head_config_name);

// Heads viewed in place inside token-major rows [B*T, cols], starting at column col0.
Tensor heads_in_rows(const Tensor& rows, std::int64_t batch, std::int64_t heads, std::int64_t seq, std::int64_t dim,
                     std::int64_t col0) {
  const std::int64_t cols = rows.size(1);
  return rows.as_strided({batch, heads, seq, dim}, {seq * cols, dim, cols, 1}, col0);
}

// The model's layout: q, k, v read in place from the qkv projection's rows and out, dq, dk, dv
// written in place into rows. Equal to running on head-major copies, exactly (same loops).
TEST(FlashAttention, TokenMajorViewsMatchHeadMajorCopies) {
  const std::int64_t batch = 2, heads = 4, kv_heads = 2, seq = 6, dim = 3;
  const std::int64_t cols = (heads + 2 * kv_heads) * dim, n = batch * seq;
  OwnedTensor qkv = random_tensor({n, cols}, DType::f64, Device::cpu, 140, 2.0f);
  OwnedTensor drows = random_tensor({n, heads * dim}, DType::f64, Device::cpu, 141);
  OwnedTensor rows({n, heads * dim}, DType::f64, Device::cpu), dqkv({n, cols}, DType::f64, Device::cpu);
  OwnedTensor lse({batch, heads, seq}, DType::f32, Device::cpu);
  OwnedTensor delta({batch * heads * seq}, DType::f32, Device::cpu);  // the CPU scratch: one value per row
  poison(rows);
  poison(dqkv);
  auto q_of = [&](const Tensor& t) { return heads_in_rows(t, batch, heads, seq, dim, 0); };
  auto k_of = [&](const Tensor& t) { return heads_in_rows(t, batch, kv_heads, seq, dim, heads * dim); };
  auto v_of = [&](const Tensor& t) { return heads_in_rows(t, batch, kv_heads, seq, dim, (heads + kv_heads) * dim); };
  const Tensor out_view = heads_in_rows(rows, batch, heads, seq, dim, 0);
  flash_attention_forward(q_of(qkv), k_of(qkv), v_of(qkv), out_view, lse);
  const Tensor dout_view = heads_in_rows(drows, batch, heads, seq, dim, 0);
  flash_attention_backward(q_of(qkv), k_of(qkv), v_of(qkv), out_view, lse, dout_view, q_of(dqkv), k_of(dqkv), v_of(dqkv),
                           delta);

  const Shape q_shape{batch, heads, seq, dim}, kv_shape{batch, kv_heads, seq, dim};
  OwnedTensor q(q_shape, DType::f64, Device::cpu), k(kv_shape, DType::f64, Device::cpu);
  OwnedTensor v(kv_shape, DType::f64, Device::cpu), dout(q_shape, DType::f64, Device::cpu);
  OwnedTensor out(q_shape, DType::f64, Device::cpu), lse_ref({batch, heads, seq}, DType::f32, Device::cpu);
  OwnedTensor dq(q_shape, DType::f64, Device::cpu), dk(kv_shape, DType::f64, Device::cpu);
  OwnedTensor dv(kv_shape, DType::f64, Device::cpu);
  OwnedTensor rows_ref({n, heads * dim}, DType::f64, Device::cpu), dqkv_ref({n, cols}, DType::f64, Device::cpu);
  split_qkv_heads(qkv, q, k, v);
  split_heads(drows, dout);
  flash_attention_forward(q, k, v, out, lse_ref);
  flash_attention_backward(q, k, v, out, lse_ref, dout, dq, dk, dv, delta);
  merge_heads(out, rows_ref);
  merge_qkv_heads(dq, dk, dv, dqkv_ref);
  EXPECT_EQ(to_vector(rows), to_vector(rows_ref));
  EXPECT_EQ(to_vector(lse), to_vector(lse_ref));
  EXPECT_EQ(to_vector(dqkv), to_vector(dqkv_ref));
}

TEST(FlashAttention, RejectsAStridedHeadDim) {
  OwnedTensor buffer({1, 2, 4, 16}, DType::f64, Device::cpu);
  const Tensor q = buffer.view().as_strided({1, 2, 4, 8}, {128, 64, 16, 2});
  OwnedTensor lse({1, 2, 4}, DType::f32, Device::cpu), out({1, 2, 4, 8}, DType::f64, Device::cpu);
  expect_error([&] { flash_attention_forward(q, out, out, out, lse); },
               "flash_attention_forward: q must have a contiguous last axis (head dim), got f64[1, 2, 4, 8] cpu with "
               "stride 2");
}

TEST(FlashAttention, SupportsEveryFloatDtypeOnCpu) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    EXPECT_TRUE(flash_attention_supported(OwnedTensor({1, 2, 3, 5}, dt, Device::cpu))) << dtype_name(dt);
  EXPECT_FALSE(flash_attention_supported(OwnedTensor({1, 2, 3, 5}, DType::i32, Device::cpu)));
}

TEST(FlashAttention, RejectsBadArguments) {
  OwnedTensor q({1, 6, 4, 8}, DType::f32, Device::cpu), k({1, 2, 4, 8}, DType::f32, Device::cpu);
  OwnedTensor v({1, 2, 4, 8}, DType::f32, Device::cpu), out({1, 6, 4, 8}, DType::f32, Device::cpu);
  OwnedTensor lse({1, 6, 4}, DType::f32, Device::cpu);
  OwnedTensor lse_f64({1, 6, 4}, DType::f64, Device::cpu), lse_short({1, 6, 3}, DType::f32, Device::cpu);
  OwnedTensor k4({1, 4, 4, 8}, DType::f32, Device::cpu);
  expect_error([&] { flash_attention_forward(q, k, v, out, lse_f64); },
               "flash_attention_forward: lse must be f32, got f64[1, 6, 4] cpu");
  expect_error([&] { flash_attention_forward(q, k, v, out, lse_short); },
               "flash_attention_forward: lse must have shape [1, 6, 4], got f32[1, 6, 3] cpu");
  expect_error([&] { flash_attention_forward(q, k4, k4, out, lse); },
               "flash_attention_forward: n_heads 6 is not a multiple of n_kv_heads 4");
  OwnedTensor dq({1, 6, 4, 8}, DType::f32, Device::cpu), dk({1, 2, 4, 8}, DType::f32, Device::cpu);
  OwnedTensor dv_bf16({1, 2, 4, 8}, DType::bf16, Device::cpu), delta({24}, DType::f32, Device::cpu);
  expect_error([&] { flash_attention_backward(q, k, v, out, lse, out, dq, dk, dv_bf16, delta); },
               "flash_attention_backward: dv must be f32, got bf16[1, 2, 4, 8] cpu");
  expect_error([&] { flash_attention_backward(q, k, v, out, lse, out, dq, dk, dk, lse_short); },
               "flash_attention_backward: scratch must have shape [24], got f32[1, 6, 3] cpu");
  EXPECT_FALSE(flash_attention_wgmma_supported(q));
  expect_error([&] { flash_attention_backward_wgmma(q, k, v, out, lse, out, dq, dk, k, delta); },
               "flash_attention_backward_wgmma: needs bf16 with head dim 64 on an sm_90 GPU, got q f32[1, 6, 4, 8] cpu");
  expect_error([&] { flash_attention_forward_wgmma(q, k, v, out, lse); },
               "flash_attention_forward_wgmma: needs bf16 with head dim 64 on an sm_90 GPU, got q f32[1, 6, 4, 8] cpu");
}

}  // namespace
}  // namespace sy::test
