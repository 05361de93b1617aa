// AdamW CUDA kernel against the CPU reference on fresh random state, with a bf16 compute copy,
// an f32 copy and none; the one-launch ranges form against one launch per range.
#include <optional>

#include "tests/testing.h"

namespace sy::test {
namespace {

TEST(AdamWGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const std::int64_t n = 100003;  // not a multiple of the block
  AdamWParams hp;
  hp.lr = 3e-3f;
  hp.weight_decay = 0.1f;
  hp.step = 5;
  hp.grad_scale = 0.7f;
  std::uint64_t seed = 10;
  for (std::optional<DType> copy_dtype : {std::optional<DType>(DType::bf16), std::optional<DType>(DType::f32),
                                          std::optional<DType>()}) {
    SCOPED_TRACE(copy_dtype ? dtype_name(*copy_dtype) : "no copy");
    seed += 10;
    OwnedTensor params = random_tensor({n}, DType::f32, Device::cuda, seed);
    OwnedTensor grads = random_tensor({n}, DType::f32, Device::cuda, seed + 1);
    OwnedTensor m = random_tensor({n}, DType::f32, Device::cuda, seed + 2, 0.1f);
    OwnedTensor v = random_tensor({n}, DType::f32, Device::cuda, seed + 3, 0.1f);
    std::vector<double> squares = to_vector(v);  // v must be non-negative
    for (double& x : squares) x *= x;
    from_vector(v, squares);
    OwnedTensor param_copy;
    if (copy_dtype) {
      param_copy = OwnedTensor({n}, *copy_dtype, Device::cuda);
      poison(param_copy);
    }

    // The optimizer state is f32 by contract; the CPU reference computes in double.
    OwnedTensor pc = convert(params, DType::f32, Device::cpu), gc = convert(grads, DType::f32, Device::cpu);
    OwnedTensor mc = convert(m, DType::f32, Device::cpu), vc = convert(v, DType::f32, Device::cpu);
    adamw_update(pc, gc, mc, vc, Tensor(), hp);

    adamw_update(params, grads, m, v, param_copy, hp);
    device_synchronize();
    // f32 storage on both sides, fp32 against fp64 arithmetic: 1e-6.
    EXPECT_LT(relative_error(params, pc), 1e-6);
    EXPECT_LT(relative_error(m, mc), 1e-6);
    EXPECT_LT(relative_error(v, vc), 1e-6);
    if (copy_dtype) {
      // The copy is exactly the new f32 weights rounded to its dtype.
      OwnedTensor rounded = convert(params, *copy_dtype, Device::cpu);
      EXPECT_EQ(to_vector(param_copy), to_vector(rounded));
    }
  }
}

// Clipping read on the device from a [1] sum of squares, against the CPU reference reading the
// same value: clipped (sum 400, max norm 1) and not (sum 0.25).
TEST(AdamWGpu, ClipFromTheSumOfSquaresMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const std::int64_t n = 4099;
  for (const double sum_squares : {400.0, 0.25}) {
    SCOPED_TRACE(::testing::Message() << "sum of squares " << sum_squares);
    OwnedTensor params = random_tensor({n}, DType::f32, Device::cuda, 40);
    OwnedTensor grads = random_tensor({n}, DType::f32, Device::cuda, 41);
    OwnedTensor m = random_tensor({n}, DType::f32, Device::cuda, 42, 0.1f);
    OwnedTensor v = zeros({n}, DType::f32, Device::cuda);
    OwnedTensor sum({1}, DType::f32, Device::cuda), sum_c({1}, DType::f32, Device::cpu);
    from_vector(sum, {sum_squares});
    from_vector(sum_c, {sum_squares});
    OwnedTensor pc = convert(params, DType::f32, Device::cpu), gc = convert(grads, DType::f32, Device::cpu);
    OwnedTensor mc = convert(m, DType::f32, Device::cpu), vc = convert(v, DType::f32, Device::cpu);
    AdamWParams hp;
    hp.lr = 1e-2f;
    hp.step = 2;
    hp.max_grad_norm = 1.0f;
    hp.clip_sum_squares = sum_c;
    adamw_update(pc, gc, mc, vc, Tensor(), hp);
    hp.clip_sum_squares = sum;
    adamw_update(params, grads, m, v, Tensor(), hp);
    device_synchronize();
    EXPECT_LT(relative_error(params, pc), 1e-6);
    EXPECT_LT(relative_error(m, mc), 1e-6);
    EXPECT_LT(relative_error(v, vc), 1e-6);
  }
}

// adamw_update_ranges in one launch gives the bits of one adamw_update per range, and matches the
// CPU reference: ranges on whole 16-byte vectors (the vector path, with tails of 1 to 3 elements),
// ranges that start off a vector (the element path), and more ranges than one launch's table
// holds, so the update takes several launches.
TEST(AdamWGpu, RangesMatchOneLaunchPerRangeAndCpuReference) {
  SY_REQUIRE_GPU();
  const std::int64_t n = 300007;
  std::vector<AdamWRange> on_vectors = {{0, 8, 0.1f}, {8, 1001, 0.0f}, {1012, 0, 0.1f}, {1012, 3, 0.1f},
                                        {1020, 250002, 0.02f}, {251024, 48983, 0.0f}};
  std::vector<AdamWRange> off_vectors = {{1, 6, 0.1f}, {9, 4099, 0.0f}, {5000, 1, 0.1f}};
  std::vector<AdamWRange> many;  // 300 ranges of 997 elements, gaps of 3, alternating decay
  for (int i = 0; i < 300; ++i) many.push_back({std::int64_t(i) * 1000, 997, i % 2 == 0 ? 0.1f : 0.0f});
  AdamWParams hp;
  hp.lr = 3e-3f;
  hp.step = 7;
  hp.grad_scale = 0.9f;
  std::uint64_t seed = 70;
  for (const auto* ranges : {&on_vectors, &off_vectors, &many}) {
    SCOPED_TRACE(::testing::Message() << ranges->size() << " ranges, first at " << ranges->front().offset);
    seed += 10;
    std::vector<std::vector<double>> results;
    OwnedTensor pc, mc, vc;
    for (const bool one_call : {true, false}) {
      OwnedTensor params = random_tensor({n}, DType::f32, Device::cuda, seed);
      OwnedTensor grads = random_tensor({n}, DType::f32, Device::cuda, seed + 1);
      OwnedTensor m = random_tensor({n}, DType::f32, Device::cuda, seed + 2, 0.1f);
      OwnedTensor v = zeros({n}, DType::f32, Device::cuda);
      OwnedTensor copy = zeros({n}, DType::bf16, Device::cuda);
      if (one_call) {
        pc = convert(params, DType::f32, Device::cpu);
        mc = convert(m, DType::f32, Device::cpu);
        vc = convert(v, DType::f32, Device::cpu);
        OwnedTensor gc = convert(grads, DType::f32, Device::cpu);
        adamw_update_ranges(pc, gc, mc, vc, Tensor(), *ranges, hp);
        adamw_update_ranges(params, grads, m, v, copy, *ranges, hp);
      } else {
        for (const AdamWRange& r : *ranges) {
          AdamWParams range_hp = hp;
          range_hp.weight_decay = r.weight_decay;
          auto part = [&](const Tensor& t) { return t.slice_rows(r.offset, r.numel); };
          adamw_update(part(params), part(grads), part(m), part(v), part(copy), range_hp);
        }
      }
      device_synchronize();
      if (one_call) {
        EXPECT_LT(relative_error(params, pc), 1e-6);
        EXPECT_LT(relative_error(m, mc), 1e-6);
        EXPECT_LT(relative_error(v, vc), 1e-6);
      }
      for (const Tensor& t : {params.view(), m.view(), v.view(), copy.view()}) results.push_back(to_vector(t));
    }
    for (int i = 0; i < 4; ++i) EXPECT_EQ(results[std::size_t(i)], results[std::size_t(i + 4)]) << "tensor " << i;
  }
}

}  // namespace
}  // namespace sy::test
