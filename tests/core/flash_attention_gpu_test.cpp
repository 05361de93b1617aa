// Flash attention on CUDA (bf16 tensor-core kernels) against the f64 CPU reference on fresh
// random inputs: out, lse, dq, dk and dv for MHA, GQA and MQA, head dims 64 and 128, sequence
// lengths that are and are not multiples of the 64-row tile. Also: repeated runs are bitwise
// equal (the backward has no atomics).
#include <array>
#include <sstream>

#include "tests/testing.h"

namespace sy::test {
namespace {

struct Case {
  std::int64_t batch, heads, kv_heads, seq, dim;
};

void PrintTo(const Case& s, std::ostream* os) {
  *os << "B " << s.batch << " Hq " << s.heads << " Hkv " << s.kv_heads << " T " << s.seq << " D " << s.dim;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& s = info.param;
  std::ostringstream name;  // a stream: GCC 12 warns (-Wrestrict) on chains of string +
  name << "B" << s.batch << "H" << s.heads << "x" << s.kv_heads << "T" << s.seq << "D" << s.dim;
  return name.str();
}

class FlashAttentionGpu : public ::testing::TestWithParam<Case> {};

TEST_P(FlashAttentionGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const Case s = GetParam();
  const Shape q_shape{s.batch, s.heads, s.seq, s.dim}, kv_shape{s.batch, s.kv_heads, s.seq, s.dim};
  const Shape row_shape{s.batch, s.heads, s.seq};
  const std::uint64_t seed = 900 + std::uint64_t(s.seq * 7 + s.dim + s.heads * 3 + s.kv_heads);
  // Scale 2 makes the softmax peaked enough that the online max matters.
  OwnedTensor q = random_tensor(q_shape, DType::bf16, Device::cuda, seed, 2.0f);
  OwnedTensor k = random_tensor(kv_shape, DType::bf16, Device::cuda, seed + 1, 2.0f);
  OwnedTensor v = random_tensor(kv_shape, DType::bf16, Device::cuda, seed + 2);
  OwnedTensor dout = random_tensor(q_shape, DType::bf16, Device::cuda, seed + 3);
  OwnedTensor out(q_shape, DType::bf16, Device::cuda), lse(row_shape, DType::f32, Device::cuda);
  OwnedTensor delta(flash_attention_scratch_shape(q), DType::f32, Device::cuda);
  OwnedTensor dq(q_shape, DType::bf16, Device::cuda), dk(kv_shape, DType::bf16, Device::cuda);
  OwnedTensor dv(kv_shape, DType::bf16, Device::cuda);
  for (OwnedTensor* t : {&out, &lse, &delta, &dq, &dk, &dv}) poison(*t);
  ASSERT_TRUE(flash_attention_supported(q));

  flash_attention_forward(q, k, v, out, lse);
  flash_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, delta);
  device_synchronize();

  // The reference runs in f64 on the same rounded inputs, and its backward on the GPU's out and
  // lse, so each of dq, dk, dv is checked on its own (not through an error in out).
  OwnedTensor qc = convert(q, DType::f64, Device::cpu), kc = convert(k, DType::f64, Device::cpu);
  OwnedTensor vc = convert(v, DType::f64, Device::cpu), doc = convert(dout, DType::f64, Device::cpu);
  OwnedTensor outc(q_shape, DType::f64, Device::cpu), lsec(row_shape, DType::f32, Device::cpu);
  OwnedTensor deltac(flash_attention_scratch_shape(qc), DType::f32, Device::cpu);
  OwnedTensor dqc(q_shape, DType::f64, Device::cpu), dkc(kv_shape, DType::f64, Device::cpu);
  OwnedTensor dvc(kv_shape, DType::f64, Device::cpu);
  flash_attention_forward(qc, kc, vc, outc, lsec);
  EXPECT_LT(relative_error(out, outc), 1e-2);
  EXPECT_LT(relative_error(lse, lsec), 1e-4);
  OwnedTensor gpu_out = convert(out, DType::f64, Device::cpu), gpu_lse = convert(lse, DType::f32, Device::cpu);
  flash_attention_backward(qc, kc, vc, gpu_out, gpu_lse, doc, dqc, dkc, dvc, deltac);
  // bf16 P and dS operands (8-bit mantissas) with fp32 accumulation.
  EXPECT_LT(relative_error(dq, dqc), 2e-2);
  EXPECT_LT(relative_error(dk, dkc), 2e-2);
  EXPECT_LT(relative_error(dv, dvc), 2e-2);

  // Bitwise reproducible: a second backward gives identical gradients.
  OwnedTensor dq2(q_shape, DType::bf16, Device::cuda), dk2(kv_shape, DType::bf16, Device::cuda);
  OwnedTensor dv2(kv_shape, DType::bf16, Device::cuda);
  flash_attention_backward(q, k, v, out, lse, dout, dq2, dk2, dv2, delta);
  device_synchronize();
  EXPECT_EQ(to_vector(dq), to_vector(dq2));
  EXPECT_EQ(to_vector(dk), to_vector(dk2));
  EXPECT_EQ(to_vector(dv), to_vector(dv2));
}

INSTANTIATE_TEST_SUITE_P(Shapes, FlashAttentionGpu,
                         ::testing::Values(Case{2, 4, 4, 128, 64}, Case{2, 6, 2, 100, 64}, Case{1, 3, 1, 1, 64},
                                           Case{1, 12, 4, 257, 64}, Case{2, 4, 2, 64, 128}, Case{1, 2, 1, 193, 128},
                                           Case{1, 2, 2, 17, 64}),
                         case_name);

// Heads viewed in place inside token-major rows [B*T, cols], starting at column col0.
Tensor heads_in_rows(const Tensor& rows, std::int64_t batch, std::int64_t heads, std::int64_t seq, std::int64_t dim,
                     std::int64_t col0) {
  const std::int64_t cols = rows.size(1);
  return rows.as_strided({batch, heads, seq, dim}, {seq * cols, dim, cols, 1}, col0);
}

// The model's layout: q, k, v read in place from qkv projection rows, out and dq, dk, dv written
// in place into rows. The CPU reference runs on the same views of f64 copies; every element of
// the output buffers must be written (they start poisoned).
// The backward's scratch on CUDA: the rows' delta rounded up to 64 floats, then the 64 x 64 bf16
// dS tiles of the causal triangle (3 per head at T = 100: two tiles of rows).
TEST(FlashAttentionGpuScratch, HoldsDeltaAndTheCausalDsTiles) {
  SY_REQUIRE_GPU();
  const Tensor q(nullptr, {1, 2, 100, 64}, DType::bf16, Device::cuda);
  EXPECT_EQ(flash_attention_scratch_shape(q), (Shape{256 + 2 * 3 * 64 * 64 / 2}));
  const Tensor q_cpu(nullptr, {1, 2, 100, 64}, DType::f32, Device::cpu);
  EXPECT_EQ(flash_attention_scratch_shape(q_cpu), (Shape{200}));
}

TEST(FlashAttentionGpuViews, TokenMajorRowsMatchCpuReference) {
  SY_REQUIRE_GPU();
  for (const Case s : {Case{2, 12, 4, 200, 64}, Case{1, 4, 2, 130, 128}}) {
    SCOPED_TRACE(::testing::Message() << "B " << s.batch << " Hq " << s.heads << " Hkv " << s.kv_heads << " T "
                                      << s.seq << " D " << s.dim);
    const std::int64_t n = s.batch * s.seq, cols = (s.heads + 2 * s.kv_heads) * s.dim, q_cols = s.heads * s.dim;
    const Shape row_shape{s.batch, s.heads, s.seq};
    OwnedTensor qkv = random_tensor({n, cols}, DType::bf16, Device::cuda, 950 + std::uint64_t(s.dim), 2.0f);
    OwnedTensor drows = random_tensor({n, q_cols}, DType::bf16, Device::cuda, 951 + std::uint64_t(s.dim));
    OwnedTensor rows({n, q_cols}, DType::bf16, Device::cuda), dqkv({n, cols}, DType::bf16, Device::cuda);
    OwnedTensor lse(row_shape, DType::f32, Device::cuda);
    OwnedTensor delta(flash_attention_scratch_shape(Tensor(nullptr, {s.batch, s.heads, s.seq, s.dim}, DType::bf16,
                                                           Device::cuda)),
                      DType::f32, Device::cuda);
    for (OwnedTensor* t : {&rows, &dqkv, &lse, &delta}) poison(*t);
    auto run = [&](const Tensor& qkv_t, const Tensor& rows_t, const Tensor& lse_t, const Tensor& drows_t,
                   const Tensor& dqkv_t, const Tensor& delta_t) {
      auto q_of = [&](const Tensor& t) { return heads_in_rows(t, s.batch, s.heads, s.seq, s.dim, 0); };
      auto k_of = [&](const Tensor& t) { return heads_in_rows(t, s.batch, s.kv_heads, s.seq, s.dim, q_cols); };
      auto v_of = [&](const Tensor& t) {
        return heads_in_rows(t, s.batch, s.kv_heads, s.seq, s.dim, q_cols + s.kv_heads * s.dim);
      };
      const Tensor out = q_of(rows_t);
      flash_attention_forward(q_of(qkv_t), k_of(qkv_t), v_of(qkv_t), out, lse_t);
      flash_attention_backward(q_of(qkv_t), k_of(qkv_t), v_of(qkv_t), out, lse_t, q_of(drows_t), q_of(dqkv_t),
                               k_of(dqkv_t), v_of(dqkv_t), delta_t);
    };
    run(qkv, rows, lse, drows, dqkv, delta);
    device_synchronize();

    OwnedTensor qkvc = convert(qkv, DType::f64, Device::cpu), drowsc = convert(drows, DType::f64, Device::cpu);
    OwnedTensor rowsc({n, q_cols}, DType::f64, Device::cpu), dqkvc({n, cols}, DType::f64, Device::cpu);
    OwnedTensor lsec(row_shape, DType::f32, Device::cpu);
    OwnedTensor deltac({s.batch * s.heads * s.seq}, DType::f32, Device::cpu);
    run(qkvc, rowsc, lsec, drowsc, dqkvc, deltac);
    // bf16 operands and outputs (as in MatchesCpuReference); here the backward's error includes
    // the forward's, since the reference recomputes its own out and lse.
    EXPECT_LT(relative_error(rows, rowsc), 1e-2);
    EXPECT_LT(relative_error(lse, lsec), 1e-4);
    EXPECT_LT(relative_error(dqkv, dqkvc), 3e-2);
  }
}

TEST(FlashAttentionGpuSupport, Bf16WithHeadDim64Or128Only) {
  SY_REQUIRE_GPU();
  EXPECT_TRUE(flash_attention_supported(OwnedTensor({1, 2, 8, 64}, DType::bf16, Device::cuda)));
  EXPECT_TRUE(flash_attention_supported(OwnedTensor({1, 2, 8, 128}, DType::bf16, Device::cuda)));
  EXPECT_FALSE(flash_attention_supported(OwnedTensor({1, 2, 8, 32}, DType::bf16, Device::cuda)));
  EXPECT_FALSE(flash_attention_supported(OwnedTensor({1, 2, 8, 64}, DType::f32, Device::cuda)));
}

// The Hopper kernels (wgmma) against the f64 CPU reference and the mma.sync kernels on
// head-major tensors (MHA, GQA, MQA; lengths that are and are not multiples of 64 and 128):
// out and lse of the forward; dq, dk, dv of the backward (the reference runs on the GPU's out
// and lse), whose second run must give the same bits. Outputs start poisoned.
TEST(FlashAttentionGpuWgmma, MatchesCpuReferenceAndTheMmaKernels) {
  SY_REQUIRE_GPU();
  if (!flash_attention_wgmma_supported(OwnedTensor({1, 1, 8, 64}, DType::bf16, Device::cuda)))
    GTEST_SKIP() << "not an sm_90 GPU";
  for (const Case s : {Case{2, 12, 4, 200, 64}, Case{1, 4, 1, 1024, 64}, Case{1, 2, 2, 130, 64}, Case{1, 3, 3, 1, 64}}) {
    SCOPED_TRACE(::testing::Message() << "B " << s.batch << " Hq " << s.heads << " Hkv " << s.kv_heads << " T "
                                      << s.seq);
    const Shape q_shape{s.batch, s.heads, s.seq, s.dim}, kv_shape{s.batch, s.kv_heads, s.seq, s.dim};
    const Shape row_shape{s.batch, s.heads, s.seq};
    const std::uint64_t seed = 970 + std::uint64_t(s.seq + s.heads);
    OwnedTensor q = random_tensor(q_shape, DType::bf16, Device::cuda, seed, 2.0f);
    OwnedTensor k = random_tensor(kv_shape, DType::bf16, Device::cuda, seed + 1, 2.0f);
    OwnedTensor v = random_tensor(kv_shape, DType::bf16, Device::cuda, seed + 2);
    OwnedTensor dout = random_tensor(q_shape, DType::bf16, Device::cuda, seed + 3);
    OwnedTensor out(q_shape, DType::bf16, Device::cuda), lse(row_shape, DType::f32, Device::cuda);
    OwnedTensor out_mma(q_shape, DType::bf16, Device::cuda), lse_mma(row_shape, DType::f32, Device::cuda);
    for (OwnedTensor* t : {&out, &lse, &out_mma, &lse_mma}) poison(*t);
    flash_attention_forward_wgmma(q, k, v, out, lse);
    flash_attention_forward(q, k, v, out_mma, lse_mma);
    device_synchronize();
    OwnedTensor qc = convert(q, DType::f64, Device::cpu), kc = convert(k, DType::f64, Device::cpu);
    OwnedTensor vc = convert(v, DType::f64, Device::cpu), doc = convert(dout, DType::f64, Device::cpu);
    OwnedTensor outc(q_shape, DType::f64, Device::cpu), lsec(row_shape, DType::f32, Device::cpu);
    flash_attention_forward(qc, kc, vc, outc, lsec);
    EXPECT_LT(relative_error(out, outc), 1e-2);
    EXPECT_LT(relative_error(lse, lsec), 1e-4);
    EXPECT_LT(relative_error(out, out_mma), 1e-2);
    EXPECT_LT(relative_error(lse, lse_mma), 1e-5);

    OwnedTensor scratch(flash_attention_scratch_shape(q), DType::f32, Device::cuda);
    auto grads = [&](bool wgmma) {
      std::array<OwnedTensor, 3> g{OwnedTensor(q_shape, DType::bf16, Device::cuda),
                                   OwnedTensor(kv_shape, DType::bf16, Device::cuda),
                                   OwnedTensor(kv_shape, DType::bf16, Device::cuda)};
      for (OwnedTensor& t : g) poison(t);
      poison(scratch);
      if (wgmma) {
        flash_attention_backward_wgmma(q, k, v, out_mma, lse_mma, dout, g[0], g[1], g[2], scratch);
      } else {
        flash_attention_backward(q, k, v, out_mma, lse_mma, dout, g[0], g[1], g[2], scratch);
      }
      device_synchronize();
      return g;
    };
    const auto wg = grads(true), again = grads(true), mma = grads(false);
    OwnedTensor gpu_out = convert(out_mma, DType::f64, Device::cpu), gpu_lse = convert(lse_mma, DType::f32, Device::cpu);
    OwnedTensor dqc(q_shape, DType::f64, Device::cpu), dkc(kv_shape, DType::f64, Device::cpu);
    OwnedTensor dvc(kv_shape, DType::f64, Device::cpu);
    OwnedTensor scratchc(flash_attention_scratch_shape(qc), DType::f32, Device::cpu);
    flash_attention_backward(qc, kc, vc, gpu_out, gpu_lse, doc, dqc, dkc, dvc, scratchc);
    const Tensor* ref[3] = {&dqc.view(), &dkc.view(), &dvc.view()};
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE(i == 0 ? "dq" : i == 1 ? "dk" : "dv");
      EXPECT_LT(relative_error(wg[std::size_t(i)], *ref[i]), 2e-2);
      EXPECT_LT(relative_error(wg[std::size_t(i)], mma[std::size_t(i)]), 2e-2);
      EXPECT_EQ(to_vector(wg[std::size_t(i)]), to_vector(again[std::size_t(i)]));
    }
  }
}

// The forward on the model's token-major views inside qkv rows.
TEST(FlashAttentionGpuWgmma, ForwardOnTokenMajorRows) {
  SY_REQUIRE_GPU();
  if (!flash_attention_wgmma_supported(OwnedTensor({1, 1, 8, 64}, DType::bf16, Device::cuda)))
    GTEST_SKIP() << "not an sm_90 GPU";
  const Case s{2, 12, 4, 200, 64};
  const std::int64_t n = s.batch * s.seq, cols = (s.heads + 2 * s.kv_heads) * s.dim, q_cols = s.heads * s.dim;
  OwnedTensor qkv = random_tensor({n, cols}, DType::bf16, Device::cuda, 990, 2.0f);
  OwnedTensor rows({n, q_cols}, DType::bf16, Device::cuda), lse({s.batch, s.heads, s.seq}, DType::f32, Device::cuda);
  poison(rows);
  poison(lse);
  auto views = [&](const Tensor& t, const Tensor& r) {
    return std::array<Tensor, 4>{heads_in_rows(t, s.batch, s.heads, s.seq, s.dim, 0),
                                 heads_in_rows(t, s.batch, s.kv_heads, s.seq, s.dim, q_cols),
                                 heads_in_rows(t, s.batch, s.kv_heads, s.seq, s.dim, q_cols + s.kv_heads * s.dim),
                                 heads_in_rows(r, s.batch, s.heads, s.seq, s.dim, 0)};
  };
  const auto g = views(qkv, rows);
  flash_attention_forward_wgmma(g[0], g[1], g[2], g[3], lse);
  device_synchronize();
  OwnedTensor qkvc = convert(qkv, DType::f64, Device::cpu), rowsc({n, q_cols}, DType::f64, Device::cpu);
  OwnedTensor lsec({s.batch, s.heads, s.seq}, DType::f32, Device::cpu);
  const auto c = views(qkvc, rowsc);
  flash_attention_forward(c[0], c[1], c[2], c[3], lsec);
  EXPECT_LT(relative_error(rows, rowsc), 1e-2);
  EXPECT_LT(relative_error(lse, lsec), 1e-4);
}

}  // namespace
}  // namespace sy::test
