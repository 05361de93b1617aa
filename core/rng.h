// Counter-based RNG (Philox-4x32-10, Salmon et al. 2011). A number is a pure function of
// (seed, purpose, layer, index): no state advances, so CPU and GPU, and every parallel layout,
// draw the same value for the same global token or parameter element.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SY_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SY_HOST_DEVICE inline
#endif

namespace sy {

// What a stream of random numbers is for; part of the counter so purposes never collide.
enum class RngPurpose : std::uint32_t {
  init = 1,           // parameter initialisation (layer = parameter id)
  router_jitter = 2,  // multiplicative router-input noise
  router_noise = 3,   // Gaussian noisy top-k
  data_order = 4,     // shard and sequence order
  dropout = 5,
  test = 99,
};

struct RngKey {
  std::uint64_t seed = 0;
  std::uint32_t purpose = 0;
  std::uint32_t layer = 0;
};

struct Philox4 {
  std::uint32_t v[4];
};

SY_HOST_DEVICE void philox_mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi, std::uint32_t& lo) {
  std::uint64_t product = std::uint64_t(a) * std::uint64_t(b);
  hi = std::uint32_t(product >> 32);
  lo = std::uint32_t(product);
}

// Four 32-bit words for counter (index, layer, purpose) under key seed.
SY_HOST_DEVICE Philox4 philox4x32(RngKey key, std::uint64_t index) {
  std::uint32_t c0 = std::uint32_t(index), c1 = std::uint32_t(index >> 32), c2 = key.layer, c3 = key.purpose;
  std::uint32_t k0 = std::uint32_t(key.seed), k1 = std::uint32_t(key.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    std::uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    std::uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 random bits: exact in float, so CPU and GPU agree bit for bit.
SY_HOST_DEVICE float philox_uniform(RngKey key, std::uint64_t index) {
  return float(philox4x32(key, index).v[0] >> 8) * (1.0f / 16777216.0f);
}

// Standard normal by Box-Muller in double, rounded to float. CPU and GPU libm may differ in the
// last bit of a double; after rounding to float the values agree to within 1 ulp.
SY_HOST_DEVICE float philox_normal(RngKey key, std::uint64_t index) {
  Philox4 r = philox4x32(key, index);
  std::uint64_t a = (std::uint64_t(r.v[0]) << 21) ^ r.v[1];  // 53 bits
  std::uint64_t b = (std::uint64_t(r.v[2]) << 21) ^ r.v[3];
  double u1 = (double(a & ((1ull << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0);  // (0, 1)
  double u2 = double(b & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
  return float(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

}  // namespace sy
