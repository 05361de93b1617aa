// AdamW CPU reference: a two-step case worked by hand, a naive double loop on random data,
// decoupled weight decay, the compute copy, ranges with their own decay, and argument checks.
#include <algorithm>
#include <cmath>
#include <string>

#include "tests/testing.h"

namespace sy::test {
namespace {

// v must be non-negative: squares of normal draws.
OwnedTensor random_second_moment(std::int64_t n, std::uint64_t seed) {
  OwnedTensor v = random_tensor({n}, DType::f32, Device::cpu, seed, 0.1f);
  std::vector<double> values = to_vector(v);
  for (double& x : values) x *= x;
  from_vector(v, values);
  return v;
}

void expect_near_relative(const std::vector<double>& got, const std::vector<double>& expected, double tol) {
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], expected[i], tol * std::abs(expected[i])) << "element " << i;
  }
}

TEST(AdamW, MatchesHandComputedTwoSteps) {
  OwnedTensor params({2}, DType::f32, Device::cpu), grads({2}, DType::f32, Device::cpu);
  OwnedTensor m = zeros({2}, DType::f32, Device::cpu), v = zeros({2}, DType::f32, Device::cpu);
  from_vector(params, {1.0, -0.5});
  AdamWParams hp;
  hp.lr = 0.1f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.99f;
  hp.eps = 0.0f;  // keeps the hand arithmetic exact
  hp.weight_decay = 0.1f;
  hp.grad_scale = 0.5f;  // the gradients below are twice the effective g

  // Step 1, g = (1, -2): decay 1 - 0.1 * 0.1 = 0.99. m = 0.1 g = (0.1, -0.2); v = 0.01 g^2 =
  // (0.01, 0.04); bias corrections 0.1 and 0.01 give mhat = g, vhat = g^2, so each weight
  // moves by lr * sign(g): p = (0.99 - 0.1, -0.495 + 0.1) = (0.89, -0.395).
  from_vector(grads, {2.0, -4.0});
  hp.step = 1;
  adamw_update(params, grads, m, v, Tensor(), hp);
  expect_near_relative(to_vector(params), {0.89, -0.395}, 1e-6);
  expect_near_relative(to_vector(m), {0.1, -0.2}, 1e-6);
  expect_near_relative(to_vector(v), {0.01, 0.04}, 1e-6);

  // Step 2, g = (1, 2): m = 0.9 m + 0.1 g = (0.19, 0.02); v = 0.99 v + 0.01 g^2 =
  // (0.0199, 0.0796); bias corrections 1 - 0.81 = 0.19 and 1 - 0.9801 = 0.0199, so
  // mhat = (1, 0.02 / 0.19), vhat = (1, 4). p0 = 0.89 * 0.99 - 0.1 = 0.7811;
  // p1 = -0.395 * 0.99 - 0.1 * (0.02 / 0.19) / 2 = -0.39105 - 0.01 / 1.9.
  from_vector(grads, {2.0, 4.0});
  hp.step = 2;
  adamw_update(params, grads, m, v, Tensor(), hp);
  expect_near_relative(to_vector(params), {0.7811, -0.39105 - 0.01 / 1.9}, 1e-6);
  expect_near_relative(to_vector(m), {0.19, 0.02}, 1e-6);
  expect_near_relative(to_vector(v), {0.0199, 0.0796}, 1e-6);
}

TEST(AdamW, MatchesNaiveDoubleLoopOnRandomData) {
  const std::int64_t n = 1001;
  OwnedTensor params = random_tensor({n}, DType::f32, Device::cpu, 1);
  OwnedTensor grads = random_tensor({n}, DType::f32, Device::cpu, 2);
  OwnedTensor m = random_tensor({n}, DType::f32, Device::cpu, 3, 0.1f);
  OwnedTensor v = random_second_moment(n, 4);
  AdamWParams hp;
  hp.lr = 3e-3f;
  hp.weight_decay = 0.1f;
  hp.step = 7;
  hp.grad_scale = 0.8f;
  const std::vector<double> p0 = to_vector(params), g0 = to_vector(grads), m0 = to_vector(m), v0 = to_vector(v);
  adamw_update(params, grads, m, v, Tensor(), hp);

  const std::size_t count = std::size_t(n);
  std::vector<double> p_expected(count), m_expected(count), v_expected(count);
  const double b1 = hp.beta1, b2 = hp.beta2;
  for (std::size_t i = 0; i < count; ++i) {
    const double g = g0[i] * double(hp.grad_scale);
    m_expected[i] = b1 * m0[i] + (1 - b1) * g;
    v_expected[i] = b2 * v0[i] + (1 - b2) * g * g;
    const double m_hat = m_expected[i] / (1 - std::pow(b1, hp.step));
    const double v_hat = v_expected[i] / (1 - std::pow(b2, hp.step));
    p_expected[i] = p0[i] * (1 - double(hp.lr) * double(hp.weight_decay)) -
                    double(hp.lr) * m_hat / (std::sqrt(v_hat) + double(hp.eps));
  }
  // Stored in f32: relative 1e-7 per element.
  expect_near_relative(to_vector(params), p_expected, 1e-6);
  expect_near_relative(to_vector(m), m_expected, 1e-6);
  expect_near_relative(to_vector(v), v_expected, 1e-6);
}

TEST(AdamW, WeightDecayWithZeroGradsShrinksParams) {
  const std::int64_t n = 17;
  OwnedTensor params = random_tensor({n}, DType::f32, Device::cpu, 5);
  OwnedTensor grads = zeros({n}, DType::f32, Device::cpu);
  OwnedTensor m = zeros({n}, DType::f32, Device::cpu), v = zeros({n}, DType::f32, Device::cpu);
  AdamWParams hp;
  hp.lr = 0.01f;
  hp.weight_decay = 0.1f;
  hp.step = 3;
  const std::vector<double> before = to_vector(params);
  adamw_update(params, grads, m, v, Tensor(), hp);
  const std::vector<double> after = to_vector(params);
  const double shrink = 1.0 - double(hp.lr) * double(hp.weight_decay);
  // Zero moments give a zero Adam step (0 / eps), leaving only the decay.
  for (std::size_t i = 0; i < after.size(); ++i) EXPECT_FLOAT_EQ(float(after[i]), float(before[i] * shrink)) << i;
  EXPECT_EQ(to_vector(m), std::vector<double>(std::size_t(n), 0.0));
  EXPECT_EQ(to_vector(v), std::vector<double>(std::size_t(n), 0.0));
}

TEST(AdamW, CopyEqualsParamsRoundedToItsDtype) {
  const std::int64_t n = 33;
  for (DType copy_dtype : {DType::bf16, DType::f32}) {
    SCOPED_TRACE(dtype_name(copy_dtype));
    OwnedTensor params = random_tensor({n}, DType::f32, Device::cpu, 6);
    OwnedTensor grads = random_tensor({n}, DType::f32, Device::cpu, 7);
    OwnedTensor m = random_tensor({n}, DType::f32, Device::cpu, 8, 0.1f);
    OwnedTensor v = random_second_moment(n, 9);
    OwnedTensor param_copy({n}, copy_dtype, Device::cpu);
    poison(param_copy);
    AdamWParams hp;
    hp.weight_decay = 0.05f;
    adamw_update(params, grads, m, v, param_copy, hp);
    OwnedTensor rounded = convert(params, copy_dtype, Device::cpu);
    EXPECT_EQ(to_vector(param_copy), to_vector(rounded));
  }
}

// Clipping read from a device-side sum of squares gives bitwise the update of the scale the
// host used to compute, min(1, max / (sqrt(sum) + 1e-6)) in f32: clipped, and not clipped.
TEST(AdamW, ClipFromTheSumOfSquaresEqualsTheHostScale) {
  const std::int64_t n = 41;
  for (const float sum_squares : {100.0f, 0.04f}) {
    SCOPED_TRACE(::testing::Message() << "sum of squares " << sum_squares);
    const float max_norm = 1.0f;
    AdamWParams host_scaled, device_scaled;
    host_scaled.weight_decay = device_scaled.weight_decay = 0.1f;
    host_scaled.step = device_scaled.step = 3;
    host_scaled.grad_scale = std::min(1.0f, max_norm / (std::sqrt(sum_squares) + 1e-6f));
    OwnedTensor sum({1}, DType::f32, Device::cpu);
    from_vector(sum, {sum_squares});
    device_scaled.clip_sum_squares = sum;
    device_scaled.max_grad_norm = max_norm;
    std::vector<std::vector<double>> results;
    for (const AdamWParams& hp : {host_scaled, device_scaled}) {
      OwnedTensor params = random_tensor({n}, DType::f32, Device::cpu, 20);
      OwnedTensor grads = random_tensor({n}, DType::f32, Device::cpu, 21);
      OwnedTensor m = random_tensor({n}, DType::f32, Device::cpu, 22, 0.1f);
      OwnedTensor v = random_second_moment(n, 23);
      adamw_update(params, grads, m, v, Tensor(), hp);
      for (const Tensor& t : {params.view(), m.view(), v.view()}) results.push_back(to_vector(t));
    }
    for (int i = 0; i < 3; ++i) EXPECT_EQ(results[std::size_t(i)], results[std::size_t(i + 3)]);
  }
}

// adamw_update_ranges is adamw_update of each range with the range's decay, bit for bit, and
// leaves the elements between ranges alone.
TEST(AdamW, RangesEqualOneUpdatePerRange) {
  const std::int64_t n = 1000;
  const std::vector<AdamWRange> ranges = {{0, 10, 0.1f}, {10, 300, 0.0f}, {320, 7, 0.1f}, {327, 0, 0.0f},
                                          {400, 600, 0.05f}};
  AdamWParams hp;
  hp.lr = 2e-3f;
  hp.step = 4;
  hp.weight_decay = 0.5f;  // ignored: every range has its own
  std::vector<std::vector<double>> results;
  for (const bool one_call : {true, false}) {
    OwnedTensor params = random_tensor({n}, DType::f32, Device::cpu, 40);
    OwnedTensor grads = random_tensor({n}, DType::f32, Device::cpu, 41);
    OwnedTensor m = random_tensor({n}, DType::f32, Device::cpu, 42, 0.1f);
    OwnedTensor v = random_second_moment(n, 43);
    OwnedTensor copy = zeros({n}, DType::bf16, Device::cpu);
    if (one_call) {
      adamw_update_ranges(params, grads, m, v, copy, ranges, hp);
    } else {
      for (const AdamWRange& r : ranges) {
        AdamWParams range_hp = hp;
        range_hp.weight_decay = r.weight_decay;
        auto part = [&](const Tensor& t) { return t.slice_rows(r.offset, r.numel); };
        adamw_update(part(params), part(grads), part(m), part(v), part(copy), range_hp);
      }
    }
    for (const Tensor& t : {params.view(), m.view(), v.view(), copy.view()}) results.push_back(to_vector(t));
  }
  for (int i = 0; i < 4; ++i) EXPECT_EQ(results[std::size_t(i)], results[std::size_t(i + 4)]) << "tensor " << i;
  // Elements 310..319 and 327..399 belong to no range: params as drawn, copy still zero.
  const OwnedTensor drawn = random_tensor({n}, DType::f32, Device::cpu, 40);
  const std::vector<double> initial = to_vector(drawn);
  for (std::int64_t i : {310, 319, 327, 399}) {
    EXPECT_EQ(results[0][std::size_t(i)], initial[std::size_t(i)]) << "element " << i;
    EXPECT_EQ(results[3][std::size_t(i)], 0.0) << "element " << i;
  }
  EXPECT_NE(results[0][0], initial[0]);
}

TEST(AdamW, RangesRejectOverlapAndOverrun) {
  OwnedTensor params({20}, DType::f32, Device::cpu), grads({20}, DType::f32, Device::cpu);
  OwnedTensor m({20}, DType::f32, Device::cpu), v({20}, DType::f32, Device::cpu);
  const std::vector<AdamWRange> overlapping = {{0, 10, 0.0f}, {5, 7, 0.0f}};
  expect_error([&] { adamw_update_ranges(params, grads, m, v, Tensor(), overlapping, AdamWParams{}); },
               "adamw_update_ranges: range 1 [5, 12) must lie in [10, 20): ranges ascend, do not overlap and stay "
               "inside params f32[20] cpu");
  const std::vector<AdamWRange> overrun = {{15, 6, 0.0f}};
  expect_error([&] { adamw_update_ranges(params, grads, m, v, Tensor(), overrun, AdamWParams{}); },
               "adamw_update_ranges: range 0 [15, 21) must lie in [0, 20)");
}

TEST(AdamW, RejectsBadArguments) {
  OwnedTensor params({5}, DType::f32, Device::cpu), grads({5}, DType::f32, Device::cpu);
  OwnedTensor m({4}, DType::f32, Device::cpu), v({5}, DType::f32, Device::cpu);
  OwnedTensor good_m({5}, DType::f32, Device::cpu), f64_copy({5}, DType::f64, Device::cpu);
  auto message_of = [](const std::function<void()>& call) -> std::string {
    try {
      call();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message_of([&] { adamw_update(params, grads, m, v, Tensor(), AdamWParams{}); })
                .find("adamw_update: m must have shape [5], got f32[4] cpu"),
            std::string::npos);
  EXPECT_NE(message_of([&] { adamw_update(params, grads, good_m, v, f64_copy, AdamWParams{}); })
                .find("adamw_update: param_copy must be bf16 or f32, got f64[5] cpu"),
            std::string::npos);
  AdamWParams step0;
  step0.step = 0;
  EXPECT_NE(message_of([&] { adamw_update(params, grads, good_m, v, Tensor(), step0); })
                .find("adamw_update: step is 1-based, got 0"),
            std::string::npos);
  OwnedTensor two({2}, DType::f32, Device::cpu), one({1}, DType::f32, Device::cpu);
  AdamWParams wide_sum;
  wide_sum.clip_sum_squares = two;
  wide_sum.max_grad_norm = 1.0f;
  EXPECT_NE(message_of([&] { adamw_update(params, grads, good_m, v, Tensor(), wide_sum); })
                .find("adamw_update: clip_sum_squares must have shape [1], got f32[2] cpu"),
            std::string::npos);
  AdamWParams no_max;
  no_max.clip_sum_squares = one;
  EXPECT_NE(message_of([&] { adamw_update(params, grads, good_m, v, Tensor(), no_max); })
                .find("adamw_update: clip_sum_squares needs max_grad_norm > 0, got 0"),
            std::string::npos);
}

}  // namespace
}  // namespace sy::test
