// Head layout CPU reference: exact element positions on a hand-sized GQA case, round trips, and
// the messages for mismatched shapes.
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

constexpr std::int64_t kB = 2, kT = 3, kHq = 4, kHkv = 2, kD = 2;
constexpr std::int64_t kQkvColumns = (kHq + 2 * kHkv) * kD;  // 16

// Element (row, column) of a token-major matrix holds 100 * row + column, so every value names
// its own position.
OwnedTensor positional_rows(std::int64_t rows, std::int64_t columns, DType dtype) {
  OwnedTensor t({rows, columns}, dtype, Device::cpu);
  std::vector<double> values(std::size_t(rows * columns));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < columns; ++c) values[std::size_t(r * columns + c)] = double(100 * r + c);
  from_vector(t, values);
  return t;
}

double at(const std::vector<double>& v, const Shape& shape, const Shape& index) {
  std::int64_t flat = 0;
  for (std::size_t a = 0; a < shape.size(); ++a) flat = flat * shape[a] + index[a];
  return v[std::size_t(flat)];
}

TEST(Heads, SplitQkvPlacesEachHeadRow) {
  OwnedTensor qkv = positional_rows(kB * kT, kQkvColumns, DType::f32);
  OwnedTensor q({kB, kHq, kT, kD}, DType::f32, Device::cpu);
  OwnedTensor k({kB, kHkv, kT, kD}, DType::f32, Device::cpu), v({kB, kHkv, kT, kD}, DType::f32, Device::cpu);
  poison(q); poison(k); poison(v);
  split_qkv_heads(qkv, q, k, v);
  const std::vector<double> qv = to_vector(q), kv = to_vector(k), vv = to_vector(v);

  // Spot checks written out by hand: q[1, 2, 0, 1] is token 3 (b=1, t=0), column 2*2 + 1.
  EXPECT_EQ(at(qv, q.view().shape(), {1, 2, 0, 1}), 305);
  // k head 1 starts after the 4 q heads: column (4 + 1) * 2 = 10 of token 2.
  EXPECT_EQ(at(kv, k.view().shape(), {0, 1, 2, 0}), 210);
  // v head 1 after q and k heads: column (4 + 2 + 1) * 2 + 1 = 15 of token 5.
  EXPECT_EQ(at(vv, v.view().shape(), {1, 1, 2, 1}), 515);

  for (std::int64_t b = 0; b < kB; ++b) {
    for (std::int64_t t = 0; t < kT; ++t) {
      const double token = 100.0 * double(b * kT + t);
      for (std::int64_t d = 0; d < kD; ++d) {
        for (std::int64_t h = 0; h < kHq; ++h)
          EXPECT_EQ(at(qv, q.view().shape(), {b, h, t, d}), token + double(h * kD + d));
        for (std::int64_t h = 0; h < kHkv; ++h) {
          EXPECT_EQ(at(kv, k.view().shape(), {b, h, t, d}), token + double((kHq + h) * kD + d));
          EXPECT_EQ(at(vv, v.view().shape(), {b, h, t, d}), token + double((kHq + kHkv + h) * kD + d));
        }
      }
    }
  }
}

TEST(Heads, MergeHeadsPlacesEachHeadRow) {
  const std::int64_t heads = kHq;
  OwnedTensor x({kB, heads, kT, kD}, DType::f64, Device::cpu);
  std::vector<double> xv(std::size_t(x.view().numel()));
  for (std::size_t i = 0; i < xv.size(); ++i) xv[i] = double(i);
  from_vector(x, xv);
  OwnedTensor y({kB * kT, heads * kD}, DType::f64, Device::cpu);
  poison(y);
  merge_heads(x, y);
  const std::vector<double> yv = to_vector(y);
  // y[4, 5] is token 4 (b=1, t=1), head 2, d 1: x flat index ((1*4 + 2)*3 + 1)*2 + 1 = 39.
  EXPECT_EQ(at(yv, y.view().shape(), {4, 5}), 39);
  for (std::int64_t b = 0; b < kB; ++b)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t t = 0; t < kT; ++t)
        for (std::int64_t d = 0; d < kD; ++d)
          EXPECT_EQ(at(yv, y.view().shape(), {b * kT + t, h * kD + d}), at(xv, x.view().shape(), {b, h, t, d}));
}

TEST(Heads, SplitThenMergeQkvIsTheIdentity) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    OwnedTensor qkv = random_tensor({kB * kT, kQkvColumns}, dt, Device::cpu, 10);
    OwnedTensor q({kB, kHq, kT, kD}, dt, Device::cpu), k({kB, kHkv, kT, kD}, dt, Device::cpu);
    OwnedTensor v({kB, kHkv, kT, kD}, dt, Device::cpu), back({kB * kT, kQkvColumns}, dt, Device::cpu);
    poison(back);
    split_qkv_heads(qkv, q, k, v);
    merge_qkv_heads(q, k, v, back);
    EXPECT_EQ(to_vector(back), to_vector(qkv));
  }
}

TEST(Heads, MergeThenSplitQkvIsTheIdentity) {
  OwnedTensor dq = random_tensor({kB, kHq, kT, kD}, DType::f32, Device::cpu, 11);
  OwnedTensor dk = random_tensor({kB, kHkv, kT, kD}, DType::f32, Device::cpu, 12);
  OwnedTensor dv = random_tensor({kB, kHkv, kT, kD}, DType::f32, Device::cpu, 13);
  OwnedTensor dqkv({kB * kT, kQkvColumns}, DType::f32, Device::cpu);
  OwnedTensor q({kB, kHq, kT, kD}, DType::f32, Device::cpu), k({kB, kHkv, kT, kD}, DType::f32, Device::cpu);
  OwnedTensor v({kB, kHkv, kT, kD}, DType::f32, Device::cpu);
  poison(dqkv);
  merge_qkv_heads(dq, dk, dv, dqkv);
  split_qkv_heads(dqkv, q, k, v);
  EXPECT_EQ(to_vector(q), to_vector(dq));
  EXPECT_EQ(to_vector(k), to_vector(dk));
  EXPECT_EQ(to_vector(v), to_vector(dv));
}

TEST(Heads, MergeThenSplitHeadsIsTheIdentity) {
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    OwnedTensor x = random_tensor({kB, kHq, kT, kD}, dt, Device::cpu, 14);
    OwnedTensor y({kB * kT, kHq * kD}, dt, Device::cpu), back({kB, kHq, kT, kD}, dt, Device::cpu);
    poison(back);
    merge_heads(x, y);
    split_heads(y, back);
    EXPECT_EQ(to_vector(back), to_vector(x));
  }
}

TEST(Heads, RejectsMismatchedQkvShapes) {
  OwnedTensor q({kB, kHq, kT, kD}, DType::f32, Device::cpu), k({kB, kHkv, kT, kD}, DType::f32, Device::cpu);
  OwnedTensor v({kB, kHkv, kT, kD}, DType::f32, Device::cpu);
  OwnedTensor wide({kB * kT, 20}, DType::f32, Device::cpu), short_rows({5, kQkvColumns}, DType::f32, Device::cpu);
  OwnedTensor qkv({kB * kT, kQkvColumns}, DType::f32, Device::cpu);
  expect_error([&] { split_qkv_heads(wide, q, k, v); },
               "split_qkv_heads: qkv has 20 columns, expected (Hq + 2 Hkv) x D = 16");
  expect_error([&] { split_qkv_heads(short_rows, q, k, v); }, "split_qkv_heads: qkv has 5 rows, expected B x T = 6");
  expect_error([&] { merge_qkv_heads(q, k, v, wide); },
               "merge_qkv_heads: dqkv has 20 columns, expected (Hq + 2 Hkv) x D = 16");

  OwnedTensor k_wide({kB, kHkv, kT, 4}, DType::f32, Device::cpu), v_one({kB, 1, kT, kD}, DType::f32, Device::cpu);
  expect_error([&] { split_qkv_heads(qkv, q, k_wide, v); },
               "split_qkv_heads: k must have shape [2, 2, 3, 2], got f32[2, 2, 3, 4] cpu");
  expect_error([&] { split_qkv_heads(qkv, q, k, v_one); },
               "split_qkv_heads: v must have shape [2, 2, 3, 2], got f32[2, 1, 3, 2] cpu");

  OwnedTensor v_bf16({kB, kHkv, kT, kD}, DType::bf16, Device::cpu);
  expect_error([&] { split_qkv_heads(qkv, q, k, v_bf16); }, "split_qkv_heads: v must be f32, got bf16[2, 2, 3, 2] cpu");
  OwnedTensor flat_q({kB * kHq * kT * kD}, DType::f32, Device::cpu);
  expect_error([&] { split_qkv_heads(qkv, flat_q, k, v); }, "split_qkv_heads: q must be [B, H, T, D], got f32[48] cpu");
}

TEST(Heads, RejectsMismatchedMergedShapes) {
  OwnedTensor x({kB, kHq, kT, kD}, DType::f32, Device::cpu), y({kB * kT, 7}, DType::f32, Device::cpu);
  expect_error([&] { merge_heads(x, y); }, "merge_heads: y must have shape [6, 8], got f32[6, 7] cpu");
  expect_error([&] { split_heads(y, x); }, "split_heads: dy must have shape [6, 8], got f32[6, 7] cpu");
  OwnedTensor y_f64({kB * kT, kHq * kD}, DType::f64, Device::cpu);
  expect_error([&] { merge_heads(x, y_f64); }, "merge_heads: y must be f32, got f64[6, 8] cpu");
}

}  // namespace
}  // namespace sy::test
