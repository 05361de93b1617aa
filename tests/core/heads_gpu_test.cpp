// Head layout kernels against the CPU reference, f32 and bf16. Pure copies, so the results must
// be equal element for element; outputs start poisoned so a missed element shows as NaN.
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

// Index of the first element where a and b differ (NaN never equals), or -1.
std::int64_t first_mismatch(const Tensor& a, const Tensor& b) {
  const std::vector<double> av = to_vector(a), bv = to_vector(b);
  if (av.size() != bv.size()) return 0;
  for (std::size_t i = 0; i < av.size(); ++i)
    if (!(av[i] == bv[i])) return std::int64_t(i);
  return -1;
}

struct HeadsCase {
  std::int64_t batch, seq, q_heads, kv_heads, head_dim;
};

// D=64 takes the 16-byte vector path in both dtypes; D=6 the scalar path in both; D=4 is
// vectorised only in f32, D=8 in both. T=37 keeps rows from lining up with blocks.
const HeadsCase kCases[] = {{2, 37, 4, 2, 64}, {2, 37, 4, 2, 6}, {3, 37, 6, 1, 4}, {1, 37, 8, 8, 8}};

class HeadsGpu : public ::testing::TestWithParam<DType> {};

TEST_P(HeadsGpu, SplitAndMergeQkvMatchCpu) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (const HeadsCase& c : kCases) {
    SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " T=" << c.seq << " Hq=" << c.q_heads
                                      << " Hkv=" << c.kv_heads << " D=" << c.head_dim);
    const Shape qkv_shape{c.batch * c.seq, (c.q_heads + 2 * c.kv_heads) * c.head_dim};
    const Shape q_shape{c.batch, c.q_heads, c.seq, c.head_dim}, kv_shape{c.batch, c.kv_heads, c.seq, c.head_dim};
    const std::uint64_t seed = 400 + std::uint64_t(c.head_dim);

    OwnedTensor qkv = random_tensor(qkv_shape, dt, Device::cuda, seed);
    OwnedTensor q(q_shape, dt, Device::cuda), k(kv_shape, dt, Device::cuda), v(kv_shape, dt, Device::cuda);
    poison(q); poison(k); poison(v);
    split_qkv_heads(qkv, q, k, v);
    OwnedTensor dq = random_tensor(q_shape, dt, Device::cuda, seed + 1);
    OwnedTensor dk = random_tensor(kv_shape, dt, Device::cuda, seed + 2);
    OwnedTensor dv = random_tensor(kv_shape, dt, Device::cuda, seed + 3);
    OwnedTensor dqkv(qkv_shape, dt, Device::cuda);
    poison(dqkv);
    merge_qkv_heads(dq, dk, dv, dqkv);
    device_synchronize();

    OwnedTensor qc(q_shape, dt, Device::cpu), kc(kv_shape, dt, Device::cpu), vc(kv_shape, dt, Device::cpu);
    split_qkv_heads(convert(qkv, dt, Device::cpu), qc, kc, vc);
    OwnedTensor dqkvc(qkv_shape, dt, Device::cpu);
    merge_qkv_heads(convert(dq, dt, Device::cpu), convert(dk, dt, Device::cpu), convert(dv, dt, Device::cpu), dqkvc);
    EXPECT_EQ(first_mismatch(q, qc), -1);
    EXPECT_EQ(first_mismatch(k, kc), -1);
    EXPECT_EQ(first_mismatch(v, vc), -1);
    EXPECT_EQ(first_mismatch(dqkv, dqkvc), -1);
  }
}

TEST_P(HeadsGpu, MergeAndSplitHeadsMatchCpu) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (const HeadsCase& c : kCases) {
    SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " T=" << c.seq << " H=" << c.q_heads
                                      << " D=" << c.head_dim);
    const Shape heads_shape{c.batch, c.q_heads, c.seq, c.head_dim};
    const Shape tokens_shape{c.batch * c.seq, c.q_heads * c.head_dim};
    const std::uint64_t seed = 500 + std::uint64_t(c.head_dim);
    OwnedTensor x = random_tensor(heads_shape, dt, Device::cuda, seed);
    OwnedTensor dy = random_tensor(tokens_shape, dt, Device::cuda, seed + 1);
    OwnedTensor y(tokens_shape, dt, Device::cuda), dx(heads_shape, dt, Device::cuda);
    poison(y); poison(dx);
    merge_heads(x, y);
    split_heads(dy, dx);
    device_synchronize();

    OwnedTensor yc(tokens_shape, dt, Device::cpu), dxc(heads_shape, dt, Device::cpu);
    merge_heads(convert(x, dt, Device::cpu), yc);
    split_heads(convert(dy, dt, Device::cpu), dxc);
    EXPECT_EQ(first_mismatch(y, yc), -1);
    EXPECT_EQ(first_mismatch(dx, dxc), -1);
  }
}

// Views one element into a buffer are not 16-byte aligned even when D * sizeof(T) is, so the
// kernel must fall back to scalar copies rather than issue misaligned vector loads.
TEST_P(HeadsGpu, MisalignedViewsFallBackToScalarCopies) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  const Shape heads_shape{2, 4, 37, 64}, tokens_shape{2 * 37, 4 * 64};
  const std::int64_t numel = 2 * 4 * 37 * 64;
  OwnedTensor x_buffer = random_tensor({numel + 1}, dt, Device::cuda, 600);
  OwnedTensor y_buffer({numel + 1}, dt, Device::cuda), back_buffer({numel + 1}, dt, Device::cuda);
  poison(y_buffer); poison(back_buffer);
  const std::size_t one = dtype_size(dt);
  const Tensor x(static_cast<char*>(x_buffer.view().data()) + one, heads_shape, dt, Device::cuda);
  const Tensor y(static_cast<char*>(y_buffer.view().data()) + one, tokens_shape, dt, Device::cuda);
  const Tensor back(static_cast<char*>(back_buffer.view().data()) + one, heads_shape, dt, Device::cuda);
  merge_heads(x, y);
  split_heads(y, back);
  device_synchronize();

  OwnedTensor yc(tokens_shape, dt, Device::cpu);
  merge_heads(convert(x, dt, Device::cpu), yc);
  EXPECT_EQ(first_mismatch(y, yc), -1);
  EXPECT_EQ(first_mismatch(back, x), -1);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, HeadsGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
