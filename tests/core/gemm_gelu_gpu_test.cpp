// GEMM with a GELU epilogue on CUDA (cuBLASLt) against the CPU reference on fresh random bf16
// data: plain and batched, b as stored and transposed, odd sizes and the expert FFN's benchmark
// shapes; the fused matmul where it must run, the unfused route (named on stderr) where the
// epilogue cannot take the shape, shared weights, f32, and a cached plan reused on new buffers.
#include <cmath>
#include <exception>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

// bf16 operands and outputs: pre, act and dpre are rounded to 8 bits, and the fused epilogue
// applies GELU to the fp32 accumulator rather than to the rounded pre (1e-2).
constexpr double kBf16Tolerance = 1e-2;
// f32: fp32 accumulation without TF32, tanhf within a few ulp of the fp64 reference (1e-5).
constexpr double kF32Tolerance = 1e-5;

struct Case {
  std::int64_t batch;  // 0: a plain (2-D) call
  std::int64_t m, k, n;
  bool trans_b;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "batch " << c.batch << ", " << c.m << "x" << c.k << "x" << c.n << (c.trans_b ? ", b transposed" : "");
}

// "b8_2560x768x3072_NT": batch (0 for plain), M x K x N, b as stored (N) or transposed (T).
std::string case_name(const ::testing::TestParamInfo<Case>& param_info) {
  const Case& c = param_info.param;
  std::ostringstream name;
  name << "b" << c.batch << "_" << c.m << "x" << c.k << "x" << c.n << (c.trans_b ? "_NT" : "_NN");
  return name.str();
}

Shape shape_of(std::int64_t batch, std::int64_t rows, std::int64_t cols) {
  return batch ? Shape{batch, rows, cols} : Shape{rows, cols};
}

// Batch item i of t, or t itself for a plain call.
Tensor item(const Tensor& t, std::int64_t batch, std::int64_t i) { return batch ? t.select(i) : t; }

// The items the CPU reference recomputes: every item of a small batch; the first and the last
// of a large one, which catches a wrong batch stride and keeps the fp64 reference to seconds.
std::vector<std::int64_t> checked_items(const Case& c) {
  if (c.batch == 0) return {0};
  if (c.batch <= 3) {
    std::vector<std::int64_t> all;
    for (std::int64_t i = 0; i < c.batch; ++i) all.push_back(i);
    return all;
  }
  return {0, c.batch - 1};
}

std::uint64_t seed_of(const Case& c) {
  return std::uint64_t(2000 + 7 * c.batch + c.m + 3 * c.k + 5 * c.n + (c.trans_b ? 1 : 0));
}

// a with std 1 and b with std 1/sqrt(K), so a @ op(b) is O(1): GELU is exercised where it bends.
struct Operands {
  OwnedTensor a, b;
};
Operands random_operands(const Case& c, DType dtype, std::uint64_t seed) {
  const Shape b_shape = c.trans_b ? shape_of(c.batch, c.n, c.k) : shape_of(c.batch, c.k, c.n);
  return {random_tensor(shape_of(c.batch, c.m, c.k), dtype, Device::cuda, seed),
          random_tensor(b_shape, dtype, Device::cuda, seed + 1, float(1.0 / std::sqrt(double(c.k))))};
}

// sum(t^2) on the device is NaN while any element still holds the poison: every output written.
bool every_element_written(const Tensor& t) {
  OwnedTensor sum = zeros({1}, DType::f32, Device::cuda);
  sum_squares(t, sum);
  return std::isfinite(to_vector(sum)[0]);
}

// gemm_gelu on CUDA against the CPU reference (f64, the same rounded inputs), item by item.
void expect_forward_matches_cpu(const Case& c, const Tensor& a, const Tensor& b, double tolerance) {
  const Shape out_shape = shape_of(c.batch, c.m, c.n);
  OwnedTensor pre(out_shape, a.dtype(), Device::cuda), act(out_shape, a.dtype(), Device::cuda);
  poison(pre);
  poison(act);
  gemm_gelu(a, b, pre, act, c.trans_b);
  device_synchronize();
  EXPECT_TRUE(every_element_written(pre));
  EXPECT_TRUE(every_element_written(act));
  for (std::int64_t i : checked_items(c)) {
    SCOPED_TRACE(::testing::Message() << "batch item " << i);
    OwnedTensor a_ref = convert(item(a, c.batch, i), DType::f64, Device::cpu);
    OwnedTensor b_ref = convert(item(b, c.batch, i), DType::f64, Device::cpu);
    OwnedTensor pre_ref({c.m, c.n}, DType::f64, Device::cpu), act_ref({c.m, c.n}, DType::f64, Device::cpu);
    gemm_gelu(a_ref, b_ref, pre_ref, act_ref, c.trans_b);
    EXPECT_LT(relative_error(item(pre, c.batch, i), pre_ref), tolerance);
    EXPECT_LT(relative_error(item(act, c.batch, i), act_ref), tolerance);
  }
}

// gemm_dgelu on CUDA against the CPU reference, item by item.
void expect_backward_matches_cpu(const Case& c, const Tensor& a, const Tensor& b, const Tensor& pre,
                                 double tolerance) {
  OwnedTensor dpre(shape_of(c.batch, c.m, c.n), a.dtype(), Device::cuda);
  poison(dpre);
  gemm_dgelu(a, b, pre, dpre, c.trans_b);
  device_synchronize();
  EXPECT_TRUE(every_element_written(dpre));
  for (std::int64_t i : checked_items(c)) {
    SCOPED_TRACE(::testing::Message() << "batch item " << i);
    OwnedTensor a_ref = convert(item(a, c.batch, i), DType::f64, Device::cpu);
    OwnedTensor b_ref = convert(item(b, c.batch, i), DType::f64, Device::cpu);
    OwnedTensor pre_ref = convert(item(pre, c.batch, i), DType::f64, Device::cpu);
    OwnedTensor dpre_ref({c.m, c.n}, DType::f64, Device::cpu);
    gemm_dgelu(a_ref, b_ref, pre_ref, dpre_ref, c.trans_b);
    EXPECT_LT(relative_error(item(dpre, c.batch, i), dpre_ref), tolerance);
  }
}

class GemmGeluGpu : public ::testing::TestWithParam<Case> {};

TEST_P(GemmGeluGpu, ForwardMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const Case c = GetParam();
  const Operands operands = random_operands(c, DType::bf16, seed_of(c));
  expect_forward_matches_cpu(c, operands.a, operands.b, kBf16Tolerance);
}

TEST_P(GemmGeluGpu, BackwardMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const Case c = GetParam();
  const Operands operands = random_operands(c, DType::bf16, seed_of(c) + 10);
  OwnedTensor pre = random_tensor(shape_of(c.batch, c.m, c.n), DType::bf16, Device::cuda, seed_of(c) + 12);
  expect_backward_matches_cpu(c, operands.a, operands.b, pre, kBf16Tolerance);
}

// Odd sizes, and the expert FFN at the benchmark shape (8 experts x 2560 rows, d = 768,
// F = 3072): forward x @ w_in is M x d x F with b as stored, backward dy @ w_out^T the same
// sizes with b transposed; the 2-D cases are one expert's problem.
std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const Case& shape : {Case{0, 300, 96, 200, false}, Case{0, 2560, 768, 3072, false},
                            Case{3, 130, 64, 520, false}, Case{8, 2560, 768, 3072, false}}) {
    for (bool trans_b : {false, true}) {
      Case c = shape;
      c.trans_b = trans_b;
      cases.push_back(c);
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmGeluGpu, ::testing::ValuesIn(all_cases()), case_name);

TEST(GemmGeluGpuPath, ExpertForwardRunsAsOneFusedMatmul) {
  SY_REQUIRE_GPU();
  // The capacity layout at the benchmark shape. Forward: x [E, C, d] @ w_in [E, d, F]. Backward:
  // dy [E, C, d] @ w_out [E, F, d]^T, reading pre [E, C, F]. Nothing runs: only planned.
  const std::int64_t experts = 8, capacity = 2560, d = 768, f = 3072;
  OwnedTensor x({experts, capacity, d}, DType::bf16, Device::cuda);
  OwnedTensor w_in({experts, d, f}, DType::bf16, Device::cuda), w_out({experts, f, d}, DType::bf16, Device::cuda);
  OwnedTensor pre({experts, capacity, f}, DType::bf16, Device::cuda);
  OwnedTensor out({experts, capacity, f}, DType::bf16, Device::cuda);
  EXPECT_TRUE(gemm_gelu_fused(GeluEpilogue::forward, x, w_in, pre, out, false));
  // Batched DGELU runs unfused by choice: cuBLASLt adds a slow separate epilogue kernel there.
  EXPECT_FALSE(gemm_gelu_fused(GeluEpilogue::backward, x, w_out, pre, out, true));
  // One expert's problem, plain.
  const Tensor x0 = x.view().select(0), pre0 = pre.view().select(0), out0 = out.view().select(0);
  EXPECT_TRUE(gemm_gelu_fused(GeluEpilogue::forward, x0, w_in.view().select(0), pre0, out0, false));
  EXPECT_TRUE(gemm_gelu_fused(GeluEpilogue::backward, x0, w_out.view().select(0), pre0, out0, true));
}

TEST(GemmGeluGpuPath, ShapeTheEpilogueCannotTakeRunsUnfusedSaysSoOnceAndMatchesCpu) {
  SY_REQUIRE_GPU();
  // N = 203 is not a multiple of 8, which the aux matrix's leading dimension must be.
  const Case c{2, 33, 40, 203, false};
  const Operands operands = random_operands(c, DType::bf16, 1500);
  OwnedTensor pre(shape_of(c.batch, c.m, c.n), DType::bf16, Device::cuda);
  OwnedTensor act(shape_of(c.batch, c.m, c.n), DType::bf16, Device::cuda);
  // Plans are cached per thread: a fresh thread plans this shape for the first time here.
  bool first = true, second = true;
  std::string said, error;
  std::thread([&] {
    ::testing::internal::CaptureStderr();
    try {
      first = gemm_gelu_fused(GeluEpilogue::forward, operands.a, operands.b, pre, act, c.trans_b);
      second = gemm_gelu_fused(GeluEpilogue::forward, operands.a, operands.b, pre, act, c.trans_b);
    } catch (const std::exception& e) {
      error = e.what();
    }
    said = ::testing::internal::GetCapturedStderr();
  }).join();
  EXPECT_EQ(error, "");
  EXPECT_FALSE(first);
  EXPECT_FALSE(second);
  const std::string line = "gemm_gelu: no cuBLASLt GELU epilogue for bf16 batch 2 of [33, 40] @ [40, 203]";
  const std::size_t at = said.find(line);
  EXPECT_NE(at, std::string::npos) << said;
  if (at != std::string::npos) {
    EXPECT_EQ(said.find(line, at + 1), std::string::npos) << "named twice: " << said;
  }

  expect_forward_matches_cpu(c, operands.a, operands.b, kBf16Tolerance);
  OwnedTensor pre_in = random_tensor(shape_of(c.batch, c.m, c.n), DType::bf16, Device::cuda, 1502);
  expect_backward_matches_cpu(c, operands.a, operands.b, pre_in, kBf16Tolerance);
}

TEST(GemmGeluGpuPath, WeightSharedByEveryBatchItemMatchesCpu) {
  SY_REQUIRE_GPU();
  // b is one [K, N] weight seen by every item through batch stride 0.
  const std::int64_t batch = 4, m = 64, k = 32, n = 48;
  OwnedTensor a = random_tensor({batch, m, k}, DType::bf16, Device::cuda, 1600);
  OwnedTensor weight = random_tensor({k, n}, DType::bf16, Device::cuda, 1601, float(1.0 / std::sqrt(double(k))));
  OwnedTensor pre_in = random_tensor({batch, m, n}, DType::bf16, Device::cuda, 1602);
  OwnedTensor pre({batch, m, n}, DType::bf16, Device::cuda), act({batch, m, n}, DType::bf16, Device::cuda);
  OwnedTensor dpre({batch, m, n}, DType::bf16, Device::cuda);
  for (const Tensor* t : {&pre.view(), &act.view(), &dpre.view()}) poison(*t);
  const Shape shared_shape{batch, k, n}, shared_strides{0, n, 1};
  gemm_gelu(a, weight.view().as_strided(shared_shape, shared_strides), pre, act, false);
  gemm_dgelu(a, weight.view().as_strided(shared_shape, shared_strides), pre_in, dpre, false);
  device_synchronize();

  OwnedTensor a_ref = convert(a, DType::f64, Device::cpu), weight_ref = convert(weight, DType::f64, Device::cpu);
  OwnedTensor pre_in_ref = convert(pre_in, DType::f64, Device::cpu);
  OwnedTensor pre_ref({batch, m, n}, DType::f64, Device::cpu), act_ref({batch, m, n}, DType::f64, Device::cpu);
  OwnedTensor dpre_ref({batch, m, n}, DType::f64, Device::cpu);
  gemm_gelu(a_ref, weight_ref.view().as_strided(shared_shape, shared_strides), pre_ref, act_ref, false);
  gemm_dgelu(a_ref, weight_ref.view().as_strided(shared_shape, shared_strides), pre_in_ref, dpre_ref, false);
  EXPECT_LT(relative_error(pre, pre_ref), kBf16Tolerance);
  EXPECT_LT(relative_error(act, act_ref), kBf16Tolerance);
  EXPECT_LT(relative_error(dpre, dpre_ref), kBf16Tolerance);
}

TEST(GemmGeluGpuPath, F32RunsUnfusedAndMatchesCpu) {
  SY_REQUIRE_GPU();
  const Case c{2, 70, 48, 96, true};
  const Operands operands = random_operands(c, DType::f32, 1700);
  OwnedTensor pre(shape_of(c.batch, c.m, c.n), DType::f32, Device::cuda);
  OwnedTensor act(shape_of(c.batch, c.m, c.n), DType::f32, Device::cuda);
  EXPECT_FALSE(gemm_gelu_fused(GeluEpilogue::forward, operands.a, operands.b, pre, act, c.trans_b));
  expect_forward_matches_cpu(c, operands.a, operands.b, kF32Tolerance);
  OwnedTensor pre_in = random_tensor(shape_of(c.batch, c.m, c.n), DType::f32, Device::cuda, 1702);
  expect_backward_matches_cpu(c, operands.a, operands.b, pre_in, kF32Tolerance);
}

TEST(GemmGeluGpuPath, CachedPlanWritesAndReadsTheNewCallsBuffers) {
  SY_REQUIRE_GPU();
  // The second call of a shape reuses the first call's plan with other pre, act and dpre
  // buffers: its aux pointer must follow them, and the first call's outputs stay untouched.
  const Case c{3, 130, 64, 520, false};
  const Shape out_shape = shape_of(c.batch, c.m, c.n);
  const Operands first = random_operands(c, DType::bf16, 1800), second = random_operands(c, DType::bf16, 1810);
  OwnedTensor pre1(out_shape, DType::bf16, Device::cuda), act1(out_shape, DType::bf16, Device::cuda);
  OwnedTensor pre2(out_shape, DType::bf16, Device::cuda), act2(out_shape, DType::bf16, Device::cuda);
  gemm_gelu(first.a, first.b, pre1, act1, c.trans_b);
  device_synchronize();
  const std::vector<double> pre1_before = to_vector(pre1), act1_before = to_vector(act1);
  poison(pre2);
  poison(act2);
  gemm_gelu(second.a, second.b, pre2, act2, c.trans_b);
  device_synchronize();
  EXPECT_EQ(to_vector(pre1), pre1_before);
  EXPECT_EQ(to_vector(act1), act1_before);
  OwnedTensor a_ref = convert(second.a, DType::f64, Device::cpu), b_ref = convert(second.b, DType::f64, Device::cpu);
  OwnedTensor pre_ref(out_shape, DType::f64, Device::cpu), act_ref(out_shape, DType::f64, Device::cpu);
  gemm_gelu(a_ref, b_ref, pre_ref, act_ref, c.trans_b);
  EXPECT_LT(relative_error(pre2, pre_ref), kBf16Tolerance);
  EXPECT_LT(relative_error(act2, act_ref), kBf16Tolerance);

  // The backward reads pre through the aux pointer: a second pre must be the one read.
  OwnedTensor pre_a = random_tensor(out_shape, DType::bf16, Device::cuda, 1820);
  OwnedTensor pre_b = random_tensor(out_shape, DType::bf16, Device::cuda, 1821);
  OwnedTensor dpre_a(out_shape, DType::bf16, Device::cuda), dpre_b(out_shape, DType::bf16, Device::cuda);
  gemm_dgelu(first.a, first.b, pre_a, dpre_a, c.trans_b);
  gemm_dgelu(first.a, first.b, pre_b, dpre_b, c.trans_b);
  device_synchronize();
  OwnedTensor first_a_ref = convert(first.a, DType::f64, Device::cpu);
  OwnedTensor first_b_ref = convert(first.b, DType::f64, Device::cpu);
  OwnedTensor pre_b_ref = convert(pre_b, DType::f64, Device::cpu), dpre_ref(out_shape, DType::f64, Device::cpu);
  gemm_dgelu(first_a_ref, first_b_ref, pre_b_ref, dpre_ref, c.trans_b);
  EXPECT_LT(relative_error(dpre_b, dpre_ref), kBf16Tolerance);
}

}  // namespace
}  // namespace sy::test
