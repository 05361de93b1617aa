// The pieces both flash attention files share (flash_attention.cu: mma.sync kernels for every
// head dim; flash_attention_wgmma.cu: Hopper warpgroup MMA): PTX wrappers, the swizzled
// shared-memory tiles and their loads, the per-warp online softmax and the row stores. Internal
// to those two files.
#pragma once

#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/ops/cuda_common.cuh"
#include "core/tensor.h"

namespace sy::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kTile = 64;             // query rows and key rows per tile
constexpr int kThreads = 128;         // 4 warps x 16 rows
constexpr float kLog2e = 1.4426950408889634f;

// ---- PTX wrappers ------------------------------------------------------------------------------
__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared, asynchronously; `valid` false writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
// 4 bytes global -> shared, asynchronously (through L1); `valid` false writes zeros.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

// ---- shared-memory tiles -----------------------------------------------------------------------
// A [64, D] bf16 tile, rows of D/8 16-byte chunks; chunk c of row r is stored at c ^ (r % 8) so
// that the 8 row addresses of one ldmatrix fall in 8 different bank groups.
template <int D>
struct SmemTile {
  bf16* base;
  __device__ bf16* at(int row, int chunk) const { return base + row * D + ((chunk ^ (row & 7)) << 3); }
};

// Tile `index` of the shared-memory buffer: tiles are laid out back to back. A function instead of
// an array of tiles because a run-time index into an array would put it on the stack.
template <int D>
__device__ __forceinline__ SmemTile<D> tile_at(unsigned char* smem, int index) {
  return {reinterpret_cast<bf16*>(smem) + index * kTile * D};
}

// Copies rows [row0, row0 + 64) of a [rows, D] matrix whose rows are `row_stride` elements apart
// into the tile; rows past `rows` become 0. Threads: the block's size. Each thread moves the same
// 16-byte column of every pass's rows, and passes are a multiple of 8 rows apart, so the swizzled
// column is the same in each: one address computation per tile, not per chunk.
template <int D, int Threads = kThreads>
__device__ __forceinline__ void load_tile(SmemTile<D> tile, const bf16* src, std::int64_t row_stride, int row0,
                                          int rows) {
  constexpr int chunks = D / 8, pass_rows = Threads / chunks;
  static_assert(Threads % chunks == 0 && pass_rows % 8 == 0 && kTile % pass_rows == 0, "load_tile: thread layout");
  const int r = threadIdx.x / chunks, chunk = threadIdx.x % chunks;
  bf16* dst = tile.at(r, chunk);
  const bf16* from = src + std::int64_t(row0 + r) * row_stride + chunk * 8;
#pragma unroll
  for (int pass = 0; pass < kTile / pass_rows; ++pass) {
    const bool valid = row0 + r + pass * pass_rows < rows;
    cp_async16(dst + pass * pass_rows * D, valid ? from + pass * pass_rows * row_stride : src, valid);
  }
}

// The key-tile loop's double buffering: starts loading key tile j + 1 (if any) into the other
// buffer, then waits for tile j and makes it visible to every warp.
template <int D>
__device__ __forceinline__ void next_kv_tile(SmemTile<D> k_next, SmemTile<D> v_next, const bf16* k_head,
                                             std::int64_t k_stride, const bf16* v_head, std::int64_t v_stride, int j,
                                             int kv_tiles, int rows) {
  if (j + 1 < kv_tiles) {
    load_tile(k_next, k_head, k_stride, (j + 1) * kTile, rows);
    load_tile(v_next, v_head, v_stride, (j + 1) * kTile, rows);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// A operand (16 x 16) from rows row0.., columns k0.. of a tile (rows are the M dimension).
template <int D>
__device__ __forceinline__ void load_a(std::uint32_t (&a)[4], SmemTile<D> tile, int row0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(a, tile.at(row0 + (lane & 15), k0 / 8 + (lane >> 4)));
}
// B operands for two n8 tiles (n0.. and n0+8..) over k0..k0+15, from a tile whose rows are the
// N dimension ([n][k], e.g. K for S = Q K^T): b[0], b[1] for n0; b[2], b[3] for n0 + 8.
template <int D>
__device__ __forceinline__ void load_b_rows_n(std::uint32_t (&b)[4], SmemTile<D> tile, int n0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4(b, tile.at(n0 + (lane & 7) + ((lane >> 4) << 3), k0 / 8 + ((lane >> 3) & 1)));
}
// The same from a tile whose rows are the K dimension ([k][n], e.g. V for O = P V).
template <int D>
__device__ __forceinline__ void load_b_rows_k(std::uint32_t (&b)[4], SmemTile<D> tile, int k0, int n0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(b, tile.at(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), n0 / 8 + (lane >> 4)));
}

// A operand (16 x 16) for rows m0.. and columns k0.. of A, from a tile that holds A transposed
// (its rows are the K dimension, e.g. dS^T for dQ = dS K): each 8 x 8 piece is read transposed.
template <int D>
__device__ __forceinline__ void load_a_rows_k(std::uint32_t (&a)[4], SmemTile<D> tile, int m0, int k0) {
  const int lane = threadIdx.x % 32;
  ldmatrix_x4_trans(a, tile.at(k0 + ((lane >> 4) << 3) + (lane & 7), m0 / 8 + ((lane >> 3) & 1)));
}

// acc[m][8][4] (MT m-tiles of 16 x 64) += A (rows row0 + 16 m.. of `a_tile`, 16 x D each) * B^T,
// B rows n = 0..63 of `b_tile`. Each B fragment read from shared memory feeds all MT m-tiles.
template <int D, int MT>
__device__ __forceinline__ void product_nt_tiles(float (&acc)[MT][8][4], SmemTile<D> a_tile, int row0,
                                                 SmemTile<D> b_tile) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    std::uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) load_a(a[m], a_tile, row0 + 16 * m, kk * 16);
#pragma unroll
    for (int nn = 0; nn < 4; ++nn) {
      std::uint32_t b[4];
      load_b_rows_n(b, b_tile, nn * 16, kk * 16);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma(acc[m][2 * nn], a[m], b[0], b[1]);
        mma(acc[m][2 * nn + 1], a[m], b[2], b[3]);
      }
    }
  }
}
template <int D>
__device__ __forceinline__ void product_nt(float (&acc)[8][4], SmemTile<D> a_tile, int row0, SmemTile<D> b_tile) {
  product_nt_tiles<D, 1>(reinterpret_cast<float(&)[1][8][4]>(acc), a_tile, row0, b_tile);
}

// The A operand of k16 step kk from a warp's 16 x 64 accumulator (P or dS) rounded to bf16: two
// adjacent n8 tiles of an accumulator are exactly one A fragment, for mma.sync and for wgmma.
__device__ __forceinline__ void pack_a_fragment(std::uint32_t (&a)[4], const float (&p)[8][4], int kk) {
  a[0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);
  a[1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);
  a[2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
  a[3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}

// acc[m][D/8][4] (MT m-tiles of 16 x D) += P[m] (16 x 64, accumulator layout, rounded to bf16)
// * B (64 x D, rows of `b_tile`); each B fragment feeds all MT m-tiles.
template <int D, int MT>
__device__ __forceinline__ void product_pv_tiles(float (&acc)[MT][D / 8][4], const float (&p)[MT][8][4],
                                                 SmemTile<D> b_tile) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    std::uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) pack_a_fragment(a[m], p[m], kk);
#pragma unroll
    for (int dd = 0; dd < D / 16; ++dd) {
      std::uint32_t b[4];
      load_b_rows_k(b, b_tile, kk * 16, dd * 16);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma(acc[m][2 * dd], a[m], b[0], b[1]);
        mma(acc[m][2 * dd + 1], a[m], b[2], b[3]);
      }
    }
  }
}
template <int D>
__device__ __forceinline__ void product_pv(float (&acc)[D / 8][4], const float (&p)[8][4], SmemTile<D> b_tile) {
  product_pv_tiles<D, 1>(reinterpret_cast<float(&)[1][D / 8][4]>(acc), reinterpret_cast<const float(&)[1][8][4]>(p),
                         b_tile);
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
}

// Writes a warp's 16 x D accumulator (rows row0.. of a [rows, D] matrix with rows `row_stride`
// elements apart) as bf16, times `scale`.
template <int D>
__device__ __forceinline__ void store_rows(bf16* dst, std::int64_t row_stride, const float (&acc)[D / 8][4], int row0,
                                           int rows, float scale0, float scale1) {
  const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int col = nt * 8 + 2 * t;
    if (row0 + g < rows)
      *reinterpret_cast<__nv_bfloat162*>(dst + std::int64_t(row0 + g) * row_stride + col) =
          __floats2bfloat162_rn(acc[nt][0] * scale0, acc[nt][1] * scale0);
    if (row0 + g + 8 < rows)
      *reinterpret_cast<__nv_bfloat162*>(dst + std::int64_t(row0 + g + 8) * row_stride + col) =
          __floats2bfloat162_rn(acc[nt][2] * scale1, acc[nt][3] * scale1);
  }
}

struct Shape {
  int seq, heads, kv_heads;
  __host__ __device__ int group() const { return heads / kv_heads; }
};

// A [B, H, T, D] operand: its base and element strides of the B, H and T axes (D is contiguous).
// Head-major tensors have strides (H T D, T D, D); heads viewed inside a token-major
// [B T, H D] matrix have (T H D, D, H D).
struct HeadView {
  bf16* data;
  std::int64_t batch, head, row;
  __device__ bf16* head_at(int b, int h) const { return data + b * batch + h * head; }
};

// The backward's dS scratch: per (batch, query head), the 64 x 64 bf16 tiles (query tile i, key
// tile j <= i) of the causal triangle, tile (i, j) at index i (i + 1) / 2 + j.
__host__ __device__ inline std::int64_t ds_tiles_per_head(int seq) {
  const std::int64_t tiles = (seq + kTile - 1) / kTile;
  return tiles * (tiles + 1) / 2;
}
__device__ __forceinline__ std::int64_t ds_tile_offset(const Shape& s, int batch, int head, int q_tile, int k_tile) {
  const std::int64_t tile = (std::int64_t(batch) * s.heads + head) * ds_tiles_per_head(s.seq) +
                            std::int64_t(q_tile) * (q_tile + 1) / 2 + k_tile;
  return tile * kTile * kTile;
}

// One 16-row m-tile's online-softmax step for the key tile whose first column is col0: scales
// the scores into the log2 domain (masking columns past each row where `Masked`), rescales o and
// the running sums by the change of the running max, and turns sc into unnormalised P. Only the
// diagonal tiles are masked: the others skip the per-element row and column arithmetic.
template <int D, bool Masked>
__device__ __forceinline__ void softmax_step(float (&sc)[8][4], float (&o)[D / 8][4], float (&row_max)[2],
                                             float (&row_sum)[2], int row0, int col0, float scale_log2) {
  const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row0 + g + (e >= 2 ? 8 : 0), col = col0 + nt * 8 + 2 * t + (e & 1);
      const float x = !Masked || col <= row ? sc[nt][e] * scale_log2 : -INFINITY;
      sc[nt][e] = x;
      tile_max[e >> 1] = fmaxf(tile_max[e >> 1], x);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    // The 4 lanes of a quad hold one row's 64 columns between them.
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
    const float new_max = fmaxf(row_max[r], tile_max[r]);
    // A row with nothing visible yet keeps max -inf; use 0 as its reference so exp2 gives 0.
    const float ref = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = exp2f(row_max[r] - ref);
    row_max[r] = new_max;
    row_sum[r] *= correction;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      o[nt][2 * r] *= correction;
      o[nt][2 * r + 1] *= correction;
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      sc[nt][2 * r] = exp2f(sc[nt][2 * r] - ref);
      sc[nt][2 * r + 1] = exp2f(sc[nt][2 * r + 1] - ref);
      row_sum[r] += sc[nt][2 * r] + sc[nt][2 * r + 1];
    }
  }
}
template <int D>
__device__ __forceinline__ void online_softmax_step(float (&sc)[8][4], float (&o)[D / 8][4], float (&row_max)[2],
                                                    float (&row_sum)[2], int row0, int col0, bool masked,
                                                    float scale_log2) {
  if (masked) {
    softmax_step<D, true>(sc, o, row_max, row_sum, row0, col0, scale_log2);
  } else {
    softmax_step<D, false>(sc, o, row_max, row_sum, row0, col0, scale_log2);
  }
}

// Starts copying 64 row values (lse or delta) of rows row0.. into shared memory, in the caller's
// cp.async group; rows past `rows` read 0.
__device__ __forceinline__ void load_row_values(float* dst, const float* src, int row0, int rows) {
  if (threadIdx.x < kTile) {
    const bool valid = row0 + int(threadIdx.x) < rows;
    cp_async4(dst + threadIdx.x, valid ? src + row0 + threadIdx.x : src, valid);
  }
}

// The dK/dV kernels' walk for one key tile: the steps run over the query tiles at or below it for
// each query head of its kv head, through `Stages` buffers. Shared memory: K, V, then Q and dO of
// each buffer, the 64 x 64 dS^T staging tile, then lse of each buffer, then delta of each.
template <int D, int Stages = 2>
struct DkdvWalk {
  unsigned char* smem;
  Shape s;
  int k_tile, kv_head, batch;

  // The walk of this block of its causal_grid: the first key tiles see the most queries and
  // start first.
  static __device__ DkdvWalk of_block(unsigned char* smem, const Shape& s) {
    return {smem, s, int(blockIdx.z), int(blockIdx.x), int(blockIdx.y)};
  }

  // Which query head and tile a step reads: advanced step by step, so the loop never divides.
  struct Cursor {
    int head, q_tile;
  };

  static constexpr std::size_t smem_bytes() {
    return ((2 + 2 * Stages) * kTile * D + kTile * kTile) * sizeof(bf16) + 2 * Stages * kTile * sizeof(float);
  }
  __device__ SmemTile<D> ks() const { return tile_at<D>(smem, 0); }
  __device__ SmemTile<D> vs() const { return tile_at<D>(smem, 1); }
  __device__ SmemTile<D> qs(int buf) const { return tile_at<D>(smem, 2 + 2 * buf); }
  __device__ SmemTile<D> dos(int buf) const { return tile_at<D>(smem, 3 + 2 * buf); }
  __device__ SmemTile<kTile> ds_stage() const { return {tile_at<D>(smem, 2 + 2 * Stages).base}; }
  __device__ float* row_lse(int buf) const {  // [64], natural log
    return reinterpret_cast<float*>(ds_stage().base + kTile * kTile) + buf * kTile;
  }
  __device__ float* row_delta(int buf) const { return row_lse(0) + (Stages + buf) * kTile; }
  __device__ int tiles() const { return (s.seq + kTile - 1) / kTile; }
  __device__ int steps() const { return (tiles() - k_tile) * s.group(); }
  __device__ Cursor first() const { return {kv_head * s.group(), k_tile}; }
  __device__ void advance(Cursor& c) const {
    if (++c.q_tile == tiles()) {
      c.q_tile = k_tile;
      ++c.head;
    }
  }

  // The block's K and V tiles (committed with the first step's loads).
  __device__ void load_keys(const HeadView& k, const HeadView& v) const {
    load_tile(ks(), k.head_at(batch, kv_head), k.row, k_tile * kTile, s.seq);
    load_tile(vs(), v.head_at(batch, kv_head), v.row, k_tile * kTile, s.seq);
  }
  // The Q and dO tiles, lse and delta of step `c` into buffer `buf`, as one cp.async group.
  __device__ void issue(Cursor c, int buf, const HeadView& q, const HeadView& dout, const float* lse,
                        const float* delta) const {
    const std::int64_t q_off = (std::int64_t(batch) * s.heads + c.head) * s.seq;  // into lse, delta
    load_tile(qs(buf), q.head_at(batch, c.head), q.row, c.q_tile * kTile, s.seq);
    load_tile(dos(buf), dout.head_at(batch, c.head), dout.row, c.q_tile * kTile, s.seq);
    load_row_values(row_lse(buf), lse + q_off, c.q_tile * kTile, s.seq);
    load_row_values(row_delta(buf), delta + q_off, c.q_tile * kTile, s.seq);
    cp_async_commit();
  }
};

// The dK/dV step's elementwise parts, in the transposed frame (rows keys, columns queries) of a
// warp's 16 x 64 accumulator; key0 is the warp's first key. P^T = exp2(S^T scale - lse[query]
// log2 e), 0 where a query precedes the key or lies past the end. Only the diagonal tile and a
// last, partial query tile hide anything; the others skip the per-element index arithmetic.
// Each lane's columns come in adjacent pairs, so the row values are read 8 bytes at a time.
template <bool Masked>
__device__ __forceinline__ void probabilities_step(float (&p)[8][4], int key0, int query0, const float* tile_lse,
                                                   int seq, float scale_log2) {
  const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const float2 l = *reinterpret_cast<const float2*>(tile_lse + nt * 8 + 2 * t);
    const float bias[2] = {-(l.x * kLog2e), -(l.y * kLog2e)};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + g + (e >= 2 ? 8 : 0), query = query0 + nt * 8 + 2 * t + (e & 1);
      const bool visible = !Masked || (key <= query && query < seq);
      p[nt][e] = visible ? exp2f(fmaf(p[nt][e], scale_log2, bias[e & 1])) : 0.0f;
    }
  }
}
__device__ __forceinline__ void transposed_probabilities(float (&p)[8][4], int key0, int q_tile, int k_tile,
                                                         const float* tile_lse, const Shape& s, float scale_log2) {
  if (q_tile == k_tile || (q_tile + 1) * kTile > s.seq) {
    probabilities_step<true>(p, key0, q_tile * kTile, tile_lse, s.seq, scale_log2);
  } else {
    probabilities_step<false>(p, key0, q_tile * kTile, tile_lse, s.seq, scale_log2);
  }
}
// dS^T = P^T (dP^T - delta[query]), in place of dP^T.
__device__ __forceinline__ void transposed_ds(float (&ds)[8][4], const float (&p)[8][4], const float* tile_delta) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const float2 d = *reinterpret_cast<const float2*>(tile_delta + nt * 8 + 2 * t);
#pragma unroll
    for (int e = 0; e < 4; ++e) ds[nt][e] = p[nt][e] * (ds[nt][e] - ((e & 1) ? d.y : d.x));
  }
}
// dS^T in bf16 (exactly the operand of the dK product) for the dQ kernel: the warp's 16 rows of
// the 64 x 64 tile at `ds_tile`. Staged in shared memory (swizzled: the 8 rows of a store hit 8
// bank groups) and written out as whole 128-byte rows, 16 bytes a lane. A warp writes and reads
// only its own 16 staging rows, so ordering its lanes is enough.
__device__ __forceinline__ void store_ds_tile(const float (&ds)[8][4], SmemTile<kTile> stage, bf16* ds_tile) {
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  __syncwarp();  // the last tile's reads of these rows are done
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    *reinterpret_cast<std::uint32_t*>(stage.at(warp * 16 + g, nt) + 2 * t) = pack_bf16(ds[nt][0], ds[nt][1]);
    *reinterpret_cast<std::uint32_t*>(stage.at(warp * 16 + g + 8, nt) + 2 * t) = pack_bf16(ds[nt][2], ds[nt][3]);
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = warp * 16 + 4 * i + lane / 8, chunk = lane % 8;
    *reinterpret_cast<uint4*>(ds_tile + row * kTile + chunk * 8) = *reinterpret_cast<const uint4*>(stage.at(row, chunk));
  }
}

// The grid of a causal kernel: (heads, batch, tiles). Blocks start in index order, x fastest, so
// every head's tiles of one index start before any of the next; the kernels read the tile index
// so that the longest tiles (the last query tiles, the first key tiles) come first, and the
// shortest fill the last wave instead of the longest.
dim3 causal_grid(std::int64_t heads, std::int64_t batch, std::int64_t tiles) {
  SY_CHECK(batch <= 65535 && tiles <= 65535) << "flash attention: batch " << batch << " and " << tiles
                                             << " tiles of 64 rows must each be at most 65535";
  return dim3(unsigned(heads), unsigned(batch), unsigned(tiles));
}

// A query block's place in its causal_grid: the last query tiles (the longest rows) start first.
struct QueryBlock {
  int q_tile, head, batch, kv_head;
};
__device__ __forceinline__ QueryBlock query_block(const Shape& s) {
  const int head = blockIdx.x;
  return {int(gridDim.z - 1 - blockIdx.z), head, int(blockIdx.y), head / s.group()};
}

HeadView view_of(const Tensor& t) {
  return {static_cast<bf16*>(t.data()), t.stride(0), t.stride(1), t.stride(2)};
}

Shape shape_of(const Tensor& q, const Tensor& k) {
  SY_CHECK(q.size(2) <= INT_MAX / 2) << "flash attention: sequence length " << q.size(2) << " is too long";
  return {int(q.size(2)), int(q.size(1)), int(k.size(1))};
}

}  // namespace

// The dK/dV kernel on wgmma (flash_attention_wgmma.cu, head dim 64 on sm_90), launched by the
// backward in flash_attention.cu beside its delta and dQ kernels: delta and ds_tiles are the
// scratch's two parts.
void flash_backward_dkdv_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                               const Tensor& lse, const float* delta, const Tensor& dk, const Tensor& dv,
                               void* ds_tiles, StreamRef stream);

}  // namespace sy::cuda
