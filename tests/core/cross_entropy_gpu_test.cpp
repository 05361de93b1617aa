// Cross-entropy CUDA kernels against the CPU reference on fresh random inputs, f32 and bf16:
// the 16-byte vector path, the scalar path (odd V, unaligned rows), in place, targets out of
// range, and the forward-backward pass of training.
#include "tests/testing.h"

namespace sy::test {
namespace {

constexpr int kIgnore = -100;

class CrossEntropyGpu : public ::testing::TestWithParam<DType> {};

// lse and losses are f32 computed from the same (already rounded) logits as the f64
// reference: only summation order and __expf differ (1e-5) for either dtype.
constexpr double kStatsTol = 1e-5;
// dlogits: f32 1e-5 for the same reason; bf16 outputs are rounded to 8 bits (1e-2).
double dlogits_tol(DType dt) { return dt == DType::f32 ? 1e-5 : 1e-2; }

// Random targets in [0, V) with rows 0 and 3 (where present) set to ignore_index.
OwnedTensor targets_with_ignored(int rows, int vocab, std::uint64_t seed) {
  OwnedTensor targets = random_ints({rows}, vocab, Device::cuda, seed);
  std::vector<double> tv = to_vector(targets);
  for (int n : {0, 3}) {
    if (n < rows) tv[std::size_t(n)] = kIgnore;
  }
  from_vector(targets, tv);
  return targets;
}

struct Reference {
  OwnedTensor losses, lse, dlogits;
};

// The CPU reference in f64 on the same rounded logits.
Reference cpu_reference(const Tensor& logits, const Tensor& targets, float grad_scale) {
  const std::int64_t rows = logits.size(0);
  Reference ref{OwnedTensor({rows}, DType::f32, Device::cpu), OwnedTensor({rows}, DType::f32, Device::cpu),
                OwnedTensor(logits.shape(), DType::f64, Device::cpu)};
  OwnedTensor xc = convert(logits, DType::f64, Device::cpu);
  OwnedTensor tc(targets.shape(), DType::i32, Device::cpu);
  copy(tc, targets);
  cross_entropy_forward(xc, tc, ref.losses, ref.lse, kIgnore);
  cross_entropy_backward(xc, tc, ref.lse, ref.dlogits, grad_scale, kIgnore);
  return ref;
}

TEST_P(CrossEntropyGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const float grad_scale = 1.0f / 61.0f;
  // V = 37 and 1001 take the scalar path; 1000 and 32768 the vector path for both dtypes.
  for (int rows : {7, 64}) {
    for (int vocab : {37, 1000, 1001, 32768}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << vocab);
      const std::uint64_t seed = 1000 * std::uint64_t(rows) + std::uint64_t(vocab);
      OwnedTensor logits = random_tensor({rows, vocab}, dt, Device::cuda, seed, 3.0f);
      OwnedTensor targets = targets_with_ignored(rows, vocab, seed + 1);
      OwnedTensor losses({rows}, DType::f32, Device::cuda), lse({rows}, DType::f32, Device::cuda);
      OwnedTensor dlogits({rows, vocab}, dt, Device::cuda);
      poison(losses);
      poison(lse);
      poison(dlogits);
      const Reference ref = cpu_reference(logits, targets, grad_scale);

      cross_entropy_forward(logits, targets, losses, lse, kIgnore);
      cross_entropy_backward(logits, targets, lse, dlogits, grad_scale, kIgnore);
      device_synchronize();
      EXPECT_LT(relative_error(losses, ref.losses), kStatsTol);
      EXPECT_LT(relative_error(lse, ref.lse), kStatsTol);
      EXPECT_LT(relative_error(dlogits, ref.dlogits), dlogits_tol(dt));

      // In place: dlogits overwrites the logits; same path, so the same bits as above.
      OwnedTensor in_place = convert(logits, dt, Device::cuda);
      cross_entropy_backward(in_place, targets, lse, in_place, grad_scale, kIgnore);
      device_synchronize();
      EXPECT_EQ(to_vector(in_place), to_vector(dlogits));
      EXPECT_LT(relative_error(in_place, ref.dlogits), dlogits_tol(dt));
    }
  }
}

TEST_P(CrossEntropyGpu, UnalignedRowsMatchCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const int rows = 9, vocab = 1000;
  const float grad_scale = 0.5f;
  // Views one element past 256-byte aligned allocations: V is a multiple of the pack size but
  // no row base is 16-byte aligned, so both kernels must take the scalar path.
  OwnedTensor logits_buffer = random_tensor({rows * vocab + 1}, dt, Device::cuda, 31, 3.0f);
  OwnedTensor dlogits_buffer({rows * vocab + 1}, dt, Device::cuda);
  poison(dlogits_buffer);
  const Tensor logits = logits_buffer.view().as_strided({rows, vocab}, {vocab, 1}, 1);
  const Tensor dlogits = dlogits_buffer.view().as_strided({rows, vocab}, {vocab, 1}, 1);
  OwnedTensor targets = targets_with_ignored(rows, vocab, 32);
  OwnedTensor losses({rows}, DType::f32, Device::cuda), lse({rows}, DType::f32, Device::cuda);
  poison(losses);
  poison(lse);
  const Reference ref = cpu_reference(logits, targets, grad_scale);

  cross_entropy_forward(logits, targets, losses, lse, kIgnore);
  cross_entropy_backward(logits, targets, lse, dlogits, grad_scale, kIgnore);
  device_synchronize();
  EXPECT_LT(relative_error(losses, ref.losses), kStatsTol);
  EXPECT_LT(relative_error(lse, ref.lse), kStatsTol);
  EXPECT_LT(relative_error(dlogits, ref.dlogits), dlogits_tol(dt));
}

TEST_P(CrossEntropyGpu, OutOfRangeTargetsAreTreatedAsIgnored) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const int rows = 6, vocab = 1000;
  OwnedTensor logits = random_tensor({rows, vocab}, dt, Device::cuda, 41, 3.0f);
  OwnedTensor targets = random_ints({rows}, vocab, Device::cuda, 42);
  std::vector<double> tv = to_vector(targets);
  tv[1] = vocab;      // one past the end
  tv[4] = -7;         // negative, not ignore_index
  from_vector(targets, tv);
  OwnedTensor losses({rows}, DType::f32, Device::cuda), lse({rows}, DType::f32, Device::cuda);
  OwnedTensor dlogits({rows, vocab}, dt, Device::cuda);
  poison(losses);
  poison(dlogits);

  // The CPU path rejects such targets, so the reference marks those rows ignored instead.
  tv[1] = kIgnore;
  tv[4] = kIgnore;
  OwnedTensor ignored_targets({rows}, DType::i32, Device::cuda);
  from_vector(ignored_targets, tv);
  const Reference ref = cpu_reference(logits, ignored_targets, 1.0f);

  cross_entropy_forward(logits, targets, losses, lse, kIgnore);
  cross_entropy_backward(logits, targets, lse, dlogits, 1.0f, kIgnore);
  device_synchronize();
  const std::vector<double> lv = to_vector(losses), dv = to_vector(dlogits);
  EXPECT_EQ(lv[1], 0.0);
  EXPECT_EQ(lv[4], 0.0);
  for (int j = 0; j < vocab; ++j) {
    EXPECT_EQ(dv[1 * vocab + j], 0.0);
    EXPECT_EQ(dv[4 * vocab + j], 0.0);
  }
  EXPECT_LT(relative_error(losses, ref.losses), kStatsTol);
  EXPECT_LT(relative_error(dlogits, ref.dlogits), dlogits_tol(dt));
}

// The training pass against the CPU reference, on 16-byte rows (V = 1000, 8192, 32768, 131072)
// and unaligned ones (V = 1001), out of place and in place over the logits.
TEST_P(CrossEntropyGpu, ForwardBackwardMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const float grad_scale = 1.0f / 29.0f;
  for (auto [rows, vocab] : {std::pair{7, 1000}, std::pair{16, 8192}, std::pair{64, 32768}, std::pair{5, 1001},
                               std::pair{3, 131072}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << vocab);
    const std::uint64_t seed = 7000 + std::uint64_t(vocab);
    OwnedTensor logits = random_tensor({rows, vocab}, dt, Device::cuda, seed, 3.0f);
    OwnedTensor targets = targets_with_ignored(rows, vocab, seed + 1);
    const Reference ref = cpu_reference(logits, targets, grad_scale);
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(in_place ? "in place" : "out of place");
      OwnedTensor x = convert(logits, dt, Device::cuda), separate({rows, vocab}, dt, Device::cuda);
      OwnedTensor losses({rows}, DType::f32, Device::cuda), lse({rows}, DType::f32, Device::cuda);
      poison(losses);
      poison(lse);
      poison(separate);
      const Tensor& dlogits = in_place ? x.view() : separate.view();
      cross_entropy_forward_backward(x, targets, losses, lse, dlogits, grad_scale, kIgnore);
      device_synchronize();
      EXPECT_LT(relative_error(losses, ref.losses), kStatsTol);
      EXPECT_LT(relative_error(lse, ref.lse), kStatsTol);
      EXPECT_LT(relative_error(dlogits, ref.dlogits), dlogits_tol(dt));
    }
  }
}

// The one-kernel training pass equals the forward kernel then the backward kernel exactly: the
// same statistics, and every element's gradient from the lse the forward stores.
TEST_P(CrossEntropyGpu, ForwardBackwardEqualsTheTwoKernelsBitwise) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (auto [rows, vocab] : {std::pair{9, 32768}, std::pair{4, 1001}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << vocab);
    OwnedTensor logits = random_tensor({rows, vocab}, dt, Device::cuda, 900 + std::uint64_t(vocab), 3.0f);
    OwnedTensor targets = targets_with_ignored(rows, vocab, 901 + std::uint64_t(vocab));
    OwnedTensor fused = convert(logits, dt, Device::cuda), two = convert(logits, dt, Device::cuda);
    OwnedTensor losses({rows}, DType::f32, Device::cuda), lse({rows}, DType::f32, Device::cuda);
    OwnedTensor losses2({rows}, DType::f32, Device::cuda), lse2({rows}, DType::f32, Device::cuda);
    cross_entropy_forward_backward(fused, targets, losses, lse, fused, 0.125f, kIgnore);
    cross_entropy_forward(two, targets, losses2, lse2, kIgnore);
    cross_entropy_backward(two, targets, lse2, two, 0.125f, kIgnore);
    device_synchronize();
    EXPECT_EQ(to_vector(losses), to_vector(losses2));
    EXPECT_EQ(to_vector(lse), to_vector(lse2));
    EXPECT_EQ(to_vector(fused), to_vector(two));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CrossEntropyGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
