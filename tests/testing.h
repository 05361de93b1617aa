// Test helpers: random tensors on any device, host read-back in double, relative error norms,
// output poisoning, and central finite differences for gradient checks.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <ostream>
#include <vector>

#include "core/ops.h"
#include "core/storage.h"

namespace sy {
// gtest prints a DType parameter by name ("f32"), not as a byte dump.
inline void PrintTo(DType dtype, std::ostream* os) { *os << dtype_name(dtype); }
}  // namespace sy

namespace sy::test {

bool gpu_available();

// Skips the current test (reported as skipped, not failed) without a usable GPU.
#define SY_REQUIRE_GPU()                                               \
  do {                                                                 \
    if (!::sy::test::gpu_available()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

// Normal(0, std) values drawn on the CPU with Philox and rounded to dtype, then moved to
// device. Every call with a new `seed` gives fresh data.
OwnedTensor random_tensor(const Shape& shape, DType dtype, Device device, std::uint64_t seed, float std = 1.0f);
// Integers uniform in [0, high) as i32.
OwnedTensor random_ints(const Shape& shape, std::int32_t high, Device device, std::uint64_t seed);
OwnedTensor zeros(const Shape& shape, DType dtype, Device device);
// A copy of `src` with another dtype and/or device (values converted through cast()).
OwnedTensor convert(const Tensor& src, DType dtype, Device device);

// Every element as double, read back from any device.
std::vector<double> to_vector(const Tensor& t);
// Writes `values` (converted to t's dtype) into t on any device.
void from_vector(const Tensor& t, const std::vector<double>& values);

// ||a - b|| / ||b||; NaN anywhere gives infinity so it never passes a tolerance.
double relative_error(const std::vector<double>& a, const std::vector<double>& b);
double relative_error(const Tensor& a, const Tensor& b);

// Fills every byte with 0xff: NaN in f32/f64/bf16, so an element a kernel forgets to write fails.
void poison(const Tensor& t);

// d loss / d x by central differences, x a CPU f64 tensor that `loss` reads; x is restored.
std::vector<double> numeric_gradient(const Tensor& x, const std::function<double()>& loss, double h = 1e-6);
// sum_i w_i * y_i, the scalar a gradient check differentiates (dy = w).
double weighted_sum(const Tensor& y, const Tensor& w);

// Runs `call` and expects an sy::Error whose message contains `message` (and, in the second
// form, of the given kind).
void expect_error(const std::function<void()>& call, const std::string& message);
void expect_error(const std::function<void()>& call, ErrorKind kind, const std::string& message);

// Names parameterised tests by dtype: "MatchesCpuReference/f32".
std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info);

}  // namespace sy::test
