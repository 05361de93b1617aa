// Causal attention CPU reference: forward against a hand-written loop for MHA, GQA and MQA,
// the structure of probs, backward against finite differences, and the argument checks.
#include <cmath>

#include "tests/testing.h"

namespace sy::test {
namespace {

struct HeadConfig {
  std::int64_t heads, kv_heads;
};

// out and probs of causal attention, written independently of the op: full score matrix, mask,
// softmax by the textbook formula (scores are small here, so no max subtraction is needed).
void naive_attention(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
                     std::int64_t batch, HeadConfig h, std::int64_t seq, std::int64_t dim, std::vector<double>& out,
                     std::vector<double>& probs) {
  out.assign(std::size_t(batch * h.heads * seq * dim), 0.0);
  probs.assign(std::size_t(batch * h.heads * seq * seq), 0.0);
  const std::int64_t group = h.heads / h.kv_heads;
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t head = 0; head < h.heads; ++head) {
      const std::int64_t kv_head = head / group;
      auto q_at = [&](std::int64_t t, std::int64_t c) {
        return q[std::size_t(((b * h.heads + head) * seq + t) * dim + c)];
      };
      auto k_at = [&](std::int64_t t, std::int64_t c) {
        return k[std::size_t(((b * h.kv_heads + kv_head) * seq + t) * dim + c)];
      };
      auto v_at = [&](std::int64_t t, std::int64_t c) {
        return v[std::size_t(((b * h.kv_heads + kv_head) * seq + t) * dim + c)];
      };
      for (std::int64_t t = 0; t < seq; ++t) {
        std::vector<double> weights(std::size_t(seq), 0.0);
        double total = 0;
        for (std::int64_t j = 0; j <= t; ++j) {
          double score = 0;
          for (std::int64_t c = 0; c < dim; ++c) score += q_at(t, c) * k_at(j, c);
          weights[std::size_t(j)] = std::exp(score / std::sqrt(double(dim)));
          total += weights[std::size_t(j)];
        }
        for (std::int64_t j = 0; j <= t; ++j) {
          const double p = weights[std::size_t(j)] / total;
          probs[std::size_t(((b * h.heads + head) * seq + t) * seq + j)] = p;
          for (std::int64_t c = 0; c < dim; ++c)
            out[std::size_t(((b * h.heads + head) * seq + t) * dim + c)] += p * v_at(j, c);
        }
      }
    }
  }
}

void PrintTo(const HeadConfig& h, std::ostream* os) { *os << "Hq " << h.heads << ", Hkv " << h.kv_heads; }

std::string head_config_name(const ::testing::TestParamInfo<HeadConfig>& param_info) {
  const HeadConfig h = param_info.param;
  const char* kind = h.kv_heads == h.heads ? "Mha" : h.kv_heads == 1 ? "Mqa" : "Gqa";
  return std::string(kind) + std::to_string(h.heads) + "x" + std::to_string(h.kv_heads);
}

class AttentionHeads : public ::testing::TestWithParam<HeadConfig> {};

TEST_P(AttentionHeads, ForwardMatchesNaiveLoop) {
  const HeadConfig h = GetParam();
  const std::int64_t batch = 2, seq = 7, dim = 5;
  OwnedTensor q = random_tensor({batch, h.heads, seq, dim}, DType::f64, Device::cpu, 31);
  OwnedTensor k = random_tensor({batch, h.kv_heads, seq, dim}, DType::f64, Device::cpu, 32);
  OwnedTensor v = random_tensor({batch, h.kv_heads, seq, dim}, DType::f64, Device::cpu, 33);
  OwnedTensor out({batch, h.heads, seq, dim}, DType::f64, Device::cpu),
      probs({batch, h.heads, seq, seq}, DType::f64, Device::cpu);
  poison(out);
  poison(probs);
  attention_forward(q, k, v, out, probs);
  std::vector<double> out_expected, probs_expected;
  naive_attention(to_vector(q), to_vector(k), to_vector(v), batch, h, seq, dim, out_expected, probs_expected);
  EXPECT_LT(relative_error(to_vector(out), out_expected), 1e-13);
  EXPECT_LT(relative_error(to_vector(probs), probs_expected), 1e-13);
}

TEST_P(AttentionHeads, BackwardMatchesFiniteDifferences) {
  const HeadConfig h = GetParam();
  const std::int64_t batch = 2, seq = 5, dim = 3;  // T not a multiple of 32, odd D
  OwnedTensor q = random_tensor({batch, h.heads, seq, dim}, DType::f64, Device::cpu, 34);
  OwnedTensor k = random_tensor({batch, h.kv_heads, seq, dim}, DType::f64, Device::cpu, 35);
  OwnedTensor v = random_tensor({batch, h.kv_heads, seq, dim}, DType::f64, Device::cpu, 36);
  OwnedTensor dout = random_tensor({batch, h.heads, seq, dim}, DType::f64, Device::cpu, 37);
  OwnedTensor out({batch, h.heads, seq, dim}, DType::f64, Device::cpu),
      probs({batch, h.heads, seq, seq}, DType::f64, Device::cpu);
  auto loss = [&] {
    attention_forward(q, k, v, out, probs);
    return weighted_sum(out, dout);
  };
  loss();
  OwnedTensor dq(q.view().shape(), DType::f64, Device::cpu), dk(k.view().shape(), DType::f64, Device::cpu);
  OwnedTensor dv(v.view().shape(), DType::f64, Device::cpu), dprobs(probs.view().shape(), DType::f64, Device::cpu);
  poison(dq);
  poison(dk);
  poison(dv);
  attention_backward(q, k, v, probs, dout, dq, dk, dv, dprobs);
  // Everything in f64: central differences with h = 1e-6 agree to ~1e-9.
  EXPECT_LT(relative_error(to_vector(dq), numeric_gradient(q, loss)), 1e-7);
  EXPECT_LT(relative_error(to_vector(dk), numeric_gradient(k, loss)), 1e-7);
  EXPECT_LT(relative_error(to_vector(dv), numeric_gradient(v, loss)), 1e-7);
}

INSTANTIATE_TEST_SUITE_P(HeadLayouts, AttentionHeads,
                         ::testing::Values(HeadConfig{4, 4}, HeadConfig{6, 2}, HeadConfig{3, 1}), head_config_name);

TEST(Attention, ProbsRowsSumToOneAndVanishAboveDiagonal) {
  const std::int64_t batch = 2, heads = 4, kv_heads = 2, seq = 9, dim = 8;
  OwnedTensor q = random_tensor({batch, heads, seq, dim}, DType::f32, Device::cpu, 38, 2.0f);
  OwnedTensor k = random_tensor({batch, kv_heads, seq, dim}, DType::f32, Device::cpu, 39, 2.0f);
  OwnedTensor v = random_tensor({batch, kv_heads, seq, dim}, DType::f32, Device::cpu, 40);
  OwnedTensor out({batch, heads, seq, dim}, DType::f32, Device::cpu),
      probs({batch, heads, seq, seq}, DType::f32, Device::cpu);
  poison(probs);
  attention_forward(q, k, v, out, probs);
  const std::vector<double> p = to_vector(probs);
  for (std::int64_t row = 0; row < batch * heads * seq; ++row) {
    const std::int64_t t = row % seq;
    double sum = 0;
    for (std::int64_t j = 0; j < seq; ++j) {
      const double value = p[std::size_t(row * seq + j)];
      if (j > t) {
        EXPECT_EQ(value, 0.0) << "row " << row << ", column " << j;
      } else {
        EXPECT_GE(value, 0.0);
        sum += value;
      }
    }
    EXPECT_NEAR(sum, 1.0, 1e-6) << "row " << row;
  }
  // The first query sees only itself.
  EXPECT_EQ(p[0], 1.0);
}

TEST(Attention, RejectsHeadsNotDivisibleByKvHeads) {
  OwnedTensor q({1, 6, 4, 8}, DType::f32, Device::cpu), k({1, 4, 4, 8}, DType::f32, Device::cpu);
  OwnedTensor v({1, 4, 4, 8}, DType::f32, Device::cpu), out({1, 6, 4, 8}, DType::f32, Device::cpu);
  OwnedTensor probs({1, 6, 4, 4}, DType::f32, Device::cpu);
  try {
    attention_forward(q, k, v, out, probs);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention_forward: n_heads 6 is not a multiple of n_kv_heads 4"),
              std::string::npos)
        << e.what();
  }
}

TEST(Attention, BackwardRejectsDprobsOfTheWrongDtype) {
  OwnedTensor q({1, 2, 3, 4}, DType::f32, Device::cpu), kv({1, 1, 3, 4}, DType::f32, Device::cpu);
  OwnedTensor probs({1, 2, 3, 3}, DType::f32, Device::cpu), dprobs({1, 2, 3, 3}, DType::bf16, Device::cpu);
  OwnedTensor dq({1, 2, 3, 4}, DType::f32, Device::cpu), dkv({1, 1, 3, 4}, DType::f32, Device::cpu);
  try {
    attention_backward(q, kv, kv, probs, q, dq, dkv, dkv, dprobs);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention_backward: dprobs must be f32, got bf16[1, 2, 3, 3] cpu"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace sy::test
