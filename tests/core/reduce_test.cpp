// sum_squares CPU reference: an exact small case, accumulation across calls, a list of parts,
// empty input, and argument checks.
#include <string>

#include "tests/testing.h"

namespace sy::test {
namespace {

TEST(SumSquares, AddsSumOfSquaresToOut) {
  OwnedTensor x({3}, DType::f32, Device::cpu), out({1}, DType::f32, Device::cpu);
  from_vector(x, {1.0, 2.0, -3.0});
  from_vector(out, {0.5});
  sum_squares(x, out);
  EXPECT_EQ(to_vector(out)[0], 14.5);  // 0.5 + 1 + 4 + 9, exact in f32
}

TEST(SumSquares, AccumulatesAcrossCallsAndDtypes) {
  OwnedTensor a = random_tensor({2, 3}, DType::bf16, Device::cpu, 1);
  OwnedTensor b = random_tensor({5}, DType::f64, Device::cpu, 2);
  OwnedTensor out = zeros({1}, DType::f32, Device::cpu);
  sum_squares(a, out);
  sum_squares(b, out);
  double expected = 0;
  for (double x : to_vector(a)) expected += x * x;
  for (double x : to_vector(b)) expected += x * x;
  EXPECT_NEAR(to_vector(out)[0], expected, 1e-6 * expected);  // out is f32
}

// A list of parts is the chain of one call per part, bit for bit (empty parts included).
TEST(SumSquares, PartsEqualOneCallPerPart) {
  OwnedTensor a = random_tensor({1000}, DType::f32, Device::cpu, 3), b = random_tensor({7}, DType::f32, Device::cpu, 4);
  OwnedTensor empty({0}, DType::f32, Device::cpu);
  const std::vector<Tensor> parts = {a.view().slice_rows(3, 500), empty, b, a.view().slice_rows(900, 100)};
  OwnedTensor together = zeros({1}, DType::f32, Device::cpu), chained = zeros({1}, DType::f32, Device::cpu);
  from_vector(together, {1.25});
  from_vector(chained, {1.25});
  sum_squares(parts, together);
  for (const Tensor& part : parts) sum_squares(part, chained);
  EXPECT_EQ(to_vector(together), to_vector(chained));
  EXPECT_GT(to_vector(together)[0], 1.25);
}

TEST(SumSquares, RejectsPartsOfDifferentDtypes) {
  OwnedTensor a({4}, DType::f32, Device::cpu), b({4}, DType::bf16, Device::cpu), out = zeros({1}, DType::f32, Device::cpu);
  const std::vector<Tensor> parts = {a, b};
  expect_error([&] { sum_squares(parts, out); },
               "sum_squares: part 1 is bf16[4] cpu, but part 0 is f32[4] cpu (all parts must have one dtype)");
}

TEST(SumSquares, EmptyInputLeavesOutUnchanged) {
  OwnedTensor empty({0}, DType::f32, Device::cpu), empty_rows({3, 0}, DType::bf16, Device::cpu);
  OwnedTensor out({1}, DType::f32, Device::cpu);
  from_vector(out, {2.5});
  sum_squares(empty, out);
  sum_squares(empty_rows, out);
  EXPECT_EQ(to_vector(out)[0], 2.5);
}

TEST(SumSquares, RejectsOutOfWrongShape) {
  OwnedTensor x({4}, DType::f32, Device::cpu), out({2}, DType::f32, Device::cpu);
  try {
    sum_squares(x, out);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sum_squares: out must have shape [1], got f32[2] cpu"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace sy::test
