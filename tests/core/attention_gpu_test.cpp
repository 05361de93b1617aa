// Causal attention on CUDA against the CPU reference on fresh random inputs, f32 and bf16:
// out, probs (masked entries exactly 0), dq, dk and dv for MHA, GQA and MQA head layouts.
#include "tests/testing.h"

namespace sy::test {
namespace {

class AttentionGpu : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  // f32: only summation order differs (1e-5). bf16: scores, probs, dP and dS are rounded to
  // 8 bits between the GEMMs and the softmax kernels (2e-2).
  const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
  struct Case {
    std::int64_t batch, heads, kv_heads, seq, dim;
  };
  std::uint64_t seed = 500;
  for (const Case& s : {Case{2, 4, 2, 37, 64}, Case{1, 6, 6, 128, 32}, Case{2, 3, 1, 128, 64}, Case{1, 8, 2, 37, 32}}) {
    SCOPED_TRACE(::testing::Message() << "B " << s.batch << " Hq " << s.heads << " Hkv " << s.kv_heads << " T " << s.seq
                                      << " D " << s.dim);
    const Shape q_shape{s.batch, s.heads, s.seq, s.dim}, kv_shape{s.batch, s.kv_heads, s.seq, s.dim};
    const Shape p_shape{s.batch, s.heads, s.seq, s.seq};
    seed += 10;
    OwnedTensor q = random_tensor(q_shape, dt, Device::cuda, seed);
    OwnedTensor k = random_tensor(kv_shape, dt, Device::cuda, seed + 1);
    OwnedTensor v = random_tensor(kv_shape, dt, Device::cuda, seed + 2);
    OwnedTensor dout = random_tensor(q_shape, dt, Device::cuda, seed + 3);
    OwnedTensor out(q_shape, dt, Device::cuda), probs(p_shape, dt, Device::cuda), dprobs(p_shape, dt, Device::cuda);
    OwnedTensor dq(q_shape, dt, Device::cuda), dk(kv_shape, dt, Device::cuda), dv(kv_shape, dt, Device::cuda);
    poison(out);
    poison(probs);
    poison(dprobs);
    poison(dq);
    poison(dk);
    poison(dv);

    // The reference runs in f64 on the same (already rounded) inputs.
    OwnedTensor qc = convert(q, DType::f64, Device::cpu), kc = convert(k, DType::f64, Device::cpu);
    OwnedTensor vc = convert(v, DType::f64, Device::cpu), doc = convert(dout, DType::f64, Device::cpu);
    OwnedTensor outc(q_shape, DType::f64, Device::cpu), probsc(p_shape, DType::f64, Device::cpu);
    OwnedTensor dprobsc(p_shape, DType::f64, Device::cpu), dqc(q_shape, DType::f64, Device::cpu);
    OwnedTensor dkc(kv_shape, DType::f64, Device::cpu), dvc(kv_shape, DType::f64, Device::cpu);

    attention_forward(q, k, v, out, probs);
    attention_backward(q, k, v, probs, dout, dq, dk, dv, dprobs);
    device_synchronize();
    attention_forward(qc, kc, vc, outc, probsc);
    attention_backward(qc, kc, vc, probsc, doc, dqc, dkc, dvc, dprobsc);

    EXPECT_LT(relative_error(out, outc), tol);
    EXPECT_LT(relative_error(probs, probsc), tol);
    EXPECT_LT(relative_error(dq, dqc), tol);
    EXPECT_LT(relative_error(dk, dkc), tol);
    EXPECT_LT(relative_error(dv, dvc), tol);
    const std::vector<double> p = to_vector(probs);
    std::int64_t nonzero_above_diagonal = 0;
    for (std::int64_t row = 0; row < s.batch * s.heads * s.seq; ++row)
      for (std::int64_t j = row % s.seq + 1; j < s.seq; ++j)
        nonzero_above_diagonal += p[std::size_t(row * s.seq + j)] != 0.0;
    EXPECT_EQ(nonzero_above_diagonal, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AttentionGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
