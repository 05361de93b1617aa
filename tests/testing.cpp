// Test helpers shared by every suite.
#include "tests/testing.h"

#include <cmath>
#include <limits>

namespace sy::test {

bool gpu_available() { return cuda_device_count() > 0; }

OwnedTensor random_tensor(const Shape& shape, DType dtype, Device device, std::uint64_t seed, float std) {
  OwnedTensor host(shape, DType::f64, Device::cpu);
  fill_normal(host, RngKey{seed, std::uint32_t(RngPurpose::test), 0}, 0.0f, std);
  return convert(host, dtype, device);
}

OwnedTensor random_ints(const Shape& shape, std::int32_t high, Device device, std::uint64_t seed) {
  OwnedTensor host(shape, DType::i32, Device::cpu);
  std::int32_t* p = host.view().ptr<std::int32_t>();
  for (std::int64_t i = 0; i < host.view().numel(); ++i) {
    p[i] = std::int32_t(philox4x32(RngKey{seed, std::uint32_t(RngPurpose::test), 1}, std::uint64_t(i)).v[0] %
                        std::uint32_t(high));
  }
  if (device == Device::cpu) return host;
  OwnedTensor out(shape, DType::i32, device);
  copy(out, host);
  return out;
}

OwnedTensor zeros(const Shape& shape, DType dtype, Device device) {
  OwnedTensor t(shape, dtype, device);
  fill_bytes(t, 0);
  device_synchronize();
  return t;
}

OwnedTensor convert(const Tensor& src, DType dtype, Device device) {
  // Convert on the host, then move: cast() on the CPU handles every float dtype.
  OwnedTensor host_src(src.shape(), src.dtype(), Device::cpu);
  copy(host_src, src);
  OwnedTensor host_dst(src.shape(), dtype, Device::cpu);
  if (dtype == src.dtype()) {
    copy(host_dst, host_src);
  } else {
    cast(host_src, host_dst);
  }
  if (device == Device::cpu) return host_dst;
  OwnedTensor out(src.shape(), dtype, device);
  copy(out, host_dst);
  return out;
}

std::vector<double> to_vector(const Tensor& t) {
  OwnedTensor host(t.shape(), t.dtype(), Device::cpu);
  copy(host, t);
  const Tensor& h = host.view();
  std::vector<double> out(std::size_t(h.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    switch (h.dtype()) {
      case DType::f32: out[i] = h.ptr<float>()[i]; break;
      case DType::f64: out[i] = h.ptr<double>()[i]; break;
      case DType::bf16: out[i] = to_double(h.ptr<bfloat16>()[i]); break;
      case DType::i32: out[i] = h.ptr<std::int32_t>()[i]; break;
      case DType::i64: out[i] = double(h.ptr<std::int64_t>()[i]); break;
    }
  }
  return out;
}

void from_vector(const Tensor& t, const std::vector<double>& values) {
  SY_CHECK(std::int64_t(values.size()) == t.numel()) << "from_vector: " << values.size() << " values for " << t.describe();
  OwnedTensor host(t.shape(), t.dtype(), Device::cpu);
  const Tensor& h = host.view();
  for (std::size_t i = 0; i < values.size(); ++i) {
    switch (h.dtype()) {
      case DType::f32: h.ptr<float>()[i] = float(values[i]); break;
      case DType::f64: h.ptr<double>()[i] = values[i]; break;
      case DType::bf16: h.ptr<bfloat16>()[i] = bfloat16(float(values[i])); break;
      case DType::i32: h.ptr<std::int32_t>()[i] = std::int32_t(values[i]); break;
      case DType::i64: h.ptr<std::int64_t>()[i] = std::int64_t(values[i]); break;
    }
  }
  copy(t, host);
}

double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  SY_CHECK(a.size() == b.size()) << "relative_error: sizes " << a.size() << " and " << b.size();
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return std::numeric_limits<double>::infinity();
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    ref += b[i] * b[i];
  }
  if (ref == 0) return std::sqrt(diff);
  return std::sqrt(diff / ref);
}

double relative_error(const Tensor& a, const Tensor& b) { return relative_error(to_vector(a), to_vector(b)); }

void poison(const Tensor& t) {
  fill_bytes(t, 0xff);
  device_synchronize();
}

std::vector<double> numeric_gradient(const Tensor& x, const std::function<double()>& loss, double h) {
  SY_CHECK(x.device() == Device::cpu && x.dtype() == DType::f64) << "numeric_gradient needs a CPU f64 tensor, got "
                                                                 << x.describe();
  double* p = x.ptr<double>();
  std::vector<double> grad(std::size_t(x.numel()));
  for (std::size_t i = 0; i < grad.size(); ++i) {
    const double saved = p[i];
    p[i] = saved + h;
    const double up = loss();
    p[i] = saved - h;
    const double down = loss();
    p[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

double weighted_sum(const Tensor& y, const Tensor& w) {
  std::vector<double> yv = to_vector(y), wv = to_vector(w);
  double s = 0;
  for (std::size_t i = 0; i < yv.size(); ++i) s += yv[i] * wv[i];
  return s;
}

void expect_error(const std::function<void()>& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "expected an error containing: " << message;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

void expect_error(const std::function<void()>& call, ErrorKind kind, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "expected an error containing: " << message;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) { return dtype_name(info.param); }

}  // namespace sy::test
