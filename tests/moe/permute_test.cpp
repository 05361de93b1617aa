// MoE row movements on the CPU: hand-built routings with uneven experts and dropped choices.
#include "moe/permute.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

OwnedTensor ints(const std::vector<double>& values, const Shape& shape) {
  OwnedTensor t(shape, DType::i32, Device::cpu);
  from_vector(t, values);
  return t;
}

OwnedTensor reals(const std::vector<double>& values, const Shape& shape, DType dtype = DType::f64) {
  OwnedTensor t(shape, dtype, Device::cpu);
  from_vector(t, values);
  return t;
}

// 3 tokens, k = 2, 3 experts, capacity 2. Token 2's second choice (expert 0) is dropped.
struct Example {
  OwnedTensor expert = ints({0, 2, 2, 0, 1, 0}, {3, 2});
  OwnedTensor slot = ints({0, 0, 1, 1, 0, -1}, {3, 2});
  OwnedTensor gate = reals({0.6, 0.4, 0.7, 0.3, 0.9, 0.1}, {3, 2});  // f64, as the rows
  OwnedTensor counts = ints({2, 1, 2}, {3});
  OwnedTensor x = reals({1, 10, 2, 20, 3, 30}, {3, 2});
};

TEST(MoePermute, OffsetsAreCapacityMultiplesOrCountPrefixes) {
  Example ex;
  OwnedTensor offsets({4}, DType::i32, Device::cpu);
  moe_expert_offsets(ex.counts, 2, offsets);
  EXPECT_EQ(to_vector(offsets), (std::vector<double>{0, 2, 4, 6}));
  moe_expert_offsets(ex.counts, 0, offsets);  // dropless
  EXPECT_EQ(to_vector(offsets), (std::vector<double>{0, 2, 3, 5}));
}

TEST(MoePermute, ScatterPlacesEachKeptChoiceAtItsExpertSlot) {
  Example ex;
  OwnedTensor offsets({4}, DType::i32, Device::cpu);
  moe_expert_offsets(ex.counts, 2, offsets);
  OwnedTensor send = zeros({6, 2}, DType::f64, Device::cpu);
  moe_scatter_rows(ex.x, ex.expert, ex.slot, offsets, send);
  // expert 0: token 0 (slot 0), token 1 (slot 1); expert 1: token 2; expert 2: token 0, token 1.
  EXPECT_EQ(to_vector(send), (std::vector<double>{1, 10, 2, 20, 3, 30, 0, 0, 1, 10, 2, 20}));
}

TEST(MoePermute, CombineWeightsKeptChoicesAndSkipsDropped) {
  Example ex;
  OwnedTensor offsets({4}, DType::i32, Device::cpu);
  moe_expert_offsets(ex.counts, 0, offsets);
  // Dropless rows: e0 {t0, t1}, e1 {t2}, e2 {t0, t1}.
  OwnedTensor y = reals({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {5, 2});
  OwnedTensor out({3, 2}, DType::f64, Device::cpu);
  moe_combine(y, ex.expert, ex.slot, offsets, ex.gate, out);
  std::vector<double> got = to_vector(out);
  const double g[6] = {0.6, 0.4, 0.7, 0.3, 0.9, 0.1};
  std::vector<double> want = {g[0] * 1 + g[1] * 7, g[0] * 2 + g[1] * 8, g[2] * 9 + g[3] * 3,
                              g[2] * 10 + g[3] * 4, g[4] * 5, g[4] * 6};
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12);
}

TEST(MoePermute, CombineBackwardMatchesFiniteDifferencesAndGateDots) {
  Example ex;
  OwnedTensor offsets({4}, DType::i32, Device::cpu);
  moe_expert_offsets(ex.counts, 2, offsets);
  OwnedTensor y = random_tensor({6, 2}, DType::f64, Device::cpu, 11);
  OwnedTensor dout = random_tensor({3, 2}, DType::f64, Device::cpu, 12);
  OwnedTensor out({3, 2}, DType::f64, Device::cpu);
  auto loss = [&] {
    moe_combine(y, ex.expert, ex.slot, offsets, ex.gate, out);
    return weighted_sum(out, dout);
  };
  OwnedTensor dy = random_tensor({6, 2}, DType::f64, Device::cpu, 13);  // padding rows must be zeroed
  OwnedTensor dgate({3, 2}, DType::f64, Device::cpu);
  moe_combine_backward(dout, y, ex.expert, ex.slot, offsets, ex.gate, dy, dgate);
  EXPECT_LT(relative_error(to_vector(dy), numeric_gradient(y, loss)), 1e-8);
  std::vector<double> yv = to_vector(y), dov = to_vector(dout), dg = to_vector(dgate);
  // dgate[n, j] = dout[n] . y[row]; rows: t0 -> 0, 4; t1 -> 4+1=5, 1; t2 -> 2, dropped.
  const int rows[6] = {0, 4, 5, 1, 2, -1};
  for (int c = 0; c < 6; ++c) {
    const int n = c / 2, r = rows[c];
    const double want = r < 0 ? 0.0 : dov[n * 2] * yv[r * 2] + dov[n * 2 + 1] * yv[r * 2 + 1];
    EXPECT_NEAR(dg[c], want, 1e-12 * (1 + std::abs(want))) << "choice " << c;
  }
}

TEST(MoePermute, GatherSumIsTheTransposeOfScatter) {
  Example ex;
  OwnedTensor offsets({4}, DType::i32, Device::cpu);
  moe_expert_offsets(ex.counts, 0, offsets);
  OwnedTensor rows = random_tensor({5, 2}, DType::f64, Device::cpu, 14);
  OwnedTensor dx({3, 2}, DType::f64, Device::cpu);
  moe_gather_rows_sum(rows, ex.expert, ex.slot, offsets, dx);
  // <scatter(x), rows> == <x, gather_sum(rows)> for any x.
  OwnedTensor x = random_tensor({3, 2}, DType::f64, Device::cpu, 15);
  OwnedTensor send = zeros({5, 2}, DType::f64, Device::cpu);
  moe_scatter_rows(x, ex.expert, ex.slot, offsets, send);
  EXPECT_NEAR(weighted_sum(send, rows), weighted_sum(x, dx), 1e-12);
}

TEST(MoePermute, RegroupSwapsSourceAndExpertMajorOrder) {
  // P = 2 sources, L = 3 local experts; source 1 sends nothing to expert 1.
  OwnedTensor counts = ints({1, 2, 1, 2, 0, 1}, {2, 3});
  // Source-major rows, labelled by (source, expert, row): 100*s + 10*l + r.
  OwnedTensor in = reals({0, 10, 11, 20, 100, 101, 120}, {7, 1});
  OwnedTensor out = reals(std::vector<double>(8, -1.0), {8, 1});
  moe_regroup(in, RegroupBlocks::of(counts), out, true);
  EXPECT_EQ(to_vector(out), (std::vector<double>{0, 100, 101, 10, 11, 20, 120, -1}));
  OwnedTensor back = reals(std::vector<double>(7, -1.0), {7, 1});
  moe_regroup(out, RegroupBlocks::of(counts), back, false);
  EXPECT_EQ(to_vector(back), to_vector(in));
}

TEST(MoePermute, RegroupOfUniformBlocksNeedsNoCounts) {
  // P = 3 sources, L = 2 local experts, 2 rows each (capacity mode): the same as the counts.
  OwnedTensor in = reals({0, 1, 10, 11, 100, 101, 110, 111, 200, 201, 210, 211}, {12, 1});
  OwnedTensor by_counts = reals(std::vector<double>(12, -1.0), {12, 1});
  OwnedTensor uniform = reals(std::vector<double>(12, -1.0), {12, 1});
  moe_regroup(in, RegroupBlocks::of(ints({2, 2, 2, 2, 2, 2}, {3, 2})), by_counts, true);
  moe_regroup(in, RegroupBlocks::uniform(3, 2, 2), uniform, true);
  EXPECT_EQ(to_vector(uniform), (std::vector<double>{0, 1, 100, 101, 200, 201, 10, 11, 110, 111, 210, 211}));
  EXPECT_EQ(to_vector(uniform), to_vector(by_counts));
  OwnedTensor back = reals(std::vector<double>(12, -1.0), {12, 1});
  moe_regroup(uniform, RegroupBlocks::uniform(3, 2, 2), back, false);
  EXPECT_EQ(to_vector(back), to_vector(in));
}

TEST(MoePermute, RegroupRejectsCountsPastTheBuffer) {
  OwnedTensor counts = ints({3, 3}, {1, 2});
  OwnedTensor in({4, 2}, DType::f32, Device::cpu), out({6, 2}, DType::f32, Device::cpu);
  expect_error([&] { moe_regroup(in, RegroupBlocks::of(counts), out, true); },
               "moe_regroup: the blocks need 6 rows of in and 6 of out, have 4 and 6");
  expect_error([&] { moe_regroup(in, RegroupBlocks{2, 2, counts, 0}, out, true); },
               "moe_regroup: counts must have shape [2, 2], got i32[1, 2] cpu");
}

}  // namespace
}  // namespace sy::test
