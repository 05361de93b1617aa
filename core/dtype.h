// Element types and devices. bfloat16 on the host is a 16-bit pattern with round-to-nearest-even
// conversion, bit-identical to CUDA's __nv_bfloat16 so buffers move between them unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sy {

enum class DType : std::uint8_t { f32, f64, bf16, i32, i64 };
enum class Device : std::uint8_t { cpu, cuda };

// f64 exists for the CPU reference (finite-difference gradient checks); CUDA ops take f32/bf16.
std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  explicit bfloat16(float value) : bits(round_from_float(value)) {}
  explicit operator float() const {
    std::uint32_t wide = std::uint32_t(bits) << 16;
    float value;
    std::memcpy(&value, &wide, sizeof value);
    return value;
  }

  static std::uint16_t round_from_float(float value) {
    std::uint32_t wide;
    std::memcpy(&wide, &value, sizeof wide);
    if ((wide & 0x7f800000u) == 0x7f800000u && (wide & 0x007fffffu)) return std::uint16_t((wide >> 16) | 0x40);  // quiet NaN
    wide += 0x7fffu + ((wide >> 16) & 1u);  // round to nearest, ties to even
    return std::uint16_t(wide >> 16);
  }
};
static_assert(sizeof(bfloat16) == 2);

// Compile-time map from C++ element type to DType, used by Tensor::ptr<T>().
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bfloat16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::i64; };

// Load/store any floating element as double: the CPU reference reads every dtype through these.
inline double to_double(float v) { return v; }
inline double to_double(double v) { return v; }
inline double to_double(bfloat16 v) { return double(float(v)); }
template <class T> T from_double(double v);
template <> inline float from_double<float>(double v) { return float(v); }
template <> inline double from_double<double>(double v) { return v; }
template <> inline bfloat16 from_double<bfloat16>(double v) { return bfloat16(float(v)); }

}  // namespace sy
