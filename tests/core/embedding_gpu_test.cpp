// Embedding CUDA kernels against the CPU reference on fresh random inputs, f32 and bf16; the
// backward's determinism; and out-of-range tokens, which the CUDA path must skip safely.
#include <algorithm>
#include <climits>
#include <vector>

#include "tests/testing.h"

namespace sy::test {
namespace {

class EmbeddingGpu : public ::testing::TestWithParam<DType> {};

TEST_P(EmbeddingGpu, MatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  struct Case {
    std::int64_t rows, vocab, channels;
  };
  // Many repeats per row (1000 over 13), a wide vocabulary (mostly rows without a token, which
  // overwrite must zero), GPT-2's vocabulary (7 words of row bits per warp), ragged channel
  // counts (one channel a lane), and the benchmark's shape (eight channels a lane).
  for (Case k : {Case{1000, 13, 70}, Case{64, 5000, 768}, Case{2048, 50304, 40}, Case{5, 3, 33}, Case{300, 40, 1},
                 Case{16384, 32768, 768}}) {
    SCOPED_TRACE(::testing::Message() << k.rows << " tokens, V=" << k.vocab << ", C=" << k.channels);
    const std::uint64_t seed = 200 + std::uint64_t(k.rows + k.channels);
    OwnedTensor tokens = random_ints({k.rows}, std::int32_t(k.vocab), Device::cuda, seed);
    OwnedTensor w = random_tensor({k.vocab, k.channels}, dt, Device::cuda, seed + 1);
    OwnedTensor dout = random_tensor({k.rows, k.channels}, dt, Device::cuda, seed + 2);
    OwnedTensor dw = random_tensor({k.vocab, k.channels}, DType::f32, Device::cuda, seed + 3);  // accumulates onto this
    OwnedTensor dw_new({k.vocab, k.channels}, DType::f32, Device::cuda);                        // overwritten
    OwnedTensor out({k.rows, k.channels}, dt, Device::cuda);
    poison(out);
    poison(dw_new);

    OwnedTensor tokens_c({k.rows}, DType::i32, Device::cpu);
    copy(tokens_c, tokens);
    OwnedTensor wc = convert(w, DType::f64, Device::cpu), doutc = convert(dout, DType::f64, Device::cpu);
    OwnedTensor dwc = convert(dw, DType::f32, Device::cpu), outc({k.rows, k.channels}, DType::f64, Device::cpu);
    OwnedTensor dw_newc({k.vocab, k.channels}, DType::f32, Device::cpu);
    poison(dw_newc);

    embedding_forward(tokens, w, out);
    embedding_backward(tokens, dout, dw, GradMode::accumulate);
    embedding_backward(tokens, dout, dw_new, GradMode::overwrite);
    device_synchronize();
    embedding_forward(tokens_c, wc, outc);
    embedding_backward(tokens_c, doutc, dwc, GradMode::accumulate);
    embedding_backward(tokens_c, doutc, dw_newc, GradMode::overwrite);

    // The forward is a copy: exact in both dtypes.
    EXPECT_EQ(relative_error(out, outc), 0.0);
    // dweight is f32 for both dtypes; only fp32 (sequential) against f64 summation differs.
    EXPECT_LT(relative_error(dw, dwc), 1e-5);
    EXPECT_LT(relative_error(dw_new, dw_newc), 1e-5);  // a NaN left anywhere fails
    // Rows without a token are exactly zero (the reference writes 0.0 there).
    const std::vector<double> got = to_vector(dw_new), want = to_vector(dw_newc);
    std::size_t mismatched_zero_rows = 0;
    for (std::size_t i = 0; i < want.size(); ++i)
      if (want[i] == 0.0 && got[i] != 0.0) ++mismatched_zero_rows;
    EXPECT_EQ(mismatched_zero_rows, 0u);
  }
}

TEST_P(EmbeddingGpu, BackwardIsBitReproducible) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  OwnedTensor tokens = random_ints({4099}, 37, Device::cuda, 300);
  OwnedTensor dout = random_tensor({4099, 96}, dt, Device::cuda, 301);
  OwnedTensor start = random_tensor({37, 96}, DType::f32, Device::cuda, 302);
  for (GradMode mode : {GradMode::accumulate, GradMode::overwrite}) {
    std::vector<std::vector<double>> runs;
    for (int run = 0; run < 3; ++run) {
      OwnedTensor dw = convert(start, DType::f32, Device::cuda);
      embedding_backward(tokens, dout, dw, mode);
      runs.push_back(to_vector(dw));
    }
    EXPECT_EQ(runs[0], runs[1]);
    EXPECT_EQ(runs[0], runs[2]);
  }
}

// Rows of 16-byte vectors take eight channels a lane and 1024 token classes; the same dout one
// element off a 16-byte boundary takes one channel a lane and 256 classes. Both add each row's
// terms in token order, so their bits agree: long chains (4099 tokens over 37 rows) and a wide
// vocabulary, written and accumulated.
TEST_P(EmbeddingGpu, EightChannelsALaneGiveTheBitsOfOne) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (auto [rows, vocab] : {std::pair{4099, 37}, std::pair{3000, 20000}}) {
    SCOPED_TRACE(::testing::Message() << rows << " tokens, V=" << vocab);
    constexpr std::int64_t kChannels = 264;  // 33 vectors: the last warp's lanes are partly idle
    OwnedTensor tokens = random_ints({rows}, std::int32_t(vocab), Device::cuda, 310 + std::uint64_t(vocab));
    OwnedTensor flat = random_tensor({rows * kChannels + 1}, dt, Device::cuda, 311);
    const Tensor shifted = flat.view().slice_rows(1, rows * kChannels).reshape({rows, kChannels});
    OwnedTensor dout = convert(shifted, dt, Device::cuda);  // the shifted values, 16-byte aligned
    OwnedTensor start = random_tensor({vocab, kChannels}, DType::f32, Device::cuda, 312);
    for (GradMode mode : {GradMode::accumulate, GradMode::overwrite}) {
      OwnedTensor vector_dw = convert(start, DType::f32, Device::cuda);
      OwnedTensor scalar_dw = convert(start, DType::f32, Device::cuda);
      embedding_backward(tokens, dout, vector_dw, mode);
      embedding_backward(tokens, shifted, scalar_dw, mode);
      device_synchronize();
      EXPECT_EQ(to_vector(vector_dw), to_vector(scalar_dw))
          << (mode == GradMode::overwrite ? "overwrite" : "accumulate");
    }
  }
}

// No tokens: overwrite writes zeros over NaN, accumulate leaves the gradient.
TEST_P(EmbeddingGpu, WithoutTokensOverwriteWritesZeros) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  OwnedTensor tokens({0}, DType::i32, Device::cuda), dout({0, 24}, dt, Device::cuda);
  OwnedTensor dw({300, 24}, DType::f32, Device::cuda), kept = random_tensor({300, 24}, DType::f32, Device::cuda, 303);
  poison(dw);
  const std::vector<double> before = to_vector(kept);
  embedding_backward(tokens, dout, dw, GradMode::overwrite);
  embedding_backward(tokens, dout, kept, GradMode::accumulate);
  device_synchronize();
  EXPECT_EQ(to_vector(dw), std::vector<double>(300 * 24, 0.0));
  EXPECT_EQ(to_vector(kept), before);
}

TEST_P(EmbeddingGpu, OutOfRangeTokensTouchNothingOutOfBounds) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  for (GradMode mode : {GradMode::accumulate, GradMode::overwrite}) {
    SCOPED_TRACE(mode == GradMode::overwrite ? "overwrite" : "accumulate");
    constexpr std::int64_t kVocab = 6, kChannels = 40;
    // weight and dweight are the middle rows of buffers with one guard row on each side.
    OwnedTensor w_guarded = random_tensor({kVocab + 2, kChannels}, dt, Device::cuda, 400);
    OwnedTensor dw_guarded = random_tensor({kVocab + 2, kChannels}, DType::f32, Device::cuda, 401);
    const Tensor w = w_guarded.view().slice_rows(1, kVocab), dw = dw_guarded.view().slice_rows(1, kVocab);
    const std::vector<double> dw_before = to_vector(dw_guarded);

    const std::vector<double> token_values{2, -1, kVocab, 5, INT_MIN, INT_MAX, 0, kVocab + 1};
    OwnedTensor tokens({8}, DType::i32, Device::cuda);
    from_vector(tokens, token_values);
    OwnedTensor dout = random_tensor({8, kChannels}, dt, Device::cuda, 402);
    OwnedTensor out({8, kChannels}, dt, Device::cuda);
    poison(out);
    embedding_forward(tokens, w, out);
    embedding_backward(tokens, dout, dw, mode);
    device_synchronize();

    const std::vector<double> wv = to_vector(w), ov = to_vector(out), doutv = to_vector(dout);
    std::vector<double> dw_expected = dw_before;  // guarded layout: row r of dw is row r + 1 here
    if (mode == GradMode::overwrite)  // the rows of dw start from zero; the guard rows keep their values
      std::fill(dw_expected.begin() + kChannels, dw_expected.end() - kChannels, 0.0);
    for (std::size_t n = 0; n < token_values.size(); ++n) {
      const double token = token_values[n];
      const bool valid = token >= 0 && token < kVocab;
      for (std::int64_t c = 0; c < kChannels; ++c) {
        const double expected = valid ? wv[std::size_t(std::int64_t(token) * kChannels + c)] : 0.0;
        EXPECT_EQ(ov[n * kChannels + std::size_t(c)], expected) << "token " << token << ", channel " << c;
        if (valid) {
          double& d = dw_expected[std::size_t((std::int64_t(token) + 1) * kChannels + c)];
          d = double(float(d + doutv[n * kChannels + std::size_t(c)]));
        }
      }
    }
    // Each valid token appears once, so the result is one exact fp32 add per element.
    EXPECT_EQ(to_vector(dw_guarded), dw_expected);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EmbeddingGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
