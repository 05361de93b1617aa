// Embedding CPU reference: forward copies rows, backward against finite differences and a
// hand-summed case with repeated tokens, and the vocabulary check.
#include <string>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

OwnedTensor tokens_of(const std::vector<double>& values) {
  OwnedTensor t({std::int64_t(values.size())}, DType::i32, Device::cpu);
  from_vector(t, values);
  return t;
}

TEST(Embedding, ForwardCopiesTheRowOfEachToken) {
  OwnedTensor tokens = tokens_of({4, 0, 10, 4, 7});
  OwnedTensor w = random_tensor({11, 7}, DType::f32, Device::cpu, 1);
  OwnedTensor out({5, 7}, DType::f32, Device::cpu);
  poison(out);
  embedding_forward(tokens, w, out);
  std::vector<double> tv = to_vector(tokens), wv = to_vector(w), ov = to_vector(out);
  for (int n = 0; n < 5; ++n) {
    for (int c = 0; c < 7; ++c) EXPECT_EQ(ov[n * 7 + c], wv[int(tv[n]) * 7 + c]) << "n=" << n << " c=" << c;
  }
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  // 13 tokens over a vocabulary of 9: some repeat, some rows get no gradient.
  OwnedTensor tokens = random_ints({13}, 9, Device::cpu, 2);
  OwnedTensor w = random_tensor({9, 5}, DType::f64, Device::cpu, 3);
  OwnedTensor dout = random_tensor({13, 5}, DType::f64, Device::cpu, 4);
  OwnedTensor out({13, 5}, DType::f64, Device::cpu);
  auto loss = [&] {
    embedding_forward(tokens, w, out);
    return weighted_sum(out, dout);
  };
  OwnedTensor dw({9, 5}, DType::f32, Device::cpu);
  poison(dw);  // overwritten: rows without a token must come out zero
  embedding_backward(tokens, dout, dw, GradMode::overwrite);
  // dweight is stored in f32: ~1e-7 relative.
  EXPECT_LT(relative_error(to_vector(dw), numeric_gradient(w, loss)), 1e-6);
}

TEST(Embedding, BackwardAccumulatesRepeatedTokens) {
  OwnedTensor tokens = tokens_of({3, 1, 3, 3, 0});
  OwnedTensor dout({5, 2}, DType::f32, Device::cpu);
  from_vector(dout, {1, 2, 10, 20, 100, 200, 1000, 2000, 0.5, 0.25});
  OwnedTensor dw({4, 2}, DType::f32, Device::cpu);
  from_vector(dw, {1, 1, 1, 1, 1, 1, 1, 1});
  embedding_backward(tokens, dout, dw, GradMode::accumulate);
  // Row 3 gets n = 0, 2, 3; row 2 (no token) keeps its value.
  EXPECT_EQ(to_vector(dw), (std::vector<double>{1.5, 1.25, 11, 21, 1, 1, 1102, 2203}));
  embedding_backward(tokens, dout, dw, GradMode::accumulate);
  EXPECT_EQ(to_vector(dw), (std::vector<double>{2, 1.5, 21, 41, 1, 1, 2203, 4405}));
}

// Overwrite replaces whatever dweight held (NaN here), rows without a token included.
TEST(Embedding, BackwardOverwriteWritesEveryRow) {
  OwnedTensor tokens = tokens_of({3, 1, 3, 3, 0});
  OwnedTensor dout({5, 2}, DType::f32, Device::cpu);
  from_vector(dout, {1, 2, 10, 20, 100, 200, 1000, 2000, 0.5, 0.25});
  OwnedTensor dw({4, 2}, DType::f32, Device::cpu);
  poison(dw);
  embedding_backward(tokens, dout, dw, GradMode::overwrite);
  EXPECT_EQ(to_vector(dw), (std::vector<double>{0.5, 0.25, 10, 20, 0, 0, 1101, 2202}));
  embedding_backward(tokens_of({2, 2, 2, 2, 2}), dout, dw, GradMode::overwrite);
  EXPECT_EQ(to_vector(dw), (std::vector<double>{0, 0, 0, 0, 1111.5, 2222.25, 0, 0}));
  OwnedTensor none({0}, DType::i32, Device::cpu), dout_none({0, 2}, DType::f32, Device::cpu);
  embedding_backward(none, dout_none, dw, GradMode::overwrite);  // no tokens: all zeros
  EXPECT_EQ(to_vector(dw), std::vector<double>(8, 0.0));
}

TEST(Embedding, RejectsTokenOutsideVocabulary) {
  OwnedTensor w({5, 3}, DType::f32, Device::cpu), out({4, 3}, DType::f32, Device::cpu);
  OwnedTensor dout({4, 3}, DType::f32, Device::cpu), dw({5, 3}, DType::f32, Device::cpu);
  expect_error([&] { embedding_forward(tokens_of({0, 4, 5, 1}), w, out); },
               "embedding_forward: tokens[2] = 5 is outside the vocabulary [0, 5)");
  expect_error([&] { embedding_backward(tokens_of({-1, 0, 0, 0}), dout, dw, GradMode::accumulate); },
               "embedding_backward: tokens[0] = -1 is outside the vocabulary [0, 5)");
}

TEST(Embedding, RejectsNonF32WeightGradient) {
  OwnedTensor tokens = tokens_of({0, 1});
  OwnedTensor dout({2, 3}, DType::bf16, Device::cpu), dw({5, 3}, DType::bf16, Device::cpu);
  expect_error([&] { embedding_backward(tokens, dout, dw, GradMode::overwrite); },
               "embedding_backward: dweight must be f32, got bf16[5, 3] cpu");
}

}  // namespace
}  // namespace sy::test
