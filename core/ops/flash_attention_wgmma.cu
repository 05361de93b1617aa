// Flash attention forward on Hopper's warpgroup MMA (wgmma.mma_async, sm_90a) for head dim 64.
//
// A block is two warpgroups (256 threads) over 128 query rows, 64 per warpgroup; each warp owns
// 16 rows, the rows a warp owns in the mma.sync kernels (flash_attention.cu), so the online
// softmax and the row stores are the same code. Per key tile of 64:
//   S = Q K^T   wgmma m64n64k16 x 4, Q and K straight from shared memory (K-major)
//   P           online softmax in registers (the accumulator of a warp is the mma.sync layout)
//   O += P V    wgmma m64n64k16 x 4, P from registers as the A operand, V from shared memory
//               read N-major (its rows are the K dimension)
// Unlike mma.sync, no operand passes through registers on its way from shared memory, which is
// what bounds the mma.sync forward. The tiles keep the 128-byte swizzle of SmemTile<64> (16-byte
// chunk c of row r at c ^ (r % 8)), which is the wgmma 128-byte swizzle when a tile starts on a
// 1024-byte boundary. Loads stay cp.async, through three buffers, so a proxy fence makes them
// visible to the tensor cores' (async) reads.
#include "core/ops/cuda_ops.h"
#include "core/ops/flash_attention_tiles.cuh"

namespace sy::cuda {
namespace {

constexpr int kWgThreads = 256;  // two warpgroups
constexpr int kWgRows = 128;     // query rows per block, 64 per warpgroup

// ---- PTX wrappers (PTX ISA: asynchronous warpgroup-level matrix instructions) -------------------
// Shared-memory matrix descriptor: start address, leading and stride byte offsets (each >> 4 in
// 14 bits), base offset 0 (tiles on 1024-byte boundaries), 128-byte swizzle (mode 1, bits 62-63).
__device__ __forceinline__ std::uint64_t smem_desc(const void* p, std::uint32_t leading_bytes,
                                                   std::uint32_t stride_bytes) {
  auto encode = [](std::uint64_t x) { return (x & 0x3FFFF) >> 4; };
  return encode(smem_addr(p)) | encode(leading_bytes) << 16 | encode(stride_bytes) << 32 | std::uint64_t(1) << 62;
}
// A K-major 64 x 64 tile (rows are M or N, 128 bytes of K each): 8-row groups 1024 bytes apart;
// the leading offset is unused under swizzling. k_step moves to column block kk.
__device__ __forceinline__ std::uint64_t k_major_desc(SmemTile<64> tile) { return smem_desc(tile.base, 16, 1024); }
// An N-major 64 x 64 tile (rows are K, 128 bytes of N each): 8-row K groups 1024 bytes apart;
// N = 64 is one swizzle atom, so the leading offset (between atoms along N) is unused. n_step
// moves to row block kk.
__device__ __forceinline__ std::uint64_t n_major_desc(SmemTile<64> tile) { return smem_desc(tile.base, 16, 1024); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// After a wait: the accumulators count as written here, so no read of them moves above the wait.
__device__ __forceinline__ void fence_operands(float (&d)[8][4]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}
// Shared memory written by cp.async (the generic proxy) becomes visible to wgmma (the async proxy).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The top of a three-buffer step: waits for this thread's copies of the step's cp.async group
// (the next step's group, when `next_in_flight`, may still be running), makes them visible to
// the tensor cores, and to every thread with the barrier, which also means every thread is done
// with the step before, whose buffer the caller then refills.
__device__ __forceinline__ void publish_step(bool next_in_flight) {
  if (next_in_flight) {
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  fence_proxy_async();
  __syncthreads();
}

// The 32 accumulator registers of an m64n64 wgmma (the mma.sync layout, [8][4]) as asm operands.
#define SY_WGMMA_ACC64(d) \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
  "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
  "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
  "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
  "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
  "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
  "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
  "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])

// d (64 x 64 per warpgroup, the mma.sync accumulator layout per warp) = or += A B, A and B K-major
// in shared memory.
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], std::uint64_t a, std::uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : SY_WGMMA_ACC64(d)
      : "l"(a), "l"(b), "r"(accumulate));
}
// d += A B, A (16 of K) in registers in the mma.sync A layout, B N-major in shared memory.
__device__ __forceinline__ void wgmma_rs_bn(float (&d)[8][4], const std::uint32_t (&a)[4], std::uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : SY_WGMMA_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// A 16 x 64 accumulator (P or dS, rows of this warp) as the A operands of all four k16 steps.
__device__ __forceinline__ void pack_a_operands(std::uint32_t (&a)[4][4], const float (&p)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) pack_a_fragment(a[kk], p, kk);
}

// Descriptor units (16 bytes) between two buffers of two 64 x 64 tiles each.
constexpr std::uint64_t kBufferStep = 2 * kTile * 64 * sizeof(bf16) / 16;
// Column block kk (16 of K) of a K-major tile is 32 bytes on; row block kk of an N-major tile
// 2048 bytes on. Descriptor arithmetic on the start-address field: shared memory is below 256 KB,
// so the field (bits 0-13) never carries.
__device__ __forceinline__ std::uint64_t k_step(std::uint64_t desc, int kk) { return desc + 2 * kk; }
__device__ __forceinline__ std::uint64_t n_step(std::uint64_t desc, int kk) { return desc + 128 * kk; }

// Grid (query tiles of 128, Hq, B). out [B, Hq, T, D]; lse [B, Hq, T], as flash_forward_kernel.
// K and V go through three buffers, so one barrier per key tile both publishes tile j and frees
// tile j - 1's buffer for tile j + 2, two tiles ahead of the products.
__global__ void __launch_bounds__(kWgThreads) flash_forward_wgmma_kernel(const HeadView q, const HeadView k,
                                                                        const HeadView v, const HeadView out,
                                                                        float* __restrict__ lse, Shape s,
                                                                        float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // The swizzle pattern repeats every 1024 bytes: the first tile starts on such a boundary.
  unsigned char* smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const auto [q_tile, head, batch, kv_head] = query_block(s);
  const std::int64_t q_off = (std::int64_t(batch) * s.heads + head) * s.seq;  // into lse
  const bf16* q_head = q.head_at(batch, head);
  const bf16* k_head = k.head_at(batch, kv_head);
  const bf16* v_head = v.head_at(batch, kv_head);
  // Tiles: Q of warpgroup 0 and 1, then K and V of each of the three buffers.
  auto ks = [&](int buf) { return tile_at<64>(smem, 2 + 2 * buf); };
  auto vs = [&](int buf) { return tile_at<64>(smem, 3 + 2 * buf); };
  auto load_kv = [&](int j, int buf) {
    load_tile<64, kWgThreads>(ks(buf), k_head, k.row, j * kTile, s.seq);
    load_tile<64, kWgThreads>(vs(buf), v_head, v.row, j * kTile, s.seq);
    cp_async_commit();
  };
  const int warp = threadIdx.x / 32, group = warp / 4, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int q0 = q_tile * kWgRows, group_row0 = q0 + group * kTile;
  const int row0 = group_row0 + (warp % 4) * 16;  // this warp's first query row
  const int last_row = min(q0 + kWgRows, s.seq) - 1;
  const int kv_tiles = last_row / kTile + 1;  // key tiles at or left of the block's last row

  for (int m = 0; m < 2; ++m) load_tile<64, kWgThreads>(tile_at<64>(smem, m), q_head, q.row, q0 + m * kTile, s.seq);
  cp_async_commit();
  load_kv(0, 0);
  if (kv_tiles > 1) load_kv(1, 1);
  const std::uint64_t q_desc = k_major_desc(tile_at<64>(smem, group));
  const std::uint64_t k_desc = k_major_desc(ks(0)), v_desc = n_major_desc(vs(0));

  float o[8][4], row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  zero(o);
  int buf = 0;  // j % 3
  for (int j = 0; j < kv_tiles; ++j) {
    publish_step(j + 1 < kv_tiles);  // tile j is visible; every warpgroup is done with tile j - 1
    if (j + 2 < kv_tiles) load_kv(j + 2, buf == 0 ? 2 : buf - 1);  // into tile j - 1's buffer
    // A warpgroup whose rows all sit left of this key tile has nothing to add (uniform over it).
    if (j * kTile <= group_row0 + kTile - 1) {
      const std::uint64_t kd = k_desc + buf * kBufferStep, vd = v_desc + buf * kBufferStep;
      float sc[8][4];
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_ss(sc, k_step(q_desc, kk), k_step(kd, kk), kk > 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(sc);
      const bool masked = j * kTile + kTile - 1 > row0;  // some column right of some row of this warp
      online_softmax_step<64>(sc, o, row_max, row_sum, row0, j * kTile, masked, scale_log2);
      std::uint32_t a[4][4];
      pack_a_operands(a, sc);
      wgmma_fence();  // o (rescaled) and a were written by ordinary instructions
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_bn(o, a[kk], n_step(vd, kk));
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(o);
    }
    buf = buf == 2 ? 0 : buf + 1;
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    inv[r] = 1.0f / row_sum[r];
    const int row = row0 + g + 8 * r;
    if (t == 0 && row < s.seq) lse[q_off + row] = (row_max[r] + log2f(row_sum[r])) / kLog2e;
  }
  store_rows<64>(out.head_at(batch, head), out.row, o, row0, s.seq, inv[0], inv[1]);
#else
  __trap();  // built for another architecture: flash_attention_wgmma_supported() said no
#endif
}

// dK, dV on wgmma: the mma.sync kernel's walk (flash_attention.cu, flash_backward_dkdv_kernel)
// with each of its four products one warpgroup MMA. Grid (key tiles, Hkv, B), one warpgroup over
// 64 keys, each warp 16 of them. Per query tile of a query head of the group:
//   S^T = K Q^T, dP^T = V dO^T   both operands from shared memory, issued together
//   dV += P^T dO, dK += dS^T Q   P^T and dS^T from registers, dO and Q read N-major
// and dS^T goes to the scratch tiles for the dQ kernel, as in the mma.sync kernel. Q and dO go
// through three buffers (one barrier per step, loads two steps ahead), and the register cap of
// three blocks per SM (168, a few bytes of spill) gives each SM 12 warps to hide the step's chain
// of dependent products.
__global__ void __launch_bounds__(kThreads, 3) flash_backward_dkdv_wgmma_kernel(
    const HeadView q, const HeadView k, const HeadView v, const HeadView dout, const float* __restrict__ lse,
    const float* __restrict__ delta, const HeadView dk, const HeadView dv, bf16* __restrict__ ds_tiles, Shape s,
    float scale, float scale_log2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - smem_addr(smem_raw) % 1024) % 1024);
  const auto w = DkdvWalk<64, 3>::of_block(smem, s);
  const int key0 = w.k_tile * kTile + (threadIdx.x / 32) * 16;  // this warp's first key
  w.load_keys(k, v);
  const int steps = w.steps();
  auto at = w.first(), next = at;
  w.issue(next, 0, q, dout, lse, delta);
  if (steps > 1) {
    w.advance(next);
    w.issue(next, 1, q, dout, lse, delta);
  }
  const std::uint64_t k_desc = k_major_desc(w.ks()), v_desc = k_major_desc(w.vs());
  const std::uint64_t q_desc = k_major_desc(w.qs(0)), do_desc = k_major_desc(w.dos(0));
  const std::uint64_t q_n_desc = n_major_desc(w.qs(0)), do_n_desc = n_major_desc(w.dos(0));

  float dk_acc[8][4], dv_acc[8][4];
  zero(dk_acc);
  zero(dv_acc);
  int buf = 0;  // step % 3
  for (int step = 0; step < steps; ++step) {
    publish_step(step + 1 < steps);  // this step's tiles are visible; every warp is done with step - 1
    if (step + 2 < steps) {
      w.advance(next);
      w.issue(next, buf == 0 ? 2 : buf - 1, q, dout, lse, delta);  // into step - 1's buffer
    }
    const std::uint64_t off = buf * kBufferStep;
    float p[8][4], ds[8][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_ss(p, k_step(k_desc, kk), k_step(q_desc + off, kk), kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_ss(ds, k_step(v_desc, kk), k_step(do_desc + off, kk), kk > 0);
    wgmma_commit();
    wgmma_wait<1>();  // S^T is in; dP^T may still be in flight
    fence_operands(p);
    transposed_probabilities(p, key0, at.q_tile, w.k_tile, w.row_lse(buf), s, scale_log2);
    std::uint32_t a[4][4];
    pack_a_operands(a, p);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_bn(dv_acc, a[kk], n_step(do_n_desc + off, kk));
    wgmma_commit();
    wgmma_wait<1>();  // dP^T is in; dV may still be in flight
    fence_operands(ds);
    transposed_ds(ds, p, w.row_delta(buf));
    std::uint32_t b[4][4];
    pack_a_operands(b, ds);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_bn(dk_acc, b[kk], n_step(q_n_desc + off, kk));
    wgmma_commit();
    store_ds_tile(ds, w.ds_stage(), ds_tiles + ds_tile_offset(s, w.batch, at.head, at.q_tile, w.k_tile));
    wgmma_wait<0>();
    fence_operands(dk_acc);
    fence_operands(dv_acc);
    w.advance(at);
    buf = buf == 2 ? 0 : buf + 1;
  }
  store_rows<64>(dk.head_at(w.batch, w.kv_head), dk.row, dk_acc, key0, s.seq, scale, scale);
  store_rows<64>(dv.head_at(w.batch, w.kv_head), dv.row, dv_acc, key0, s.seq, 1.0f, 1.0f);
#else
  __trap();  // built for another architecture: flash_attention_wgmma_supported() said no
#endif
}

// The walk's tiles and row values, and room to align the first tile to 1024 bytes.
constexpr std::size_t wgmma_dkdv_smem_bytes() { return DkdvWalk<64, 3>::smem_bytes() + 1024; }

// Q (two tiles), K and V of three buffers, and the alignment room.
constexpr std::size_t wgmma_smem_bytes() { return 8 * kTile * 64 * sizeof(bf16) + 1024; }

}  // namespace

bool flash_attention_wgmma_supported(std::int64_t head_dim) {
  // wgmma is Hopper's (sm_90a); later parts have their own instructions.
  return head_dim == 64 && current_device_facts().major == 9;
}

void flash_attention_forward_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                   const Tensor& lse, StreamRef stream) {
  if (q.numel() == 0) return;
  static const bool once = (allow_smem(flash_forward_wgmma_kernel, wgmma_smem_bytes()), true);
  (void)once;
  const Shape s = shape_of(q, k);
  const dim3 grid = causal_grid(s.heads, q.size(0), (s.seq + kWgRows - 1) / kWgRows);
  const float scale_log2 = kLog2e / std::sqrt(64.0f);
  flash_forward_wgmma_kernel<<<grid, kWgThreads, wgmma_smem_bytes(), to_cuda(stream)>>>(
      view_of(q), view_of(k), view_of(v), view_of(out), static_cast<float*>(lse.data()), s, scale_log2);
  SY_CUDA_LAUNCH();
}

void flash_backward_dkdv_wgmma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                               const Tensor& lse, const float* delta, const Tensor& dk, const Tensor& dv,
                               void* ds_tiles, StreamRef stream) {
  static const bool once = (allow_smem(flash_backward_dkdv_wgmma_kernel, wgmma_dkdv_smem_bytes()), true);
  (void)once;
  const Shape s = shape_of(q, k);
  const float scale = 1.0f / std::sqrt(64.0f), scale_log2 = kLog2e * scale;
  const unsigned tiles = unsigned((s.seq + kTile - 1) / kTile);
  flash_backward_dkdv_wgmma_kernel<<<causal_grid(s.kv_heads, q.size(0), tiles), kThreads,
                                     wgmma_dkdv_smem_bytes(), to_cuda(stream)>>>(
      view_of(q), view_of(k), view_of(v), view_of(dout), static_cast<const float*>(lse.data()), delta, view_of(dk),
      view_of(dv), static_cast<bf16*>(ds_tiles), s, scale, scale_log2);
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
